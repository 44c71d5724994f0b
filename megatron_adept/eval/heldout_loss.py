"""Held-out loss: mean next-token loss over the counted tokens of a JSONL corpus."""

from __future__ import annotations

import torch

from megatron_adept.models.pipeline import (
    MicroBatch,
    data_parallel_share,
    forward_results,
    last_stage_totals,
    masked_loss_sum,
)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, batches: list[MicroBatch]) -> tuple[float, int]:
    """(mean loss over counted tokens, counted tokens), identical on every rank.

    Data-parallel ranks take every dp-th micro-batch; sums and counts are added exactly.
    """
    model.eval()

    def totals(batch: MicroBatch, per_token: torch.Tensor) -> torch.Tensor:
        return torch.stack(masked_loss_sum(per_token, batch, dtype=torch.float64))

    parts = forward_results(model, data_parallel_share(batches), totals)
    local = torch.stack(parts).sum(0) if parts else torch.zeros(2, dtype=torch.float64)
    total, count = last_stage_totals(local, (2,)).tolist()
    return total / count, int(count)
