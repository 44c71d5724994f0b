"""Unit importance: mean |θ·∂L/∂θ| over each unit's elements (ADEPT Sec. 3.2, Fig. 2).

Gradients of the mean probe loss are computed with megatron's schedules (any TP/PP), summed
over data-parallel ranks, and turned into per-unit statistics: Σ|θ·g|, Σg² (for the Fisher
alternative) and the element count. Tensor-parallel shards add up across TP (replicated norms
are counted once); pipeline stages exchange their layers so every rank returns every layer.
The model's ``.grad`` fields are cleared before and after, so nothing leaks into a later
training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_adept.models.forward import MicroBatch, run_microbatches
from megatron_adept.models.units import model_units


@dataclass(frozen=True)
class UnitStats:
    abs_taylor_sum: float
    """Σ |θ·∂L/∂θ| over the unit's elements."""
    taylor_sum: float
    """Σ θ·∂L/∂θ (signed), for the cumulative method."""
    grad_sq_sum: float
    """Σ (∂L/∂θ)², for the Fisher method."""
    count: int

    @property
    def mean_abs_taylor(self) -> float:
        return self.abs_taylor_sum / self.count


@dataclass(frozen=True)
class UnitImportance:
    """Statistics per (layer, unit), identical on every rank."""

    stats: dict[tuple[int, str], UnitStats]
    loss: float

    def mean(self) -> dict[tuple[int, str], float]:
        return {key: value.mean_abs_taylor for key, value in self.stats.items()}

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.stats})


def _global_counted_tokens(batches: list[MicroBatch]) -> float:
    local = torch.tensor(float(sum(b.loss_mask.sum().item() for b in batches)), dtype=torch.float64)
    dist.all_reduce(local, group=parallel_state.get_data_parallel_group())
    return local.item()


def unit_importance(model: torch.nn.Module, batches: list[MicroBatch]) -> UnitImportance:
    """Per-unit gradient statistics of the mean probe loss for a bare ``GPTModel`` stage.

    Args:
        model: this rank's stage (not wrapped in DDP).
        batches: the probe micro-batches; data-parallel ranks take every dp-th one.
    """
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    local = batches[dp_rank::dp_size]
    total = _global_counted_tokens(batches[: len(batches)])
    model.eval()
    params = [p for p in model.parameters()]
    requires = [p.requires_grad for p in params]
    for param in params:
        param.requires_grad_(True)
        param.grad = None
    num_micro = max(len(local), 1)

    def output_fn(batch: MicroBatch, per_token: torch.Tensor):
        summed = (per_token.float() * batch.loss_mask.to(per_token.device)).sum()
        # The schedule divides by the number of micro-batches; undo it so that the gradient
        # is that of the mean over every counted token of the corpus.
        return summed * num_micro / total, summed.detach()

    sums = run_microbatches(model, local, output_fn, forward_only=False) if local else []
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad, group=parallel_state.get_data_parallel_group())
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    local_stats: dict[tuple[int, str], list[float]] = {}
    for unit in model_units(model, tp_size):
        grad = unit.param.grad
        theta = unit.values(unit.param.detach()).float()
        g = torch.zeros_like(theta) if grad is None else unit.values(grad).float()
        taylor = theta * g
        row = torch.stack([taylor.abs().sum(), taylor.sum(), (g * g).sum()]).double()
        if unit.tp_sharded:
            dist.all_reduce(row, group=parallel_state.get_tensor_model_parallel_group())
        entry = local_stats.setdefault((unit.layer, unit.unit), [0.0, 0.0, 0.0, 0])
        entry[0] += row[0].item()
        entry[1] += row[1].item()
        entry[2] += row[2].item()
        entry[3] += theta.numel() * (tp_size if unit.tp_sharded else 1)
    for param, flag in zip(params, requires, strict=True):
        param.grad = None
        param.requires_grad_(flag)
    gathered: list[dict] = [None] * parallel_state.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(
        gathered, local_stats, group=parallel_state.get_pipeline_model_parallel_group()
    )
    merged = {key: UnitStats(*value) for part in gathered for key, value in part.items()}
    loss = _mean_loss(sums, total)
    return UnitImportance(merged, loss)


def _mean_loss(sums: list[torch.Tensor], total: float) -> float:
    local = torch.stack(sums).sum().double() if sums else torch.zeros((), dtype=torch.float64)
    local = local.reshape(1)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            local,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    dist.all_reduce(local, group=parallel_state.get_data_parallel_group())
    return (local / total).item()
