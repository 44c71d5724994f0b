"""Per-unit learning rates inside megatron-core's optimizers, by scaling each unit's update.

Why not one param group per unit: megatron-core 0.16.1's ``OptimizerParamScheduler`` ignores
``lr_mult``, its optimizer ``load_state_dict`` matches groups only by ``(wd_mult, lr_mult,
is_expert_parallel, is_decoupled_lr)`` (so many per-unit groups collide on resume), and one
fused tensor (``linear_qkv`` = q, k, v; ``linear_fc1`` = gate, up) holds several units, which
a param group cannot split. The DistributedOptimizer even cuts tensors into flat shards that
straddle unit boundaries.

Instead megatron keeps its standard param groups, schedule and checkpoint format, and every
unit's *update* is multiplied by its multiplier. For AdamW this is exactly a per-unit lr: one
step is ``θ' = θ - lr·wd·θ - lr·m̂/(√v̂ + ε)``; both terms are proportional to ``lr`` and the
moments ``m``, ``v`` do not depend on ``lr``, so ``θ + k·(θ' - θ)`` equals the step taken at
``k·lr``. The scaling is applied around the inner ``torch.optim`` optimizer's ``step`` with its
official step hooks: the pre-hook snapshots the fp32 main parameters whose units have a
multiplier other than 1, the post-hook sets ``θ = θ_old + k·(θ_stepped - θ_old)``.
Multipliers are per element: a main parameter maps back to its model parameter (for the
DistributedOptimizer, a flat range of it), and row ``r`` of the model parameter belongs to the
unit that owns that row (see :mod:`megatron_adept.models.units`). The equivalence with one
``torch.optim.AdamW`` param group per unit is tested in ``tests/distributed/test_train_adept.py``.

Because the multipliers are not optimizer state, checkpoints store them in
``adept_state.json``; resuming at another TP/PP/DP layout recomputes the per-element
multipliers from the (layer, unit) table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params

from megatron_adept.models.units import UnitKey, UnitSlice

Scale = float | torch.Tensor
"""One multiplier for a whole main parameter, one per row (``[rows, 1, ...]``, broadcast along
the row) when the main parameter is the whole model parameter, or one per element of an
optimizer shard."""


@dataclass
class _MainParam:
    """A tensor the inner optimizer updates and where it sits in its model parameter."""

    inner: torch.optim.Optimizer
    model_param: torch.nn.Parameter
    main: torch.Tensor
    start: int
    """Flat offset of ``main`` inside ``model_param`` (non-zero only for optimizer shards)."""


def _chained(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def main_params(optimizer: MegatronOptimizer) -> Iterator[_MainParam]:
    """Every (model parameter, fp32 main parameter) pair the optimizer steps on this rank."""
    for opt in _chained(optimizer):
        if getattr(opt, "is_stub_optimizer", False) or opt.optimizer is None:
            continue
        if isinstance(opt, DistributedOptimizer):
            pairs = (
                (opt.model_float16_groups, opt.shard_fp32_from_float16_groups),
                (opt.model_fp32_groups, opt.shard_fp32_groups),
            )
            for model_groups, main_groups in pairs:
                for model_group, main_group in zip(model_groups, main_groups, strict=True):
                    for param, main in zip(model_group, main_group, strict=True):
                        start = opt._get_model_param_range_map(param)["param"].start
                        yield _MainParam(opt.optimizer, param, main, start)
        elif isinstance(opt, Float16OptimizerWithFloat16Params):
            for model_group, main_group in zip(
                opt.float16_groups, opt.fp32_from_float16_groups, strict=True
            ):
                for param, main in zip(model_group, main_group, strict=True):
                    yield _MainParam(opt.optimizer, param, main, 0)
            for group in opt.fp32_from_fp32_groups:
                for param in group:
                    yield _MainParam(opt.optimizer, param, param, 0)
        else:  # FP32Optimizer: the model parameters are the main parameters.
            for group in opt.optimizer.param_groups:
                for param in group["params"]:
                    yield _MainParam(opt.optimizer, param, param, 0)


def row_multipliers(
    units: list[UnitSlice], multipliers: Mapping[UnitKey, float]
) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Per-row multiplier ``[rows]`` of every parameter holding a unit in ``multipliers``."""
    rows: dict[torch.nn.Parameter, torch.Tensor] = {}
    for unit in units:
        key = (unit.layer, unit.unit)
        if key not in multipliers:
            continue
        target = rows.setdefault(unit.param, torch.ones(unit.param.shape[0]))
        if unit.rows is None:
            target.fill_(multipliers[key])
        else:
            target[unit.rows] = multipliers[key]
    return rows


class UnitUpdateScaling:
    """Scales every unit's AdamW update by its multiplier (see the module docstring).

    Args:
        optimizer: the megatron optimizer (chained or not) over the model's trainable params.
        units: the units of this rank's stage (``models.units.model_units``).
    """

    def __init__(self, optimizer: MegatronOptimizer, units: list[UnitSlice]) -> None:
        self._units = units
        self._main = list(main_params(optimizer))
        self._scaled: dict[torch.optim.Optimizer, list[tuple[torch.Tensor, Scale]]] = {}
        self._snapshots: dict[torch.optim.Optimizer, list[torch.Tensor]] = {}
        self._handles = []
        for inner in {id(m.inner): m.inner for m in self._main}.values():
            self._handles.append(inner.register_step_pre_hook(self._snapshot))
            self._handles.append(inner.register_step_post_hook(self._rescale))

    def set_multipliers(self, multipliers: Mapping[UnitKey, float]) -> None:
        """Use ``multipliers`` from the next step on (units not listed keep multiplier 1)."""
        rows = row_multipliers(self._units, multipliers)
        self._scaled = {}
        for entry in self._main:
            per_row = rows.get(entry.model_param)
            if per_row is None or bool((per_row == 1.0).all()):
                continue
            scale: Scale
            if bool((per_row == per_row[0]).all()):
                scale = float(per_row[0])
            elif entry.main.shape == entry.model_param.shape:
                # The whole parameter: a row's multiplier broadcasts along it, so no tensor of
                # the parameter's size is kept or read each step.
                rows_shape = (-1,) + (1,) * (entry.main.dim() - 1)
                scale = per_row.to(entry.main.device, entry.main.dtype).view(rows_shape)
            else:  # a flat DistributedOptimizer shard, cut anywhere in a row
                per_element = per_row.repeat_interleave(entry.model_param[0].numel())
                chunk = per_element[entry.start : entry.start + entry.main.numel()]
                scale = chunk.to(entry.main.device, entry.main.dtype).view_as(entry.main)
            self._scaled.setdefault(entry.inner, []).append((entry.main, scale))

    def _snapshot(self, inner: torch.optim.Optimizer, args, kwargs) -> None:
        self._snapshots[inner] = [main.detach().clone() for main, _ in self._scaled.get(inner, [])]

    @torch.no_grad()
    def _rescale(self, inner: torch.optim.Optimizer, args, kwargs) -> None:
        for (main, scale), old in zip(
            self._scaled.get(inner, []), self._snapshots.pop(inner, []), strict=True
        ):
            main.sub_(old).mul_(scale).add_(old)

    def remove(self) -> None:
        """Detach the hooks (the optimizer then steps at the plain scheduled lr)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
