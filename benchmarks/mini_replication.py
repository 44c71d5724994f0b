"""Miniature replication of the paper's comparison on the bundled demo corpora (CPU).

  python benchmarks/mini_replication.py [--out runs/mini_replication] [--seeds 1 2 3]
      [--iters 60] [--lr 1e-3] [--jobs 1] [--cache DIR] [--methods ...]

From one base model (built and cached as the quickstart builds it), every trained method
runs on the domain corpus for the same steps, global batch and sequence length (the same token
budget) and seed, in one process each, and is evaluated like the quickstart evaluates
(held-out loss and 0-shot multiple choice, general and domain):

  Vanilla       the base model, untrained (evaluated once: it involves no randomness)
  PT-Full       every parameter, uniform lr (--mode pt-full)
  Replay        PT-Full on a blend of 80% domain and 20% general data
  LLaMA-Pro     k uniformly placed copies, uniform lr (--mode llama-pro)
  w/o Stage-1   no expansion; the k least important original layers train with decoupled
                lrs (--mode no-stage1)
  w/o Stage-2   copies of the k least important layers, uniform lr (--mode no-stage2)
  ADEPT         copies of the k least important layers, decoupled lrs (--mode adept)

k is the Stage-1 probe's suggestion. Each run uses CPUs // --jobs threads (unless
OMP_NUM_THREADS says otherwise), recorded with its result; a seed gives the same numbers on
every run. Each (method, seed) result is stored as OUT/results/NAME.json (log and checkpoint in
OUT/runs/NAME/): an interrupted replication resumes where it stopped, and results computed
under other settings are refused rather than mixed in. OUT/results.md holds mean ± std over
seeds, OUT/results.png the same.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.probe.scores import LayerScores
from megatron_adept.workflow.demo import DATA, SEQ, evaluate, prepare_base
from megatron_adept.workflow.replication import (
    StoredRuns,
    mean_std,
    run_all,
    run_name,
    spread,
    stored_params,
    training_cost,
)
from megatron_adept.workflow.stages import (
    REPO,
    Stages,
    WorkflowError,
    check_output,
    omp_threads,
    tool,
)

METHODS = ("Vanilla", "PT-Full", "Replay", "LLaMA-Pro", "w/o Stage-1", "w/o Stage-2", "ADEPT")
GLOBAL_BATCH = 16
MICRO_BATCH = 8
REPLAY_GENERAL_SHARE = 0.2
MIN_FREE_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Settings:
    """Everything a result depends on besides method and seed; stored with each result."""

    iters: int
    lr: float
    base: str  # cache entry of the base model (keyed by its recipe and inputs)
    k: int
    threads: str  # OMP_NUM_THREADS: float reductions, hence results, may depend on it


class Replication(StoredRuns):
    """Shared inputs (base, probe, expansions) and one train-and-evaluate run per method/seed."""

    def __init__(self, out: Path, cache: Path | None) -> None:
        super().__init__(out)
        self.cache = cache
        self.data = out / "data"
        self.base = out / "base_ckpt"
        self.importance = out / "importance.json"
        self.expanded = out / "expanded"
        self.uniform = out / "uniform"

    def prepare(self, iters: int, lr: float, cpus: int) -> Settings:
        """Base model, Stage-1 probe and both expansions, each built once and reused.

        ``cpus`` is the share of one run; the shared inputs are built with every CPU.
        """
        pipe = Stages()
        base_hf = prepare_base(pipe, self.out, self.cache or self.out / "cache")
        if not self.base.is_dir():
            pipe.run(
                "convert base", tool("convert_hf.py") + ["--hf-dir", base_hf, "--out", self.base]
            )
        if not self.importance.is_file():
            pipe.run(
                "probe (Stage 1)",
                tool("probe_importance.py")
                + ["--load", self.base, "--probe-data", DATA / "general_probe.jsonl"]
                + ["--out", self.importance, "--plot", self.out / "importance.png"]
                + ["--seq-length", SEQ],
            )
        k = LayerScores.read(self.importance).suggested_k
        for path, how in (
            (self.expanded, ["--importance", self.importance]),
            (self.uniform, ["--uniform"]),
        ):
            if not path.is_dir():
                pipe.run(
                    f"expand ({path.name})",
                    tool("expand_ckpt.py") + ["--load", self.base, "--out", path, *how, "--k", k],
                )
        self.params = {
            ckpt: stored_params(ckpt) for ckpt in (self.base, self.expanded, self.uniform)
        }
        return Settings(iters, lr, base_hf.name, k, omp_threads(1, cpus))

    def method_args(self, method: str) -> tuple[Path, list]:
        """Starting checkpoint, and --mode and data flags, of a trained method."""
        domain = ["--data-path", self.data / "domain"]
        probe = ["--probe-data", DATA / "general_probe.jsonl"]
        replay = ["--data-path", 1 - REPLAY_GENERAL_SHARE, self.data / "domain"]
        replay += [REPLAY_GENERAL_SHARE, self.data / "general"]
        return {
            "PT-Full": (self.base, ["--mode", "pt-full", *domain]),
            "Replay": (self.base, ["--mode", "pt-full", *replay]),
            "LLaMA-Pro": (self.uniform, ["--mode", "llama-pro", *domain]),
            "w/o Stage-1": (
                self.base,
                ["--mode", "no-stage1", "--importance", self.importance, *domain, *probe],
            ),
            "w/o Stage-2": (self.expanded, ["--mode", "no-stage2", *domain]),
            "ADEPT": (self.expanded, ["--mode", "adept", *domain, *probe]),
        }[method]

    def run(self, method: str, seed: int | None, settings: Settings) -> dict:
        """Train (unless Vanilla) and evaluate one method; the result is stored as JSON."""
        name = run_name(method, seed)
        run_dir = self.fresh_run_dir(method, seed)
        pipe = Stages(log=run_dir / "log.txt", cpus=int(settings.threads))
        start = time.monotonic()
        if method == "Vanilla":
            ckpt = self.base
            result = {"trainable_pct": 0.0, "step_seconds": None, "peak_rss_mib": None}
        else:
            load, method_flags = self.method_args(method)
            ckpt = self.train(
                pipe,
                run_dir,
                load,
                method_flags,
                (GLOBAL_BATCH, MICRO_BATCH, SEQ),
                seed,
                settings.iters,
                settings.lr,
                max(1, settings.iters // 2),
            )
            result = training_cost(ckpt, self.params[load])
            result["peak_rss_mib"] = pipe.peak_rss_mib["train"]
        result.update(evaluate(pipe, run_dir, {name: ckpt})[name])
        result.update(
            method=method, seed=seed, settings=asdict(settings), seconds=time.monotonic() - start
        )
        self.store(method, seed, result)
        return result


FIELDS = (
    ("general_loss", "general loss ↓", "{:.3f}"),
    ("general_mc_acc", "general MC acc ↑", "{:.3f}"),
    ("domain_loss", "domain loss ↓", "{:.3f}"),
    ("domain_mc_acc", "domain MC acc ↑", "{:.3f}"),
    ("trainable_pct", "trainable %", "{:.1f}"),
    ("step_rel", "step time vs PT-Full", "{:.2f}"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.0f}"),
)


def summarize(results: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """Per method, every field's values over seeds (step time relative to the same seed's
    PT-Full run)."""
    pt_full = {r["seed"]: r["step_seconds"] for r in results["PT-Full"]}
    table = {}
    for method, runs in results.items():
        for run in runs:
            step = run["step_seconds"]
            run["step_rel"] = None if step is None else step / pt_full[run["seed"]]
        table[method] = {key: [r[key] for r in runs if r[key] is not None] for key, _, _ in FIELDS}
    return table


def ordering(table: dict, key: str) -> str:
    means = {m: statistics.mean(row[key]) for m, row in table.items()}
    return " < ".join(sorted(means, key=means.get))


def write_markdown(path: Path, table: dict, settings: list[str], command: str) -> None:
    lines = [
        "| method | " + " | ".join(label for _, label, _ in FIELDS) + " |",
        "|---" * (len(FIELDS) + 1) + "|",
    ]
    for method, row in table.items():
        cells = [mean_std(row[key], fmt) for key, _, fmt in FIELDS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    path.write_text(
        "# Miniature replication\n\n"
        f"Command: `{command}`\n\n"
        + "".join(f"- {s}\n" for s in settings)
        + "\n"
        + "\n".join(lines)
        + "\n\nOrder by mean (lowest first):\n\n"
        f"- general loss: {ordering(table, 'general_loss')}\n"
        f"- domain loss: {ordering(table, 'domain_loss')}\n"
    )


def write_plot(path: Path, table: dict) -> None:
    """One bar chart per field (error bars: std over seeds) and the general/domain trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    color = {m: f"C{i}" for i, m in enumerate(METHODS)}
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for ax, (key, label, _) in zip(axes.flat, FIELDS, strict=False):
        shown = [m for m in table if table[m][key]]
        means = [statistics.mean(table[m][key]) for m in shown]
        stds = [spread(table[m][key]) for m in shown]
        ax.bar(range(len(shown)), means, yerr=stds, capsize=3, color=[color[m] for m in shown])
        ax.set_xticks(range(len(shown)), shown, rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        if "loss" in key or "acc" in key:  # zoom in on the differences; Vanilla as reference
            low = min(m - s for m, s in zip(means, stds, strict=True))
            high = max(m + s for m, s in zip(means, stds, strict=True))
            pad = 0.15 * (high - low + 1e-3)
            ax.set_ylim(low - pad, high + pad)
            if "Vanilla" in table:
                ax.axhline(table["Vanilla"][key][0], color="gray", linestyle="--", linewidth=1)
    trade = axes.flat[-1]
    for method, row in table.items():
        x, y = statistics.mean(row["domain_loss"]), statistics.mean(row["general_loss"])
        trade.errorbar(
            x,
            y,
            xerr=spread(row["domain_loss"]),
            yerr=spread(row["general_loss"]),
            fmt="o",
            color=color[method],
        )
        trade.annotate(method, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    trade.set_xlabel("domain loss (lower: more domain gain)")
    trade.set_ylabel("general loss (lower: less forgetting)")
    trade.set_title("trade-off (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def brief(result: dict) -> str:
    """One progress line's worth of a result."""
    line = (
        f"general loss {result['general_loss']:.3f}, MC {result['general_mc_acc']:.3f} | "
        f"domain loss {result['domain_loss']:.3f}, MC {result['domain_mc_acc']:.3f}"
    )
    if result["step_seconds"] is not None:
        line += (
            f" | {result['trainable_pct']:.1f}% trainable, step {result['step_seconds']:.3f} s,"
            f" peak RSS {result['peak_rss_mib']:.0f} MiB"
        )
    return line


def describe(
    replication: Replication,
    settings: Settings,
    seeds: list[int],
    jobs: int,
    results: dict[str, list[dict]],
    computed: int,
) -> list[str]:
    """The settings block of results.md."""
    runs = [run for method_runs in results.values() for run in method_runs]
    selected = LayerScores.read(replication.importance).selected
    copied = {
        ckpt: CheckpointMeta.load(ckpt).layer_map.copied_sources
        for ckpt in (replication.expanded, replication.uniform)
    }
    return [
        f"Seeds {seeds} (a seed sets the order of the training data); ± is the sample std "
        "over seeds, Vanilla is one deterministic evaluation.",
        f"Base model `{settings.base}` (the quickstart's recipe: demo-llama preset pretrained "
        f"on the general corpus), {replication.params[replication.base]:,} parameters.",
        f"Every trained method: {settings.iters} steps × {GLOBAL_BATCH} sequences × {SEQ} "
        f"tokens = {settings.iters * GLOBAL_BATCH * SEQ:,} tokens (micro-batch {MICRO_BATCH}); "
        f"AdamW, peak lr {settings.lr:g} for every method (warmup 3%, cosine to lr/10), "
        "weight decay 0.01, gradient clipping 1.0.",
        f"k = {settings.k} (the probe's suggestion): ADEPT and w/o Stage-2 copy layer(s) "
        f"{copied[replication.expanded]}, LLaMA-Pro layer(s) {copied[replication.uniform]}; "
        f"w/o Stage-1 trains original layer(s) {selected}; decoupled lrs are refreshed every "
        f"{max(1, settings.iters // 2)} steps.",
        f"Replay blends {1 - REPLAY_GENERAL_SHARE:.0%} domain and {REPLAY_GENERAL_SHARE:.0%} "
        "general data.",
        "Evaluation: held-out loss on examples/data/{general,domain}_eval.jsonl (sequence "
        f"{SEQ}), 0-shot multiple-choice accuracy on {{general,domain}}_mc.jsonl (220 "
        "questions of 4 choices each, so one question is 0.005).",
        "Step time: the fastest decile of per-step wall times in the training log (the "
        "importance refresh is not part of a step), over the same seed's PT-Full. Peak RSS: "
        "maximum resident set of the training process and its children, read by a small "
        "launcher process.",
        f"One process per run, OMP_NUM_THREADS={settings.threads}, {jobs} run(s) at a time on "
        f"{os.cpu_count()} CPUs; torch {importlib.metadata.version('torch')}. The {len(runs)} "
        f"runs (training and evaluation) took {sum(r['seconds'] for r in runs):.0f} s in "
        f"all; {computed} of them were computed by this invocation.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "mini_replication"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--iters", type=int, default=60, help="Training steps of every method.")
    parser.add_argument("--lr", type=float, default=1e-3, help="Peak lr of every method.")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="Subset to run (PT-Full always runs: it is the step-time reference).",
    )
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time.")
    parser.add_argument(
        "--cache",
        help="Base-model cache (default OUT/cache; runs/quickstart/cache reuses the "
        "quickstart's base model).",
    )
    args = parser.parse_args()
    if args.iters < 2:
        parser.error("--iters must be at least 2")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    out = Path(args.out).resolve()
    start = time.monotonic()
    try:
        check_output(out, MIN_FREE_BYTES)
        out.mkdir(parents=True, exist_ok=True)
        replication = Replication(out, args.cache and Path(args.cache).resolve())
        settings = replication.prepare(
            args.iters, args.lr, max(1, (os.cpu_count() or 1) // args.jobs)
        )
        methods = [m for m in METHODS if m in args.methods or m == "PT-Full"]
        tasks = [("Vanilla", None)] if "Vanilla" in methods else []
        tasks += [(m, seed) for seed in args.seeds for m in methods if m != "Vanilla"]
        results, computed = run_all(replication, tasks, settings, args.jobs, brief)
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    table = summarize(results)
    lines = describe(replication, settings, args.seeds, args.jobs, results, computed)
    lines.append(f"Wall time of this invocation: {time.monotonic() - start:.0f} s.")
    command = shlex.join(["python", "benchmarks/mini_replication.py", *sys.argv[1:]])
    write_markdown(out / "results.md", table, lines, command)
    write_plot(out / "results.png", table)
    print("\n" + (out / "results.md").read_text())
    print(f"wrote {out / 'results.md'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
