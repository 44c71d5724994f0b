"""Hugging Face <-> megatron-core checkpoint conversion, optionally expanding layers on the way.

Both directions run in one process at TP=1/PP=1 and stream: HF tensors are read one at a time
straight into the parameters of an uninitialised megatron model (whose untouched memory is
not resident), and exports are written shard by shard. Peak memory is therefore about one copy
of the output model plus one layer's tensors. The result loads at any parallel layout.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_adept.checkpoint import hf_mapping
from megatron_adept.checkpoint.atomic import atomic_output_dir, check_output_dir
from megatron_adept.checkpoint.hf_io import (
    SafetensorsReader,
    SafetensorsWriter,
    copy_tokenizer_files,
)
from megatron_adept.checkpoint.mcore_io import load_model, save_model
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerMap
from megatron_adept.config.cli import arg
from megatron_adept.config.parallel import ParallelConfig, dtype_from_name
from megatron_adept.errors import AdeptError, CheckpointError
from megatron_adept.expansion.expand import initialize_copies, original_positions
from megatron_adept.expansion.plan import ExpansionPlan
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_model
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger

LAYER_MAP_FILE = "adept_layer_map.json"
"""Written into exported HF directories so that re-importing keeps the layer map."""

logger = get_logger(__name__)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class _Progress:
    """Tensors done / total with throughput, logged every few seconds."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done, self.bytes = total, what, 0, 0
        self.start = self.last = time.monotonic()

    def step(self, tensor: torch.Tensor) -> None:
        self.done += 1
        self.bytes += tensor.numel() * tensor.element_size()
        now = time.monotonic()
        if now - self.last > 5 or self.done == self.total:
            self.last = now
            rate = self.bytes / max(now - self.start, 1e-9) / 2**20
            logger.info("%s: %d/%d tensors, %.1f MB/s", self.what, self.done, self.total, rate)


def _read_layer_map(hf_dir: Path, arch: ModelArch) -> LayerMap:
    path = hf_dir / LAYER_MAP_FILE
    if not path.is_file():
        return LayerMap.identity(arch.num_layers)
    layer_map = LayerMap.from_list(json.loads(path.read_text()))
    if len(layer_map) != arch.num_layers:
        raise CheckpointError(f"{path} has {len(layer_map)} layers, config.json {arch.num_layers}")
    return layer_map


def _validate_hf_tensors(reader: SafetensorsReader, arch: ModelArch) -> None:
    expected = hf_mapping.expected_hf_shapes(arch)
    names = reader.names()
    missing = sorted(set(expected) - names)
    if missing:
        raise CheckpointError(f"missing tensor(s) in {reader.hf_dir}: {', '.join(missing[:4])}")
    allowed_extra = {"lm_head.weight"} if arch.tie_word_embeddings else set()
    extra = sorted(names - set(expected) - allowed_extra)
    if extra:
        raise CheckpointError(f"unexpected tensor(s) in {reader.hf_dir}: {', '.join(extra[:4])}")
    for name, shape in expected.items():
        actual = reader.shape(name)
        if actual != shape:
            raise CheckpointError(f"{name} has shape {actual} but config.json implies {shape}")


def convert_hf_to_mcore(
    hf_dir: str | Path,
    out: str | Path,
    dtype: str | None = None,
    plan: ExpansionPlan | None = None,
    overwrite: bool = False,
) -> CheckpointMeta:
    """Write a megatron-core checkpoint (plus metadata and tokenizer) from an HF directory.

    Args:
        hf_dir: directory with ``config.json`` and safetensors weights (sharded or not).
        out: output checkpoint directory (created atomically).
        dtype: ``fp32``/``bf16``/``fp16`` to override the source dtype.
        plan: layers to duplicate with function-preserving copies while converting.
        overwrite: replace an existing non-empty ``out``.
    """
    hf_dir = Path(hf_dir)
    source_arch = ModelArch.from_hf_dir(hf_dir)
    source_map = _read_layer_map(hf_dir, source_arch)
    if plan is not None and source_map.copy_indices:
        raise AdeptError(f"{hf_dir} is already expanded; expand its original checkpoint instead")
    check_output_dir(out, overwrite)
    reader = SafetensorsReader(hf_dir)
    try:
        _validate_hf_tensors(reader, source_arch)
        layer_map = plan.layer_map(source_arch.num_layers) if plan else source_map
        params_dtype = dtype_from_name(dtype or source_arch.dtype)
        arch = dataclasses.replace(
            source_arch.with_layers(len(layer_map)), dtype=_dtype_name(params_dtype)
        )
        runtime.initialize_single_process()
        model = build_model(arch, ParallelConfig(), params_dtype, init_weights=False)
        _fill_from_hf(model, reader, source_arch, layer_map)
    finally:
        reader.close()
    initialize_copies(model, layer_map)
    meta = CheckpointMeta(
        arch,
        layer_map,
        source={
            "tool": "convert_hf",
            "hf_dir": str(hf_dir.resolve()),
            "expansion": plan and plan.how,
        },
    )
    with atomic_output_dir(out, overwrite) as tmp:
        if copy_tokenizer_files(hf_dir, tmp / TOKENIZER_DIR):
            meta.tokenizer = TOKENIZER_DIR
        save_model(model, tmp, meta)
    logger.info("wrote %s (%d layers, %s)", out, arch.num_layers, arch.dtype)
    return meta


