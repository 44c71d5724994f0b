"""The whole ADEPT pipeline on a real pretrained model: SmolLM2-135M-Instruct adapted to the
FOLDOC computing dictionary, on CPU. On 2 cores shared with other jobs, `--iters 6
--mc-questions 24` took 29 minutes (probe 8, training 3, evaluation 15); the defaults are a
few minutes longer.

  bash examples/real_model/run.sh [OUT_DIR] [--iters N] [--k K] [--lr LR]
      [--probe-docs N] [--loss-docs N] [--mc-questions N]

Stages: prepare (GGUF -> HF directory, MMLU splits; see prepare.py) -> tokenize the corpora with
the model's tokenizer -> convert -> probe layer importance on WordNet glosses -> expand the k
least important layers -> ADEPT training on FOLDOC -> export -> evaluate base vs adapted:
held-out loss on both corpora, 0-shot multiple-choice accuracy on FOLDOC terms and on the MMLU
general and computing splits. Writes OUT_DIR/summary.json and the importance heatmap.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.workflow.demo import evaluate
from megatron_adept.workflow.real_model import SEQ, EvalLimits, prepare_inputs
from megatron_adept.workflow.stages import REPO, Stages, WorkflowError, check_output, tool

MIN_FREE_BYTES = 6 * 2**30
COLUMNS = (
    ("general_loss", "general loss"),
    ("mmlu_text_loss", "MMLU-text loss"),
    ("domain_loss", "domain loss"),
    ("mmlu_general_mc_acc", "MMLU general"),
    ("mmlu_computing_mc_acc", "MMLU computing"),
    ("foldoc_mc_acc", "FOLDOC MC"),
)


def run(out: Path, iters: int, k: int, lr: float, limits: EvalLimits) -> dict:
    """Every stage into ``out``; returns the summary."""
    start = time.monotonic()
    check_output(out, MIN_FREE_BYTES)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    inputs = prepare_inputs(stages, out, limits)
    for stale in ("base_ckpt", "expanded", "adept_run", "adept_hf"):
        shutil.rmtree(out / stale, ignore_errors=True)
    stages.run(
        "convert base",
        tool("convert_hf.py") + ["--hf-dir", inputs.hf_dir, "--out", out / "base_ckpt"],
    )
    stages.run(
        "probe (Stage 1)",
        tool("probe_importance.py")
        + ["--load", out / "base_ckpt", "--probe-data", inputs.probe, "--k", k]
        + ["--out", out / "importance.json", "--plot", out / "importance.png", "--seq-length", SEQ],
    )
    stages.run(
        "expand",
        tool("expand_ckpt.py")
        + ["--load", out / "base_ckpt", "--out", out / "expanded"]
        + ["--importance", out / "importance.json", "--k", k],
    )
    stages.run(
        "ADEPT training (Stage 2)",
        [sys.executable, REPO / "pretrain_adept.py", "--load", out / "expanded"]
        + ["--data-path", inputs.data / "domain", "--mode", "adept"]
        + ["--probe-data", inputs.probe, "--save", out / "adept_run", "--train-iters", iters]
        + ["--global-batch-size", 4, "--micro-batch-size", 4, "--seq-length", SEQ]
        + ["--lr", lr, "--min-lr", lr / 10, "--importance-interval", iters]
        + ["--log-interval", 1, "--split", "100,0,0"],
    )
    adapted, _ = resolve_load(out / "adept_run")
    stages.run(
        "export adapted",
        tool("convert_hf.py") + ["--to-hf", "--load", adapted, "--out", out / "adept_hf"],
    )
    models = {"base": out / "base_ckpt", "adept": adapted}
    results = evaluate(stages, out, models, inputs.losses, inputs.mc, SEQ)
    return {
        **results,
        "expanded_layers": CheckpointMeta.load(out / "expanded").layer_map.copied_sources,
        "settings": {"iters": iters, "k": k, "lr": lr, "seq_length": SEQ, "global_batch": 4},
        "limits": limits.__dict__,
        "mmlu_splits": inputs.splits,
        "stage_seconds": stages.times,
        "stage_peak_rss_mib": stages.peak_rss_mib,
        "total_seconds": time.monotonic() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out", nargs="?", default=str(REPO / "runs" / "real_model"), help="Output directory."
    )
    parser.add_argument("--iters", type=int, default=20, help="ADEPT training steps (4 x 256).")
    parser.add_argument("--k", type=int, default=4, help="Layers to expand (the paper's 4).")
    parser.add_argument("--lr", type=float, default=1e-4, help="Peak lr (cosine to lr/10).")
    parser.add_argument("--probe-docs", type=int, default=16, help="General probe documents.")
    parser.add_argument("--loss-docs", type=int, default=40, help="Held-out docs per corpus.")
    parser.add_argument("--mc-questions", type=int, default=40, help="Questions per MC set.")
    args = parser.parse_args()
    for flag in ("iters", "k", "probe_docs", "loss_docs", "mc_questions"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    out = Path(args.out).resolve()
    limits = EvalLimits(args.probe_docs, args.loss_docs, args.mc_questions)
    try:
        summary = run(out, args.iters, args.k, args.lr, limits)
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n       " + "".join(f"{label:>16s}" for _, label in COLUMNS))
    for name in ("base", "adept"):
        print(f"{name:7s}" + "".join(f"{summary[name][key]:16.4f}" for key, _ in COLUMNS))
    print(
        f"\nexpanded layers {summary['expanded_layers']}; heatmap {out / 'importance.png'}; "
        f"summary {out / 'summary.json'}; {summary['total_seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    main()
