"""Shared pieces of the torchrun worker scripts (layout switching, weights, result files)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config
from megatron_adept.parallel import runtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers_tokens import sample_tokens  # noqa: E402,F401  (re-exported for workers)


def arch_for(preset: str) -> ModelArch:
    return ModelArch.from_hf_config(preset_config(preset))


def switch_layout(
    tp: int, pp: int, first: int | None = None, last: int | None = None
) -> ParallelConfig:
    """Re-create megatron's model-parallel groups inside the existing process group."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel = ParallelConfig(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        decoder_first_pipeline_num_layers=first,
        decoder_last_pipeline_num_layers=last,
    )
    runtime.initialize(parallel, seed=1234)
    return parallel


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that a wrong layout shows in the logits (norms around 1)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight") or "layer_norm" in name or "layernorm" in name:
            param.copy_(torch.rand(param.shape, generator=gen) + 0.5)
        else:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.08)


def write_result(path: str, result: dict) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
