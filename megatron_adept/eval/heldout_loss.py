"""Held-out loss: mean next-token loss over the counted tokens of a JSONL corpus."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_adept.models.forward import MicroBatch, broadcast_from_last_stage, run_microbatches


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, batches: list[MicroBatch]) -> tuple[float, int]:
    """(mean loss over counted tokens, counted tokens), identical on every rank.

    Data-parallel ranks take every dp-th micro-batch; sums and counts are added exactly.
    """
    model.eval()
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()

    def output_fn(batch: MicroBatch, per_token: torch.Tensor):
        mask = batch.loss_mask.to(per_token.device).double()
        return per_token.sum() * 0, torch.stack([(per_token.double() * mask).sum(), mask.sum()])

    parts = run_microbatches(model, batches[dp_rank::dp_size], output_fn, forward_only=True)
    local = torch.stack(parts).sum(0) if parts else torch.zeros(2, dtype=torch.float64)
    if not parallel_state.is_pipeline_last_stage():
        local = None
    totals = broadcast_from_last_stage(local, (2,), torch.float64)
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    return (totals[0] / totals[1]).item(), int(totals[1].item())
