"""Function-preserving layer copies (Net2Net-style), shared by every path that expands.

A copy starts as an exact duplicate of its original except that the tensors writing into the
residual stream — the attention output projection and the MLP down projection — are zero, so
the copy adds nothing and the expanded model computes exactly what the original did.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_adept.checkpoint.atomic import atomic_output_dir, check_output_dir
from megatron_adept.checkpoint.hf_io import copy_tokenizer_files
from megatron_adept.checkpoint.hf_mapping import OUTPUT_PROJECTIONS
from megatron_adept.checkpoint.mcore_io import load_model_weights, save_model
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerMap
from megatron_adept.config.parallel import ParallelConfig, dtype_from_name
from megatron_adept.errors import AdeptError
from megatron_adept.expansion.plan import ExpansionPlan
from megatron_adept.models.builder import build_model
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)

_ZEROED = tuple(name.split("{i}.", 1)[1] for name in OUTPUT_PROJECTIONS)
"""Parameter names inside a layer that are zero in a copy."""


def original_positions(layer_map: LayerMap) -> dict[int, int]:
    """Original layer index -> its position in the expanded model."""
    return {e.source: i for i, e in enumerate(layer_map.layers) if e.kind == "original"}


@torch.no_grad()
def initialize_copies(model: torch.nn.Module, layer_map: LayerMap) -> None:
    """Fill every copy layer of a whole (single-stage) model from its original.

    The originals must already hold their weights.
    """
    params = dict(model.named_parameters())
    positions = original_positions(layer_map)
    for index in layer_map.copy_indices:
        source = positions[layer_map.layers[index].source]
        prefix, source_prefix = f"decoder.layers.{index}.", f"decoder.layers.{source}."
        for name, param in params.items():
            if name.startswith(prefix):
                local = name[len(prefix) :]
                if local in _ZEROED:
                    param.zero_()
                else:
                    param.copy_(params[source_prefix + local])


def expand_checkpoint(
    load: str | Path, out: str | Path, plan: ExpansionPlan, overwrite: bool = False
) -> CheckpointMeta:
    """Expand a megatron checkpoint: originals are read straight into the expanded model.

    The expanded model is built uninitialised; each original layer is loaded from the source
    checkpoint directly into its new position (no second copy of the model is held), then the
    copies are filled in memory from their originals.
    """
    meta = CheckpointMeta.load(load)
    if meta.layer_map.copy_indices:
        raise AdeptError(f"{load} is already expanded; expand its original checkpoint instead")
    check_output_dir(out, overwrite)
    layer_map = plan.layer_map(meta.arch.num_layers)
    arch = meta.arch.with_layers(len(layer_map))
    runtime.initialize_single_process()
    model = build_model(arch, ParallelConfig(), dtype_from_name(arch.dtype), init_weights=False)
    sources = {position: layer for layer, position in original_positions(layer_map).items()}
    load_model_weights(model, load, layer_sources=sources)
    initialize_copies(model, layer_map)
    new_meta = CheckpointMeta(
        arch,
        layer_map,
        source={
            "tool": "expand_ckpt",
            "load": str(Path(load).resolve()),
            "expansion": plan.how,
            "parent": meta.source,
        },
        tokenizer=meta.tokenizer,
    )
    with atomic_output_dir(out, overwrite) as tmp:
        tokenizer = meta.tokenizer_path(load)
        if tokenizer is not None:
            copy_tokenizer_files(tokenizer, tmp / TOKENIZER_DIR)
        save_model(model, tmp, new_meta)
    logger.info("wrote %s: copies of layers %s", out, list(plan.selected))
    return new_meta
