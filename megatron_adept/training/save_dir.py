"""A training ``--save`` directory: what may start or resume in it, checked before any work.

Light to import, so that ``pretrain_adept.py`` refuses a wrong ``--load``/``--save`` pair in
well under a second, before torch or megatron-core load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from megatron_adept.checkpoint.resolve import latest_iteration, resolve_load
from megatron_adept.errors import CheckpointError

TRAINING_STATE_FILE = "training_state.json"


def read_training_info(directory: Path) -> dict[str, Any]:
    """``training_state.json`` of a training checkpoint (counters, schedule, mode)."""
    path = directory / TRAINING_STATE_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("iteration", "consumed_samples", "scheduler", "mode") if k not in info]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return info


def check_save_dir(save: str) -> None:
    """Refuse a ``--save`` that cannot be written, before any work."""
    existing = Path(save)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"--save {save!r}: {str(existing)!r} is not a directory")
    if not os.access(existing, os.W_OK):
        raise CheckpointError(f"--save {save!r}: {str(existing)!r} is not writable")


def check_resume(load: str, save: str | None, mode: str) -> None:
    """Refuse a start that would mix two runs.

    A resume must train what the checkpoint trained (``--mode``: the optimizer state only
    covers those parameters); a fresh start must not write into a ``--save`` that already
    holds another run's checkpoints.
    """
    directory, iteration = resolve_load(load)
    if iteration is not None:
        saved = read_training_info(directory)["mode"]
        if saved != mode:
            raise CheckpointError(
                f"--mode {mode} differs from the run being resumed ({directory} was trained "
                f"with --mode {saved})"
            )
    elif save is not None and latest_iteration(save) is not None:
        raise CheckpointError(
            f"--save {save!r} already holds a run (iteration {latest_iteration(save)}); "
            f"resume it with --load {save}, or choose another --save"
        )