@torch.no_grad()
def _fill_from_hf(
    model: torch.nn.Module, reader: SafetensorsReader, arch: ModelArch, layer_map: LayerMap
) -> None:
    params = dict(model.named_parameters())
    positions = original_positions(layer_map)
    rows = hf_mapping.rows_for(arch)
    progress = _Progress(sum(len(positions) if r.per_layer else 1 for r in rows), "HF -> megatron")
    for row in rows:
        targets = positions.items() if row.per_layer else [(None, None)]
        for source, target in targets:
            parts = [reader.get(hf_mapping.fill(name, source)) for name in row.hf]
            tensor = row.merge(arch, *parts) if row.merge else parts[0]
            param = params[hf_mapping.fill(row.mcore, target)]
            if row.mcore in hf_mapping.VOCAB_ROWS:
                param[: tensor.shape[0]].copy_(tensor)
                param[tensor.shape[0] :].zero_()
            else:
                param.copy_(tensor)
            progress.step(param)
            del parts, tensor


def convert_mcore_to_hf(
    ckpt: str | Path,
    out: str | Path,
    dtype: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 5 * 2**30,
) -> Path:
    """Export a checkpoint as an HF directory that ``AutoModelForCausalLM`` loads as is."""
    meta = CheckpointMeta.load(ckpt)
    check_output_dir(out, overwrite)
    params_dtype = dtype_from_name(dtype or meta.arch.dtype)
    runtime.initialize_single_process()
    model, _ = load_model(ckpt, ParallelConfig(), dtype_from_name(meta.arch.dtype))
    arch = dataclasses.replace(meta.arch, dtype=_dtype_name(params_dtype))
    params = dict(model.named_parameters())
    rows = hf_mapping.rows_for(arch)
    progress = _Progress(sum(arch.num_layers if r.per_layer else 1 for r in rows), "megatron -> HF")
    with atomic_output_dir(out, overwrite) as tmp:
        writer = SafetensorsWriter(tmp, max_shard_bytes)
        for row in rows:
            for layer in range(arch.num_layers) if row.per_layer else [None]:
                tensor = params[hf_mapping.fill(row.mcore, layer)].detach()
                if row.mcore in hf_mapping.VOCAB_ROWS:
                    tensor = tensor[: arch.vocab_size]
                parts = row.split(arch, tensor) if row.split else [tensor]
                for name, part in zip(row.hf, parts, strict=True):
                    writer.add(hf_mapping.fill(name, layer), part.to(params_dtype).clone())
                progress.step(tensor)
        writer.close()
        (tmp / "config.json").write_text(json.dumps(arch.to_hf_config(), indent=2) + "\n")
        (tmp / LAYER_MAP_FILE).write_text(json.dumps(meta.layer_map.to_list(), indent=1) + "\n")
        tokenizer = meta.tokenizer_path(ckpt)
        if tokenizer is not None:
            copy_tokenizer_files(tokenizer, tmp)
    logger.info("wrote %s (%d layers, %s)", out, arch.num_layers, arch.dtype)
    return Path(out)


@dataclass
class ConvertConfig:
    """What to convert, and where to."""

    out: str = arg(help="Output directory (a checkpoint, or an HF directory with --to-hf).")
    hf_dir: str | None = arg(None, "Hugging Face model directory (config.json + safetensors).")
    to_hf: bool = arg(
        False, "Export the megatron checkpoint given by --load to Hugging Face format."
    )
    load: str | None = arg(None, "Megatron checkpoint to export (with --to-hf).")
    dtype: str | None = arg(None, "Override the parameter dtype.", choices=("fp32", "bf16", "fp16"))
    overwrite: bool = arg(False, "Replace a non-empty output directory.")
    max_shard_size_gb: float = arg(5.0, "Largest safetensors shard written by --to-hf, in GiB.")

    def __post_init__(self) -> None:
        if self.to_hf and (self.load is None or self.hf_dir is not None):
            raise AdeptError("--to-hf needs --load CKPT (and no --hf-dir)")
        if not self.to_hf and (self.hf_dir is None or self.load is not None):
            raise AdeptError(
                "give --hf-dir DIR to convert from Hugging Face, or --to-hf --load CKPT"
            )
        if self.max_shard_size_gb <= 0:
            raise AdeptError(f"--max-shard-size-gb={self.max_shard_size_gb} must be positive")
