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
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedTensor
from megatron.core.dist_checkpointing.core import CheckpointingException
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
from megatron.core.dist_checkpointing.validation import StrictHandling

from megatron_adept.checkpoint import hf_mapping
from megatron_adept.checkpoint.atomic import atomic_output_dir, check_output_dir
from megatron_adept.checkpoint.hf_io import (
    GENERATION_FILES,
    TOKENIZER_FILES,
    SafetensorsReader,
    SafetensorsWriter,
    TensorSpec,
    copy_files,
)
from megatron_adept.checkpoint.layer_copies import initialize_copies, original_positions
from megatron_adept.checkpoint.manifest import checkpoint_output_dir, verify_manifest
from megatron_adept.checkpoint.mcore_io import model_sharded_state_dict
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerMap
from megatron_adept.config.cli import arg
from megatron_adept.config.parallel import ParallelConfig, dtype_from_name
from megatron_adept.errors import AdeptError, CheckpointError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_model
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger

LAYER_MAP_FILE = "adept_layer_map.json"
"""Written into exported HF directories so that converting them back keeps the layer map."""
SIDE_FILES = TOKENIZER_FILES + GENERATION_FILES
"""Non-weight files carried from an HF directory through the checkpoint to the export."""
_LAYER_KEY = re.compile(r"decoder\.layers\.(\d+)\.")

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
    if source_map.copy_indices:
        raise AdeptError(f"{hf_dir} is already expanded; expand its original checkpoint instead")
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
    runtime.initialize_single_process()
    model = build_model(arch, ParallelConfig(), params_dtype, init_weights=False)
    if expansion is None:
        # every HF layer (copies of an exported expansion included) keeps its position
        _fill_from_hf(model, reader, source_arch, {i: i for i in range(source_arch.num_layers)})
    else:
        _fill_from_hf(model, reader, source_arch, original_positions(layer_map))
        initialize_copies(model, layer_map)
    meta = CheckpointMeta(
        arch,
        layer_map,
        source={
            "tool": "convert_hf",
            "hf_dir": str(hf_dir.resolve()),
            "copies_of": layer_map.copied_sources,
        },
        tokenizer=TOKENIZER_DIR if any((hf_dir / f).is_file() for f in TOKENIZER_FILES) else None,
    )
    with checkpoint_output_dir(out, overwrite) as tmp:
        save_whole_model(model, tmp, meta)
        copy_files(hf_dir, tmp / TOKENIZER_DIR, SIDE_FILES)
    logger.info("wrote %s (%d layers, %s)", out, arch.num_layers, arch.dtype)
    return meta


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


def _whole_sharded_state_dict(model: torch.nn.Module) -> dict[str, ShardedTensor]:
    """A whole (TP=1, PP=1) model's sharded state dict, every entry backed by its parameter.

    megatron's save clones every tensor that is a view, and its ``linear_fc1`` factory splits
    the fused ``[gate; up]`` weight into two views (merged into a new tensor again on load):
    for a whole model that would add about half the model's size at the peak. A whole
    model's factory data is the full tensor, so it is described as one ``ShardedTensor`` under
    the same key instead; any TP reads the same global tensor either way.
    """
    return {
        name: ShardedTensor.from_rank_offsets(value.key, value.data, replica_id=value.replica_id)
        if isinstance(value, ShardedTensorFactory)
        else value
        for name, value in model_sharded_state_dict(model).items()
    }


def save_whole_model(model: torch.nn.Module, ckpt_dir: Path, meta: CheckpointMeta) -> None:
    """Save a whole model from a single process without copying any tensor."""
    dist_checkpointing.save(_whole_sharded_state_dict(model), str(ckpt_dir))
    meta.save(ckpt_dir)


