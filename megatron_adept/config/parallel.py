"""Parallel layout and precision: the flags every distributed tool shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from megatron_adept.config.cli import arg, require_positive
from megatron_adept.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Short dtype spellings of the flags -> torch dtype names."""

TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")
"""Values of ``--transformer-impl`` (Megatron-LM's spelling, plus ``auto``)."""


@dataclass
class ParallelConfig:
    """Model-parallel layout (data parallelism is whatever remains of the world size) and the
    layer implementation it is built with."""

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
    transformer_impl: str = arg(
        "auto",
        "Decoder layer implementation: transformer_engine (Transformer Engine's fused layers; "
        "needs TE importable on a GPU), local (megatron-core's layers with PyTorch SDPA "
        "attention) or auto (TE where it is importable on a GPU, else local). Checkpoints are "
        "the same either way: one written with one implementation loads with the other.",
        choices=TRANSFORMER_IMPLS,
    )

    def __post_init__(self) -> None:
        require_positive(
            self,
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "decoder_first_pipeline_num_layers",
            "decoder_last_pipeline_num_layers",
        )

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

    def refuse_fp16_gradients(self, what: str) -> None:
        """Refuse ``--fp16`` where gradients are taken.

        fp16 gradients underflow without loss scaling, and none is wired into training or
        unit importance, so an fp16 run would look healthy while barely learning. bf16 has
        fp32's exponent range and needs none.
        """
        if self.fp16:
            raise ConfigError(
                f"--fp16 is not supported for {what} (its gradients would need loss scaling); "
                "use --bf16"
            )

    @property
    def params_dtype(self) -> torch.dtype:
        return dtype_from_name("bf16" if self.bf16 else "fp16" if self.fp16 else "fp32")


def dtype_from_name(name: str) -> torch.dtype:
    """``fp32``/``bf16``/``fp16`` or a torch dtype name such as ``bfloat16``."""
    import torch

    value = getattr(torch, DTYPE_NAMES.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return value
