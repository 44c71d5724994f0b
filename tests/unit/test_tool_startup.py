"""Every command answers ``--help`` and rejects bad flags before loading torch.

torch, megatron-core and transformers take seconds to import; a tool imports them only where
its work starts, so ``--help`` and input errors answer at once. What is measured is which
modules got imported, not a wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_spec import COMMANDS
from torchrun_harness import REPO

HEAVY = ("torch", "megatron", "transformers", "safetensors", "sentencepiece", "numpy")

_PROBE = """
import contextlib, io, json, runpy, sys
path, *argv = sys.argv[1:]
sys.argv = [path, *argv]
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"code": code, "loaded": loaded, "stderr": err.getvalue()}))
"""


def run(path, *argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p.name)
def test_help_loads_nothing_heavy(path):
    result = run(path, "--help")
    assert result["code"] == 0
    assert not [m for m in HEAVY if m in result["loaded"]]


@pytest.mark.parametrize(
    "path, argv, fragment",
    [
        ("pretrain_adept.py", ["--load", "/nonexistent", "--train-iters", "1"], "/nonexistent"),
        ("pretrain_adept.py", ["--load", "x", "--train-iters", "0"], "--train-iters=0"),
        ("tools/convert_hf.py", ["--hf-dir", "/nonexistent", "--out", "o"], "/nonexistent"),
        (
            "tools/expand_ckpt.py",
            ["--load", "/nonexistent", "--out", "o", "--layers", "1"],
            "/nonexistent",
        ),
        ("tools/eval_loss.py", ["--load", "/nonexistent", "--data", "d.jsonl"], "/nonexistent"),
        (
            "tools/probe_importance.py",
            ["--load", "l", "--probe-data", "p", "--out", "o", "--k", "0"],
            "--k=0",
        ),
    ],
)
def test_input_errors_load_nothing_heavy(path, argv, fragment):
    result = run(REPO / path, *argv)
    assert result["code"] == 2
    assert fragment in result["stderr"]
    assert not [m for m in HEAVY if m in result["loaded"]]
