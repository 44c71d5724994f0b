"""Checkpoints shared by the evaluation and merge tests, built once per test session.

One worker process (tests/workers/eval_checkpoints.py) converts a tiny random Llama with a
tiny sentencepiece tokenizer, expands it, and derives "trained" expansions from it; the
directory is reused by every test module that asks for it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from torchrun_harness import REPO, WORKERS, run_command

VOCAB = 320
"""Vocabulary of the tiny model; the tokenizer is trained with at most this many tokens."""
COPIED_LAYERS = (1, 3)
"""Original layers duplicated in the expanded checkpoints (4 layers -> 6)."""
EVAL_MC = str(REPO / "tools" / "eval_mc.py")
TOKEN_SHIFT = str(REPO / "tools" / "token_shift.py")
MERGE = str(REPO / "tools" / "merge_expansions.py")


def eval_checkpoints(tmp_path_factory) -> Path:
    """The directory of the shared checkpoints (see the worker for what it holds)."""
    root = tmp_path_factory.getbasetemp() / "eval_checkpoints"
    if not (root / "complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        run_command([sys.executable, str(WORKERS / "eval_checkpoints.py"), str(root)], timeout=600)
    return root


def run_tool(script: str, *args: str, check: bool = True, timeout: float = 300):
    return run_command([sys.executable, script, *args], check=check, timeout=timeout)
