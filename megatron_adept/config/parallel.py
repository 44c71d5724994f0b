"""Parallel layout and precision: the flags every distributed tool shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_adept.config.cli import arg
from megatron_adept.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ParallelConfig:
    """Model-parallel layout (data parallelism is whatever remains of the world size)."""

    tensor_model_parallel_size: int = arg(1, "Tensor model parallel size.")
    pipeline_model_parallel_size: int = arg(1, "Pipeline model parallel size.")
    decoder_first_pipeline_num_layers: int | None = arg(
        None, "Layers on the first pipeline stage when the split is uneven."
    )
    decoder_last_pipeline_num_layers: int | None = arg(
        None, "Layers on the last pipeline stage when the split is uneven."
    )
    make_vocab_size_divisible_by: int = arg(
        1,
        "Pad the vocabulary to a multiple of this times the tensor parallel size (padded "
        "logits are masked out of the softmax, so any value gives the same results).",
    )
    distributed_timeout_minutes: int = arg(10, "Timeout of collective operations, in minutes.")

    def __post_init__(self) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        for name in ("decoder_first_pipeline_num_layers", "decoder_last_pipeline_num_layers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 1")

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size


@dataclass
class PrecisionConfig:
    """Numeric precision of parameters and activations."""

    bf16: bool = arg(False, "Run in bfloat16 (fp32 main weights in the optimizer).")
    fp16: bool = arg(False, "Run in float16 (fp32 main weights in the optimizer).")

    def __post_init__(self) -> None:
        if self.bf16 and self.fp16:
            raise ConfigError("--bf16 and --fp16 are mutually exclusive")

    @property
    def params_dtype(self) -> torch.dtype:
        if self.bf16:
            return torch.bfloat16
        if self.fp16:
            return torch.float16
        return torch.float32


def dtype_from_name(name: str) -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` or a torch dtype name such as ``bfloat16``."""
    if name in _DTYPES:
        return _DTYPES[name]
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}")
    return value
