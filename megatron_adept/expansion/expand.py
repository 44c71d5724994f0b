"""ADEPT Stage 1 expansion of a megatron checkpoint: function-preserving duplicated layers.

Each selected layer is duplicated and its copy inserted right after it. The copy starts with
zero attention output and MLP down projections and exact copies of everything else
(:mod:`megatron_adept.checkpoint.layer_copies`), so the expanded model computes exactly what
the original did. ``tools/convert_hf.py --expand-layers`` performs the same expansion while
converting from Hugging Face, through the same layer map and copy initialisation.

Memory: the expanded model is built without initialisation and the original layers are read
by ``dist_checkpointing`` in place into their new positions (keys remapped), so the process
holds one copy of the expanded model plus the tensor being read, never a second model.
"""

from __future__ import annotations

from pathlib import Path

from megatron.core import dist_checkpointing

from megatron_adept.checkpoint.atomic import check_output_dir
from megatron_adept.checkpoint.convert import SIDE_FILES, load_whole_model, save_whole_model
from megatron_adept.checkpoint.hf_io import copy_files
from megatron_adept.checkpoint.layer_copies import initialize_copies, original_positions
from megatron_adept.checkpoint.manifest import checkpoint_output_dir
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta
from megatron_adept.config.parallel import ParallelConfig, dtype_from_name
from megatron_adept.errors import AdeptError, CheckpointError
from megatron_adept.expansion.plan import ExpansionPlan
from megatron_adept.models.builder import build_model
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)


def expand_checkpoint(
    load: str | Path, out: str | Path, plan: ExpansionPlan, overwrite: bool = False
) -> CheckpointMeta:
    """Write ``out``: the checkpoint ``load`` with the layers of ``plan`` duplicated.

    Args:
        load: a converted or trained checkpoint that has not been expanded yet.
        out: output checkpoint directory, created atomically.
        plan: the original layers to duplicate.
        overwrite: replace an existing non-empty ``out``.
    """
    load = Path(load)
    meta = CheckpointMeta.load(load)
    if meta.layer_map.copy_indices:
        raise AdeptError(f"{load} is already expanded; expand its original checkpoint instead")
    if plan.num_layers != meta.arch.num_layers:
        raise AdeptError(
            f"the plan is for {plan.num_layers} layers, {load} has {meta.arch.num_layers}"
        )
    if not dist_checkpointing.check_is_distributed_checkpoint(str(load)):
        raise CheckpointError(f"{str(load)!r} holds no dist_checkpointing weights")
    check_output_dir(out, overwrite)
    layer_map = plan.layer_map()
    arch = meta.arch.with_layers(len(layer_map))
    runtime.initialize_single_process()
    model = build_model(arch, ParallelConfig(), dtype_from_name(arch.dtype), init_weights=False)
    positions = original_positions(layer_map)
    load_whole_model(model, load, layer_sources={new: old for old, new in positions.items()})
    initialize_copies(model, layer_map)
    side_files = meta.tokenizer_path(load) or load / TOKENIZER_DIR
    new_meta = CheckpointMeta(
        arch,
        layer_map,
        source={
            "tool": "expand_ckpt",
            "load": str(load.resolve()),
            "expansion": plan.how,
            "copies_of": list(plan.selected),
            "parent": meta.source,
        },
        tokenizer=TOKENIZER_DIR if meta.tokenizer is not None and side_files.is_dir() else None,
    )
    with checkpoint_output_dir(out, overwrite) as tmp:
        save_whole_model(model, tmp, new_meta)
        copy_files(side_files, tmp / TOKENIZER_DIR, SIDE_FILES)
    logger.info("wrote %s: copies of layers %s (%s)", out, list(plan.selected), plan.how)
    return new_meta
