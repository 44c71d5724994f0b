"""Training checkpoints: everything needed to continue a run exactly, at any layout.

Layout of ``--save``::

    SAVE/latest_checkpointed_iteration.txt    the newest complete iteration
    SAVE/iter_0000100/                        a normal model checkpoint (mcore_io format,
                                              adept_meta.json with ``iteration``) plus
        optimizer tensors                     megatron's sharded optimizer state (reshardable)
        training_state.json                   iteration, consumed samples, lr scheduler
        adept_state.json                      unit importance and lr multipliers
        rng/rank_XXXXX.pt                     per-rank RNG states

A save goes to a hidden temporary sibling first; after every rank has written its shards
(barrier) rank 0 renames it into place and then replaces the tracker file atomically. A job
killed mid-save therefore leaves the previous checkpoint and tracker intact.

``--load`` of a directory with a tracker resumes from its latest iteration; any other
checkpoint (converted or expanded) starts a fresh run from its weights.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.validation import StrictHandling
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_adept.checkpoint.hf_io import copy_tokenizer_files
from megatron_adept.checkpoint.mcore_io import model_sharded_state_dict
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta
from megatron_adept.errors import CheckpointError
from megatron_adept.optimizer.unit_lr import AdeptState

TRACKER_FILE = "latest_checkpointed_iteration.txt"
TRAINING_STATE_FILE = "training_state.json"
RNG_DIR = "rng"
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}
"""Optimizer state that loads at any TP/PP/DP layout."""


@dataclass(frozen=True)
class TrainingState:
    """Counters of a run, beside the tensors."""

    iteration: int
    consumed_samples: int
    scheduler: dict[str, Any]


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
    """(weights directory, iteration to resume from or None for a fresh start)."""
    iteration = latest_iteration(load)
    if iteration is None:
        return Path(load), None
    directory = iteration_dir(load, iteration)
    if not directory.is_dir():
        raise CheckpointError(f"{Path(load) / TRACKER_FILE} names missing {str(directory)!r}")
    return directory, iteration


def _optimizer_sharded(model: torch.nn.Module, optimizer: MegatronOptimizer, loading: bool):
    return optimizer.sharded_state_dict(
        model_sharded_state_dict(model), is_loading=loading, metadata=dict(_OPTIMIZER_METADATA)
    )


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    save: str | Path,
    model: torch.nn.Module,
    optimizer: MegatronOptimizer,
    meta: CheckpointMeta,
    state: TrainingState,
    adept: AdeptState,
    tokenizer: Path | None = None,
) -> Path:
    """Collective: write ``SAVE/iter_XXXXXXX`` and advance the tracker to it.

    Args:
        save: the ``--save`` directory.
        model: this rank's stage (not wrapped in DDP).
        optimizer: the megatron optimizer.
        meta: the run's checkpoint metadata (its ``iteration`` is set here).
        state: counters and scheduler state.
        adept: the multipliers in force.
        tokenizer: the run's tokenizer directory, copied in so the checkpoint stands alone.
    """
    final = iteration_dir(save, state.iteration)
    tmp = final.parent / f".{final.name}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    optimizer_state = _optimizer_sharded(model, optimizer, False)
    dist_checkpointing.save({**model_sharded_state_dict(model), "optimizer": optimizer_state}, tmp)
    if rank == 0:
        (tmp / RNG_DIR).mkdir()
    dist.barrier()
    torch.save(_rng_state(), tmp / RNG_DIR / f"rank_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        if tokenizer is not None:
            copy_tokenizer_files(tokenizer, tmp / TOKENIZER_DIR)
        CheckpointMeta(
            meta.arch,
            meta.layer_map,
            meta.source,
            TOKENIZER_DIR if tokenizer is not None else None,
            state.iteration,
        ).save(tmp)
        (tmp / TRAINING_STATE_FILE).write_text(
            json.dumps(
                {
                    "iteration": state.iteration,
                    "consumed_samples": state.consumed_samples,
                    "scheduler": state.scheduler,
                    "world_size": dist.get_world_size(),
                },
                indent=1,
            )
            + "\n"
        )
        adept.save(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomically(Path(save) / TRACKER_FILE, f"{state.iteration}\n")
    dist.barrier()
    return final


def load_training_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: MegatronOptimizer,
    scheduler: OptimizerParamScheduler,
) -> tuple[TrainingState, AdeptState]:
    """Collective: restore optimizer, scheduler and RNG from a training checkpoint.

    The model weights are read separately (``load_model_weights``). RNG states are restored
    only when the world size matches the saving run (a resharded resume reseeds instead).
    """
    try:
        info = json.loads((directory / TRAINING_STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory}: unreadable {TRAINING_STATE_FILE} ({exc})") from None
    sharded = {"optimizer": _optimizer_sharded(model, optimizer, True)}
    loaded = dist_checkpointing.load(
        sharded, str(directory), strict=StrictHandling.ASSUME_OK_UNEXPECTED
    )
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(info["scheduler"])
    rng_file = directory / RNG_DIR / f"rank_{dist.get_rank():05d}.pt"
    if info.get("world_size") == dist.get_world_size() and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    state = TrainingState(int(info["iteration"]), int(info["consumed_samples"]), info["scheduler"])
    return state, AdeptState.load(directory)
