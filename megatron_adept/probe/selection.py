"""Which layers to expand: the k least important, and a suggested k."""

from __future__ import annotations

from megatron_adept.expansion.plan import lowest_scores


def suggested_k(scores: list[float]) -> int:
    """Knee of the ascending score curve, capped at a quarter of the layers.

    With the sorted scores scaled to [0, 1] on both axes, the knee is the point farthest
    below the chord from the first to the last point: after it, importance rises steeply.
    The cap keeps the suggestion in the paper's range (4 of 28-36 layers for Qwen3, 8 of 32
    for Llama3-8B on a language it knows poorly).
    """
    count = len(scores)
    cap = max(1, count // 4)
    ordered = sorted(scores)
    span = ordered[-1] - ordered[0]
    if count < 3 or span <= 0:
        return cap
    gaps = [i / (count - 1) - (value - ordered[0]) / span for i, value in enumerate(ordered)]
    knee = max(range(count), key=lambda i: (gaps[i], -i))
    return min(max(1, knee), cap)


def select_layers(scores: list[float], k: int | None) -> tuple[int, list[int]]:
    """(k used, the k lowest-scoring layers, 0-based and sorted)."""
    k = suggested_k(scores) if k is None else k
    return k, lowest_scores(scores, k)
