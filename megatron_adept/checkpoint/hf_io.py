"""Hugging Face safetensors checkpoints, read and written one tensor at a time.

Both directions stream. The reader parses each shard's header once and reads a tensor's bytes
straight into a fresh tensor (no memory map, so nothing but the requested tensor becomes
resident). The writer is given every tensor's name, shape and dtype up front, so it can lay
out the shards and write each header before the data arrives; tensors are then appended as
they come and dropped. The format is the public safetensors layout: an 8-byte little-endian
header length, a JSON header with ``dtype``/``shape``/``data_offsets`` per tensor, the data.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from megatron_adept.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
IGNORED_TENSORS = ("rotary_emb.inv_freq",)
"""Buffers some exports include that carry no weights."""

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_ALIGN = 8


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    """Absolute byte offset of the data in the file."""
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse a safetensors header without touching the tensor data."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        size = path.stat().st_size
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({exc})") from None
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        info = TensorInfo(
            path, _DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + length + begin, end - begin
        )
        if info.offset + info.nbytes > size:
            raise CheckpointError(f"{path} is truncated: tensor {name} ends past the file's end")
        infos[name] = info
    return infos


class SafetensorsReader:
    """The tensors of an HF checkpoint directory (one file, or shards with an index)."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.hf_dir = Path(hf_dir)
        self.tensors: dict[str, TensorInfo] = {}
        for path in self._files():
            for name, info in read_header(path).items():
                if not name.endswith(IGNORED_TENSORS):
                    self.tensors[name] = info

    def _files(self) -> list[Path]:
        index = self.hf_dir / INDEX_FILE
        if not index.is_file():
            files = sorted(self.hf_dir.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no *.safetensors weights in {str(self.hf_dir)!r}")
            return files
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
        files = [self.hf_dir / name for name in sorted(set(weight_map.values()))]
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{INDEX_FILE} names missing shard {str(path)!r}")
        return files

    def names(self) -> set[str]:
        return set(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into newly allocated memory."""
        info = self.tensors[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        buffer = tensor.view(-1).view(torch.uint8).numpy()
        with open(info.path, "rb") as file:
            file.seek(info.offset)
            read = file.readinto(memoryview(buffer))
        if read != info.nbytes or buffer.nbytes != info.nbytes:
            raise CheckpointError(f"{info.path}: tensor {name} is truncated or mis-sized")
        return tensor


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the writer will receive."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


def _shard_groups(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive specs packed greedily into shards of at most ``max_shard_bytes``."""
    groups: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if groups[-1] and size + spec.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    return groups


def _header(specs: list[TensorSpec]) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        entries[spec.name] = {
            "dtype": _DTYPE_NAMES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _ALIGN)
    return struct.pack("<Q", len(text)) + text


class SafetensorsWriter:
    """Writes a known sequence of tensors as HF shards plus index, holding none of them.

    Tensors must be passed to :meth:`write` in the order of ``specs``. Shards are named like
    transformers names them (``model.safetensors`` alone, else ``model-0000i-of-0000n``).
    """

    def __init__(self, out_dir: Path, specs: list[TensorSpec], max_shard_bytes: int) -> None:
        self.out_dir = Path(out_dir)
        self.groups = _shard_groups(specs, max_shard_bytes)
        count = len(self.groups)
        self.files = (
            [SINGLE_FILE]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._queue = [(shard, spec) for shard, group in enumerate(self.groups) for spec in group]
        self._written = 0
        self._shard = -1
        self._file: BinaryIO | None = None

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_file()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        done = self._written == len(self._queue)
        shard, spec = (None, None) if done else self._queue[self._written]
        if spec is None or spec.name != name:
            raise ValueError(f"tensor {name} written out of order (expected {spec})")
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, declared {spec}")
        if shard != self._shard:
            self._open(shard)
        data = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._written += 1

    def _open(self, shard: int) -> None:
        self._close_file()
        self._shard = shard
        self._file = open(self.out_dir / self.files[shard], "wb")
        self._file.write(_header(self.groups[shard]))

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Finish the last shard and write the index (for more than one shard)."""
        self._close_file()
        if self._written < len(self._queue):
            missing = self._queue[self._written][1].name
            raise ValueError(f"tensor {missing} was declared but never written")
        if len(self.files) == 1:
            return
        weight_map = {
            spec.name: file
            for file, group in zip(self.files, self.groups, strict=True)
            for spec in group
        }
        total = sum(spec.nbytes for group in self.groups for spec in group)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
