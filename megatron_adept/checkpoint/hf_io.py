"""Streamed reading and sharded writing of Hugging Face safetensors checkpoints."""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_adept.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
"""Files that make up a Hugging Face or sentencepiece tokenizer."""
IGNORED_TENSORS = ("rotary_emb.inv_freq",)
"""Buffers some exports include that carry no weights."""


class SafetensorsReader:
    """Opens the shards of an HF checkpoint lazily and reads one tensor at a time."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.hf_dir = Path(hf_dir)
        index = self.hf_dir / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.hf_dir.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no *.safetensors weights in {str(self.hf_dir)!r}")
            weight_map = {}
            for file in files:
                with safe_open(file, framework="pt") as handle:
                    weight_map.update({name: file.name for name in handle.keys()})
        self.weight_map = {
            name: file for name, file in weight_map.items() if not name.endswith(IGNORED_TENSORS)
        }
        self._stack = ExitStack()
        self._handles: dict[str, object] = {}

    def names(self) -> set[str]:
        return set(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)

    def _handle(self, name: str):
        file = self.weight_map[name]
        if file not in self._handles:
            path = self.hf_dir / file
            if not path.is_file():
                raise CheckpointError(f"{INDEX_FILE} names missing shard {str(path)!r}")
            self._handles[file] = self._stack.enter_context(safe_open(path, framework="pt"))
        return self._handles[file]

    def close(self) -> None:
        self._stack.close()


class SafetensorsWriter:
    """Writes tensors into shards of at most ``max_shard_bytes``, plus the index."""

    def __init__(self, out_dir: Path, max_shard_bytes: int) -> None:
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[dict[str, torch.Tensor] | list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out_dir / f"shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> None:
        """Flush, then name the shards ``model-0000i-of-0000n`` (or ``model.safetensors``)."""
        if self._pending:
            self._flush()
        count = len(self._shards)
        if count == 1:
            (self.out_dir / "shard-00000.safetensors").rename(self.out_dir / SINGLE_FILE)
            return
        weight_map = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (self.out_dir / f"shard-{i:05d}.safetensors").rename(self.out_dir / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy whatever tokenizer files ``src`` holds into ``dst``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied
