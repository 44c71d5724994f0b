"""Model weights in megatron-core ``dist_checkpointing`` format, loadable at any layout.

The one reader and writer of model checkpoints. Layers are stored under per-layer keys
(``decoder.layers.{i}.…``, global 0-based ``i``), so a checkpoint is independent of tensor,
pipeline and data parallelism, and expansion or merging can address layers by key.
``_extra_state`` entries (empty for the local spec, FP8 metadata for Transformer Engine) are
not stored: checkpoints hold weights only.

Memory: without tensor parallelism every parameter is one whole tensor of the checkpoint, so
it is described as one ``ShardedTensor`` and read or written in place (megatron's factory for
the fused ``[gate; up]`` MLP weight would otherwise split it into two views, which its save
clones and its load merges into a new tensor). An offline tool thus holds one copy of the
model, never two.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing import ShardedTensor
from megatron.core.dist_checkpointing.core import CheckpointingException
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
from megatron.core.dist_checkpointing.validation import StrictHandling

from megatron_adept.checkpoint.manifest import (
    checkpoint_output_dir,
    verify_manifest,
    write_manifest,
)
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.checkpoint.side_files import copy_files, has_tokenizer
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import CheckpointError
from megatron_adept.models.builder import build_model
from megatron_adept.parallel.collectives import barrier
from megatron_adept.parallel.layout import validate_layout

logger = logging.getLogger(__name__)

LAYER_KEY = re.compile(r"decoder\.layers\.(\d+)\.")
"""Checkpoint keys of decoder layer ``i`` start with ``decoder.layers.{i}.``."""


def sharded_metadata() -> dict[str, Any]:
    """Metadata for ``sharded_state_dict``: one checkpoint key per decoder layer.

    A fresh dict every call: megatron-core caches process groups into it, which would go
    stale when the parallel layout changes within a process.
    """
    return {"non_homogeneous_layers": True}


def model_sharded_state_dict(model: torch.nn.Module, prefix: str = "") -> dict[str, Any]:
    """The model's sharded state dict without ``_extra_state`` entries."""
    sharded = model.sharded_state_dict(prefix=prefix, metadata=sharded_metadata())
    return {k: v for k, v in sharded.items() if not k.endswith("_extra_state")}


def _in_place_sharded_state_dict(model: torch.nn.Module) -> dict[str, Any]:
    """The sharded state dict, with whole tensors read and written in place where possible.

    Without tensor parallelism a factory's data is the whole tensor, so it is described as one
    ``ShardedTensor`` under the same key (any TP reads the same global tensor either way).
    """
    sharded = model_sharded_state_dict(model)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        return sharded
    return {
        name: ShardedTensor.from_rank_offsets(value.key, value.data, replica_id=value.replica_id)
        if isinstance(value, ShardedTensorFactory)
        else value
        for name, value in sharded.items()
    }


def _unreadable(ckpt: str | Path, exc: Exception) -> CheckpointError:
    """megatron's reason on one line, as tools print errors."""
    return CheckpointError(f"cannot read checkpoint {str(ckpt)!r}: {' '.join(str(exc).split())}")


