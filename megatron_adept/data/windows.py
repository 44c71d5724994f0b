"""Overlapping windows over long documents (ADEPT App. B.4).

A document of ``n`` tokens longer than the window ``w`` is cut into windows of at most ``w``
tokens that start every ``s`` tokens, so consecutive windows share ``w - s`` tokens and every
window but the first begins with context the previous one ended on. The paper's count of
windows is ``ceil((n - (w - s)) / s)``; shorter documents stay whole.
"""

from __future__ import annotations

import math

from megatron_adept.errors import DataError


def check_window(window: int, stride: int) -> None:
    """Reject a window that would leave gaps or never advance."""
    if window <= 0 or stride <= 0:
        raise DataError(f"--window={window} and --stride={stride} must be positive")
    if window <= stride:
        raise DataError(f"--window={window} must be larger than --stride={stride}")


def num_windows(length: int, window: int, stride: int) -> int:
    """The paper's count: ``ceil((n - (w - s)) / s)`` windows when ``n > w``, else one."""
    if length <= window:
        return 1
    return math.ceil((length - (window - stride)) / stride)


def window_spans(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` token spans of the windows of a document of ``length`` tokens.

    Window ``i`` starts at ``i * stride``; the last one ends at the document's end (it may be
    shorter than ``window``, but always extends past the previous window).
    """
    check_window(window, stride)
    return [
        (i * stride, min(i * stride + window, length))
        for i in range(num_windows(length, window, stride))
    ]
