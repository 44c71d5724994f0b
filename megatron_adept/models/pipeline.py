"""Micro-batches through a pipeline-parallel ``GPTModel``: the project's two execution paths.

* :func:`run_microbatches` runs megatron's own schedule (1F1B, or forward-only): activations
  move between stages, backward accumulates into ``.grad``/``main_grad``. Training and the
  evaluations use it, so pipeline parallelism overlaps their micro-batches.
* :class:`PipelineStage` gives single steps of one stage (forward from a given hidden state
  with some layers bypassed, point-to-point sends and receives) built from megatron's own
  pieces: the stage's ``GPTModel.forward`` and megatron's ``P2PCommunicator``. The Stage-1
  probe needs it to start variants from cached hidden states (prefix reuse), and unit
  importance to take gradients with ``torch.autograd.grad`` without touching ``.grad``.
  Its limit: every stage walks the micro-batches strictly one after another, so pipeline
  parallelism splits the model's memory but adds no throughput there; callers keep every
  stage in step by issuing the same sends and receives on all of them.

Both stop backward at the lowest trainable layer by one rule (:class:`BackwardSpan`), and
both reduce losses through :func:`masked_loss_sum` and :func:`last_stage_totals`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
from megatron.core.utils import get_attr_wrapped_model, get_model_config

from megatron_adept.errors import ConfigError
from megatron_adept.models.units import decoder_layers, layer_index
from megatron_adept.parallel.collectives import (
    all_reduce_,
    all_reduce_numbers,
    broadcast_,
    comm_device,
)


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


def data_parallel_share(items: Sequence) -> list:
    """This data-parallel rank's items: every dp-th one (identical on a model-parallel group)."""
    rank = parallel_state.get_data_parallel_rank()
    return list(items[rank :: parallel_state.get_data_parallel_world_size()])


def masked_loss_sum(
    per_token_loss: torch.Tensor,
    batch: MicroBatch,
    dim: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ loss over the counted tokens, their number), over ``dim`` or the whole batch.

    The loss padding and prompts must not enter. float32 keeps the sum differentiable at
    training precision; evaluations pass float64.
    """
    mask = batch.loss_mask.to(per_token_loss.device, dtype)
    weighted = per_token_loss.to(dtype) * mask
    if dim is None:
        return weighted.sum(), mask.sum()
    return weighted.sum(dim=dim), mask.sum(dim=dim)


def last_stage_totals(local: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """float64 sums held by the last pipeline stage, added over data parallelism, on every rank.

    The one reduction of every loss the project reports: training steps, held-out loss,
    probe and importance losses (as ``[loss sum, token count]`` or per-variant sums).

    Args:
        local: this rank's sums on the last stage (ignored elsewhere).
        shape: their shape, for the ranks that receive them.
    """
    mine = local if parallel_state.is_pipeline_last_stage() else None
    value = broadcast_from_last_stage(None if mine is None else mine.double(), shape, torch.float64)
    return all_reduce_(value, group=parallel_state.get_data_parallel_group())


@dataclass(frozen=True)
class BackwardSpan:
    """Where backward runs on one pipeline stage when only layers from ``lowest`` up train.

    Frozen layers below the lowest trainable one need no backward (ADEPT's copies sit near the
    top, which is where its saving comes from), so a stage below it only forwards.
    """

    runs: bool
    """Some layer of the stage is at or above the lowest trainable one (or everything trains)."""
    into_input: bool
    """The gradient reaches the stage's input: every layer of the stage is above ``lowest``."""

    @classmethod
    def of(cls, stage_layers: Sequence[int], lowest: int | None) -> BackwardSpan:
        """The span of a stage holding the global ``stage_layers``; ``lowest`` None trains all."""
        if lowest is None:
            return cls(True, True)
        if not stage_layers:
            return cls(False, False)
        return cls(stage_layers[-1] >= lowest, stage_layers[0] > lowest)


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


def forward_results(
    model: torch.nn.Module,
    micro_batches: list[MicroBatch],
    result_fn: Callable[[MicroBatch, torch.Tensor], Any],
    with_labels: bool = True,
) -> list[Any]:
    """Forward-only :func:`run_microbatches`: ``result_fn`` of every micro-batch's output."""
    return run_microbatches(
        model,
        micro_batches,
        lambda batch, output: (output.sum() * 0, result_fn(batch, output)),
        forward_only=True,
        with_labels=with_labels,
    )


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
    if value is None:
        value = torch.empty(shape, dtype=dtype, device=comm_device())
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    return broadcast_(value, src=last, group=parallel_state.get_pipeline_model_parallel_group())


