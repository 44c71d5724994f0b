"""Miniature replication of the paper's comparison on the bundled demo corpora (CPU).

  python benchmarks/mini_replication.py [--out runs/mini_replication] [--seeds 1 2 3]

From one base model (the quickstart's: pretrained on the general corpus and cached), every
method trains on the domain corpus for the same number of steps, batch and sequence length
(the same token budget) and seed, single-process:

  Vanilla       the base model, untrained
  PT-Full       every parameter (--mode pt-full)
  Replay        PT-Full on a blend of 80% domain and 20% general data
  LLaMA-Pro     k uniformly spaced copies, uniform lr (--mode llama-pro)
  w/o Stage-1   no expansion; the k least important original layers train with decoupled
                lrs (--mode no-stage1)
  w/o Stage-2   the k least important layers copied, uniform lr (--mode no-stage2)
  ADEPT         the k least important layers copied, decoupled lrs (--mode adept)

k is the probe's suggestion. Each (method, seed) result is stored as JSON under OUT/results,
so an interrupted replication resumes where it stopped. OUT/results.md holds mean ± std over
seeds and OUT/results.png the same figures.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from quickstart import (  # noqa: E402
    DATA,
    REPO,
    SEQ,
    Pipeline,
    QuickstartError,
    check_output,
    prepare_base,
    tool,
)

METHODS = ("Vanilla", "PT-Full", "Replay", "LLaMA-Pro", "w/o Stage-1", "w/o Stage-2", "ADEPT")
GLOBAL_BATCH = 16
MICRO_BATCH = 8
REPLAY_GENERAL_SHARE = 0.2
THROUGHPUT = re.compile(r"tokens/s ([0-9.]+) \| trainable params ([0-9,]+)")


def peak_rss_while(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd`` with output to ``log``; returns (exit code, peak RSS in MiB)."""
    with log.open("w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        handle = psutil.Process(proc.pid)
        done = threading.Event()

        def poll() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, handle.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        code = proc.wait()
        done.set()
        watcher.join()
    return code, peak / 2**20


def total_params(ckpt: Path) -> int:
    """Model parameters stored in a checkpoint (optimizer state excluded)."""
    from megatron.core import dist_checkpointing

    stored = dist_checkpointing.load_tensors_metadata(str(ckpt))
    return sum(
        math.prod(meta.global_shape)
        for key, meta in stored.items()
        if not key.startswith("optimizer")
    )


class Replication:
    def __init__(self, out: Path, iters: int, lr: float, cache: Path) -> None:
        self.out = out
        self.iters = iters
        self.lr = lr
        self.pipe = Pipeline(out, cache)
        self.results = out / "results"

    def prepare(self) -> None:
        """Base model, probe, and both expansions (shared by every seed)."""
        out, pipe = self.out, self.pipe
        self.data = out / "data"
        base_hf = prepare_base(pipe, out)
        self.base = out / "base_ckpt"
        if not (self.base / "manifest.json").is_file():
            pipe.run(
                "convert base", tool("convert_hf.py") + ["--hf-dir", base_hf, "--out", self.base]
            )
        self.importance = out / "importance.json"
        if not self.importance.is_file():
            pipe.run(
                "probe (Stage 1)",
                tool("probe_importance.py")
                + ["--load", self.base, "--probe-data", DATA / "general_probe.jsonl"]
                + ["--out", self.importance, "--seq-length", SEQ],
            )
        self.k = json.loads(self.importance.read_text())["suggested_k"]
        self.expanded, self.uniform = out / "expanded", out / "uniform"
        for path, how in (
            (self.expanded, ["--importance", self.importance]),
            (self.uniform, ["--uniform"]),
        ):
            if not (path / "manifest.json").is_file():
                pipe.run(
                    f"expand {path.name}",
                    tool("expand_ckpt.py")
                    + ["--load", self.base, "--out", path, *how, "--k", self.k, "--overwrite"],
                )

    def method_args(self, method: str) -> list:
        domain, general = self.data / "domain", self.data / "general"
        probe = ["--probe-data", DATA / "general_probe.jsonl"]
        return {
            "PT-Full": ["--load", self.base, "--mode", "pt-full", "--data-path", domain],
            "Replay": [
                "--load",
                self.base,
                "--mode",
                "pt-full",
                "--data-path",
                1 - REPLAY_GENERAL_SHARE,
                domain,
                REPLAY_GENERAL_SHARE,
                general,
            ],
            "LLaMA-Pro": ["--load", self.uniform, "--mode", "llama-pro", "--data-path", domain],
            "w/o Stage-1": [
                "--load",
                self.base,
                "--mode",
                "no-stage1",
                "--importance",
                self.importance,
                "--data-path",
                domain,
                *probe,
            ],
            "w/o Stage-2": ["--load", self.expanded, "--mode", "no-stage2", "--data-path", domain],
            "ADEPT": ["--load", self.expanded, "--mode", "adept", "--data-path", domain, *probe],
        }[method]

    def run(self, method: str, seed: int) -> dict:
        """Train (unless Vanilla) and evaluate one method; cached as JSON.

        Vanilla involves no randomness: it is evaluated once, under seed 0.
        """
        if method == "Vanilla":
            seed = 0
        name = f"{method.replace('/', '').replace(' ', '_')}-seed{seed}"
        result_file = self.results / f"{name}.json"
        if result_file.is_file():
            return json.loads(result_file.read_text())
        print(f"\n##### {method}, seed {seed} #####", flush=True)
        if method == "Vanilla":
            result = self.pipe.evaluate({name: self.base})[name]
            result.update(trainable_pct=0.0, step_seconds=None, peak_rss_mib=None)
        else:
            save = self.out / "runs" / name
            subprocess.run(["rm", "-rf", str(save)], check=True)
            log = self.out / "runs" / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, REPO / "pretrain_adept.py", *self.method_args(method)]
            cmd += [
                "--save",
                save,
                "--train-iters",
                self.iters,
                "--seed",
                seed,
                "--global-batch-size",
                GLOBAL_BATCH,
                "--micro-batch-size",
                MICRO_BATCH,
                "--seq-length",
                SEQ,
                "--lr",
                self.lr,
                "--min-lr",
                self.lr / 10,
                "--importance-interval",
                max(1, self.iters // 2),
                "--log-interval",
                5,
                "--split",
                "100,0,0",
            ]
            start = time.monotonic()
            code, peak = peak_rss_while(cmd, log)
            if code != 0:
                raise QuickstartError(f"{method} (seed {seed}) failed; see {log}")
            self.pipe.times[f"train {name}"] = time.monotonic() - start
            rates = THROUGHPUT.findall(log.read_text())
            tokens_per_step = GLOBAL_BATCH * SEQ
            step_seconds = statistics.median(tokens_per_step / float(r) for r, _ in rates[1:])
            trainable = int(rates[-1][1].replace(",", ""))
            ckpt = save / f"iter_{self.iters:07d}"
            result = self.pipe.evaluate({name: ckpt})[name]
            result.update(
                trainable_pct=100 * trainable / total_params(ckpt),
                step_seconds=step_seconds,
                peak_rss_mib=peak,
            )
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result, indent=2) + "\n")
        return result


