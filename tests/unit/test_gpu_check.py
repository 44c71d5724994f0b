"""scripts/gpu_check.sh: one line and exit 0 without a GPU; every check passes on the CPU; a
failed check fails the run; --transformer-impl is refused where it cannot be honoured."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from torchrun_harness import REPO

from megatron_adept.errors import ConfigError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import layer_spec
from megatron_adept.models.presets import preset_config

SCRIPT = REPO / "scripts" / "gpu_check.sh"
CPU_STAGES = (
    "train tokenizer",
    "random HF model",
    "preprocess",
    "convert",
    "probe fp32 (CPU)",
    "probe bf16 (local)",
    "expand",
    "train adept (local)",
    "export adept (local)",
    "train pt-full (local)",
    "export pt-full (local)",
    "logits vs transformers",
)
CPU_CHECKS = (
    "probe bf16 (local) vs fp32 CPU",
    "train adept (local)",
    "train pt-full (local)",
    "logits local_adept [local] vs transformers",
    "logits local_pt-full [local] vs transformers",
)


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """The script as a person runs it, on this interpreter, with CUDA hidden.

    OMP_NUM_THREADS is left unset so that the stages share the CPUs as they do outside tests.
    """
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    out = tmp_path / "out"
    result = run_script("--out", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], lines
    assert not out.exists()


@pytest.mark.timeout(900)
def test_cpu_mode_runs_every_stage_and_passes_every_check(tmp_path):
    out = tmp_path / "out"
    result = run_script("--device", "cpu", "--out", str(out), timeout=900)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    table = result.stdout.split("\nstage ", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = {re.split(r"\s{2,}", line)[0]: line.split() for line in table[1:]}
    assert list(rows) == list(CPU_STAGES)
    for mode in ("adept", "pt-full"):
        cells = rows[f"train {mode} (local)"][-6:]  # time, tokens/s, TFLOP/s, MFU, RSS, GPU
        assert float(cells[0]) > 0 and float(cells[1]) > 0 and float(cells[2]) > 0
        assert cells[3] == "-" and float(cells[4]) > 0 and cells[5] == "-"
    assert re.search(r"^step time adept / pt-full \(local\): \d+\.\d\d ", result.stdout, re.M)
    verdicts = {name: v for v, name in re.findall(r"^(PASS|FAIL) (.+?): ", result.stdout, re.M)}
    assert verdicts == dict.fromkeys(CPU_CHECKS, "PASS")
    assert f"all {len(CPU_CHECKS)} checks passed" in result.stdout
    assert (out / "parity.json").is_file() and (out / "local_adept_hf" / "config.json").is_file()


def test_a_failed_check_fails_the_run(tmp_path, capsys):
    driver = load_driver()
    check = driver.GpuCheck("cpu", 2, tmp_path, None)
    check.add("logits", *driver._within(_stats(max_diff=0.1, mean_diff=0.001)))
    check.add("probe", True, "fine")
    assert check.report(1.0) == 1
    printed = capsys.readouterr().out
    assert "FAIL logits: max |diff| 0.1" in printed and "PASS probe: fine" in printed
    assert "1 of 2 checks FAILED" in printed
    assert driver._within(_stats(max_diff=0.04, mean_diff=0.02))[0]
    assert not driver._within(_stats(max_diff=0.04, mean_diff=0.03))[0]


def _stats(max_diff: float, mean_diff: float) -> dict[str, float]:
    return {
        "max_abs_diff": max_diff,
        "ref_max_abs": 1.0,
        "mean_abs_diff": mean_diff,
        "ref_mean_abs": 1.0,
        "argmax_agreement": 1.0,
    }


def test_transformer_impl_is_honoured_or_refused_on_cpu():
    arch = ModelArch.from_hf_config(preset_config("tiny-llama"))
    with pytest.raises(ConfigError, match="--transformer-impl transformer_engine needs"):
        layer_spec(arch, transformer_impl="transformer_engine")
    for impl in ("local", "auto"):
        attention = layer_spec(arch, transformer_impl=impl).submodules.self_attention
        assert attention.submodules.core_attention.__name__ == "SDPAttention"
