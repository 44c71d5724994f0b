"""Per-position greedy tokens and ranks over tensor-parallel vocabulary shards.

On the last pipeline stage each tensor-parallel rank holds the logits of its slice of the
vocabulary, ``[b, s, v/tp]``. Both functions reduce across the slices with a few ``[b, s]``
collectives instead of gathering the full vocabulary, whose logits would not fit in memory
for real vocabularies and sequence lengths. Padded vocabulary rows need no care here: the
model builder masks their logits far below any real one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_adept.parallel.collectives import all_reduce_


def _shard_start(logits: torch.Tensor) -> int:
    return parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        all_reduce_(tensor, op=op, group=parallel_state.get_tensor_model_parallel_group())
    return tensor


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The arg-max token id ``[b, s]`` over the whole vocabulary (lowest id among ties)."""
    local_max, local_arg = logits.float().max(dim=-1)
    global_max = _all_reduce(local_max.clone(), dist.ReduceOp.MAX)
    beyond = torch.iinfo(torch.long).max
    candidate = torch.where(local_max == global_max, local_arg + _shard_start(logits), beyond)
    return _all_reduce(candidate, dist.ReduceOp.MIN)


def token_ranks(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """1-based rank ``[b, s]`` of ``tokens``: one plus the number of strictly higher logits.

    Tokens tied with the top logit therefore all have rank 1.
    """
    logits = logits.float()
    local = tokens - _shard_start(logits)
    owned = (local >= 0) & (local < logits.shape[-1])
    picked = logits.gather(-1, local.clamp(0, logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    target = _all_reduce(torch.where(owned, picked, 0.0), dist.ReduceOp.SUM)
    higher = (logits > target.unsqueeze(-1)).sum(dim=-1)
    return _all_reduce(higher, dist.ReduceOp.SUM) + 1