def load_whole_model(
    model: torch.nn.Module, ckpt: str | Path, layer_sources: dict[int, int]
) -> None:
    """Read ``ckpt`` in place into a whole model, layer ``j`` from layer ``layer_sources[j]``.

    Layers missing from ``layer_sources`` are left as they are (the copies of an expansion,
    filled afterwards). Tensors are read straight into the parameters: no second copy.
    """
    verify_manifest(ckpt)
    request = {}
    for name, sharded in _whole_sharded_state_dict(model).items():
        match = _LAYER_KEY.match(sharded.key)
        if match is not None:
            layer = int(match.group(1))
            if layer not in layer_sources:
                continue
            sharded.key = f"decoder.layers.{layer_sources[layer]}.{sharded.key[match.end() :]}"
        request[name] = sharded
    try:
        dist_checkpointing.load(request, str(ckpt), strict=StrictHandling.RAISE_UNEXPECTED)
    except (CheckpointingException, OSError, RuntimeError) as exc:
        raise _unreadable(ckpt, exc) from None


def _unreadable(ckpt: str | Path, exc: Exception) -> CheckpointError:
    """megatron's reason on one line, as tools print errors."""
    return CheckpointError(f"cannot read checkpoint {str(ckpt)!r}: {' '.join(str(exc).split())}")


class _CheckpointTensors:
    """Whole tensors of a ``dist_checkpointing`` checkpoint, read a few at a time.

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


def _hf_specs(arch: ModelArch, stored: _CheckpointTensors, dtype: torch.dtype) -> list[TensorSpec]:
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
        ckpt: a checkpoint written by this project (converted, expanded or trained).
        out: output directory, created atomically.
        dtype: ``fp32``/``bf16``/``fp16``; defaults to the checkpoint's dtype.
        overwrite: replace an existing non-empty ``out``.
        max_shard_bytes: largest safetensors shard.
    """
    ckpt = Path(ckpt)
    meta = CheckpointMeta.load(ckpt)
    check_output_dir(out, overwrite)
    out_dtype = dtype_from_name(dtype or meta.arch.dtype)
    arch = dataclasses.replace(meta.arch, dtype=_dtype_name(out_dtype))
    stored = _CheckpointTensors(ckpt)
    specs = _hf_specs(arch, stored, out_dtype)
    runtime.initialize_single_process()
    order = hf_mapping.streaming_order(arch)
    progress = Progress(len(order), "megatron -> HF")
    with (
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
        copy_files(side_files, tmp, SIDE_FILES)
    logger.info("wrote %s (%d layers, %s)", out, arch.num_layers, arch.dtype)
    return Path(out)


@dataclass
class ConvertConfig:
    """What to convert, and where to."""

    out: str = arg(help="Output directory: a checkpoint, or an HF directory with --to-hf.")
    hf_dir: str | None = arg(None, "Hugging Face model directory (config.json + safetensors).")
    to_hf: bool = arg(
        False, "Export the megatron checkpoint given by --load to Hugging Face format."
    )
    load: str | None = arg(None, "Megatron checkpoint to export (with --to-hf).")
    dtype: str | None = arg(
        None,
        "Parameter dtype of the output (default: the input's).",
        choices=("fp32", "bf16", "fp16"),
    )
    overwrite: bool = arg(False, "Replace a non-empty output directory.")
    max_shard_size_gb: float = arg(5.0, "Largest safetensors shard written by --to-hf, in GiB.")

    def __post_init__(self) -> None:
        if self.to_hf and (self.load is None or self.hf_dir is not None):
            raise AdeptError("--to-hf needs --load CKPT (and no --hf-dir)")
        if not self.to_hf and (self.hf_dir is None or self.load is not None):
            raise AdeptError(
                "give --hf-dir DIR to convert from Hugging Face, or --to-hf --load CKPT"
            )
        if not 0 < self.max_shard_size_gb < math.inf:  # also refuses nan
            raise AdeptError(
                f"--max-shard-size-gb={self.max_shard_size_gb} must be a positive finite number"
            )

    @property
    def max_shard_bytes(self) -> int:
        return int(self.max_shard_size_gb * 2**30)
