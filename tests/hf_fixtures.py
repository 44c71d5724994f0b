"""Tiny random Hugging Face models on disk and their reference logits."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torchrun_harness import REPO, run_command

from megatron_adept.models.presets import build_hf_model

CONVERT = str(REPO / "tools" / "convert_hf.py")
EXPAND = str(REPO / "tools" / "expand_ckpt.py")


def save_hf(preset: str, path: Path, seed: int = 0) -> torch.nn.Module:
    model = build_hf_model(preset, seed=seed)
    model.save_pretrained(path)
    return model


def tool(script: str, *args: str, check: bool = True):
    return run_command([sys.executable, script, *args], check=check, timeout=300)


def hf_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors
