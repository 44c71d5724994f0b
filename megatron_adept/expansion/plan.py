"""Which layers ADEPT duplicates, and where the copies go.

A plan is a sorted set of 0-based original layer indices. Each selected layer gets one copy,
inserted directly after it; the resulting :class:`LayerMap` records every layer's origin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from megatron_adept.checkpoint.metadata import LayerEntry, LayerMap
from megatron_adept.config.cli import arg
from megatron_adept.errors import AdeptError


@dataclass(frozen=True)
class ExpansionPlan:
    """Original layers to duplicate (0-based, sorted, unique)."""

    selected: tuple[int, ...]
    how: str
    """How the layers were chosen, recorded in the checkpoint's provenance."""

    def layer_map(self, num_layers: int) -> LayerMap:
        """Originals in order, each selected one followed by its copy."""
        entries: list[LayerEntry] = []
        for layer in range(num_layers):
            entries.append(LayerEntry("original", layer))
            if layer in self.selected:
                entries.append(LayerEntry("copy", layer))
        return LayerMap(tuple(entries))


def _check_k(k: int, num_layers: int) -> None:
    if k <= 0 or k > num_layers:
        raise AdeptError(f"--k={k} must be between 1 and the number of layers ({num_layers})")


def from_layer_list(text: str, num_layers: int) -> ExpansionPlan:
    """``"22,23,25,27"`` -> plan; rejects non-integers, out-of-range and duplicate indices."""
    layers = []
    for item in text.split(","):
        try:
            layers.append(int(item.strip()))
        except ValueError:
            raise AdeptError(f"layer index {item.strip()!r} is not an integer") from None
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise AdeptError(f"layer index {layer} is out of range 0..{num_layers - 1}")
    duplicates = sorted({x for x in layers if layers.count(x) > 1})
    if duplicates:
        raise AdeptError(f"duplicate layer index {duplicates[0]} in {text!r}")
    return ExpansionPlan(tuple(sorted(layers)), f"layers {text}")


def lowest_scores(scores: list[float], k: int) -> list[int]:
    """Indices of the ``k`` lowest scores (ties go to the lower index), sorted."""
    _check_k(k, len(scores))
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(order[:k])


def from_importance(path: str | Path, k: int, num_layers: int) -> ExpansionPlan:
    """The ``k`` least important layers of a Stage-1 ``importance.json``."""
    try:
        scores = json.loads(Path(path).read_text())["layer_scores"]
    except FileNotFoundError:
        raise AdeptError(f"importance file {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AdeptError(f"{path}: not an importance.json ({type(exc).__name__}: {exc})") from None
    if len(scores) != num_layers:
        raise AdeptError(
            f"{path} scores {len(scores)} layers but the model has {num_layers}: "
            "it was computed on a different model"
        )
    return ExpansionPlan(tuple(lowest_scores(scores, k)), f"importance {path}, k={k}")


def uniform(k: int, num_layers: int) -> ExpansionPlan:
    """LLaMA-Pro placement: copies of layers L/k-1, 2L/k-1, ..., L-1."""
    _check_k(k, num_layers)
    if num_layers % k:
        raise AdeptError(
            f"uniform expansion needs k to divide the layer count: {num_layers} % {k} != 0"
        )
    step = num_layers // k
    return ExpansionPlan(tuple(step * (j + 1) - 1 for j in range(k)), f"uniform k={k}")


def select_plan(
    num_layers: int,
    layers: str | None = None,
    importance: str | None = None,
    k: int | None = None,
    uniform_k: int | None = None,
) -> ExpansionPlan | None:
    """The plan from exactly one selection mode, or None when no mode is given."""
    modes = [
        name
        for name, value in (("layers", layers), ("importance", importance), ("uniform", uniform_k))
        if value is not None
    ]
    if len(modes) > 1:
        raise AdeptError(f"give exactly one layer selection, got {' and '.join(modes)}")
    if layers is not None:
        return from_layer_list(layers, num_layers)
    if importance is not None:
        if k is None:
            raise AdeptError("--importance needs --k")
        return from_importance(importance, k, num_layers)
    if uniform_k is not None:
        return uniform(uniform_k, num_layers)
    if k is not None:
        raise AdeptError("--k needs --importance (or use --uniform)")
    return None


@dataclass
class ExpandSelection:
    """Which layers ``expand_ckpt.py`` duplicates: exactly one of the three modes."""

    layers: str | None = arg(
        None, "Comma-separated 0-based original layer indices, e.g. 22,23,25,27."
    )
    importance: str | None = arg(None, "importance.json from probe_importance.py (with --k).")
    k: int | None = arg(None, "Number of layers to duplicate (with --importance or --uniform).")
    uniform: bool = arg(False, "LLaMA-Pro placement: copies of layers L/k-1, 2L/k-1, ..., L-1.")

    def plan(self, num_layers: int) -> ExpansionPlan:
        if self.uniform and self.k is None:
            raise AdeptError("--uniform needs --k")
        plan = select_plan(
            num_layers,
            self.layers,
            self.importance,
            None if self.uniform else self.k,
            self.k if self.uniform else None,
        )
        if plan is None:
            raise AdeptError("give one of --layers, --importance with --k, or --uniform with --k")
        return plan


@dataclass
class ConvertExpansion:
    """Optional layer expansion while converting from Hugging Face."""

    expand_layers: str | None = arg(None, "Duplicate these 0-based layers, e.g. 22,23,25,27.")
    importance: str | None = arg(
        None, "Duplicate the --k least important layers of importance.json."
    )
    k: int | None = arg(None, "Number of layers to duplicate (with --importance).")
    uniform_expand: int | None = arg(None, "Duplicate K layers with LLaMA-Pro's uniform placement.")

    def plan(self, num_layers: int) -> ExpansionPlan | None:
        return select_plan(
            num_layers, self.expand_layers, self.importance, self.k, self.uniform_expand
        )
