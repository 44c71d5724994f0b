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

Backward never runs below the lowest trainable layer
(:func:`megatron_adept.models.pipeline.stop_backward_below`): a stage below every trainable
layer costs a forward pass and a zero-filled send.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_adept.checkpoint.metadata import LayerMap
from megatron_adept.errors import ConfigError, DataError
from megatron_adept.models.units import decoder_layers, layer_index
from megatron_adept.probe.scores import LayerScores
from megatron_adept.training.config import MODES


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
    """The ``selected`` layers of a Stage-1 ``importance.json`` (the layers no-stage1 trains)."""
    layers = LayerScores.read(path).selected
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
