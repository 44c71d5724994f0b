"""Unit importance I_U per unit (ADEPT Sec. 3.2, Fig. 2), by one of two estimators.

* ``abs-gradient`` (:func:`unit_importance`): I_U = mean |θ·∂L/∂θ| over the unit's elements,
  L the probe loss: the mean over every counted token of the probe corpus. Its gradient is the
  sum of the micro-batch gradients over all data-parallel ranks, so I_U does not depend on the
  micro-batch size or on the parallel layout.
* ``authors`` (:func:`batch_unit_importance`), the estimator of the authors' code:
  I_U = mean over probe batches b of mean |θ|·|∂L_b/∂θ|. A probe batch is one probe
  micro-batch (``--micro-batch-size`` items, in corpus order) and L_b its mean loss over its
  counted tokens. Absolute per-batch gradients do not cancel between batches as the corpus
  gradient's terms can, so the value depends on the micro-batch size, but not on the tensor,
  pipeline or data-parallel layout (each data-parallel rank scores whole batches of its share).

Tensor-parallel shards of a unit add their sums and element counts (replicated norms count
once); pipeline stages exchange their layers, so every rank returns every layer.

Stage 2 recomputes I_U during training, so :func:`unit_importance` leaves the model as it
found it: gradients come from ``torch.autograd.grad`` (never ``.grad`` or megatron DDP's
``main_grad``), the model runs in eval mode (no dropout, so no random numbers are drawn, and
no activation recomputation, whose backward would accumulate into ``.grad``), and the
training mode is restored afterwards. The probe corpus is passed in; no training data is read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from megatron.core import parallel_state

from megatron_adept.data.corpus import counted_tokens
from megatron_adept.importance.config import ESTIMATORS
from megatron_adept.models.pipeline import (
    MicroBatch,
    PipelineStage,
    data_parallel_share,
    eval_mode,
    last_stage_totals,
    micro_batch_gradients,
)
from megatron_adept.models.units import UnitKey, UnitSlice, model_units, unit_order
from megatron_adept.parallel.collectives import all_gather_objects, all_reduce_, comm_device


@dataclass(frozen=True)
class UnitStat:
    """A per-unit total over the unit's elements, across every shard."""

    sum: float
    count: int
    """Number of elements of the unit (whole unit, all tensor-parallel shards)."""
    mean: float


@dataclass(frozen=True)
class UnitImportance:
    """Σ|θ·∂L/∂θ|, element count and mean per (layer, unit); identical on every rank."""

    units: dict[UnitKey, UnitStat]
    loss: float
    """The probe loss L at which the gradient was taken."""
    counted_tokens: int

    def mean(self) -> dict[UnitKey, float]:
        """I_U for every scored unit."""
        return {key: stat.mean for key, stat in self.units.items()}

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.units})

    def per_layer(self) -> list[dict[str, float]]:
        """``{unit: mean}`` for every layer, in :data:`UNIT_NAMES` order (layers 0..L-1)."""
        layers = self.layers()
        rows: list[dict[str, float]] = [{} for _ in range(layers[-1] + 1 if layers else 0)]
        for layer, unit in sorted(self.units, key=unit_order):
            rows[layer][unit] = self.units[(layer, unit)].mean
        return rows


@dataclass
class LossGradient:
    """∂L/∂θ for the requested units' parameters on this rank, summed over data parallelism."""

    slices: list[UnitSlice]
    grads: dict[int, torch.Tensor]
    """fp32 gradient per parameter, keyed by ``id(param)``."""
    loss: float
    counted_tokens: int

    def grad(self, unit: UnitSlice) -> torch.Tensor:
        return unit.values(self.grads[id(unit.param)])

    def taylor(self, unit: UnitSlice) -> torch.Tensor:
        """θ·∂L/∂θ element-wise over ``unit`` (fp32)."""
        return unit.values(unit.param.detach()).float() * self.grad(unit)

    def unit_sums(self, elements: Callable[[UnitSlice], torch.Tensor]) -> torch.Tensor:
        """float64 ``[len(slices)]``: Σ ``elements(unit)`` for each of this rank's slices."""
        if not self.slices:
            return torch.zeros(0, dtype=torch.float64, device=comm_device())
        return torch.stack([elements(unit).double().sum() for unit in self.slices])


