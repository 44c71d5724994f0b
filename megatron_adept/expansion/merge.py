"""Merging expansions trained on different domains from one base (ADEPT App. J).

Checkpoints expanded from the same base with the same layer map differ only in their copy
layers: Stage 2 trains nothing else. The merge takes every original tensor (original layers,
embeddings, final norm, output layer) from the base checkpoint and sets every tensor of a copy
layer to the weighted mean of the inputs' tensors (weights normalised to sum to 1, accumulated
in fp32, then cast to the checkpoint's dtype).

Inputs are refused unless they share the architecture and the layer map, the base is their
unexpanded original (or has the same layer map), and every original tensor of every input
equals the base's bit for bit. The merge runs in one process at TP=1/PP=1 and holds two models:
the result and the input being read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megatron_adept.checkpoint.atomic import check_output_dir
from megatron_adept.checkpoint.layer_copies import original_positions
from megatron_adept.checkpoint.mcore_io import load_model_weights, write_checkpoint
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerMap
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.config.parallel import ParallelConfig, dtype_from_name
from megatron_adept.errors import CheckpointError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_model
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)


def _arch_difference(a: ModelArch, b: ModelArch) -> str:
    fields = [f.name for f in dataclasses.fields(ModelArch)]
    return ", ".join(
        f"{name} {getattr(a, name)} vs {getattr(b, name)}"
        for name in fields
        if getattr(a, name) != getattr(b, name)
    )


def check_mergeable(base: CheckpointMeta, inputs: dict[str, CheckpointMeta]) -> LayerMap:
    """The shared layer map, or :class:`CheckpointError` saying why the inputs do not merge.

    Args:
        base: metadata of the ``--base`` checkpoint.
        inputs: input path -> its metadata, in command-line order.
    """
    (first, first_meta), *others = inputs.items()
    layer_map = first_meta.layer_map
    if not layer_map.copy_indices:
        raise CheckpointError(f"{first!r} has no copy layers: it is not an expanded checkpoint")
    for path, meta in others:
        if meta.arch != first_meta.arch:
            raise CheckpointError(
                f"{path!r} and {first!r} have different architectures: "
                f"{_arch_difference(meta.arch, first_meta.arch)}"
            )
        if meta.layer_map != layer_map:
            raise CheckpointError(
                f"{path!r} and {first!r} have different layer maps (copies at "
                f"{meta.layer_map.copy_indices} vs {layer_map.copy_indices}, sources "
                f"{[e.source for e in meta.layer_map.layers]} vs "
                f"{[e.source for e in layer_map.layers]}); only expansions of the same layers "
                "can be merged"
            )
    unexpanded = base.layer_map == LayerMap.identity(layer_map.num_original)
    if not unexpanded and base.layer_map != layer_map:
        raise CheckpointError(
            f"base has layer map with copies at {base.layer_map.copy_indices}; it must be the "
            f"unexpanded original of {first!r} (or share its layer map)"
        )
    base_arch = base.arch.with_layers(len(layer_map))
    if base_arch != first_meta.arch:
        raise CheckpointError(
            f"{first!r} was not expanded from the base: different architecture "
            f"({_arch_difference(first_meta.arch, base_arch)})"
        )
    return layer_map


def _copy_layer_params(
    model: torch.nn.Module, layer_map: LayerMap
) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.nn.Parameter]]:
    """(copy-layer parameters, all other parameters) of a whole model, by name."""
    prefixes = tuple(f"decoder.layers.{i}." for i in layer_map.copy_indices)
    copies, originals = {}, {}
    for name, param in model.named_parameters():
        (copies if name.startswith(prefixes) else originals)[name] = param
    return copies, originals


@torch.no_grad()
def merge_expansions(
    base: str | Path,
    inputs: list[str],
    weights: list[float],
    out: str | Path,
    overwrite: bool = False,
) -> CheckpointMeta:
    """Write the merged checkpoint to ``out`` (atomically); ``weights`` must sum to 1."""
    base, _ = resolve_load(base)
    inputs = [str(resolve_load(path)[0]) for path in inputs]
    base_meta = CheckpointMeta.load(base)
    metas = {path: CheckpointMeta.load(path) for path in inputs}
    layer_map = check_mergeable(base_meta, metas)
    check_output_dir(out, overwrite)
    arch = metas[inputs[0]].arch
    meta = CheckpointMeta(
        arch,
        layer_map,
        source={
            "tool": "merge_expansions",
            "base": str(base.resolve()),
            "inputs": [str(Path(path).resolve()) for path in inputs],
            "weights": weights,
            "parents": [metas[path].source for path in inputs],
        },
    )
    with runtime.single_process():
        merged = _merged_model(base, base_meta, inputs, weights, layer_map, arch)
        side_files = base_meta.tokenizer_path(base) or base / TOKENIZER_DIR
        meta = write_checkpoint(merged, out, meta, side_files, overwrite)
    logger.info("merged copy layers %s", layer_map.copy_indices)
    return meta


def _merged_model(
    base: Path,
    base_meta: CheckpointMeta,
    inputs: list[str],
    weights: list[float],
    layer_map: LayerMap,
    arch: ModelArch,
) -> torch.nn.Module:
    """A whole model with the base's originals and the weighted mean of the inputs' copies."""
    dtype = dtype_from_name(arch.dtype)
    merged = build_model(arch, ParallelConfig(), dtype, init_weights=False, on_cpu=True)
    in_base = original_positions(base_meta.layer_map)
    sources = {i: in_base[e.source] for i, e in enumerate(layer_map.layers) if e.kind == "original"}
    load_model_weights(merged, base, layer_sources=sources)
    reader = build_model(arch, ParallelConfig(), dtype, init_weights=False, on_cpu=True)
    merged_copies, merged_originals = _copy_layer_params(merged, layer_map)
    read_copies, read_originals = _copy_layer_params(reader, layer_map)
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in merged_copies.items()}
    for path, weight in zip(inputs, weights, strict=True):
        load_model_weights(reader, path)
        for name, param in read_originals.items():
            if not torch.equal(param, merged_originals[name]):
                raise CheckpointError(
                    f"{path!r} was not expanded from base {str(base)!r}: its original tensor "
                    f"{name} differs"
                )
        for name, param in read_copies.items():
            sums[name] += weight * param.float()
        logger.info("read %s (weight %g)", path, weight)
    del reader, read_copies, read_originals
    for name, param in merged_copies.items():
        param.copy_(sums[name])
    return merged
