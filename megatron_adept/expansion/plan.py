"""Which layers ADEPT duplicates, and where the copies go.

A plan is a sorted set of 0-based original layer indices. Each selected layer gets one copy,
inserted directly after it; :meth:`ExpansionPlan.layer_map` records every layer's origin. The
layers come from an explicit list, from a Stage-1 ``importance.json`` (the ``k`` lowest
``layer_scores``) or from LLaMA-Pro's uniform placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_adept.checkpoint.metadata import LayerEntry, LayerMap
from megatron_adept.config.cli import arg
from megatron_adept.config.groups import importance_flag, k_flag
from megatron_adept.errors import AdeptError
from megatron_adept.probe.scores import LayerScores
from megatron_adept.probe.selection import least_important


@dataclass(frozen=True)
class ExpansionPlan:
    """Original layers to duplicate (0-based, sorted, unique) in a model of ``num_layers``."""

    selected: tuple[int, ...]
    num_layers: int
    how: str
    """How the layers were chosen, recorded in the checkpoint's provenance."""

    def layer_map(self) -> LayerMap:
        """Originals in order, each selected one followed by its copy."""
        entries: list[LayerEntry] = []
        for layer in range(self.num_layers):
            entries.append(LayerEntry("original", layer))
            if layer in self.selected:
                entries.append(LayerEntry("copy", layer))
        return LayerMap(tuple(entries))


def _check_k(k: int, num_layers: int, flag: str = "--k") -> None:
    if not 1 <= k <= num_layers:
        raise AdeptError(f"{flag}={k} must be between 1 and the number of layers ({num_layers})")


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
    return ExpansionPlan(tuple(sorted(layers)), num_layers, f"layers {text}")


def from_importance(path: str | Path, k: int, num_layers: int) -> ExpansionPlan:
    """The ``k`` least important layers of a Stage-1 ``importance.json``."""
    scores = LayerScores.read(path).layer_scores
    if len(scores) != num_layers:
        raise AdeptError(
            f"{path} scores {len(scores)} layers but the model has {num_layers}: "
            "it was computed on a different model"
        )
    return ExpansionPlan(tuple(least_important(scores, k)), num_layers, f"importance {path}, k={k}")


def uniform(k: int, num_layers: int, flag: str = "--k") -> ExpansionPlan:
    """LLaMA-Pro's placement of ``k`` copies in ``num_layers`` = L layers; ``how`` names the rule.

    LLaMA-Pro's expansion script copies layer i whenever (i + 1) is a multiple of
    split = L // k. That gives exactly k copies, layers split - 1, 2 split - 1, ..., k split - 1,
    whenever L // split == k: always when k divides L (copies L/k - 1, ..., L - 1), and also
    e.g. for L = 30, k = 4 (split 7: copies 6, 13, 20, 27). Where it gives more than k copies
    (L = 30, k = 8: split 3 would make 10), the copies are spread evenly instead: the last layer
    of each of k consecutive groups whose sizes differ by at most one, i.e. layers
    floor((j + 1) L / k) - 1 for j = 0..k-1 (L = 30, k = 8: 2, 6, 10, 14, 17, 21, 25, 29).
    """
    _check_k(k, num_layers, flag)
    split = num_layers // k
    if num_layers // split == k:
        selected = tuple(split * (j + 1) - 1 for j in range(k))
        how = f"uniform k={k}: LLaMA-Pro's rule, a copy after every {split} layers"
    else:
        selected = tuple((j + 1) * num_layers // k - 1 for j in range(k))
        how = (
            f"uniform k={k}: even spread, the last layer of each of {k} near-equal groups "
            f"(LLaMA-Pro's copy after every {split} layers would make {num_layers // split})"
        )
    return ExpansionPlan(selected, num_layers, how)


@dataclass
class ExpansionSelection:
    """Which original layers to duplicate: an explicit list, Stage 1's least important k, or
    LLaMA-Pro's uniform placement (at most one; expand_ckpt.py needs one).

    ``--expand-layers`` and ``--uniform-expand K`` are the older spellings of ``--layers`` and
    ``--uniform --k K``; errors name the flag as it was given.
    """

    layers: str | None = arg(None, "Comma-separated 0-based original layer indices, e.g. 22,23.")
    expand_layers: str | None = arg(None, "The same as --layers.")
    importance: str | None = importance_flag()
    k: int | None = k_flag()
    uniform: bool = arg(
        False,
        "LLaMA-Pro placement of --k copies: a copy after every (L // k)-th layer (L/k-1, "
        "2L/k-1, ..., L-1 when k divides L), spread evenly where that does not give k copies.",
    )
    uniform_expand: int | None = arg(None, "The same as --uniform --k K.")

    def __post_init__(self) -> None:
        given = self._given()
        if len(given) > 1:
            raise AdeptError(
                "give exactly one layer selection (--layers, --importance, --uniform), got "
                + " and ".join(given)
            )
        if self.k is not None and self.mode in (None, "--layers", "--expand-layers"):
            with_layers = "" if self.mode is None else f", not with {self.mode}"
            raise AdeptError(f"--k goes with --importance or --uniform{with_layers}")
        if self.mode in ("--importance", "--uniform") and self.k is None:
            raise AdeptError(f"{self.mode} needs --k")

    def _given(self) -> list[str]:
        flags = {
            "--layers": self.layers is not None,
            "--expand-layers": self.expand_layers is not None,
            "--importance": self.importance is not None,
            "--uniform": self.uniform,
            "--uniform-expand": self.uniform_expand is not None,
        }
        return [flag for flag, present in flags.items() if present]

    @property
    def mode(self) -> str | None:
        """The selection flag that was given, or None when no expansion is asked for."""
        given = self._given()
        return given[0] if given else None

    def plan(self, num_layers: int) -> ExpansionPlan:
        """The plan for a model of ``num_layers`` original layers."""
        if self.mode in ("--layers", "--expand-layers"):
            return from_layer_list(self.layers or self.expand_layers, num_layers)
        if self.mode == "--importance":
            return from_importance(self.importance, self.k, num_layers)
        if self.mode == "--uniform":
            return uniform(self.k, num_layers)
        if self.mode == "--uniform-expand":
            return uniform(self.uniform_expand, num_layers, "--uniform-expand")
        raise AdeptError("give one of --layers, --importance with --k, or --uniform with --k")
