"""``manifest.json``: size and CRC-32 of every file of a checkpoint, written last.

A checkpoint truncated by a full disk, copied halfway or damaged on storage is refused on
load, naming the first bad file, instead of failing deep inside the tensor reader or, worse,
loading wrong weights. Sizes are cheap and checked before any process group exists;
checksums are computed and verified collectively, each rank hashing its share of the files,
so the cost per rank shrinks with the job size.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from megatron_adept.checkpoint.atomic import atomic_output_dir, write_json_atomic
from megatron_adept.errors import CheckpointError

MANIFEST_FILE = "manifest.json"
_CHUNK = 16 * 2**20


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(directory: Path) -> list[str]:
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    )


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(local: list) -> list:
    """Concatenate every rank's list (no-op without a process group)."""
    _, world = _rank_and_world()
    if world == 1:
        return local
    from megatron_adept.parallel.collectives import all_gather_objects

    return [item for part in all_gather_objects(local) for item in part]


def write_manifest(directory: str | Path) -> None:
    """Collective if a process group exists: hash every file, rank 0 writes the manifest.

    Every rank must have finished writing into ``directory`` before this is called.
    """
    directory = Path(directory)
    rank, world = _rank_and_world()
    names = _files(directory)
    hashed = _gather(
        [
            (name, (directory / name).stat().st_size, _crc32(directory / name))
            for name in names[rank::world]
        ]
    )
    if rank == 0:
        files = {name: {"size": size, "crc32": crc} for name, size, crc in sorted(hashed)}
        write_json_atomic(directory / MANIFEST_FILE, {"files": files})


def _read_manifest(directory: Path) -> dict[str, dict[str, int]]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(directory)!r} has no {MANIFEST_FILE}: it is incomplete "
            "(a save or copy was interrupted)"
        )
    try:
        files = json.loads(path.read_text())["files"]
        return {
            name: {"size": int(e["size"]), "crc32": int(e["crc32"])} for name, e in files.items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({type(exc).__name__}: {exc})") from None


def verify_manifest(directory: str | Path, checksums: bool = True) -> None:
    """Refuse a checkpoint whose files are missing, truncated or (``checksums``) altered.

    Collective when ``checksums`` is set and a process group exists.
    """
    directory = Path(directory)
    files = _read_manifest(directory)
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} is missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is truncated or damaged: {size} bytes, "
                f"expected {entry['size']}"
            )
    if not checksums:
        return
    rank, world = _rank_and_world()
    bad = _gather(
        [
            name
            for name in sorted(files)[rank::world]
            if _crc32(directory / name) != files[name]["crc32"]
        ]
    )
    if bad:
        raise CheckpointError(
            f"checkpoint file {str(directory / sorted(bad)[0])!r} is corrupt (checksum mismatch)"
        )


@contextmanager
def checkpoint_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """:func:`atomic_output_dir` for a checkpoint: the manifest is written before publishing."""
    with atomic_output_dir(out, overwrite) as tmp:
        yield tmp
        write_manifest(tmp)
