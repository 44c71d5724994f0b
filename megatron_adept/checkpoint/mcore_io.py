"""Model weights in megatron-core ``dist_checkpointing`` format, loadable at any layout.

Layers are stored under per-layer keys (``decoder.layers.{i}.…``, global 0-based ``i``), so a
checkpoint is independent of tensor, pipeline and data parallelism, and expansion or merging
can address layers by key. ``_extra_state`` entries (empty for the local spec, FP8 metadata for
Transformer Engine) are not stored: checkpoints hold weights only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.validation import StrictHandling

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import CheckpointError
from megatron_adept.models.builder import build_model
from megatron_adept.parallel.layout import validate_layout


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
    """Collective: every rank writes its shards; rank 0 writes ``adept_meta.json``."""
    ckpt_dir = Path(ckpt_dir)
    if dist.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model_sharded_state_dict(model), str(ckpt_dir))
    if dist.get_rank() == 0:
        meta.save(ckpt_dir)
    dist.barrier()


def load_model_weights(model: torch.nn.Module, ckpt_dir: str | Path) -> None:
    """Collective: fill ``model`` (this rank's stage and shard) from ``ckpt_dir``."""
    sharded = model_sharded_state_dict(model)
    try:
        loaded, missing, _unexpected = dist_checkpointing.load(
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
    absent = [k for k in incompatible.missing_keys if not k.endswith("_extra_state")]
    if absent:
        raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} did not provide {absent[:3]}")


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