def requested_units(
    model: torch.nn.Module, only_trainable: bool, layers: Collection[int] | None = None
) -> list[UnitSlice]:
    """This stage's units; with ``only_trainable``, those whose parameter requires grad; with
    ``layers``, those of these global layers only."""
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    units = model_units(model, tp_size)
    if layers is not None:
        units = [u for u in units if u.layer in layers]
    return [u for u in units if u.param.requires_grad] if only_trainable else units


def unique_params(units: Sequence[UnitSlice]) -> list[torch.nn.Parameter]:
    params: dict[int, torch.nn.Parameter] = {}
    for unit in units:
        params.setdefault(id(unit.param), unit.param)
    return list(params.values())


def loss_gradient(
    model: torch.nn.Module,
    batches: Sequence[MicroBatch],
    only_trainable: bool = False,
    layers: Collection[int] | None = None,
) -> LossGradient:
    """The probe loss and its gradient w.r.t. every unit (or every trainable unit, or every
    unit of ``layers``).

    Collective over the whole world. ``batches`` must be identical on every rank; each
    data-parallel rank processes its share.
    """
    total = counted_tokens(list(batches))
    units = requested_units(model, only_trainable, layers)
    params = unique_params(units)
    grads = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    loss_sum = torch.zeros((), dtype=torch.float64, device=comm_device())
    with eval_mode(model):
        stage = PipelineStage(model)
        share = data_parallel_share(batches)
        for step, batch_loss in micro_batch_gradients(stage, share, params, 1.0 / max(total, 1)):
            for param, grad in zip(params, step, strict=True):
                grads[id(param)] += grad
            if batch_loss is not None:
                loss_sum += batch_loss.double()
    _sum_over_data_parallel(list(grads.values()))
    loss = last_stage_totals(loss_sum.reshape(1), (1,)).item() / max(total, 1)
    return LossGradient(units, grads, loss, total)


def _sum_over_data_parallel(tensors: list[torch.Tensor]) -> None:
    if not tensors or parallel_state.get_data_parallel_world_size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    all_reduce_(flat, group=parallel_state.get_data_parallel_group())
    for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        tensor.copy_(part.view_as(tensor))


def unit_numel(unit: UnitSlice) -> int:
    """Elements of ``unit`` in this rank's shard."""
    rows = unit.param.shape[0] if unit.rows is None else len(unit.rows)
    return rows * unit.param[0].numel() if unit.param.dim() > 1 else rows


def unit_totals(
    units: Sequence[UnitSlice], sums: torch.Tensor, sum_over_data_parallel: bool = False
) -> dict[UnitKey, UnitStat]:
    """Per-(layer, unit) totals of per-slice sums, with element counts, on every rank.

    Args:
        units: this stage's unit slices (the same list on every tensor-parallel rank).
        sums: float64 ``[len(units)]``: this rank's sum of some element-wise statistic over
            each slice (e.g. Σ|θ·g|).
        sum_over_data_parallel: add the sums of all data-parallel ranks (for statistics each
            rank computed on its own share of the data); counts are never summed over DP.
    """
    sums = sums.to(comm_device(), torch.float64)
    counts = sums.new_tensor([unit_numel(u) for u in units])
    rows = torch.stack([sums, counts], dim=1)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        # Replicated tensors (norms) contribute from TP rank 0 only: counted once.
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        keep = [float(u.tp_sharded or tp_rank == 0) for u in units]
        rows *= rows.new_tensor(keep).unsqueeze(1)
        all_reduce_(rows, group=parallel_state.get_tensor_model_parallel_group())
    if sum_over_data_parallel:
        rows[:, 0] = all_reduce_(
            rows[:, 0].contiguous(), group=parallel_state.get_data_parallel_group()
        )
    local: dict[UnitKey, list[float]] = {}
    for unit, (total, count) in zip(units, rows.tolist(), strict=True):
        entry = local.setdefault((unit.layer, unit.unit), [0.0, 0.0])
        entry[0] += total
        entry[1] += count
    stages = all_gather_objects(local, group=parallel_state.get_pipeline_model_parallel_group())
    return {
        key: UnitStat(total, int(count), total / count)
        for part in stages
        for key, (total, count) in part.items()
    }


