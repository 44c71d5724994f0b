"""Machinery of the replications (benchmarks/mini_replication.py, real_replication.py): one
stored, resumable result per (method, seed), computed ``jobs`` at a time, and the statistics
of the tables.

Each result is OUT/results/NAME.json and carries the settings it was computed under; a stored
result whose settings differ is refused rather than mixed in, so an interrupted replication
resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from megatron_adept.checkpoint.atomic import write_json_atomic
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.training.metrics import METRICS_FILE
from megatron_adept.workflow.stages import REPO, Stages, WorkflowError


def run_name(method: str, seed: int | None) -> str:
    """File-system name of a (method, seed) run."""
    slug = method.replace("/", "").replace(" ", "_").replace("=", "-").replace(",", "")
    return slug if seed is None else f"{slug}-seed{seed}"


def stored_params(ckpt: Path) -> int:
    """Parameters in a converted or expanded checkpoint (these hold weights only)."""
    import warnings

    with warnings.catch_warnings():  # megatron-core's notes on missing GPU accelerators
        warnings.simplefilter("ignore")
        from megatron.core import dist_checkpointing

    stored = dist_checkpointing.load_tensors_metadata(str(ckpt))
    return sum(math.prod(meta.global_shape) for meta in stored.values())


def training_cost(ckpt: Path, total_params: int) -> dict[str, float]:
    """Trainable share and step time of a training run, from its train_metrics.json.

    Every step does the same work; on a shared machine contention only adds time, so the
    fastest decile of the step times (the fastest step, below 10 steps) estimates the cost of
    a step.
    """
    metrics = json.loads((ckpt / METRICS_FILE).read_text())
    seconds = [step["seconds"] for step in metrics["steps"]]
    # statistics.quantiles extrapolates below the minimum when there are fewer than 9 steps.
    fastest = statistics.quantiles(seconds, n=10)[0] if len(seconds) >= 10 else min(seconds)
    return {
        "trainable_pct": 100 * metrics["trainable_params"] / total_params,
        "step_seconds": fastest,
    }


class StoredRuns:
    """One result per (method, seed) under OUT/results; subclasses compute them in ``run``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def run(self, method: str, seed: int | None, settings: Any) -> dict:
        """Compute one result; it must include ``seconds`` and is then :meth:`store`-d."""
        raise NotImplementedError

    def result_file(self, method: str, seed: int | None) -> Path:
        return self.out / "results" / f"{run_name(method, seed)}.json"

    def cached(self, method: str, seed: int | None, settings: Any) -> dict | None:
        """The stored result, if any; one computed under other settings is refused."""
        path = self.result_file(method, seed)
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if result.get("settings") != asdict(settings):
            raise WorkflowError(
                f"{path} was computed with {result.get('settings')}, not {asdict(settings)}; "
                "use another --out"
            )
        return result

    def fresh_run_dir(self, method: str, seed: int | None) -> Path:
        """OUT/runs/NAME, emptied: a run that was cut short starts over."""
        run_dir = self.out / "runs" / run_name(method, seed)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        return run_dir

    @staticmethod
    def train(
        pipe: Stages,
        run_dir: Path,
        load: Path,
        flags: list[Any],
        batch: tuple[int, int, int],
        seed: int | None,
        iters: int,
        lr: float,
        importance_interval: int,
    ) -> Path:
        """``pretrain_adept.py`` from ``load`` into RUN_DIR/ckpt (cosine to lr/10, every
        step logged); returns the final checkpoint.

        Args:
            batch: (global batch, micro-batch, sequence length).
        """
        global_batch, micro_batch, seq = batch
        save = run_dir / "ckpt"
        pipe.run(
            "train",
            [sys.executable, REPO / "pretrain_adept.py", "--load", load, *flags]
            + ["--save", save, "--seed", seed, "--train-iters", iters]
            + ["--global-batch-size", global_batch, "--micro-batch-size", micro_batch]
            + ["--seq-length", seq, "--lr", lr, "--min-lr", lr / 10]
            + ["--importance-interval", importance_interval, "--log-interval", 1]
            + ["--split", "100,0,0", "--data-cache-path", run_dir / "index-cache"],
        )
        return resolve_load(save)[0]

    def store(self, method: str, seed: int | None, result: dict) -> None:
        path = self.result_file(method, seed)
        path.parent.mkdir(exist_ok=True)
        write_json_atomic(path, result)


def run_all(
    runs: StoredRuns,
    tasks: list[tuple[str, int | None]],
    settings: Any,
    jobs: int,
    brief: Callable[[dict], str],
) -> tuple[dict[str, list[dict]], int]:
    """Results per method in task order, computing the missing ones ``jobs`` at a time.

    Stored results are checked against ``settings`` before any run starts. Returns the
    results and how many runs were computed; ``brief`` makes a result's progress line.
    """
    total = len(tasks)
    labels = [
        f"[{i:>2}/{total}] {m}" + ("" if s is None else f", seed {s}")
        for i, (m, s) in enumerate(tasks, 1)
    ]
    stored = [runs.cached(method, seed, settings) for method, seed in tasks]

    def compute(label: str, method: str, seed: int | None) -> dict:
        log = runs.out / "runs" / run_name(method, seed) / "log.txt"
        print(f"{label}: running (log {log})", flush=True)
        result = runs.run(method, seed, settings)
        print(f"{label}: done in {result['seconds']:.0f} s | {brief(result)}", flush=True)
        return result

    with ThreadPoolExecutor(jobs) as pool:
        pending = {
            i: pool.submit(compute, labels[i], *tasks[i])
            for i, result in enumerate(stored)
            if result is None
        }
        for i, result in enumerate(stored):
            if result is not None:
                print(f"{labels[i]}: stored | {brief(result)}", flush=True)
        try:
            for i, future in pending.items():
                stored[i] = future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    results: dict[str, list[dict]] = {}
    for (method, _), result in zip(tasks, stored, strict=True):
        results.setdefault(method, []).append(result)
    return results, len(pending)


def spread(values: list[float]) -> float:
    """Sample standard deviation over seeds; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_std(values: list[float], fmt: str) -> str:
    """``mean ± std``; a single value (Vanilla: one deterministic evaluation) alone."""
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(spread(values))}"
