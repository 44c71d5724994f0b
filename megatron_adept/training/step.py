"""One optimizer step over a global batch of micro-batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import MegatronOptimizer

from megatron_adept.models.forward import MicroBatch, broadcast_from_last_stage, run_microbatches


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Token-weighted mean loss over the global batch (same value on every rank)."""
    grad_norm: float | None
    skipped: bool
    """True if the optimizer rejected the step (non-finite gradients)."""


def masked_mean_loss(batch: MicroBatch, per_token_loss: torch.Tensor):
    """Mean loss over counted tokens; also returns (sum, count) for exact global averaging."""
    mask = batch.loss_mask.to(per_token_loss.dtype)
    total, count = (per_token_loss.float() * mask).sum(), mask.sum()
    return total / count.clamp(min=1), torch.stack([total.detach(), count.detach().float()])


def global_mean_loss(sums_and_counts: list[torch.Tensor]) -> float:
    """Token-weighted loss over all micro-batches and data-parallel ranks, on every rank."""
    local = torch.stack(sums_and_counts).sum(0) if sums_and_counts else None
    local = broadcast_from_last_stage(local, (2,), torch.float32)
    dist.all_reduce(local, group=parallel_state.get_data_parallel_group())
    return (local[0] / local[1].clamp(min=1)).item()


def train_step(
    model: DistributedDataParallel, optimizer: MegatronOptimizer, micro_batches: list[MicroBatch]
) -> StepResult:
    """Forward/backward all micro-batches of this data-parallel rank, then step."""
    model.train()
    model.zero_grad_buffer()
    optimizer.zero_grad()
    stats = run_microbatches(model, micro_batches, masked_mean_loss, forward_only=False)
    success, grad_norm, _ = optimizer.step()
    return StepResult(
        loss=global_mean_loss(stats),
        grad_norm=None if grad_norm is None else float(grad_norm),
        skipped=not success,
    )