def unit_importance(
    model: torch.nn.Module,
    batches: Sequence[MicroBatch],
    only_trainable: bool = False,
    layers: Collection[int] | None = None,
) -> UnitImportance:
    """I_U = mean |θ·∂L/∂θ| for every unit (Stage 1) or every trainable unit (Stage 2).

    Collective over the whole world; works on a bare ``GPTModel`` stage or one wrapped in
    megatron's DDP, in train or eval mode, and leaves gradients, gradient buffers, the random
    number generators and the training mode untouched.

    Args:
        model: this rank's pipeline stage.
        batches: probe micro-batches (from :func:`megatron_adept.data.corpus.corpus_batches`),
            identical on every rank.
        only_trainable: score only units whose parameters require grad (Stage 2 trains a few
            copied layers); the backward pass then stops at the lowest of them.
        layers: score only the units of these 0-based global layers (frozen ones included
            unless ``only_trainable``); the backward pass stops at the lowest of them.
    """
    gradient = loss_gradient(model, batches, only_trainable, layers)
    return importance_from_gradient(gradient)


def importance_from_gradient(gradient: LossGradient) -> UnitImportance:
    """Mean |θ·∂L/∂θ| per unit from an already computed gradient."""
    sums = gradient.unit_sums(lambda unit: gradient.taylor(unit).abs())
    return UnitImportance(
        unit_totals(gradient.slices, sums), gradient.loss, gradient.counted_tokens
    )


def batch_unit_importance(
    model: torch.nn.Module,
    batches: Sequence[MicroBatch],
    only_trainable: bool = False,
    layers: Collection[int] | None = None,
) -> UnitImportance:
    """The authors' estimator: I_U = mean over probe micro-batches b of mean |θ|·|∂L_b/∂θ|.

    L_b is micro-batch b's mean loss over its counted tokens. Collective over the whole world,
    with the arguments and guarantees of :func:`unit_importance`.
    """
    units = requested_units(model, only_trainable, layers)
    params = unique_params(units)
    sums = torch.zeros(len(units), dtype=torch.float64, device=comm_device())
    loss_sum = torch.zeros((), dtype=torch.float64, device=comm_device())
    with eval_mode(model):
        stage = PipelineStage(model)
        share = data_parallel_share(batches)
        steps = micro_batch_gradients(stage, share, params)
        for batch, (step, batch_loss) in zip(share, steps, strict=True):
            if units:  # L_b = loss sum / tokens, so |∂L_b/∂θ| = |∂(loss sum)/∂θ| / tokens
                grads = dict(zip(map(id, params), step, strict=True))
                sums += _magnitude_sums(units, grads) / max(counted_tokens([batch]), 1)
            if batch_loss is not None:
                loss_sum += batch_loss.double()
    total = counted_tokens(list(batches))
    loss = last_stage_totals(loss_sum.reshape(1), (1,)).item() / max(total, 1)
    stats = unit_totals(units, sums / max(len(batches), 1), sum_over_data_parallel=True)
    return UnitImportance(stats, loss, total)


def _magnitude_sums(units: Sequence[UnitSlice], grads: dict[int, torch.Tensor]) -> torch.Tensor:
    """float64 ``[len(units)]``: Σ |θ|·|g| over each unit slice (``grads`` by ``id(param)``)."""
    return torch.stack(
        [
            (
                unit.values(unit.param.detach()).float().abs()
                * unit.values(grads[id(unit.param)]).abs()
            )
            .double()
            .sum()
            for unit in units
        ]
    )


UNIT_IMPORTANCE: dict[str, Callable[..., UnitImportance]] = dict(
    zip(ESTIMATORS, (unit_importance, batch_unit_importance), strict=True)
)
"""The estimators of ``--unit-importance``, by flag value (same signature)."""
