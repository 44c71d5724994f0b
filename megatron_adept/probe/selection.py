"""Which layers Stage 1 expands: the k least important, and a suggested k.

Suggested k: the largest jump in the ascending sorted layer scores among the lowest quarter.
With scores sorted s_1 <= s_2 <= ... <= s_L, k = argmax over 1 <= k <= max(1, L // 4) of
s_{k+1} - s_k (the smallest such k on ties). The k layers below the jump are the ones clearly
less important than the rest: the discrete knee of the curve's flat start. The search stops
at a quarter of the depth because ADEPT's expansions are that size or smaller (4 of 28-36
layers for Qwen3, 8 of 32 for Llama3-8B on a language it knows poorly) and because the
curve's largest jumps overall are the few vital layers at the top end (often layer 0 and the
last layers), which no knee rule should select. A flat curve gives k = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_adept.errors import AdeptError


def least_important(scores: Sequence[float], k: int) -> list[int]:
    """The ``k`` lowest-scoring layers, 0-based and sorted (ties go to the lower index)."""
    if not 1 <= k <= len(scores):
        raise AdeptError(f"--k={k} must be between 1 and the number of layers ({len(scores)})")
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[:k])


def suggested_k(scores: Sequence[float]) -> int:
    """The number of layers before the largest early jump in the sorted scores."""
    ordered = sorted(scores)
    limit = min(max(1, len(ordered) // 4), len(ordered) - 1)
    if limit < 1:
        return 1
    return max(range(1, limit + 1), key=lambda k: (ordered[k] - ordered[k - 1], -k))