@torch.no_grad()
def full_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Unpadded full-vocabulary logits ``[b, s, vocab_size]`` on every rank (fp32)."""
    model.eval()
    outputs = forward_results(
        model,
        [MicroBatch(tokens)],
        lambda batch, out: gather_vocab_logits(out).float(),
        with_labels=False,
    )
    local = outputs[0][..., :vocab_size].contiguous() if outputs else None
    return broadcast_from_last_stage(local, (*tokens.shape, vocab_size), torch.float32)


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
    lowest = lowest_layer_with(stage, set(params))
    span = (
        BackwardSpan.of(stage.indices, lowest) if lowest is not None else BackwardSpan(False, False)
    )
    backward, send_grad = span.runs, span.into_input and not stage.first
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
            loss_sum = masked_loss_sum(output, batch)[0] if stage.last else None
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
            if partial and parallel_state.get_tensor_model_parallel_world_size() > 1:
                flat = all_reduce_(
                    torch.cat([grads[i].reshape(-1) for i in partial]), group=tp_group
                )
                sizes = [grads[i].numel() for i in partial]
                for i, part in zip(partial, flat.split(sizes), strict=True):
                    grads[i] = part.view_as(grads[i])
            yield grads, _detached(loss_sum)


def _detached(value: torch.Tensor | None) -> torch.Tensor | None:
    return None if value is None else value.detach()


def lowest_layer_with(stage: PipelineStage, params: set[torch.nn.Parameter]) -> int | None:
    """Lowest global layer holding one of ``params``, on any stage (None if none)."""
    local = [
        layer_index(layer) for layer in stage.layers if any(p in params for p in layer.parameters())
    ]
    (value,) = all_reduce_numbers(
        [min(local) if local else stage.config.num_layers],
        op=torch.distributed.ReduceOp.MIN,
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return None if value >= stage.config.num_layers else int(value)


class _ZeroGradToInput(torch.autograd.Function):
    """Identity on ``hidden``; the stage's received ``stage_input`` gets a zero gradient."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, stage_input: torch.Tensor) -> torch.Tensor:
        ctx.input_meta = (stage_input.shape, stage_input.dtype, stage_input.device)
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shape, dtype, device = ctx.input_meta
        return grad, torch.zeros(shape, dtype=dtype, device=device)


def _detach_hidden(module, args, kwargs):
    if "hidden_states" in kwargs:
        kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}
    else:
        args = (args[0].detach(), *args[1:])
    return args, kwargs


def stop_backward_below(model: torch.nn.Module, lowest: int | None) -> list:
    """Keep megatron's schedule from running backward below layer ``lowest`` on this stage.

    The hidden state entering the stage's first layer is detached when the stage starts at or
    below ``lowest`` (its :class:`BackwardSpan` does not reach the input), so the frozen layers
    under ``lowest`` build no autograd graph and run forward only. A stage that receives its
    input from another stage must still send a gradient back, or the 1F1B schedule would wait
    for it forever: it sends zeros, through an identity that links the stage output to its
    received input (:class:`_ZeroGradToInput`).

    Args:
        model: this rank's stage (before DDP wrapping).
        lowest: the lowest trainable layer; None when everything trains.

    Returns:
        The hook handles (``handle.remove()`` undoes them).
    """
    layers = decoder_layers(model)
    if not layers or BackwardSpan.of([layer_index(x) for x in layers], lowest).into_input:
        return []
    handles = [layers[0].register_forward_pre_hook(_detach_hidden, with_kwargs=True)]
    gpt = model
    while not hasattr(gpt, "decoder"):
        gpt = gpt.module
    if not gpt.pre_process:

        def link_input(decoder, args, output):
            stage_input = decoder.input_tensor
            if stage_input is None or not stage_input.requires_grad:
                return output
            return _ZeroGradToInput.apply(output, stage_input)

        handles.append(gpt.decoder.register_forward_hook(link_input))
    return handles


@contextmanager
def backward_unstopped(model: torch.nn.Module, lowest: int | None, handles: list) -> Iterator[None]:
    """Lift the hooks of :func:`stop_backward_below` (``handles``, as it returned them) for
    the duration, then install them again into the same list.

    For gradients w.r.t. frozen layers below the lowest trainable one (the source layers of
    function-preserving copies), which the hooks would cut off at a stage boundary.
    """
    for handle in handles:
        handle.remove()
    try:
        yield
    finally:
        handles[:] = stop_backward_below(model, lowest)
