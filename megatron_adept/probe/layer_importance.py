"""Layer importance by masking (ADEPT Sec. 2.2, Alg. 1 lines 2-8), with prefix reuse.

I(l) = L(layer l bypassed) - L_base, where a bypassed layer's output equals its input (the
residual path) and L is the mean loss over every counted token of the probe corpus.

The hidden state entering layer l is the same with and without the bypass, so the probe
caches the base pass's layer inputs and computes the variant "l bypassed" from there: layers
l+1..L-1 only. A micro-batch then costs L + L(L-1)/2 layer forwards instead of L + L(L-1) = L^2.
Under pipeline parallelism each stage caches its own layers' inputs and starts the variants
of its own layers from them; the later stages run those variants in full, as they must. Every
stage walks the variants in the same order (base, then l = 0..L-1), so each forward send has
exactly one matching receive.

The naive variant (``reuse_prefix=False``) runs megatron's own pipeline schedule once per
variant; it is the baseline of ``benchmarks/probe_prefix_reuse.py`` and an independent path
for tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from megatron_adept.data.corpus import counted_tokens
from megatron_adept.models.pipeline import (
    MicroBatch,
    PipelineStage,
    bypassed,
    data_parallel_share,
    eval_mode,
    forward_results,
    last_stage_totals,
    masked_loss_sum,
)
from megatron_adept.models.units import layer_index
from megatron_adept.parallel.collectives import comm_device
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)

_LOG_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class MaskingLosses:
    """Probe losses of the base model and of every single-layer bypass (every rank)."""

    base_loss: float
    masked_losses: list[float]
    """Loss with layer l bypassed, for l = 0..L-1."""
    counted_tokens: int

    @property
    def layer_scores(self) -> list[float]:
        """I(l) = L(l bypassed) - L_base."""
        return [loss - self.base_loss for loss in self.masked_losses]


def masking_probe(
    model: torch.nn.Module,
    batches: Sequence[MicroBatch],
    reuse_prefix: bool = True,
) -> MaskingLosses:
    """Masking importance of every decoder layer; collective over the whole world.

    Args:
        model: this rank's pipeline stage (bare ``GPTModel`` or wrapped in megatron's DDP).
        batches: probe micro-batches, identical on every rank; data-parallel ranks split them.
        reuse_prefix: start each variant from the cached base-pass hidden state (about half
            the layer forwards); False runs every variant from the embeddings.
    """
    total = counted_tokens(list(batches))
    with eval_mode(model), torch.no_grad():
        stage = PipelineStage(model)
        share = data_parallel_share(batches)
        sums = torch.zeros(stage.config.num_layers + 1, dtype=torch.float64, device=comm_device())
        started = time.monotonic()
        if reuse_prefix:
            _prefix_reuse_sums(stage, share, sums, started)
        else:
            _naive_sums(model, stage, share, sums)
        totals = last_stage_totals(sums, tuple(sums.shape))
    losses = (totals / max(total, 1)).tolist()
    logger.info(
        "masking probe: %d variants x %d micro-batches in %.1fs",
        len(losses),
        len(batches),
        time.monotonic() - started,
    )
    return MaskingLosses(losses[0], losses[1:], total)


@contextmanager
def captured_inputs(layers: Sequence[torch.nn.Module]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the hidden states entering each of ``layers`` (by global index) during a pass."""
    inputs: dict[int, torch.Tensor] = {}

    def record(layer, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        inputs[layer_index(layer)] = hidden.detach().clone()

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def _prefix_reuse_sums(
    stage: PipelineStage, batches: list[MicroBatch], sums: torch.Tensor, started: float
) -> None:
    """Add each variant's counted-token loss sum to ``sums[0]`` (base) and ``sums[1 + l]``."""
    last_log = started
    for done, batch in enumerate(batches, start=1):
        with captured_inputs(stage.layers) as inputs:
            output = stage.forward(batch, stage.recv_forward(batch))
        _finish(stage, batch, output, sums, 0)
        for layer in range(stage.indices[-1] + 1):
            if stage.owns(layer):
                prefix = [index for index in stage.indices if index <= layer]
                output = stage.forward(batch, inputs[layer], bypass=prefix)
            else:  # a layer of an earlier stage: its variant flows through this whole stage
                output = stage.forward(batch, stage.recv_forward(batch))
            _finish(stage, batch, output, sums, layer + 1)
        if time.monotonic() - last_log > _LOG_EVERY_SECONDS or done == len(batches):
            last_log = time.monotonic()
            logger.info("masking probe: %d/%d micro-batches", done, len(batches))


def _finish(
    stage: PipelineStage, batch: MicroBatch, output: torch.Tensor, sums: torch.Tensor, slot: int
) -> None:
    if stage.last:
        sums[slot] += masked_loss_sum(output, batch)[0].double()
    else:
        stage.send_forward(output)


def _naive_sums(
    model: torch.nn.Module, stage: PipelineStage, batches: list[MicroBatch], sums: torch.Tensor
) -> None:
    """Every variant through megatron's forward-only schedule, from the embeddings."""

    def loss_sum(batch: MicroBatch, per_token_loss: torch.Tensor) -> torch.Tensor:
        return masked_loss_sum(per_token_loss, batch)[0].double()

    variants = [None, *range(stage.config.num_layers)]
    for slot, skip in enumerate(variants):
        with bypassed(stage.layers_at([skip])):
            results = forward_results(model, batches, loss_sum)
        if stage.last and results:
            sums[slot] += torch.stack(results).sum()
