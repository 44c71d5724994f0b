"""Flags of ``tools/merge_expansions.py`` (light to import: checked before torch loads)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_adept.config.cli import arg
from megatron_adept.config.groups import base_flag, out_flag, overwrite_flag
from megatron_adept.errors import AdeptError


@dataclass
class MergeConfig:
    """What tools/merge_expansions.py merges and where it writes."""

    base: str = base_flag()
    inputs: list[str] = arg(help="Expanded checkpoints to merge (same base, same layer map).")
    out: str = out_flag()
    weights: list[float] | None = arg(
        None, "Weight of each input's copy layers, normalised to sum to 1 (default: equal)."
    )
    overwrite: bool = overwrite_flag()

    def __post_init__(self) -> None:
        if len(self.inputs) < 2:
            raise AdeptError(f"--inputs needs at least two checkpoints, got {len(self.inputs)}")
        if len(set(self.inputs)) != len(self.inputs):
            raise AdeptError("--inputs names a checkpoint twice")
        if self.weights is None:
            self.weights = [1.0] * len(self.inputs)
        if len(self.weights) != len(self.inputs):
            raise AdeptError(
                f"--weights has {len(self.weights)} value(s) for {len(self.inputs)} --inputs"
            )
        finite = all(math.isfinite(w) for w in self.weights)
        if not finite or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise AdeptError(f"--weights {self.weights} must be finite, >= 0, with a positive sum")

    @property
    def normalised_weights(self) -> list[float]:
        return [w / sum(self.weights) for w in self.weights]
