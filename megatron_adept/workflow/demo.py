"""The demo recipe shared by the quickstart and the miniature replication.

From the bundled corpora (``examples/data``: WordNet glosses as general text, the FOLDOC
computing dictionary as the domain): a sentencepiece tokenizer, the tokenized corpora, and a
small Llama-style base model pretrained on the general corpus and exported to Hugging Face
format (cached by its recipe and inputs), so that everything after it starts from an HF
directory like a user's; and the evaluation every trained model gets (held-out loss and 0-shot
multiple choice on both corpora).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from megatron_adept.workflow.stages import REPO, Stages, tool

DATA = REPO / "examples" / "data"
PRESET = "demo-llama"
VOCAB = 2048
SEQ = 128
BASE_ITERS = 150


def base_cache_entry(cache: Path, tokenizer: Path) -> Path:
    """Where the base model is cached: keyed by recipe, general corpus and tokenizer."""
    recipe = f"{PRESET}-{VOCAB}-{SEQ}-{BASE_ITERS}"
    digest = hashlib.sha256(recipe.encode())
    for path in (DATA / "general_train.jsonl", tokenizer / "tokenizer.model"):
        digest.update(path.read_bytes())
    return cache / f"base-{digest.hexdigest()[:12]}"


def base_model(stages: Stages, out: Path, cache: Path, tokenizer: Path, general: Path) -> Path:
    """Pretrained base model as an HF directory, from the cache when it is there."""
    cached = base_cache_entry(cache, tokenizer)
    if (cached / "config.json").is_file():
        print(f"\n=== base model: cached at {cached} ===")
        stages.times["pretrain base (cached)"] = 0.0
        return cached
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stages.run(
        "init base model",
        tool("init_model.py")
        + ["--preset", PRESET, "--tokenizer", tokenizer, "--out", work / "init_hf"],
    )
    stages.run(
        "convert init",
        tool("convert_hf.py") + ["--hf-dir", work / "init_hf", "--out", work / "init_ckpt"],
    )
    stages.run(
        "pretrain base",
        [sys.executable, REPO / "pretrain_adept.py", "--load", work / "init_ckpt"]
        + ["--data-path", general, "--mode", "pt-full", "--save", work / "base_run"]
        + ["--train-iters", BASE_ITERS, "--global-batch-size", 16, "--micro-batch-size", 8]
        + ["--seq-length", SEQ, "--lr", "3e-3", "--min-lr", "3e-4"]
        + ["--lr-warmup-fraction", "0.05", "--weight-decay", "0.01", "--log-interval", 50]
        + ["--split", "100,0,0"],
    )
    stages.run(
        "export base",
        tool("convert_hf.py") + ["--to-hf", "--load", work / "base_run", "--out", work / "base_hf"],
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work / "base_hf", cached)
    shutil.rmtree(work, ignore_errors=True)
    return cached


def prepare_base(stages: Stages, out: Path, cache: Path) -> Path:
    """Tokenizer (OUT/tokenizer), tokenized corpora (OUT/data) and the base model (HF dir)."""
    tokenizer = out / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        stages.run(
            "train tokenizer",
            tool("train_tokenizer.py")
            + ["--input", DATA / "general_train.jsonl", DATA / "domain_train.jsonl"]
            + ["--vocab-size", VOCAB, "--output", tokenizer],
        )
    data = out / "data"
    data.mkdir(exist_ok=True)
    for corpus in ("general", "domain"):
        stages.run(
            f"preprocess {corpus}",
            tool("preprocess_data.py")
            + ["--input", DATA / f"{corpus}_train.jsonl", "--output-prefix", data / corpus]
            + ["--tokenizer", tokenizer, "--workers", "2", "--overwrite"],
        )
    return base_model(stages, out, cache, tokenizer, data / "general")


def losses_file(out: Path, name: str) -> Path:
    """eval_loss.py's ``--out`` of model ``name`` (per-item losses, for paired comparisons)."""
    return out / f"{name}_losses.json"


def mc_file(out: Path, names: list[str], mc_set: str) -> Path:
    """eval_mc.py's ``--out`` of models ``names`` on ``mc_set`` (per-item predictions)."""
    return out / f"{'_'.join(names)}_{mc_set}_mc.json"


def evaluate(
    stages: Stages,
    out: Path,
    models: dict[str, Path],
    losses: dict[str, Path] | None = None,
    mc: dict[str, Path] | None = None,
    seq: int = SEQ,
) -> dict[str, dict]:
    """Held-out loss and 0-shot MC accuracy per model name: ``{set}_loss`` for each held-out
    corpus of ``losses`` and ``{set}_mc_acc`` for each multiple-choice set of ``mc`` (default:
    the demo's general and domain files).

    One eval_mc run per set scores every model (``--compare``), saving start-ups.
    """
    losses = losses or {c: DATA / f"{c}_eval.jsonl" for c in ("general", "domain")}
    mc = mc or {c: DATA / f"{c}_mc.jsonl" for c in ("general", "domain")}
    results = {}
    for name, ckpt in models.items():
        path = losses_file(out, name)
        stages.run(
            f"evaluate {name}: held-out loss",
            tool("eval_loss.py")
            + ["--load", ckpt, "--data", *losses.values(), "--seq-length", seq, "--out", path],
        )
        scores = json.loads(path.read_text())
        results[name] = {f"{c}_loss": scores[str(f)]["loss"] for c, f in losses.items()}
    first, *others = models.values()
    compare = ["--compare", *others] if others else []
    for mc_set, data in mc.items():
        path = mc_file(out, list(models), mc_set)
        stages.run(
            f"evaluate {', '.join(models)}: {mc_set} multiple choice",
            tool("eval_mc.py")
            + ["--load", first, "--data", data, "--shots", "0", *compare, "--out", path],
        )
        scored = json.loads(path.read_text())
        accuracies = [scored["accuracy"]] + [c["accuracy"] for c in scored.get("compare", [])]
        for name, accuracy in zip(models, accuracies, strict=True):
            results[name][f"{mc_set}_mc_acc"] = accuracy
    return results
