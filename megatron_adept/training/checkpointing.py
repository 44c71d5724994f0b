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
(barrier) the manifest of sizes and checksums is written, rank 0 renames the directory into
place and then replaces the tracker file atomically. A job killed mid-save therefore leaves
the previous checkpoint and tracker intact; its leftover temporary directory is removed by
the next save. ``--keep-last N`` deletes older checkpoints after a save, never the newest N
and never the one the run resumed from.

``--load`` of a directory with a tracker resumes from its latest iteration; any other
checkpoint (converted or expanded) starts a fresh run from its weights.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
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

from megatron_adept.checkpoint.atomic import publish
from megatron_adept.checkpoint.manifest import write_manifest
from megatron_adept.checkpoint.mcore_io import model_sharded_state_dict
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta
from megatron_adept.checkpoint.resolve import (
    TRACKER_FILE,
    iteration_dir,
)
from megatron_adept.checkpoint.side_files import copy_tokenizer_files
from megatron_adept.optimizer.adam_state import (
    FULLY_RESHARDABLE,
    drop_placeholders,
    load_optimizer_state,
    seed_adam_state,
)
from megatron_adept.optimizer.unit_lr import AdeptState
from megatron_adept.parallel.collectives import barrier
from megatron_adept.training.save_dir import TRAINING_STATE_FILE, read_training_info

RNG_DIR = "rng"
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": FULLY_RESHARDABLE}
"""Optimizer state that loads at any TP/PP/DP layout."""


@dataclass(frozen=True)
class TrainingState:
    """Counters of a run, beside the tensors."""

    iteration: int
    consumed_samples: int
    scheduler: dict[str, Any]
    mode: str
    """The ``--mode`` that wrote it: a resume must train the same parameters."""


def _optimizer_sharded(model: torch.nn.Module, optimizer: MegatronOptimizer, loading: bool):
    """The optimizer's sharded state dict (seed its Adam state first: ``seed_adam_state``)."""
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


def _saved_iterations(save: Path) -> list[int]:
    return sorted(
        int(p.name[len("iter_") :])
        for p in save.glob("iter_*")
        if p.is_dir() and p.name[len("iter_") :].isdigit()
    )


def remove_old_checkpoints(
    save: str | Path, keep_last: int, latest: int, protect: Path | None
) -> list[Path]:
    """Delete checkpoints older than the newest ``keep_last`` up to ``latest``; returns them.

    ``protect`` (the checkpoint a run resumed from) is never deleted. Checkpoints after
    ``latest`` are left alone: they were published by an earlier attempt whose tracker
    update was cut short, and this run overwrites them when it gets there.
    """
    save = Path(save)
    candidates = [i for i in _saved_iterations(save) if i <= latest]
    kept = set(candidates[-keep_last:])
    removed = []
    for iteration in candidates:
        directory = iteration_dir(save, iteration)
        if iteration in kept or (protect is not None and directory.resolve() == protect.resolve()):
            continue
        shutil.rmtree(directory)
        removed.append(directory)
    return removed


def save_checkpoint(
    save: str | Path,
    model: torch.nn.Module,
    optimizer: MegatronOptimizer,
    meta: CheckpointMeta,
    state: TrainingState,
    adept: AdeptState,
    tokenizer: Path | None = None,
    documents: dict[str, Any] | None = None,
    before_publish: Callable[[], None] | None = None,
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
        documents: file name -> JSON data rank 0 writes beside (resolved run configuration,
            metrics).
        before_publish: called on every rank once all files are written (fault injection).
    """
    final = iteration_dir(save, state.iteration)
    tmp = final.parent / f".{final.name}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(".iter_*.tmp"):  # left by a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    optimizer_step = seed_adam_state(optimizer)
    optimizer_state = _optimizer_sharded(model, optimizer, False)
    dist_checkpointing.save({**model_sharded_state_dict(model), "optimizer": optimizer_state}, tmp)
    drop_placeholders(optimizer)
    if rank == 0:
        (tmp / RNG_DIR).mkdir()
    barrier()
    torch.save(_rng_state(), tmp / RNG_DIR / f"rank_{rank:05d}.pt")
    barrier()
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
                    "mode": state.mode,
                    "world_size": dist.get_world_size(),
                    "optimizer_step": optimizer_step,
                },
                indent=1,
            )
            + "\n"
        )
        adept.save(tmp)
        for name, data in (documents or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=1) + "\n")
    barrier()
    if before_publish is not None:
        before_publish()
    write_manifest(tmp)
    if rank == 0:
        publish(tmp, final)
        _write_atomically(Path(save) / TRACKER_FILE, f"{state.iteration}\n")
    barrier()
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
    info = read_training_info(directory)
    seed_adam_state(optimizer)
    sharded = {"optimizer": _optimizer_sharded(model, optimizer, True)}
    loaded = dist_checkpointing.load(
        sharded, str(directory), strict=StrictHandling.ASSUME_OK_UNEXPECTED
    )
    # Adam's step equals the iteration unless steps were skipped; older checkpoints lack it
    load_optimizer_state(
        optimizer, loaded["optimizer"], int(info.get("optimizer_step", info["iteration"]))
    )
    scheduler.load_state_dict(info["scheduler"])
    rng_file = directory / RNG_DIR / f"rank_{dist.get_rank():05d}.pt"
    if info.get("world_size") == dist.get_world_size() and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    state = TrainingState(
        int(info["iteration"]), int(info["consumed_samples"]), info["scheduler"], info["mode"]
    )
    return state, AdeptState.load(directory)