def save_model(model: torch.nn.Module, ckpt_dir: str | Path, meta: CheckpointMeta) -> None:
    """Collective: every rank writes its shards, rank 0 the metadata, then the manifest.

    Not atomic by itself: see :func:`write_checkpoint` and the training checkpoints.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    dist_checkpointing.save(_in_place_sharded_state_dict(model), str(ckpt_dir))
    if torch.distributed.get_rank() == 0:
        meta.save(ckpt_dir)
    barrier()
    write_manifest(ckpt_dir)
    barrier()


def write_checkpoint(
    model: torch.nn.Module,
    out: str | Path,
    meta: CheckpointMeta,
    side_files: Path | None = None,
    overwrite: bool = False,
) -> CheckpointMeta:
    """Write a whole model as the checkpoint directory ``out``, atomically (offline tools).

    Args:
        model: the whole model (one process, TP=1, PP=1).
        out: the output directory; it appears complete or not at all.
        meta: what the checkpoint holds; its ``tokenizer`` is set from what is copied.
        side_files: directory whose tokenizer and generation files travel along.
        overwrite: replace an existing non-empty ``out``.

    Returns:
        The metadata written.
    """
    with checkpoint_output_dir(out, overwrite) as tmp:
        copied = side_files is not None and has_tokenizer(side_files)
        meta = dataclasses.replace(meta, tokenizer=TOKENIZER_DIR if copied else None)
        dist_checkpointing.save(_in_place_sharded_state_dict(model), str(tmp))
        meta.save(tmp)
        if side_files is not None:
            copy_files(side_files, tmp / TOKENIZER_DIR)
    logger.info("wrote %s (%d layers, %s)", out, meta.arch.num_layers, meta.arch.dtype)
    return meta


def load_model_weights(
    model: torch.nn.Module, ckpt_dir: str | Path, layer_sources: dict[int, int] | None = None
) -> None:
    """Collective: fill ``model`` (this rank's stage and shard) from ``ckpt_dir``.

    Args:
        model: the stage to fill.
        ckpt_dir: a checkpoint directory (see :mod:`megatron_adept.checkpoint.resolve` for
            training save directories).
        layer_sources: read model layer ``j`` from checkpoint layer ``layer_sources[j]``;
            layers not in the map are left untouched (the copies of an expansion, filled
            afterwards). None reads every layer from its own index.
    """
    verify_manifest(ckpt_dir)
    request = {}
    for name, sharded in _in_place_sharded_state_dict(model).items():
        match = LAYER_KEY.match(sharded.key)
        if match is not None and layer_sources is not None:
            layer = int(match.group(1))
            if layer not in layer_sources:
                continue
            sharded.key = f"decoder.layers.{layer_sources[layer]}.{sharded.key[match.end() :]}"
        request[name] = sharded
    try:
        # megatron's "missing" keys are checkpoint keys nobody asked for (e.g. the optimizer
        # state of a training checkpoint); "unexpected" ones are requested but absent.
        loaded, _missing, absent = dist_checkpointing.load(
            request, str(ckpt_dir), strict=StrictHandling.RETURN_ALL
        )
    except (CheckpointingException, FileNotFoundError, OSError, RuntimeError, KeyError) as exc:
        raise _unreadable(ckpt_dir, exc) from None
    if absent:
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} lacks {len(absent)} tensor(s) the model needs, "
            f"e.g. {sorted(absent)[:3]}"
        )
    incompatible = model.load_state_dict(loaded, strict=False)
    unfilled = [k for k in incompatible.missing_keys if k in request]
    if unfilled:
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} did not provide {unfilled[:3]}")


def load_model(
    ckpt: str | Path,
    parallel: ParallelConfig,
    params_dtype: torch.dtype = torch.float32,
    recompute_activations: bool = False,
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build this rank's stage for the checkpoint's architecture and load its weights.

    ``ckpt`` may be a training save directory: its latest checkpoint is read.
    """
    ckpt_dir, _ = resolve_load(ckpt)
    meta = CheckpointMeta.load(ckpt_dir)
    validate_layout(meta.arch, parallel, torch.distributed.get_world_size())
    model = build_model(
        meta.arch, parallel, params_dtype, recompute_activations, init_weights=False
    )
    load_model_weights(model, ckpt_dir)
    return model, meta


class CheckpointTensors:
    """Whole tensors of a checkpoint, read a few at a time (the export reads layer by layer).

    Shapes and dtypes come from the checkpoint's metadata, readable before any process group
    exists; :meth:`read` needs the (single-process) group.
    """

    def __init__(self, ckpt: Path) -> None:
        self.ckpt = str(ckpt)
        verify_manifest(ckpt)
        try:
            self.stored = dist_checkpointing.load_tensors_metadata(self.ckpt)
        except (CheckpointingException, OSError, RuntimeError) as exc:
            raise _unreadable(ckpt, exc) from None

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self.stored:
            raise CheckpointError(f"checkpoint {self.ckpt!r} lacks tensor {key}")
        return tuple(self.stored[key].global_shape)

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        request = {
            key: ShardedTensor.from_rank_offsets(
                key, torch.empty(self.shape(key), dtype=self.stored[key].dtype), replica_id=0
            )
            for key in keys
        }
        return dist_checkpointing.load(request, self.ckpt)
