"""Per-token statistics over tensor-parallel vocabulary shards, blind to vocabulary padding.

On the last pipeline stage each tensor-parallel rank holds logits for its slice of the padded
vocabulary, ``[b, s, v/tp]``. The padding rows (``make_vocab_size_divisible_by``) are zero in
converted checkpoints, so their logits of 0 would enter every softmax and every ranking and
shift the results away from what the Hugging Face model computes. These functions mask them
and reduce across the shards with a few ``[b, s]`` collectives, never gathering the full
vocabulary.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel


def _shard_start(logits: torch.Tensor) -> int:
    return parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(tensor, op=op, group=parallel_state.get_tensor_model_parallel_group())
    return tensor


def mask_padding(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """fp32 shard logits with the entries of padding ids (``>= vocab_size``) set to -inf."""
    start = _shard_start(logits)
    logits = logits.float()
    valid = vocab_size - start
    if valid >= logits.shape[-1]:
        return logits
    logits = logits.clone()
    logits[..., max(valid, 0) :] = float("-inf")
    return logits


def token_nll(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Negative log-likelihood ``[b, s]`` of ``targets`` under the unpadded vocabulary."""
    return tensor_parallel.vocab_parallel_cross_entropy(mask_padding(logits, vocab_size), targets)


def greedy_tokens(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The arg-max token id ``[b, s]`` over the whole vocabulary (lowest id among ties)."""
    logits = mask_padding(logits, vocab_size)
    local_max, local_arg = logits.max(dim=-1)
    global_max = _all_reduce(local_max.clone(), dist.ReduceOp.MAX)
    beyond = torch.iinfo(torch.long).max
    candidate = torch.where(local_max == global_max, local_arg + _shard_start(logits), beyond)
    return _all_reduce(candidate, dist.ReduceOp.MIN)


def token_ranks(logits: torch.Tensor, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """1-based rank ``[b, s]`` of ``tokens``: one plus the number of strictly higher logits.

    Tokens tied with the top logit therefore all have rank 1.
    """
    logits = mask_padding(logits, vocab_size)
    start = _shard_start(logits)
    local = tokens - start
    owned = (local >= 0) & (local < logits.shape[-1])
    picked = logits.gather(-1, local.clamp(0, logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    target = _all_reduce(torch.where(owned, picked, 0.0), dist.ReduceOp.SUM)
    higher = (logits > target.unsqueeze(-1)).sum(dim=-1)
    return _all_reduce(higher, dist.ReduceOp.SUM) + 1
