"""Stage 1: layer importance by masking, with prefix reuse (ADEPT Sec. 2.2, Alg. 1).

I(l) = L(model with layer l bypassed through the residual) - L_base, where a bypassed layer's
output equals its input and L is the mean loss over all counted tokens of the probe corpus.

The hidden state entering layer l is the same as in the unmasked pass, so the probe caches the
base pass's layer inputs and computes the masked variant of layer l from there: layers l+1..
L-1 only. Per micro-batch that is about L^2/2 layer forwards instead of L^2 (``reuse_prefix``
False gives the naive cost, for benchmarking). Under pipeline parallelism every stage caches
its own layer inputs; a variant starts on the stage owning layer l and flows to the last stage
by point-to-point sends. Data-parallel ranks share the micro-batches and sum the losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_adept.models.forward import MicroBatch
from megatron_adept.models.stage_runner import StageRunner


@dataclass(frozen=True)
class MaskingResult:
    base_loss: float
    masked_losses: list[float]
    """Loss with layer l bypassed, for every layer l (0-based, all stages)."""
    counted_tokens: int

    @property
    def layer_scores(self) -> list[float]:
        return [loss - self.base_loss for loss in self.masked_losses]


@torch.no_grad()
def masking_probe(
    model: torch.nn.Module, batches: list[MicroBatch], num_layers: int, reuse_prefix: bool = True
) -> MaskingResult:
    """Losses of the base model and of every single-layer bypass, identical on every rank."""
    model.eval()
    runner = StageRunner(model)
    owners = _stage_of_layer(runner, num_layers)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    variants = [None, *range(num_layers)]
    sums = torch.zeros(len(variants), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    for batch in batches[dp_rank::dp_size]:
        seq, micro = batch.tokens.shape[1], batch.tokens.shape[0]
        shape, dtype = (seq, micro, model.config.hidden_size), model.config.params_dtype
        rotary = runner.rotary(seq)
        cache: list[torch.Tensor] = []
        for slot, skip in enumerate(variants):
            start_stage = 0 if skip is None or not reuse_prefix else owners[skip]
            if runner.stage < start_stage:
                continue
            if skip is None:
                hidden = runner.embed(batch) if runner.first else runner.recv_prev(shape, dtype)
                hidden, cache = runner.run_layers_caching(hidden, rotary)
            elif reuse_prefix and runner.stage == start_stage:
                position = runner.indices.index(skip)
                hidden = runner.run_layers(cache[position], rotary, start=position + 1)
            else:
                hidden = runner.embed(batch) if runner.first else runner.recv_prev(shape, dtype)
                hidden = runner.run_layers(hidden, rotary, skip=skip)
            if runner.last:
                mask = batch.loss_mask.to(hidden.device).double()
                sums[slot] += (runner.token_losses(hidden, batch).double() * mask).sum().cpu()
            else:
                runner.send_next(hidden)
        count += batch.loss_mask.double().sum()
    return _reduce(sums, count, runner)


def _stage_of_layer(runner: StageRunner, num_layers: int) -> list[int]:
    owned = torch.full((num_layers,), -1, dtype=torch.long)
    owned[runner.indices] = runner.stage
    dist.all_reduce(owned, op=dist.ReduceOp.MAX, group=runner.group)
    return owned.tolist()


def _reduce(sums: torch.Tensor, count: torch.Tensor, runner: StageRunner) -> MaskingResult:
    """Sum over data-parallel ranks, then give every stage the last stage's numbers."""
    totals = torch.cat([sums, count.reshape(1)])
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    dist.broadcast(totals, src=last, group=runner.group)
    losses = (totals[:-1] / totals[-1]).tolist()
    return MaskingResult(losses[0], losses[1:], int(totals[-1].item()))
