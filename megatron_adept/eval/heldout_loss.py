"""Held-out loss: mean next-token loss over the counted tokens of a JSONL corpus, and each
item's own loss (paired comparisons of two models need per-item values)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state

from megatron_adept.models.pipeline import (
    MicroBatch,
    data_parallel_share,
    forward_results,
    last_stage_totals,
    masked_loss_sum,
)
from megatron_adept.parallel.collectives import all_gather_objects


@dataclass(frozen=True)
class HeldoutLoss:
    """The corpus loss and every row's (item's) loss sum and counted tokens, in batch order."""

    loss: float
    """Mean loss over every counted token."""
    tokens: int
    item_loss_sums: list[float]
    """Σ loss over each row's counted tokens; rows past the last item are padding (0 tokens)."""
    item_tokens: list[int]


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, batches: list[MicroBatch]) -> HeldoutLoss:
    """The held-out loss of ``batches``, identical on every rank.

    Data-parallel ranks take every dp-th micro-batch; sums and counts are added exactly.
    """
    model.eval()

    def row_totals(batch: MicroBatch, per_token: torch.Tensor) -> torch.Tensor:
        """``[b, 2]``: each row's loss sum and counted tokens."""
        return torch.stack(masked_loss_sum(per_token, batch, 1, torch.float64), dim=1)

    parts = forward_results(model, data_parallel_share(batches), row_totals)
    local = torch.cat(parts).sum(0) if parts else torch.zeros(2, dtype=torch.float64)
    total, count = last_stage_totals(local, (2,)).tolist()
    keeps_rows = (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
    )
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    mine = {dp_rank + dp_size * i: part.tolist() for i, part in enumerate(parts)}
    rows = {}
    for gathered in all_gather_objects(mine if keeps_rows else {}):
        rows.update(gathered)
    ordered = [row for index in sorted(rows) for row in rows[index]]
    return HeldoutLoss(
        total / count, int(count), [s for s, _ in ordered], [int(c) for _, c in ordered]
    )
