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
import json
import shutil
import sys
import time
from pathlib import Path

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.probe.scores import LayerScores
from megatron_adept.workflow.demo import DATA, SEQ, evaluate, prepare_base
from megatron_adept.workflow.stages import REPO, Stages, WorkflowError, check_output, tool, torchrun

ADEPT_ITERS = 60
MIN_FREE_BYTES = 2 * 2**30


def run(out: Path) -> dict:
    """Every stage into ``out``; returns the summary."""
    start = time.monotonic()
    check_output(out, MIN_FREE_BYTES)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    base_hf = prepare_base(stages, out, out / "cache")
    data = out / "data"
    for stale in ("base_ckpt", "expanded", "adept_run", "adept_hf"):
        shutil.rmtree(out / stale, ignore_errors=True)
    stages.run(
        "convert base", tool("convert_hf.py") + ["--hf-dir", base_hf, "--out", out / "base_ckpt"]
    )
    stages.run(
        "probe (Stage 1)",
        tool("probe_importance.py")
        + ["--load", out / "base_ckpt", "--probe-data", DATA / "general_probe.jsonl"]
        + ["--out", out / "importance.json", "--plot", out / "importance.png", "--seq-length", SEQ],
    )
    k = LayerScores.read(out / "importance.json").suggested_k
    stages.run(
        "expand",
        tool("expand_ckpt.py")
        + ["--load", out / "base_ckpt", "--out", out / "expanded"]
        + ["--importance", out / "importance.json", "--k", k],
    )
    stages.run(
        "ADEPT training (Stage 2, TP=2)",
        torchrun(2, REPO / "pretrain_adept.py")
        + ["--load", out / "expanded", "--data-path", data / "domain", "--mode", "adept"]
        + ["--probe-data", DATA / "general_probe.jsonl", "--tensor-model-parallel-size", 2]
        + ["--save", out / "adept_run", "--train-iters", ADEPT_ITERS]
        + ["--global-batch-size", 16, "--micro-batch-size", 8, "--seq-length", SEQ]
        + ["--lr", "1e-3", "--min-lr", "1e-4", "--importance-interval", 30]
        + ["--log-interval", 10, "--split", "100,0,0"],
        processes=2,
    )
    adapted, _ = resolve_load(out / "adept_run")
    stages.run(
        "export adapted",
        tool("convert_hf.py") + ["--to-hf", "--load", adapted, "--out", out / "adept_hf"],
    )
    results = evaluate(stages, out, {"base": out / "base_ckpt", "adept": adapted})
    return {
        **results,
        "expanded_layers": CheckpointMeta.load(out / "expanded").layer_map.copied_sources,
        "stage_seconds": stages.times,
        "stage_peak_rss_mib": stages.peak_rss_mib,
        "total_seconds": time.monotonic() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out", nargs="?", default=str(REPO / "runs" / "quickstart"), help="Output directory."
    )
    out = Path(parser.parse_args().out).resolve()
    try:
        summary = run(out)
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n            general loss  domain loss  general MC  domain MC")
    for name in ("base", "adept"):
        r = summary[name]
        print(
            f"{name:10s} {r['general_loss']:12.4f} {r['domain_loss']:12.4f} "
            f"{r['general_mc_acc']:11.3f} {r['domain_mc_acc']:10.3f}"
        )
    print(
        f"\nexpanded layers {summary['expanded_layers']}; heatmap {out / 'importance.png'}; "
        f"summary {out / 'summary.json'}; {summary['total_seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    main()
