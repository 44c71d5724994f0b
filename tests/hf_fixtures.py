"""Tiny random Hugging Face models on disk, the conversion tools, and their outputs' tensors."""

from __future__ import annotations

import copy
import json
import logging
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torchrun_harness import REPO, WORKERS, run_command, run_torchrun

from megatron_adept.models.presets import build_hf_model

CONVERT = str(REPO / "tools" / "convert_hf.py")
EXPAND = str(REPO / "tools" / "expand_ckpt.py")


def save_hf(
    preset: str,
    path: Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
) -> torch.nn.Module:
    """A random ``preset`` model saved by transformers (sharded with an index if asked)."""
    model = build_hf_model(preset, seed=seed).to(dtype)
    model.config.dtype = dtype
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return model


def tool(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a tool as users do: ``python tools/<script> ...`` in a fresh process."""
    return run_command([sys.executable, script, *args], check=check, timeout=300)


def run_tool_inprocess(
    script: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> subprocess.CompletedProcess:
    """Run a tool's ``__main__`` in this process (for input errors raised before any work).

    Much faster than a fresh interpreter per case; returns what a subprocess run would.
    """
    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    logger = logging.getLogger("megatron_adept")  # the tool points it at captured streams
    for attribute in ("handlers", "level", "propagate"):
        monkeypatch.setattr(logger, attribute, copy.copy(getattr(logger, attribute)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, out.out, out.err)


def convert_batch(jobs: list[dict]) -> None:
    """Several conversions through the library API in one process (see the worker)."""
    run_command([sys.executable, str(WORKERS / "convert_batch.py"), json.dumps(jobs)], timeout=300)


def hf_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def hf_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory (all shards)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def checkpoint_tensors(ckpt: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """Every stored tensor of a megatron checkpoint, by checkpoint key (no process group)."""
    dcp_to_torch_save(ckpt, scratch)
    return torch.load(scratch)


def siblings_clean(out: Path) -> bool:
    """``out`` was not created and no temporary sibling of it was left behind."""
    return not out.exists() and not [
        p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")
    ]


PRESETS = ("tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral")
EXPANDED_PRESET = "tiny-qwen2"
"""Expanded in the suite: q/k/v biases and tied embeddings must survive the copy."""
SELECTED = "1,3"
"""4 layers -> 0, 1, 1c, 2, 3, 3c."""
LOGITS_SHAPE = (2, 16)
LOGITS_SEED = 9
TRAINED_TENSOR = "model.layers.2.self_attn.o_proj.weight"
"""A tensor of a copy layer that the suite changes before converting the export back."""
STALE_FILE = "stale.txt"
"""Left in ``expanded_hf`` before the export that replaces it with --overwrite."""
SMALL_SHARD = 96 * 1024
"""Export shard size that splits a tiny model into several shards."""


class ConversionSuite:
    """Every checkpoint the conversion and expansion parity tests compare, built once.

    Layout under ``root``: ``<preset>/{hf,ckpt,export}`` per preset (tiny-qwen3's HF weights
    sharded with an index, tiny-llama exported into small shards); ``bf16/`` (a bf16 source);
    ``cast/`` (fp32 source converted with ``--dtype bf16``); ``resaved/`` (tiny-qwen2 saved
    again at TP=2 x PP=2, as training saves); the expansions ``expanded`` (expand_ckpt.py),
    ``converted_expanded`` (convert_hf.py --expand-layers), ``expanded_hf`` (the --to-hf
    export of ``expanded``, written with --overwrite over an older directory) and
    ``reimported`` (that export, with one copy tensor changed as training would, converted
    back). ``logits[name][layout]``: megatron logits of the presets and both expansions at
    four layouts.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = {
            preset: save_hf(
                preset,
                root / preset / "hf",
                max_shard_size="100KB" if preset == "tiny-qwen3" else None,
            )
            for preset in PRESETS
        }
        save_hf("tiny-mistral", self.hf("bf16"), seed=3, dtype=torch.bfloat16)
        (self.hf(PRESETS[0]) / "tokenizer.json").write_text('{"stand-in": "tokenizer"}\n')
        for name in ("cast", "resaved"):
            (root / name).mkdir()
        self._convert_sources()
        self._expand_with_both_tools()
        self.logits = self._logits_and_resave()
        self._export_and_reimport()

    def _convert_sources(self) -> None:
        jobs = [
            {"op": "to_mcore", "src": str(self.hf(name)), "out": str(self.ckpt(name))}
            for name in (*PRESETS, "bf16")
        ]
        jobs.append(
            {
                "op": "to_mcore",
                "src": str(self.hf(PRESETS[0])),
                "out": str(self.ckpt("cast")),
                "dtype": "bf16",
            }
        )
        convert_batch(jobs)

    def _expand_with_both_tools(self) -> None:
        """The command lines: expand_ckpt.py, convert_hf.py --expand-layers and --to-hf."""
        root = self.root
        base = str(self.ckpt(EXPANDED_PRESET))
        tool(EXPAND, "--load", base, "--out", str(root / "expanded"), "--layers", SELECTED)
        hf_dir = str(self.hf(EXPANDED_PRESET))
        out = str(root / "converted_expanded")
        tool(CONVERT, "--hf-dir", hf_dir, "--out", out, "--expand-layers", SELECTED)
        self.expanded_hf.mkdir()
        (self.expanded_hf / STALE_FILE).write_text("from an earlier export\n")
        load, out = str(root / "expanded"), str(self.expanded_hf)
        tool(CONVERT, "--to-hf", "--load", load, "--out", out, "--overwrite")

    def _logits_and_resave(self) -> dict[str, dict[str, torch.Tensor]]:
        checkpoints = {name: self.ckpt(name) for name in PRESETS}
        for name in ("expanded", "converted_expanded"):
            checkpoints[name] = self.root / name
        out = self.root / "logits.pt"
        args = [str(out), *map(str, LOGITS_SHAPE), str(LOGITS_SEED)]
        args += [str(path) for path in checkpoints.values()]
        args += ["--resave", str(self.ckpt(EXPANDED_PRESET)), str(self.ckpt("resaved"))]
        run_torchrun("ckpt_logits.py", 4, args)
        by_path = torch.load(out)
        return {name: by_path[str(path)] for name, path in checkpoints.items()}

    def _export_and_reimport(self) -> None:
        jobs = [
            {"op": "to_hf", "src": str(self.ckpt(name)), "out": str(self.export(name))}
            for name in (*PRESETS, "bf16", "cast", "resaved")
        ]
        jobs[0]["max_shard_bytes"] = SMALL_SHARD
        trained = self.root / "trained_hf"
        self._stand_in_for_training(self.expanded_hf, trained)
        jobs.append({"op": "to_mcore", "src": str(trained), "out": str(self.root / "reimported")})
        convert_batch(jobs)

    @staticmethod
    def _stand_in_for_training(exported: Path, out: Path) -> None:
        """The export with a copy layer's zeroed projection changed, as training would."""
        shutil.copytree(exported, out)
        tensors = load_file(out / "model.safetensors")
        name = TRAINED_TENSOR
        tensors[name] = torch.randn(tensors[name].shape, generator=torch.Generator().manual_seed(1))
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})

    def hf(self, name: str) -> Path:
        return self.root / name / "hf"

    def ckpt(self, name: str) -> Path:
        return self.root / name / "ckpt"

    def export(self, name: str) -> Path:
        return self.root / name / "export"

    @property
    def expanded_hf(self) -> Path:
        return self.root / "expanded_hf"