FIELDS = (
    ("general_loss", "general loss ↓", "{:.3f}"),
    ("domain_loss", "domain loss ↓", "{:.3f}"),
    ("general_mc_acc", "general MC ↑", "{:.3f}"),
    ("domain_mc_acc", "domain MC ↑", "{:.3f}"),
    ("trainable_pct", "trainable %", "{:.1f}"),
    ("step_rel", "step time vs PT-Full", "{:.2f}"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"),
)


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds of every field, per method."""
    pt_full = [r["step_seconds"] for r in results["PT-Full"]]
    table = {}
    for method, runs in results.items():
        for run, reference in zip(runs, pt_full, strict=True):
            run["step_rel"] = (
                None if run["step_seconds"] is None else run["step_seconds"] / reference
            )
        row = {}
        for key, _, _ in FIELDS:
            values = [r[key] for r in runs if r[key] is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[key] = (statistics.mean(values), std)
        table[method] = row
    return table


def write_markdown(path: Path, table: dict, settings: str, command: str) -> None:
    header = "| method | " + " | ".join(label for _, label, _ in FIELDS) + " |"
    lines = [header, "|---" * (len(FIELDS) + 1) + "|"]
    for method, row in table.items():
        cells = [
            "–" if key not in row else f"{fmt.format(row[key][0])} ± {fmt.format(row[key][1])}"
            for key, _, fmt in FIELDS
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    path.write_text(
        "# Miniature replication\n\n"
        f"Command: `{command}`\n\n{settings}\n\n" + "\n".join(lines) + "\n"
    )


def write_plot(path: Path, table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f for f in FIELDS if f[0] != "trainable_pct"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    methods = list(table)
    for ax, (key, label, _) in zip(axes.flat, keys, strict=True):
        shown = [m for m in methods if key in table[m]]
        means = [table[m][key][0] for m in shown]
        stds = [table[m][key][1] for m in shown]
        ax.bar(range(len(shown)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(shown)), shown, rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        if "loss" in key:
            low, high = min(means), max(means)
            ax.set_ylim(low - 0.6 * (high - low + 1e-3), high + 0.3 * (high - low + 1e-3))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "mini_replication"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iters", type=int, default=60, help="Training steps per method.")
    parser.add_argument("--lr", type=float, default=1e-3, help="Peak lr of every method.")
    parser.add_argument(
        "--cache",
        default=str(REPO / "runs" / "quickstart" / "cache"),
        help="Where the pretrained base model is cached (shared with the quickstart).",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    start = time.monotonic()
    try:
        check_output(out)
        out.mkdir(parents=True, exist_ok=True)
        replication = Replication(out, args.iters, args.lr, Path(args.cache).resolve())
        replication.prepare()
        methods = [m for m in METHODS if m in args.methods]
        if "PT-Full" not in methods:
            methods.insert(1, "PT-Full")  # the step-time reference
        results = {m: [replication.run(m, seed) for seed in args.seeds] for m in methods}
    except QuickstartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    table = summarize(results)
    settings = (
        f"Seeds {args.seeds}; {args.iters} steps of {GLOBAL_BATCH} x {SEQ} tokens per method "
        f"({args.iters * GLOBAL_BATCH * SEQ:,} tokens); peak lr {args.lr} (cosine to lr/10); "
        f"k = {replication.k} (the probe's suggestion); Replay blends "
        f"{REPLAY_GENERAL_SHARE:.0%} general data; single process on CPU; "
        f"{time.monotonic() - start:.0f} s wall for this invocation."
    )
    command = "python benchmarks/mini_replication.py " + " ".join(sys.argv[1:])
    write_markdown(out / "results.md", table, settings, command.strip())
    write_plot(out / "results.png", table)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.md'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
