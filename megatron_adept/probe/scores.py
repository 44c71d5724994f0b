"""``importance.json``: Stage 1's result, read by expansion (``--importance``) and by people."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_adept.checkpoint.atomic import write_json_atomic
from megatron_adept.errors import DataError

_FIELDS = (
    "method",
    "base_loss",
    "layer_scores",
    "unit_scores",
    "suggested_k",
    "k",
    "selected",
    "counted_tokens",
)


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

    @classmethod
    def read(cls, path: str | Path) -> LayerScores:
        """Read an ``importance.json``, refusing one whose scores or selection are malformed.

        Only ``layer_scores`` is required: a hand-written file that ranks layers (for
        ``expand_ckpt.py --importance``) may hold nothing else, and absent fields read as
        empty. Unknown keys are kept in ``extras``.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"importance file {str(path)!r} does not exist") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{path}: not an importance.json ({type(exc).__name__}: {exc})"
            ) from None
        if not isinstance(data, dict) or "layer_scores" not in data:
            raise DataError(f"{path}: not an importance.json (no 'layer_scores')")
        scores = data["layer_scores"]
        if not isinstance(scores, list) or not all(_finite_number(s) for s in scores):
            raise DataError(f"{path}: layer_scores must be a list of finite numbers")
        selected = data.get("selected", [])
        if not isinstance(selected, list) or not all(_index(i) for i in selected):
            raise DataError(f"{path}: 'selected' must be a list of 0-based layer indices")
        return cls(
            method=str(data.get("method", "")),
            base_loss=float(data.get("base_loss", math.nan)),
            layer_scores=[float(s) for s in scores],
            unit_scores=list(data.get("unit_scores", [])),
            suggested_k=int(data.get("suggested_k", 0)),
            k=int(data.get("k", len(selected))),
            selected=sorted({int(i) for i in selected}),
            counted_tokens=int(data.get("counted_tokens", 0)),
            extras={k: v for k, v in data.items() if k not in (*_FIELDS, "num_layers")},
        )


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
