"""Training modes: which parameters train, which get decoupled lrs, where backward stops.

* ``adept``: only the copies of the layer map train, each unit with lr 2(1-I_U) lr(t).
* ``no-stage2``: the copies train at one uniform lr (the paper's w/o Stage-2 ablation).
* ``llama-pro``: as ``no-stage2``, meant for a uniformly expanded checkpoint.
* ``no-stage1``: no expansion; the original layers listed as ``selected`` in an
  ``importance.json`` train with decoupled lrs.
* ``pt-full``: every parameter trains (replay is ``pt-full`` with general data blended in).

Embeddings, the final norm and the output layer are frozen in every mode but ``pt-full``.
Frozen parameters have ``requires_grad=False``, so megatron's DDP gives them no gradient
buffer and the optimizer no state.

Backward never runs below the lowest trainable layer: the hidden state entering the first
layer of every pipeline stage that starts at or below that layer is detached, so the frozen
layers under it build no autograd graph (they run forward only). A stage that receives its
input from another stage must still send a gradient back, or megatron's 1F1B schedule would
wait forever for it; it sends zeros, through an identity that links the stage output to its
received input (:class:`_ZeroGradToInput`). A stage below every trainable layer thus costs a
forward pass and a zero-filled send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_adept.checkpoint.metadata import LayerMap
from megatron_adept.errors import ConfigError, DataError
from megatron_adept.models.units import decoder_layers, layer_index

MODES = ("adept", "pt-full", "llama-pro", "no-stage1", "no-stage2")


@dataclass(frozen=True)
class TrainPlan:
    """What one mode trains."""

    mode: str
    layers: tuple[int, ...] | None
    """0-based decoder layers that train; None trains every parameter."""
    decoupled: bool
    """Units get decoupled lr multipliers (``--unit-lr-rule``), refreshed from the probe corpus."""

    @property
    def lowest_layer(self) -> int | None:
        """The lowest trainable layer below which backward stops (None: runs to the input)."""
        return None if self.layers is None else min(self.layers)


def read_selected_layers(path: str | Path) -> list[int]:
    """The ``selected`` layers of a Stage-1 ``importance.json``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--importance file {str(path)!r} does not exist")
    try:
        selected = json.loads(path.read_text())["selected"]
        layers = sorted({int(i) for i in selected})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: no valid 'selected' layer list ({exc})") from None
    if not layers:
        raise DataError(f"{path}: 'selected' is empty")
    return layers


def plan_for_mode(mode: str, layer_map: LayerMap, importance: str | None) -> TrainPlan:
    """The plan of ``mode`` for a checkpoint with ``layer_map``; raises on a mismatch."""
    if mode not in MODES:
        raise ConfigError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "pt-full":
        return TrainPlan(mode, None, decoupled=False)
    if mode == "no-stage1":
        if importance is None:
            raise ConfigError("--mode no-stage1 needs --importance importance.json (Stage 1)")
        layers = read_selected_layers(importance)
        bad = [i for i in layers if i >= len(layer_map)]
        if bad:
            raise DataError(
                f"{importance}: selected layers {bad} do not exist in a model with "
                f"{len(layer_map)} layers"
            )
        return TrainPlan(mode, tuple(layers), decoupled=True)
    copies = layer_map.copy_indices
    if not copies:
        raise ConfigError(
            f"--mode {mode} trains the copied layers, but the checkpoint's layer map has no "
            "copies; expand it first (tools/expand_ckpt.py) or use --mode no-stage1/pt-full"
        )
    return TrainPlan(mode, tuple(copies), decoupled=mode == "adept")


def apply_plan(model: torch.nn.Module, plan: TrainPlan) -> None:
    """Set ``requires_grad`` on this stage's parameters (before wrapping in DDP)."""
    if plan.layers is None:
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    for layer in decoder_layers(model):
        if layer_index(layer) in plan.layers:
            layer.requires_grad_(True)


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


def stop_backward_below(model: torch.nn.Module, plan: TrainPlan) -> list:
    """Install the hooks that keep backward above ``plan.lowest_layer`` on this stage.

    Returns the hook handles (``handle.remove()`` undoes them).
    """
    lowest = plan.lowest_layer
    layers = decoder_layers(model)
    if lowest is None or not layers or layer_index(layers[0]) > lowest:
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
def backward_unstopped(model: torch.nn.Module, plan: TrainPlan, handles: list) -> Iterator[None]:
    """Lift the hooks of :func:`stop_backward_below` (``handles``, as it returned them) for the
    duration, then install them again into the same list.

    For gradients w.r.t. frozen layers below the lowest trainable one (the source layers of
    function-preserving copies), which the hooks would cut off at a stage boundary.
    """
    for handle in handles:
        handle.remove()
    try:
        yield
    finally:
        handles[:] = stop_backward_below(model, plan)
