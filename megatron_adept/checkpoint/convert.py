"""Hugging Face <-> megatron-core checkpoint conversion, optionally expanding layers on the way.

Both directions run in one process and stream, so peak memory stays near one copy of the
output (see ``benchmarks/convert_memory.py`` for measurements):

- HF -> megatron reads one HF tensor at a time straight into the parameters of a TP=1/PP=1
  model built without initialisation (its untouched memory is not resident), then writes a
  ``dist_checkpointing`` checkpoint that loads at any TP/PP/DP layout. The fused MLP input
  is saved as one tensor, which spares megatron's save from copying its two halves.
- megatron -> HF reads one layer at a time from the checkpoint (no model is built) and
  appends each tensor to pre-planned safetensors shards.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch

from megatron_adept.checkpoint import hf_mapping
from megatron_adept.checkpoint.atomic import atomic_output_dir, check_output_dir
from megatron_adept.checkpoint.hf_io import SafetensorsReader, SafetensorsWriter, TensorSpec
from megatron_adept.checkpoint.layer_copies import initialize_copies, original_positions
from megatron_adept.checkpoint.mcore_io import (
    CheckpointTensors,
    model_sharded_state_dict,
    write_checkpoint,
)
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerMap
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.checkpoint.side_files import copy_files
from megatron_adept.config.parallel import ParallelConfig, dtype_from_name
from megatron_adept.errors import AdeptError, CheckpointError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_model
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger

LAYER_MAP_FILE = "adept_layer_map.json"
"""Written into exported HF directories so that converting them back keeps the layer map."""

logger = get_logger(__name__)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Progress:
    """Tensors done / total with throughput, logged every few seconds and at the end."""

    def __init__(self, total: int, what: str, interval: float = 5.0) -> None:
        self.total, self.what, self.interval = total, what, interval
        self.done, self.bytes = 0, 0
        self.start = self.last = time.monotonic()

    def step(self, tensor: torch.Tensor) -> None:
        self.done += 1
        self.bytes += tensor.numel() * tensor.element_size()
        now = time.monotonic()
        if now - self.last > self.interval or self.done == self.total:
            self.last = now
            rate = self.bytes / max(now - self.start, 1e-9) / 2**20
            logger.info("%s: %d/%d tensors, %.1f MB/s", self.what, self.done, self.total, rate)


def _read_layer_map(hf_dir: Path, arch: ModelArch) -> LayerMap:
    """The layer map an earlier export left in ``hf_dir``, else every layer an original."""
    path = hf_dir / LAYER_MAP_FILE
    if not path.is_file():
        return LayerMap.identity(arch.num_layers)
    try:
        layer_map = LayerMap.from_list(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a layer map ({exc})") from None
    if len(layer_map) != arch.num_layers:
        raise CheckpointError(f"{path} has {len(layer_map)} layers, config.json {arch.num_layers}")
    return layer_map


def _target_layer_map(hf_dir: Path, arch: ModelArch, expansion: LayerMap | None) -> LayerMap:
    source_map = _read_layer_map(hf_dir, arch)
    if expansion is None:
        return source_map
    source_map.require_unexpanded(hf_dir)
    if expansion.num_original != arch.num_layers:
        raise AdeptError(
            f"the expansion is for {expansion.num_original} original layers, "
            f"{hf_dir} has {arch.num_layers}"
        )
    return expansion


def _validate_hf_tensors(reader: SafetensorsReader, arch: ModelArch) -> None:
    """Names and shapes against what config.json implies, before anything is built."""
    expected = hf_mapping.expected_hf_shapes(arch)
    names = reader.names()
    missing = [name for name in expected if name not in names]
    if missing:
        raise CheckpointError(
            f"{len(missing)} tensor(s) missing in {reader.hf_dir}: {', '.join(missing[:4])}"
        )
    allowed_extra = {"lm_head.weight"} if arch.tie_word_embeddings else set()
    extra = sorted(names - set(expected) - allowed_extra)
    if extra:
        raise CheckpointError(
            f"{len(extra)} unexpected tensor(s) in {reader.hf_dir}: {', '.join(extra[:4])}"
        )
    for name, shape in expected.items():
        actual = reader.info(name).shape
        if actual != shape:
            raise CheckpointError(f"{name} has shape {actual} but config.json implies {shape}")


def convert_hf_to_mcore(
    hf_dir: str | Path,
    out: str | Path,
    dtype: str | None = None,
    expansion: LayerMap | None = None,
    overwrite: bool = False,
) -> CheckpointMeta:
    """Write a megatron-core checkpoint (plus metadata and tokenizer) from an HF directory.

    Args:
        hf_dir: directory with ``config.json`` and safetensors weights (sharded or not).
        out: output checkpoint directory, created atomically.
        dtype: ``fp32``/``bf16``/``fp16`` to override the source tensors' dtype.
        expansion: layer map of the expanded model to write (see
            :meth:`~megatron_adept.expansion.plan.ExpansionPlan.layer_map`): each original
            is read into its new position and the copies are initialised function-preserving.
        overwrite: replace an existing non-empty ``out``.
    """
    hf_dir = Path(hf_dir)
    source_arch = ModelArch.from_hf_dir(hf_dir)
    check_output_dir(out, overwrite)
    layer_map = _target_layer_map(hf_dir, source_arch, expansion)
    reader = SafetensorsReader(hf_dir)
    _validate_hf_tensors(reader, source_arch)
    params_dtype = (
        dtype_from_name(dtype) if dtype else reader.info("model.embed_tokens.weight").dtype
    )
    arch = dataclasses.replace(
        source_arch.with_layers(len(layer_map)), dtype=_dtype_name(params_dtype)
    )
    meta = CheckpointMeta(
        arch,
        layer_map,
        source={
            "tool": "convert_hf",
            "hf_dir": str(hf_dir.resolve()),
            "copies_of": layer_map.copied_sources,
        },
    )
    with runtime.single_process():
        model = build_model(arch, ParallelConfig(), params_dtype, init_weights=False, on_cpu=True)
        if expansion is None:
            # every HF layer (copies of an exported expansion included) keeps its position
            positions = {i: i for i in range(source_arch.num_layers)}
            _fill_from_hf(model, reader, source_arch, positions)
        else:
            _fill_from_hf(model, reader, source_arch, original_positions(layer_map))
            initialize_copies(model, layer_map)
        return write_checkpoint(model, out, meta, hf_dir, overwrite)


@torch.no_grad()
def _fill_from_hf(
    model: torch.nn.Module,
    reader: SafetensorsReader,
    arch: ModelArch,
    positions: dict[int, int],
) -> None:
    """Read every HF tensor once into the model tensor it belongs to.

    Args:
        positions: HF layer index -> layer position in ``model``.
    """
    targets = {sharded.key: sharded.data for sharded in model_sharded_state_dict(model).values()}
    order = hf_mapping.streaming_order(arch)
    progress = Progress(len(order), "HF -> megatron")
    for row, layer in order:
        tensor = row.to_mcore(arch, [reader.get(hf_mapping.fill(n, layer)) for n in row.hf])
        target = targets[hf_mapping.fill(row.mcore, None if layer is None else positions[layer])]
        if row.mcore in hf_mapping.VOCAB_ROWS:
            target[tensor.shape[0] :].zero_()
            target = target[: tensor.shape[0]]
        target.copy_(tensor)
        progress.step(tensor)


def _hf_specs(arch: ModelArch, stored: CheckpointTensors, dtype: torch.dtype) -> list[TensorSpec]:
    """The HF tensors an export writes, checked against the stored megatron shapes."""
    expected = hf_mapping.expected_hf_shapes(arch)
    for row, layer in hf_mapping.streaming_order(arch):
        shape = stored.shape(hf_mapping.fill(row.mcore, layer))
        if row.mcore in hf_mapping.VOCAB_ROWS:
            shape = (min(shape[0], arch.vocab_size), *shape[1:])
        parts = row.to_hf(arch, torch.empty(shape, device="meta"))
        for name, part in zip(row.hf, parts, strict=True):
            name = hf_mapping.fill(name, layer)
            if tuple(part.shape) != expected[name]:
                raise CheckpointError(
                    f"{name} would have shape {tuple(part.shape)} but the checkpoint's "
                    f"architecture implies {expected[name]}"
                )
    return [TensorSpec(name, shape, dtype) for name, shape in expected.items()]


def convert_mcore_to_hf(
    ckpt: str | Path,
    out: str | Path,
    dtype: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Export a checkpoint as an HF directory that ``AutoModelForCausalLM`` loads as is.

    Args:
        ckpt: a checkpoint written by this project (converted, expanded or trained), or a
            training save directory (its latest checkpoint).
        out: output directory, created atomically.
        dtype: ``fp32``/``bf16``/``fp16``; defaults to the checkpoint's dtype.
        overwrite: replace an existing non-empty ``out``.
        max_shard_bytes: largest safetensors shard.
    """
    ckpt, _ = resolve_load(ckpt)
    meta = CheckpointMeta.load(ckpt)
    check_output_dir(out, overwrite)
    out_dtype = dtype_from_name(dtype or meta.arch.dtype)
    arch = dataclasses.replace(meta.arch, dtype=_dtype_name(out_dtype))
    stored = CheckpointTensors(ckpt)
    specs = _hf_specs(arch, stored, out_dtype)
    order = hf_mapping.streaming_order(arch)
    progress = Progress(len(order), "megatron -> HF")
    with (
        runtime.single_process(),
        atomic_output_dir(out, overwrite) as tmp,
        SafetensorsWriter(tmp, specs, max_shard_bytes) as writer,
    ):
        for layer, group in itertools.groupby(order, key=lambda item: item[1]):
            rows = [row for row, _ in group]
            tensors = stored.read([hf_mapping.fill(row.mcore, layer) for row in rows])
            for row in rows:
                tensor = tensors.pop(hf_mapping.fill(row.mcore, layer))
                if row.mcore in hf_mapping.VOCAB_ROWS:
                    tensor = tensor[: arch.vocab_size]
                for name, part in zip(row.hf, row.to_hf(arch, tensor), strict=True):
                    writer.write(hf_mapping.fill(name, layer), part.to(out_dtype))
                progress.step(tensor)
        (tmp / "config.json").write_text(json.dumps(arch.to_hf_config(), indent=2) + "\n")
        (tmp / LAYER_MAP_FILE).write_text(json.dumps(meta.layer_map.to_list(), indent=1) + "\n")
        side_files = meta.tokenizer_path(ckpt) or ckpt / TOKENIZER_DIR
        if meta.tokenizer is not None and not side_files.is_dir():
            logger.warning("tokenizer directory %s is missing; exporting without it", side_files)
        copy_files(side_files, tmp)
    logger.info("wrote %s (%d layers, %s)", out, arch.num_layers, arch.dtype)
    return Path(out)
