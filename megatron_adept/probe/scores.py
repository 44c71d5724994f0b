"""``importance.json``: Stage 1's result, read by expansion (``--importance``) and by people."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_adept.checkpoint.atomic import write_json_atomic


@dataclass(frozen=True)
class LayerScores:
    """Layer and unit importance of one model on one probe corpus (0-based layers)."""

    method: str
    """``masking``, ``cumulative``, ``rank`` or ``fisher``."""
    base_loss: float
    """Mean loss of the unmodified model over the counted probe tokens."""
    layer_scores: list[float]
    """One score per layer; larger means more important for general competence."""
    unit_scores: list[dict[str, float]]
    """Per layer, ``{unit name: mean |θ·∂L/∂θ|}`` (the paper's Figure 2)."""
    suggested_k: int
    k: int
    """The k used for ``selected``: ``--k`` if given, else ``suggested_k``."""
    selected: list[int]
    """The k least important layers, sorted."""
    counted_tokens: int
    extras: dict[str, Any] = field(default_factory=dict)
    """Method details and provenance (masked losses, checkpoint, probe data, ...)."""

    @property
    def num_layers(self) -> int:
        return len(self.layer_scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "base_loss": self.base_loss,
            "layer_scores": self.layer_scores,
            "unit_scores": self.unit_scores,
            "suggested_k": self.suggested_k,
            "k": self.k,
            "selected": self.selected,
            "num_layers": self.num_layers,
            "counted_tokens": self.counted_tokens,
            **self.extras,
        }

    def write(self, path: str | Path) -> None:
        """Write atomically: readers see the old file or the whole new one."""
        write_json_atomic(path, self.to_dict())
