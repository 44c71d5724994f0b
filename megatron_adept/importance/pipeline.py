"""Micro-batches through this rank's pipeline stage, one step at a time.

megatron's schedules run one fixed recipe (every stage forwards every micro-batch, backward
accumulates into ``.grad``/``main_grad``). The Stage-1 probe and unit importance need others:
start a forward from a cached hidden state with some layers bypassed, or take gradients with
``torch.autograd.grad`` so that nothing is accumulated into the model. :class:`PipelineStage`
gives them single steps built from megatron's own pieces: the stage's ``GPTModel.forward``
(embedding, rotary embedding, final norm, head, vocab-parallel loss) and megatron's
point-to-point communicator between neighbouring stages. Callers keep every stage in step by
issuing the same sequence of sends and receives on all of them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
from megatron.core.utils import get_attr_wrapped_model, get_model_config

from megatron_adept.errors import ConfigError
from megatron_adept.models.forward import (
    MicroBatch,
    broadcast_from_last_stage,
    position_ids_like,
)
from megatron_adept.models.units import decoder_layers, layer_index


def _bypass_forward(hidden_states: torch.Tensor, *args, context=None, **kwargs):
    """A ``TransformerLayer.forward`` whose output equals its input (the residual path)."""
    return hidden_states, context


@contextmanager
def bypassed(layers: Collection[torch.nn.Module]) -> Iterator[None]:
    """Temporarily make ``layers`` pass their input through unchanged, at no compute cost.

    The instance attribute shadows ``TransformerLayer.forward`` for the duration only, so
    megatron's block, hooks and checkpointing are untouched.
    """
    for layer in layers:
        layer.forward = _bypass_forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration, then the caller's mode (train or eval) again.

    Eval mode means no dropout (no random numbers drawn) and no activation recomputation
    (whose backward would accumulate into ``.grad`` by itself).
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def comm_device() -> torch.device:
    """Where tensors for collectives live: the current GPU under NCCL, else the CPU (gloo)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def data_parallel_share(items: Sequence) -> list:
    """This data-parallel rank's items: every dp-th one (identical on a model-parallel group)."""
    rank = parallel_state.get_data_parallel_rank()
    return list(items[rank :: parallel_state.get_data_parallel_world_size()])


class PipelineStage:
    """This rank's stage of a ``GPTModel`` (bare or wrapped in megatron's DDP).

    Args:
        model: the stage, as built by :func:`megatron_adept.models.builder.build_model`
            (whose output layer masks the padded vocabulary, so the loss is the unpadded
            model's).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = get_model_config(model)
        if self.config.sequence_parallel:
            raise ConfigError("sequence parallelism is not supported by the importance probes")
        self.layers = decoder_layers(model)
        self.indices = [layer_index(layer) for layer in self.layers]
        self.first = parallel_state.is_pipeline_first_stage()
        self.last = parallel_state.is_pipeline_last_stage()
        self._p2p = P2PCommunicator(parallel_state.get_pipeline_model_parallel_group(), self.config)
        self._set_input_tensor = get_attr_wrapped_model(model, "set_input_tensor")
        self.device = next(model.parameters()).device

    def owns(self, layer: int) -> bool:
        return layer in self.indices

    def layers_at(self, indices: Collection[int]) -> list[torch.nn.Module]:
        """This stage's layers among the global ``indices``."""
        return [layer for layer in self.layers if layer_index(layer) in indices]

    def hidden_shape(self, batch: MicroBatch) -> tuple[int, int, int]:
        """Shape ``[s, b, h]`` of the hidden states passed between stages."""
        micro, seq = batch.tokens.shape
        return seq, micro, self.config.hidden_size

    def forward(
        self,
        batch: MicroBatch,
        hidden: torch.Tensor | None,
        bypass: Collection[int] = (),
    ) -> torch.Tensor:
        """One forward through this stage.

        Args:
            batch: the micro-batch (tokens and labels are used where the stage needs them).
            hidden: hidden states ``[s, b, h]`` entering the stage's first layer not bypassed;
                None on the first stage means "embed the tokens".
            bypass: global indices of this stage's layers whose output is their input.

        Returns:
            Per-token loss ``[b, s]`` on the last stage, hidden states ``[s, b, h]`` elsewhere.
        """
        batch = batch.to(self.device)
        decoder_input = None
        if self.first:
            decoder_input = hidden
        else:
            self._set_input_tensor(hidden)
        with bypassed(self.layers_at(bypass)):
            return self.model(
                batch.tokens,
                position_ids_like(batch.tokens),
                None,
                decoder_input=decoder_input,
                labels=batch.labels,
            )

    def recv_forward(self, batch: MicroBatch) -> torch.Tensor | None:
        """Hidden states from the previous stage (None on the first stage)."""
        return self._p2p.recv_forward(self.hidden_shape(batch), self.first)

    def send_forward(self, output: torch.Tensor) -> None:
        """Hand this stage's output to the next stage (nothing on the last stage)."""
        self._p2p.send_forward(output.detach(), self.last)

    def recv_backward(self, batch: MicroBatch) -> torch.Tensor:
        return self._p2p.recv_backward(self.hidden_shape(batch), self.last)

    def send_backward(self, grad: torch.Tensor) -> None:
        self._p2p.send_backward(grad, self.first)


