"""What a ``--load`` path names: one checkpoint, or a training run's latest one.

A training ``--save`` directory holds ``latest_checkpointed_iteration.txt`` and
``iter_XXXXXXX/`` checkpoints; the tracker moves only once a checkpoint is complete. Every
tool accepts such a directory wherever it reads a checkpoint and reads its latest
checkpoint; ``pretrain_adept.py`` resumes it. This module is the only place that knows the
layout, and it is light to import: tools check their inputs before torch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_adept.checkpoint.manifest import verify_manifest
from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.errors import CheckpointError
from megatron_adept.parallel.layout import validate_layout, world_size_from_env

if TYPE_CHECKING:
    from megatron_adept.config.parallel import ParallelConfig

TRACKER_FILE = "latest_checkpointed_iteration.txt"


def iteration_dir(save: str | Path, iteration: int) -> Path:
    return Path(save) / f"iter_{iteration:07d}"


def latest_iteration(directory: str | Path) -> int | None:
    """The iteration named by ``directory``'s tracker, or None if it is no training save."""
    tracker = Path(directory) / TRACKER_FILE
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise CheckpointError(f"{tracker}: expected an iteration number, got {text!r}")
    return int(text)


def resolve_load(load: str | Path) -> tuple[Path, int | None]:
    """(checkpoint directory, its training iteration if ``load`` is a training save, else None)."""
    iteration = latest_iteration(load)
    if iteration is None:
        return Path(load), None
    directory = iteration_dir(load, iteration)
    if not directory.is_dir():
        raise CheckpointError(f"{Path(load) / TRACKER_FILE} names missing {str(directory)!r}")
    return directory, iteration


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory and its metadata, found and checked before any work."""

    path: Path
    meta: CheckpointMeta


def open_checkpoint(load: str | Path, parallel: ParallelConfig | None = None) -> Checkpoint:
    """Resolve ``load``, read its metadata, and check its files are whole (sizes only).

    With ``parallel``, also check that the layout can hold the model at this world size, so
    an impossible layout or a truncated file fails with one line before any rank started.
    """
    path, _ = resolve_load(load)
    meta = CheckpointMeta.load(path)
    if parallel is not None:
        validate_layout(meta.arch, parallel, world_size_from_env())
    verify_manifest(path, checksums=False)
    return Checkpoint(path, meta)
