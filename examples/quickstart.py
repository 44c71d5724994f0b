"""The whole ADEPT pipeline on the bundled demo corpora, on CPU, in a few minutes.

  bash examples/quickstart.sh [OUT_DIR]        (sets up the environment, then runs this)

Stages: train a tokenizer -> pretrain a small Llama-style base model on the general corpus
(cached) -> export it to Hugging Face format and start from there like a user would ->
convert -> probe layer importance -> expand the k least important layers -> ADEPT training on
the domain corpus with TP=2 under torchrun -> export -> evaluate base vs adapted (held-out
loss and multiple-choice accuracy on both corpora). Writes OUT_DIR/summary.json and the
importance heatmap.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.process_memory import run_with_peak_rss

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
PRESET = "demo-llama"
VOCAB = 2048
SEQ = 128
BASE_ITERS = 150
ADEPT_ITERS = 60
MIN_FREE_BYTES = 2 * 2**30


class QuickstartError(Exception):
    pass


def tool(name: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / name)]


def torchrun(nproc: int, script: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
    ]


def omp_threads(processes: int = 1, cpus: int | None = None) -> str:
    """Threads per process of a stage: OMP_NUM_THREADS if set, else the CPUs shared among the
    stage's processes. (On the demo models 1 and 2 threads give the same losses; 2 run a
    single-process stage about 1.5x faster.)"""
    if "OMP_NUM_THREADS" in os.environ:
        return os.environ["OMP_NUM_THREADS"]
    return str(max(1, (cpus or os.cpu_count() or 1) // processes))


class Pipeline:
    """Runs the stages as subprocesses, timing each and recording its peak RSS.

    The base model is cached in ``cache``. Output goes to the terminal, or appended to ``log``
    so that several pipelines can run side by side, each on its share of ``cpus`` (default:
    all of them).
    """

    def __init__(
        self,
        out: Path,
        cache: Path | None = None,
        log: Path | None = None,
        cpus: int | None = None,
    ) -> None:
        self.out = out
        self.cache = cache or out / "cache"
        self.log = log
        self.cpus = cpus
        self.times: dict[str, float] = {}
        self.peak_rss_mib: dict[str, float] = {}

    def run(self, stage: str, cmd: list[str], processes: int = 1) -> None:
        """Run one stage of ``processes`` processes; a failure raises QuickstartError."""
        start = time.monotonic()
        env = {**os.environ, "OMP_NUM_THREADS": omp_threads(processes, self.cpus)}
        with contextlib.ExitStack() as stack:
            sink = None if self.log is None else stack.enter_context(self.log.open("a"))
            print(f"\n=== {stage} ===", file=sink or sys.stdout, flush=True)
            done, peak_mib = run_with_peak_rss(cmd, env=env, stdout=sink, stderr=sink)
            seconds = time.monotonic() - start
            print(
                f"--- {stage}: {seconds:.0f} s, peak RSS {peak_mib:.0f} MiB",
                file=sink or sys.stdout,
                flush=True,
            )
        self.times[stage] = self.times.get(stage, 0.0) + seconds
        self.peak_rss_mib[stage] = max(self.peak_rss_mib.get(stage, 0.0), peak_mib)
        if done.returncode != 0:
            where = "" if self.log is None else f"; see {self.log}"
            raise QuickstartError(f"stage '{stage}' failed (exit code {done.returncode}){where}")

    def base_cache_entry(self, tokenizer: Path) -> Path:
        """Where the base model is cached: keyed by recipe, general corpus and tokenizer."""
        recipe = f"{PRESET}-{VOCAB}-{SEQ}-{BASE_ITERS}"
        digest = hashlib.sha256(recipe.encode())
        for path in (DATA / "general_train.jsonl", tokenizer / "tokenizer.model"):
            digest.update(path.read_bytes())
        return self.cache / f"base-{digest.hexdigest()[:12]}"

    def base_model(self, tokenizer: Path, general: Path) -> Path:
        """Pretrained base model as an HF directory, from the cache when it is there."""
        cached = self.base_cache_entry(tokenizer)
        if (cached / "config.json").is_file():
            print(f"\n=== base model: cached at {cached} ===")
            self.times["pretrain base (cached)"] = 0.0
            return cached
        work = self.out / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self.run(
            "init base model",
            tool("init_model.py")
            + ["--preset", PRESET, "--tokenizer", tokenizer, "--out", work / "init_hf"],
        )
        self.run(
            "convert init",
            tool("convert_hf.py") + ["--hf-dir", work / "init_hf", "--out", work / "init_ckpt"],
        )
        self.run(
            "pretrain base",
            [
                sys.executable,
                REPO / "pretrain_adept.py",
                "--load",
                work / "init_ckpt",
                "--data-path",
                general,
                "--mode",
                "pt-full",
                "--save",
                work / "base_run",
                "--train-iters",
                BASE_ITERS,
                "--global-batch-size",
                16,
                "--micro-batch-size",
                8,
                "--seq-length",
                SEQ,
                "--lr",
                "3e-3",
                "--min-lr",
                "3e-4",
                "--lr-warmup-fraction",
                "0.05",
                "--weight-decay",
                "0.01",
                "--log-interval",
                50,
                "--split",
                "100,0,0",
            ],
        )
        latest = (work / "base_run" / "latest_checkpointed_iteration.txt").read_text().strip()
        self.run(
            "export base",
            tool("convert_hf.py")
            + [
                "--to-hf",
                "--load",
                work / "base_run" / f"iter_{int(latest):07d}",
                "--out",
                work / "base_hf",
            ],
        )
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / "base_hf", cached)
        shutil.rmtree(work, ignore_errors=True)
        return cached

    def evaluate(self, models: dict[str, Path]) -> dict[str, dict]:
        """Held-out loss and 0-shot MC accuracy on both corpora, per model name.

        One eval_mc run per corpus scores every model (``--compare``), saving start-ups.
        """
        results = {}
        for name, ckpt in models.items():
            losses = self.out / f"{name}_losses.json"
            self.run(
                f"evaluate {name}: held-out loss",
                tool("eval_loss.py")
                + ["--load", ckpt, "--data", DATA / "general_eval.jsonl"]
                + [DATA / "domain_eval.jsonl", "--seq-length", SEQ, "--out", losses],
            )
            scores = json.loads(losses.read_text())
            results[name] = {
                "general_loss": scores[str(DATA / "general_eval.jsonl")]["loss"],
                "domain_loss": scores[str(DATA / "domain_eval.jsonl")]["loss"],
            }
        first, *others = models.values()
        compare = ["--compare", *others] if others else []
        for corpus in ("general", "domain"):
            out = self.out / f"{'_'.join(models)}_{corpus}_mc.json"
            self.run(
                f"evaluate {', '.join(models)}: {corpus} multiple choice",
                tool("eval_mc.py")
                + ["--load", first, "--data", DATA / f"{corpus}_mc.jsonl", "--shots", "0"]
                + [*compare, "--out", out],
            )
            scored = json.loads(out.read_text())
            accuracies = [scored["accuracy"]] + [c["accuracy"] for c in scored.get("compare", [])]
            for name, accuracy in zip(models, accuracies, strict=True):
                results[name][f"{corpus}_mc_acc"] = accuracy
        return results


def check_output(out: Path) -> None:
    """Refuse an output that cannot be written or a disk without room, before any work."""
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise QuickstartError(f"output {out} is inside {parent}, which is not a directory")
    if not os.access(parent, os.W_OK):
        raise QuickstartError(f"output directory {parent} is not writable")
    free = shutil.disk_usage(parent).free
    if free < MIN_FREE_BYTES:
        raise QuickstartError(
            f"only {free / 2**30:.2f} GiB free under {parent}; "
            f"the quickstart needs {MIN_FREE_BYTES / 2**30:.0f} GiB"
        )


def prepare_base(pipe: Pipeline, out: Path) -> Path:
    """Tokenizer (OUT/tokenizer), tokenized corpora (OUT/data) and the base model (HF dir)."""
    tokenizer = out / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        pipe.run(
            "train tokenizer",
            tool("train_tokenizer.py")
            + [
                "--input",
                DATA / "general_train.jsonl",
                DATA / "domain_train.jsonl",
                "--vocab-size",
                VOCAB,
                "--output",
                tokenizer,
            ],
        )
    data = out / "data"
    data.mkdir(exist_ok=True)
    for corpus in ("general", "domain"):
        pipe.run(
            f"preprocess {corpus}",
            tool("preprocess_data.py")
            + [
                "--input",
                DATA / f"{corpus}_train.jsonl",
                "--output-prefix",
                data / corpus,
                "--tokenizer",
                tokenizer,
                "--workers",
                "2",
                "--overwrite",
            ],
        )
    return pipe.base_model(tokenizer, data / "general")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out", nargs="?", default=str(REPO / "runs" / "quickstart"), help="Output directory."
    )
    out = Path(parser.parse_args().out).resolve()
    start = time.monotonic()
    try:
        check_output(out)
        out.mkdir(parents=True, exist_ok=True)
        pipe = Pipeline(out)
        base_hf = prepare_base(pipe, out)
        data = out / "data"
        for stale in ("base_ckpt", "expanded", "adept_run", "adept_hf"):
            shutil.rmtree(out / stale, ignore_errors=True)
        pipe.run(
            "convert base",
            tool("convert_hf.py") + ["--hf-dir", base_hf, "--out", out / "base_ckpt"],
        )
        pipe.run(
            "probe (Stage 1)",
            tool("probe_importance.py")
            + [
                "--load",
                out / "base_ckpt",
                "--probe-data",
                DATA / "general_probe.jsonl",
                "--out",
                out / "importance.json",
                "--plot",
                out / "importance.png",
                "--seq-length",
                SEQ,
            ],
        )
        importance = json.loads((out / "importance.json").read_text())
        pipe.run(
            "expand",
            tool("expand_ckpt.py")
            + [
                "--load",
                out / "base_ckpt",
                "--out",
                out / "expanded",
                "--importance",
                out / "importance.json",
                "--k",
                importance["suggested_k"],
            ],
        )
        pipe.run(
            "ADEPT training (Stage 2, TP=2)",
            torchrun(2, REPO / "pretrain_adept.py")
            + [
                "--load",
                out / "expanded",
                "--data-path",
                data / "domain",
                "--mode",
                "adept",
                "--probe-data",
                DATA / "general_probe.jsonl",
                "--tensor-model-parallel-size",
                2,
                "--save",
                out / "adept_run",
                "--train-iters",
                ADEPT_ITERS,
                "--global-batch-size",
                16,
                "--micro-batch-size",
                8,
                "--seq-length",
                SEQ,
                "--lr",
                "1e-3",
                "--min-lr",
                "1e-4",
                "--importance-interval",
                30,
                "--log-interval",
                10,
                "--split",
                "100,0,0",
            ],
            processes=2,
        )
        latest = (out / "adept_run" / "latest_checkpointed_iteration.txt").read_text().strip()
        adapted = out / "adept_run" / f"iter_{int(latest):07d}"
        pipe.run(
            "export adapted",
            tool("convert_hf.py") + ["--to-hf", "--load", adapted, "--out", out / "adept_hf"],
        )
        results = pipe.evaluate({"base": out / "base_ckpt", "adept": adapted})
    except QuickstartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    expanded = CheckpointMeta.load(out / "expanded").layer_map.copied_sources
    summary = {
        **results,
        "expanded_layers": expanded,
        "stage_seconds": pipe.times,
        "stage_peak_rss_mib": pipe.peak_rss_mib,
        "total_seconds": time.monotonic() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n            general loss  domain loss  general MC  domain MC")
    for name in ("base", "adept"):
        r = results[name]
        print(
            f"{name:10s} {r['general_loss']:12.4f} {r['domain_loss']:12.4f} "
            f"{r['general_mc_acc']:11.3f} {r['domain_mc_acc']:10.3f}"
        )
    print(
        f"\nexpanded layers {expanded}; heatmap {out / 'importance.png'}; "
        f"summary {out / 'summary.json'}; {summary['total_seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    main()
