"""A tiny expanded checkpoint, tokenizer, training set and probe corpus for Stage-2 tests."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from data_fixtures import random_texts, sentencepiece_tokenizer, write_jsonl
from torchrun_harness import REPO, run_command, run_torchrun

PRESET = "tiny-llama"
EXPANDED = "o0,o1,c1,o2,o3,c3"
"""Six layers: copies of layers 1 and 3 at positions 2 and 5."""
PLAIN = "o0,o1,o2,o3"
TOP = "o0,o1,o2,o3,c3,o4,o5,c5"
"""Eight layers with copies of layers 3 and 5 in the upper half only: at PP=2 the first
stage holds nothing trainable (as ADEPT's copies cluster near the top of real models)."""
VOCAB = 320
"""The tokenizer's vocabulary; the checkpoint's arch matches it."""


@dataclass(frozen=True)
class TrainInputs:
    root: Path
    expanded: Path
    plain: Path
    top: Path
    """The checkpoint with layout ``TOP``."""
    data: Path
    """Indexed-dataset prefix."""
    probe: Path


def make_train_inputs(root: Path) -> TrainInputs:
    tokenizer = sentencepiece_tokenizer(root / "tok", vocab_size=VOCAB)
    corpus = write_jsonl(root / "train.jsonl", [{"text": t} for t in random_texts(200, seed=3)])
    run_command(
        [
            sys.executable,
            str(REPO / "tools" / "preprocess_data.py"),
            "--input",
            str(corpus),
            "--output-prefix",
            str(root / "train"),
            "--tokenizer",
            str(tokenizer),
        ]
    )
    probe = write_jsonl(
        root / "probe.jsonl",
        [{"text": t} for t in random_texts(6, seed=4, low=20)]
        + [{"prompt": "the river of", "answer": " memory cache"}],
    )
    run_torchrun(
        "train_make_ckpt.py",
        1,
        [PRESET, str(tokenizer), str(VOCAB), str(root / "expanded"), EXPANDED]
        + [str(root / "plain"), PLAIN, str(root / "top"), TOP],
    )
    return TrainInputs(root, root / "expanded", root / "plain", root / "top", root / "train", probe)


def pretrain_args(inputs: TrainInputs, *extra: str, load: Path | None = None) -> list[str]:
    """Common flags of a short CPU run (override by appending)."""
    return [
        "--load",
        str(load or inputs.expanded),
        "--data-path",
        str(inputs.data),
        "--probe-data",
        str(inputs.probe),
        "--seq-length",
        "16",
        "--micro-batch-size",
        "1",
        "--global-batch-size",
        "4",
        "--lr",
        "1e-2",
        "--lr-warmup-fraction",
        "0",
        "--adam-eps",
        "1e-3",
        "--weight-decay",
        "0.1",
        "--log-interval",
        "1",
        *extra,
    ]


PRETRAIN = REPO / "pretrain_adept.py"
