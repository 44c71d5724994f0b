"""One optimizer step over a global batch of micro-batches, skipped if it is not finite."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import ChainedOptimizer, MegatronOptimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

from megatron_adept.models.pipeline import (
    MicroBatch,
    last_stage_totals,
    masked_loss_sum,
    run_microbatches,
)


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Token-weighted mean loss over the global batch (same value on every rank)."""
    grad_norm: float | None
    skipped: bool
    """True if the step changed nothing: non-finite loss or gradient norm."""


def masked_mean_loss(batch: MicroBatch, per_token_loss: torch.Tensor):
    """Mean loss over counted tokens; also returns (sum, count) for exact global averaging."""
    total, count = masked_loss_sum(per_token_loss, batch)
    return total / count.clamp(min=1), torch.stack([total.detach(), count]).double()


def global_mean_loss(sums_and_counts: list[torch.Tensor]) -> float:
    """Token-weighted loss over all micro-batches and data-parallel ranks, on every rank."""
    local = torch.stack(sums_and_counts).sum(0) if sums_and_counts else None
    total, count = last_stage_totals(local, (2,)).tolist()
    return total / max(count, 1.0)


def _clip(optimizer: MegatronOptimizer, grad_norm: float) -> None:
    """Clip every (chained) optimizer's gradients by the norm over all of them."""
    parts = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    for part in parts:
        params = [] if getattr(part, "is_stub_optimizer", False) else part.get_parameters()
        if params and part.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(
                params,
                max_norm=part.config.clip_grad,
                total_norm=grad_norm,
                use_decoupled_grad=part.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8,
            )


def guarded_step(optimizer: MegatronOptimizer, loss: float) -> tuple[bool, float]:
    """Step unless the loss or gradient norm is NaN/Inf; returns (stepped, grad norm).

    This is megatron's ``optimizer.step()`` split open so that the finiteness test comes
    before any parameter or optimizer-state change. ``loss`` and the gradient norm are
    reduced over every rank, so all ranks take the same decision.
    """
    found_inf = optimizer.prepare_grads()  # fp16: the loss scaler already backed off
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return False, grad_norm
    _clip(optimizer, grad_norm)
    return optimizer.step_with_ready_grads(), grad_norm


def train_step(
    model: DistributedDataParallel,
    optimizer: MegatronOptimizer,
    micro_batches: list[MicroBatch],
    poison: bool = False,
) -> StepResult:
    """Forward/backward all micro-batches of this data-parallel rank, then step.

    ``poison`` multiplies the loss by NaN: the fault-injection hook of the skip tests.
    """
    model.train()
    model.zero_grad_buffer()
    optimizer.zero_grad()
    loss_fn = _poisoned_loss if poison else masked_mean_loss
    stats = run_microbatches(model, micro_batches, loss_fn, forward_only=False)
    loss = global_mean_loss(stats)
    stepped, grad_norm = guarded_step(optimizer, loss)
    return StepResult(loss=loss, grad_norm=grad_norm, skipped=not stepped)


def _poisoned_loss(batch: MicroBatch, per_token_loss: torch.Tensor):
    return masked_mean_loss(batch, per_token_loss * float("nan"))
