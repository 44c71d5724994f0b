"""Sliding windows against the paper's count (App. B.4) and hand-written spans."""

import math

import pytest

from megatron_adept.data.windows import num_windows, window_spans
from megatron_adept.errors import DataError


@pytest.mark.parametrize(
    "n, w, s",
    [(10, 4, 3), (11, 4, 3), (12, 4, 3), (100, 16, 12), (17, 8, 1), (9, 8, 7), (4097, 4096, 3072)],
)
def test_long_documents_follow_the_paper(n, w, s):
    spans = window_spans(n, w, s)
    assert len(spans) == num_windows(n, w, s) == math.ceil((n - (w - s)) / s)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(0 < end - start <= w for start, end in spans)
    for (a_start, a_end), (b_start, _) in zip(spans, spans[1:], strict=False):
        assert b_start == a_start + s  # a new window every `stride` tokens
        assert a_end - b_start == w - s  # consecutive windows share exactly w - s tokens
    covered = [t for start, end in spans for t in range(start, end)]
    assert set(covered) == set(range(n))


def test_hand_written_spans():
    assert window_spans(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert window_spans(11, 4, 3) == [(0, 4), (3, 7), (6, 10), (9, 11)]


@pytest.mark.parametrize(
    "n, expected",
    [
        (4096, [(0, 4096)]),  # n = w: one window, no overlap
        (4097, [(0, 4096), (3072, 4097)]),  # n = w + 1: ceil((4097 - 1024) / 3072) = 2
        (10, [(0, 10)]),  # n < w: kept whole
        (0, [(0, 0)]),
    ],
)
def test_edge_cases(n, expected):
    assert window_spans(n, 4096, 3072) == expected


@pytest.mark.parametrize("w, s", [(8, 8), (4, 8), (0, 0), (8, -1)])
def test_window_must_exceed_a_positive_stride(w, s):
    with pytest.raises(DataError, match=f"--window={w}"):
        window_spans(100, w, s)
