"""Overlapping windows over long documents (ADEPT App. B.4)."""

from __future__ import annotations

import math

from megatron_adept.errors import DataError


def check_window(window: int, stride: int) -> None:
    if window <= 0 or stride <= 0:
        raise DataError(f"--window={window} and --stride={stride} must be positive")
    if window <= stride:
        raise DataError(f"--window={window} must be larger than --stride={stride}")


def num_windows(length: int, window: int, stride: int) -> int:
    """The paper's count: ceil((n - (w - s)) / s) windows when n > w, else one."""
    if length <= window:
        return 1
    return math.ceil((length - (window - stride)) / stride)


def window_spans(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans: windows of at most ``window`` tokens starting every ``stride``.

    Consecutive windows overlap by ``window - stride`` tokens and the last one ends at the
    document's end; documents no longer than ``window`` are kept whole.
    """
    check_window(window, stride)
    return [
        (start, min(start + window, length))
        for start in (i * stride for i in range(num_windows(length, window, stride)))
    ]
