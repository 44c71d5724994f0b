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
from megatron_adept.checkpoint.layer_copies import initialize_copies, original_positions
from megatron_adept.checkpoint.mcore_io import load_model_weights, write_checkpoint
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta
from megatron_adept.checkpoint.resolve import resolve_load
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
        load: a converted or trained checkpoint that has not been expanded yet (a training
            save directory stands for its latest checkpoint).
        out: output checkpoint directory, created atomically.
        plan: the original layers to duplicate.
        overwrite: replace an existing non-empty ``out``.
    """
    load, _ = resolve_load(load)
    meta = CheckpointMeta.load(load)
    meta.layer_map.require_unexpanded(load)
    if plan.num_layers != meta.arch.num_layers:
        raise AdeptError(
            f"the plan is for {plan.num_layers} layers, {load} has {meta.arch.num_layers}"
        )
    if not dist_checkpointing.check_is_distributed_checkpoint(str(load)):
        raise CheckpointError(f"{str(load)!r} holds no dist_checkpointing weights")
    check_output_dir(out, overwrite)
    layer_map = plan.layer_map()
    arch = meta.arch.with_layers(len(layer_map))
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
    )
    with runtime.single_process():
        dtype = dtype_from_name(arch.dtype)
        model = build_model(arch, ParallelConfig(), dtype, init_weights=False, on_cpu=True)
        positions = original_positions(layer_map)
        load_model_weights(model, load, {new: old for old, new in positions.items()})
        initialize_copies(model, layer_map)
        side_files = meta.tokenizer_path(load) or load / TOKENIZER_DIR
        new_meta = write_checkpoint(model, out, new_meta, side_files, overwrite)
    logger.info("copies of layers %s (%s)", list(plan.selected), plan.how)
    return new_meta
