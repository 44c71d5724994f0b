"""``adept_meta.json``: what a checkpoint holds, beside megatron-core's tensors.

Every checkpoint this project writes (converted, expanded, trained, merged) carries the
architecture, the layer map (which decoder layer is an original and which a copy), where it
came from and where its tokenizer is. The layer map travels unchanged through conversion,
training and export, so each tool knows which layers ADEPT added.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from megatron_adept.errors import CheckpointError
from megatron_adept.models.archs import ModelArch

META_FILE = "adept_meta.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LayerEntry:
    """One decoder layer of a (possibly expanded) model."""

    kind: Literal["original", "copy"]
    source: int
    """0-based index of the original layer this one is (or was copied from)."""


@dataclass(frozen=True)
class LayerMap:
    """Origin of every decoder layer, indexed by 0-based position in the current model."""

    layers: tuple[LayerEntry, ...]

    @classmethod
    def identity(cls, num_layers: int) -> LayerMap:
        return cls(tuple(LayerEntry("original", i) for i in range(num_layers)))

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def num_original(self) -> int:
        return sum(entry.kind == "original" for entry in self.layers)

    @property
    def copy_indices(self) -> list[int]:
        """Positions (in the current model) of the layers that are copies."""
        return [i for i, entry in enumerate(self.layers) if entry.kind == "copy"]

    @property
    def copied_sources(self) -> list[int]:
        """The original layer each copy was made from, in model order."""
        return [self.layers[i].source for i in self.copy_indices]

    @property
    def original_indices(self) -> list[int]:
        return [i for i, entry in enumerate(self.layers) if entry.kind == "original"]

    def require_unexpanded(self, where: str | Path) -> None:
        """Refuse to expand a model twice: copies of copies have no original to pair with."""
        if self.copy_indices:
            raise CheckpointError(
                f"{where} is already expanded; expand its original checkpoint instead"
            )

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(entry) for entry in self.layers]

    @classmethod
    def from_list(cls, data: list[dict[str, Any]]) -> LayerMap:
        return cls(tuple(LayerEntry(d["kind"], int(d["source"])) for d in data))


@dataclass
class CheckpointMeta:
    """Contents of ``adept_meta.json``."""

    arch: ModelArch
    layer_map: LayerMap
    source: dict[str, Any] = field(default_factory=dict)
    """Provenance: the tool that wrote it, its inputs, and earlier provenance."""
    tokenizer: str | None = None
    """Tokenizer directory relative to the checkpoint, or None."""
    iteration: int | None = None
    """Training iteration for training checkpoints; None for converted/expanded ones."""

    def __post_init__(self) -> None:
        if len(self.layer_map) != self.arch.num_layers:
            raise CheckpointError(
                f"layer map has {len(self.layer_map)} layers but the architecture has "
                f"{self.arch.num_layers}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "arch": self.arch.to_dict(),
            "layer_map": self.layer_map.to_list(),
            "source": self.source,
            "tokenizer": self.tokenizer,
            "iteration": self.iteration,
        }

    def save(self, ckpt_dir: str | Path) -> None:
        path = Path(ckpt_dir) / META_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, ckpt_dir: str | Path) -> CheckpointMeta:
        path = Path(ckpt_dir) / META_FILE
        if not Path(ckpt_dir).is_dir():
            raise CheckpointError(f"checkpoint directory {str(ckpt_dir)!r} does not exist")
        if not path.is_file():
            raise CheckpointError(
                f"{str(ckpt_dir)!r} is not a megatron-adept checkpoint (no {META_FILE})"
            )
        try:
            data = json.loads(path.read_text())
            return cls(
                arch=ModelArch.from_dict(data["arch"]),
                layer_map=LayerMap.from_list(data["layer_map"]),
                source=data.get("source", {}),
                tokenizer=data.get("tokenizer"),
                iteration=data.get("iteration"),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: corrupt metadata ({type(exc).__name__}: {exc})"
            ) from None

    def tokenizer_path(self, ckpt_dir: str | Path) -> Path | None:
        return None if self.tokenizer is None else Path(ckpt_dir) / self.tokenizer
