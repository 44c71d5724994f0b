"""Forward (and backward) passes of a pipeline-parallel ``GPTModel`` through megatron's schedules.

Every consumer — training, the Stage-1 probe, unit importance, evaluation — runs micro-batches
through :func:`run_microbatches`, so pipeline parallelism works the same everywhere: the
schedule moves activations between stages and the last stage turns outputs into results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func


@dataclass
class MicroBatch:
    """One micro-batch of token ids ``[b, s]`` with next-token targets and a loss mask."""

    tokens: torch.Tensor
    labels: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    """1.0 where the target counts in the loss (float ``[b, s]``)."""

    def to(self, device: torch.device) -> MicroBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return MicroBatch(move(self.tokens), move(self.labels), move(self.loss_mask))


def position_ids_like(tokens: torch.Tensor) -> torch.Tensor:
    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


OutputFn = Callable[[MicroBatch, torch.Tensor], tuple[torch.Tensor, Any]]
"""Called on the last stage with the micro-batch and the model output; returns the loss to
back-propagate (ignored when forward-only) and any per-micro-batch result to collect."""


def run_microbatches(
    model: torch.nn.Module,
    micro_batches: list[MicroBatch],
    output_fn: OutputFn,
    forward_only: bool,
    with_labels: bool = True,
) -> list[Any]:
    """Run ``micro_batches`` through the pipeline schedule.

    Args:
        model: this rank's stage (possibly wrapped in megatron's DDP).
        micro_batches: all micro-batches of the step, identical on every rank of the stage.
        output_fn: turns the last stage's output into (loss, result).
        forward_only: skip the backward pass.
        with_labels: pass labels so the model returns per-token loss ``[b, s]`` instead of
            vocab-parallel logits ``[b, s, v/tp]``.

    Returns:
        The results of ``output_fn``, one per micro-batch, on the last stage; empty elsewhere.
    """
    if not micro_batches:
        return []
    results: list[Any] = []
    batches = iter(micro_batches)
    device = next(model.parameters()).device

    def forward_step(data_iterator, stage_model):
        batch = next(data_iterator).to(device)
        labels = batch.labels if with_labels else None
        output = stage_model(batch.tokens, position_ids_like(batch.tokens), None, labels=labels)

        def loss_func(output_tensor: torch.Tensor):
            loss, result = output_fn(batch, output_tensor)
            results.append(result)
            return loss, {}

        return output, loss_func

    shape = micro_batches[0].tokens.shape
    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=batches,
        model=[model],
        num_microbatches=len(micro_batches),
        seq_length=shape[1],
        micro_batch_size=shape[0],
        forward_only=forward_only,
    )
    return results


def gather_vocab_logits(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from tensor-parallel shards ``[b, s, v/tp] -> [b, s, v]``."""
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def broadcast_from_last_stage(
    value: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """Give every pipeline stage the tensor the last stage computed."""
    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        assert value is not None
        return value
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if value is None:
        value = torch.empty(shape, dtype=dtype, device=device)
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    dist.broadcast(
        value.contiguous(), src=last, group=parallel_state.get_pipeline_model_parallel_group()
    )
    return value


@torch.no_grad()
def full_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unpadded full-vocabulary logits ``[b, s, vocab_size]`` on every rank (fp32)."""
    model.eval()
    outputs = run_microbatches(
        model,
        [MicroBatch(tokens)],
        lambda batch, out: (out.sum() * 0, gather_vocab_logits(out).float()),
        forward_only=True,
        with_labels=False,
    )
    local = outputs[0][..., :vocab_size].contiguous() if outputs else None
    return broadcast_from_last_stage(local, (*tokens.shape, vocab_size), torch.float32)
