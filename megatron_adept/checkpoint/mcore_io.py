"""Model weights in megatron-core ``dist_checkpointing`` format, loadable at any layout.

Layers are stored under per-layer keys (``decoder.layers.{i}.…``, global 0-based ``i``), so a
checkpoint is independent of tensor, pipeline and data parallelism, and expansion or merging
can address layers by key. ``_extra_state`` entries (empty for the local spec, FP8 metadata for
Transformer Engine) are not stored: checkpoints hold weights only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding
from megatron.core.dist_checkpointing.validation import StrictHandling

from megatron_adept.checkpoint.manifest import verify_manifest, write_manifest
from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import CheckpointError
from megatron_adept.models.builder import build_model
from megatron_adept.parallel.layout import validate_layout
from megatron_adept.parallel.runtime import world_size_from_env

_LAYER_KEY = re.compile(r"decoder\.layers\.(\d+)\.")


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


def save_model(model: torch.nn.Module, ckpt_dir: str | Path, meta: CheckpointMeta) -> None:
    """Collective: every rank writes its shards; rank 0 writes ``adept_meta.json``.

    Not atomic by itself: tools wrap it in a temporary directory they rename when done.
    """
    ckpt_dir = Path(ckpt_dir)
    if dist.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model_sharded_state_dict(model), str(ckpt_dir))
    if dist.get_rank() == 0:
        meta.save(ckpt_dir)
    dist.barrier()
    write_manifest(ckpt_dir)
    dist.barrier()


def _layer_of(key: str) -> int | None:
    match = _LAYER_KEY.match(key)
    return int(match.group(1)) if match else None


def load_model_weights(
    model: torch.nn.Module, ckpt_dir: str | Path, layer_sources: dict[int, int] | None = None
) -> None:
    """Collective: fill ``model`` (this rank's stage and shard) from ``ckpt_dir``.

    Args:
        model: the stage to fill.
        ckpt_dir: a checkpoint directory written by :func:`save_model`.
        layer_sources: read model layer ``j`` from checkpoint layer ``layer_sources[j]``;
            layers not in the map are left untouched (used to expand a checkpoint: the copies
            are filled afterwards). None reads every layer from its own index.
    """
    verify_manifest(ckpt_dir)
    sharded = model_sharded_state_dict(model)
    if layer_sources is not None:
        remapped = {}
        for key, value in sharded.items():
            layer = _layer_of(value.key)
            if layer is None:
                remapped[key] = value
            elif layer in layer_sources:
                replace_prefix_for_sharding(
                    {key: value},
                    f"decoder.layers.{layer}.",
                    f"decoder.layers.{layer_sources[layer]}.",
                )
                remapped[key] = value
        sharded = remapped
    try:
        # megatron's "missing" keys are checkpoint keys nobody asked for (e.g. the optimizer
        # state of a training checkpoint); "unexpected" ones are requested but absent.
        loaded, _missing, missing = dist_checkpointing.load(
            sharded, str(ckpt_dir), strict=StrictHandling.RETURN_ALL
        )
    except (FileNotFoundError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot read checkpoint {str(ckpt_dir)!r}: {exc}") from None
    if missing:
        raise CheckpointError(
            f"checkpoint {str(ckpt_dir)!r} lacks {len(missing)} tensor(s) the model needs, "
            f"e.g. {sorted(missing)[:3]}"
        )
    incompatible = model.load_state_dict(loaded, strict=False)
    absent = [k for k in incompatible.missing_keys if k in sharded]
    if absent:
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} did not provide {absent[:3]}")


def check_checkpoint_layout(ckpt_dir: str | Path, parallel: ParallelConfig) -> CheckpointMeta:
    """Read a checkpoint's metadata, check the layout fits it and its files are whole.

    Tools call this before any process group, so that an impossible layout or a truncated
    file fails fast with a one-line error naming it, instead of after every rank started.
    """
    meta = CheckpointMeta.load(ckpt_dir)
    validate_layout(meta.arch, parallel, world_size_from_env())
    verify_manifest(ckpt_dir, checksums=False)
    return meta


def load_model(
    ckpt_dir: str | Path,
    parallel: ParallelConfig,
    params_dtype: torch.dtype = torch.float32,
    recompute_activations: bool = False,
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build this rank's stage for the checkpoint's architecture and load its weights."""
    meta = CheckpointMeta.load(ckpt_dir)
    validate_layout(meta.arch, parallel, dist.get_world_size())
    model = build_model(
        meta.arch, parallel, params_dtype, recompute_activations, init_weights=False
    )
    load_model_weights(model, ckpt_dir)
    return model, meta
