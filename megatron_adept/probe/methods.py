"""Layer scores from unit statistics: the paper's alternatives to masking (App. E).

* ``cumulative``: |Σ θ·∂L/∂θ| over the layer, the first-order Taylor estimate of the loss
  change when the whole layer is zeroed.
* ``rank``: for every unit type, rank the layers by mean |θ·∂L/∂θ|; a layer's score is its mean
  normalised rank (0 = least important for every unit).
* ``fisher``: Σ (∂L/∂θ)² over the layer — the empirical Fisher with the corpus-mean gradient.
"""

from __future__ import annotations

from collections import defaultdict

from megatron_adept.importance.unit_importance import UnitImportance


def cumulative_scores(importance: UnitImportance, num_layers: int) -> list[float]:
    totals = [0.0] * num_layers
    for (layer, _), stats in importance.stats.items():
        totals[layer] += stats.taylor_sum
    return [abs(total) for total in totals]


def fisher_scores(importance: UnitImportance, num_layers: int) -> list[float]:
    totals = [0.0] * num_layers
    for (layer, _), stats in importance.stats.items():
        totals[layer] += stats.grad_sq_sum
    return totals


def rank_scores(importance: UnitImportance, num_layers: int) -> list[float]:
    by_unit: dict[str, dict[int, float]] = defaultdict(dict)
    for (layer, unit), stats in importance.stats.items():
        by_unit[unit][layer] = stats.mean_abs_taylor
    ranks = [0.0] * num_layers
    for scores in by_unit.values():
        order = sorted(scores, key=lambda layer: (scores[layer], layer))
        for rank, layer in enumerate(order):
            ranks[layer] += rank / max(num_layers - 1, 1)
    return [rank / len(by_unit) for rank in ranks]


GRADIENT_METHODS = {"cumulative": cumulative_scores, "rank": rank_scores, "fisher": fisher_scores}
