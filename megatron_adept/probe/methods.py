"""Gradient-based layer scores: the paper's alternatives to masking (App. E, Table 8).

Each returns one score per layer (0-based) where larger means more important, like masking:

* ``cumulative``: -Σ_{θ∈l} θ·∂L/∂θ, the first-order Taylor estimate of L(layer l zeroed) - L.
  Zeroing every parameter of a pre-norm layer bypasses it, so this is the linear
  approximation of the masking score, at the cost of one backward pass.
* ``rank``: module-wise rank aggregation. For each unit kind (q_proj, ..., down_proj, norms)
  the layers are ranked by unit importance mean |θ·∂L/∂θ| (0 = least important, ties share
  their mean rank); a layer's score is its mean rank over the unit kinds, divided by L-1
  (so in [0, 1]).
* ``fisher``: the empirical Fisher information of the layer, Σ_{θ∈l} (∂ log p(x)/∂θ)²
  averaged over the probe items x, where log p(x) sums over the item's counted tokens. Each
  item gets its own backward pass, so the value depends on neither micro-batch size nor
  layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_adept.importance.unit_importance import (
    LossGradient,
    UnitImportance,
    UnitStat,
    requested_units,
    unique_params,
    unit_totals,
)
from megatron_adept.models.pipeline import (
    MicroBatch,
    PipelineStage,
    data_parallel_share,
    eval_mode,
    micro_batch_gradients,
)
from megatron_adept.parallel.collectives import comm_device


def _layer_totals(units: dict[tuple[int, str], UnitStat]) -> list[float]:
    totals = [0.0] * (max(layer for layer, _ in units) + 1)
    for (layer, _), stat in units.items():
        totals[layer] += stat.sum
    return totals


def cumulative_scores(gradient: LossGradient) -> list[float]:
    """-Σ θ·∂L/∂θ over each layer; collective like :func:`unit_totals`."""
    signed = unit_totals(gradient.slices, gradient.unit_sums(gradient.taylor))
    return [-total for total in _layer_totals(signed)]


def _mean_ranks(values: list[float]) -> list[float]:
    """0-based ascending ranks; equal values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2
        start = end + 1
    return ranks


def rank_scores(importance: UnitImportance) -> list[float]:
    """Mean normalised rank of each layer over the unit kinds (no communication)."""
    layers = importance.layers()
    kinds = sorted({unit for _, unit in importance.units})
    means = importance.mean()
    scores = [0.0] * len(layers)
    for kind in kinds:
        ranks = _mean_ranks([means[(layer, kind)] for layer in layers])
        for position, rank in enumerate(ranks):
            scores[position] += rank / max(len(layers) - 1, 1) / len(kinds)
    return scores


def item_batches(batches: Sequence[MicroBatch]) -> list[MicroBatch]:
    """One single-row micro-batch per probe item that has counted tokens (padding dropped)."""
    items = []
    for batch in batches:
        for row in range(batch.tokens.shape[0]):
            if batch.loss_mask[row].sum() > 0:
                pick = slice(row, row + 1)
                items.append(
                    MicroBatch(batch.tokens[pick], batch.labels[pick], batch.loss_mask[pick])
                )
    return items


def fisher_scores(model: torch.nn.Module, batches: Sequence[MicroBatch]) -> list[float]:
    """Mean over items of Σ (∂ log p(item)/∂θ)² per layer; collective over the whole world."""
    items = item_batches(batches)
    units = requested_units(model, only_trainable=False)
    params = unique_params(units)
    sums = torch.zeros(len(units), dtype=torch.float64, device=comm_device())
    with eval_mode(model):
        stage = PipelineStage(model)
        for grads, _ in micro_batch_gradients(stage, data_parallel_share(items), params):
            by_param = {id(p): g for p, g in zip(params, grads, strict=True)}
            for row, unit in enumerate(units):
                sums[row] += unit.values(by_param[id(unit.param)]).double().square().sum()
    totals = unit_totals(units, sums, sum_over_data_parallel=True)
    return [total / len(items) for total in _layer_totals(totals)]
