"""Checks that a parallel layout fits a model, done before any process group exists."""

from __future__ import annotations

import os
from typing import Protocol

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import ConfigError


class ModelShape(Protocol):
    """The sizes a layout must divide (``models.archs.ModelArch`` has them)."""

    num_layers: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int


def world_size_from_env() -> int:
    """World size torchrun announced (1 for a plain ``python`` run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def pipeline_layer_counts(num_layers: int, parallel: ParallelConfig) -> list[int]:
    """Number of decoder layers on each pipeline stage.

    Stages are even unless ``decoder_first/last_pipeline_num_layers`` pin the ends; the
    remaining layers must then split evenly over the middle stages.
    """
    pp = parallel.pipeline_model_parallel_size
    first = parallel.decoder_first_pipeline_num_layers
    last = parallel.decoder_last_pipeline_num_layers
    if pp == 1:
        if first is not None or last is not None:
            raise ConfigError("uneven pipeline split flags need --pipeline-model-parallel-size > 1")
        return [num_layers]
    pinned = [x for x in (first, last) if x is not None]
    middle_stages = pp - len(pinned)
    middle_layers = num_layers - sum(pinned)
    if middle_layers < 0 or (middle_stages == 0 and middle_layers != 0):
        raise ConfigError(
            f"{num_layers} layers cannot be split over {pp} pipeline stages with "
            f"first={first}, last={last}"
        )
    if middle_stages and (middle_layers % middle_stages or middle_layers == 0):
        raise ConfigError(
            f"{num_layers} layers cannot be split over {pp} pipeline stages: "
            f"{middle_layers} layers remain for {middle_stages} stage(s)"
            + (f" after first={first}, last={last}" if pinned else "")
        )
    per_stage = middle_layers // middle_stages if middle_stages else 0
    counts = [per_stage] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    return counts


def validate_layout(arch: ModelShape, parallel: ParallelConfig, world_size: int) -> None:
    """Raise :class:`ConfigError` naming the numbers if ``parallel`` cannot hold ``arch``."""
    tp = parallel.tensor_model_parallel_size
    if arch.num_attention_heads % tp:
        raise ConfigError(
            f"num_attention_heads={arch.num_attention_heads} is not divisible by "
            f"--tensor-model-parallel-size={tp}"
        )
    if arch.num_query_groups % tp:
        raise ConfigError(
            f"num_key_value_heads={arch.num_query_groups} is not divisible by "
            f"--tensor-model-parallel-size={tp}"
        )
    if arch.ffn_hidden_size % tp:
        raise ConfigError(
            f"intermediate_size={arch.ffn_hidden_size} is not divisible by "
            f"--tensor-model-parallel-size={tp}"
        )
    if world_size % parallel.model_parallel_size:
        raise ConfigError(
            f"world size {world_size} is not divisible by tensor x pipeline parallel size "
            f"{tp} x {parallel.pipeline_model_parallel_size}"
        )
    pipeline_layer_counts(arch.num_layers, parallel)