def sum_last_stage_values(local: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """Totals of per-rank float64 sums held by the last pipeline stages, on every rank.

    Args:
        local: this rank's sums on the last stage (ignored elsewhere).
        shape: their shape, for the ranks that receive them.
    """
    value = broadcast_from_last_stage(
        local if parallel_state.is_pipeline_last_stage() else None, shape, torch.float64
    )
    dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
    return value


def counted_loss_sum(per_token_loss: torch.Tensor, batch: MicroBatch) -> torch.Tensor:
    """Σ loss over the counted tokens of ``batch`` (float32, differentiable)."""
    mask = batch.loss_mask.to(per_token_loss.device, torch.float32)
    return (per_token_loss.float() * mask).sum()


@contextmanager
def requiring_grad(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Let frozen parameters take part in ``torch.autograd.grad`` for the duration."""
    frozen = [p for p in params if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


def tensor_parallel_partial(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """Replicated parameters whose per-rank gradient is only this rank's share.

    q/k layernorms act on this rank's heads only, so their gradients must be summed over
    tensor-parallel ranks (megatron's ``finalize_model_grads`` does the same for training).
    """
    return {
        param
        for name, param in model.named_parameters()
        if "q_layernorm" in name or "k_layernorm" in name
    }


def micro_batch_gradients(
    stage: PipelineStage,
    batches: Sequence[MicroBatch],
    params: Sequence[torch.nn.Parameter],
    scale: float = 1.0,
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor | None]]:
    """Gradients of ``scale`` x Σ counted-token loss of each micro-batch w.r.t. ``params``.

    Every rank of a model-parallel group must consume the iterator to the end with the same
    ``batches``; ``params`` are this stage's own. Gradients come from ``torch.autograd.grad``,
    so ``.grad``, megatron DDP's ``main_grad`` buffers and its hooks are never touched. The
    backward pass stops at the lowest stage that holds one of the requested parameters
    (stages wholly below it only forward), as in ADEPT's Stage 2 where only a few top layers
    train.

    Yields:
        (one fp32 gradient per parameter (zeros where the loss does not depend on it), the
        micro-batch's loss sum on the last stage or None elsewhere).
    """
    if stage.config.gradient_accumulation_fusion:
        raise ConfigError("gradient_accumulation_fusion writes into main_grad; disable it")
    wanted = set(params)
    lowest = _lowest_layer_with(stage, wanted)
    backward = lowest is not None and stage.indices[-1] >= lowest
    send_grad = backward and not stage.first and stage.indices[0] > lowest
    partial = [i for i, p in enumerate(params) if p in tensor_parallel_partial(stage.model)]
    tp_group = parallel_state.get_tensor_model_parallel_group()
    with requiring_grad(params):
        for batch in batches:
            hidden = stage.recv_forward(batch)
            if hidden is not None:
                hidden.requires_grad_(send_grad)
            with torch.set_grad_enabled(backward):
                output = stage.forward(batch, hidden)
            stage.send_forward(output)
            loss_sum = counted_loss_sum(output, batch) if stage.last else None
            if not backward:  # no requested parameter on or below this stage
                yield [], _detached(loss_sum)
                continue
            if stage.last:
                target, grad_output = loss_sum * scale, None
            else:
                target, grad_output = output, stage.recv_backward(batch)
            inputs = [*params, hidden] if send_grad else list(params)
            raw = torch.autograd.grad(target, inputs, grad_output, allow_unused=True)
            if send_grad:  # zeros if a hook cut the stage input off (Stage 2 freezing)
                stage.send_backward(torch.zeros_like(hidden) if raw[-1] is None else raw[-1])
            grads = [
                torch.zeros_like(p, dtype=torch.float32) if g is None else g.float()
                for p, g in zip(params, raw[: len(params)], strict=True)
            ]
            if partial and dist.get_world_size(tp_group) > 1:
                flat = torch.cat([grads[i].reshape(-1) for i in partial])
                dist.all_reduce(flat, group=tp_group)
                sizes = [grads[i].numel() for i in partial]
                for i, part in zip(partial, flat.split(sizes), strict=True):
                    grads[i] = part.view_as(grads[i])
            yield grads, _detached(loss_sum)


def _detached(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.detach()


def _lowest_layer_with(stage: PipelineStage, params: set[torch.nn.Parameter]) -> int | None:
    """Lowest global layer holding a requested parameter, on any stage (None if none)."""
    local = [
        layer_index(layer) for layer in stage.layers if any(p in params for p in layer.parameters())
    ]
    lowest = torch.tensor(
        [min(local) if local else stage.config.num_layers], dtype=torch.long, device=comm_device()
    )
    dist.all_reduce(
        lowest, op=dist.ReduceOp.MIN, group=parallel_state.get_pipeline_model_parallel_group()
    )
    value = int(lowest.item())
    return None if value >= stage.config.num_layers else value
