"""Stage-2 cost per mode, side by side: step time, peak memory, importance-refresh share.

Builds a 16-layer Llama-style model on the bundled demo corpora, expands 4 layers (the top
ones for adept/no-stage2, LLaMA-Pro's uniform placement for llama-pro), then runs
pretrain_adept.py for a few iterations per mode in a fresh process and prints, relative to
pt-full: mean step time (after warm-up) and peak RSS; plus the time of one importance refresh
and its share of wall time at the paper's interval of 500 steps.

  python benchmarks/stage2_cost.py [--iters 8 --seq-length 256 --global-batch-size 8]
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_adept.workflow.process_memory import run_with_peak_rss

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
STEP = re.compile(
    r"iteration (\d+) \| loss [0-9.]+ \| lr \S+ \| grad norm \S+ \| tokens/s ([0-9.]+)"
)
REFRESH = re.compile(r"importance refresh took ([0-9.]+)s")


def run(cmd: list, **kwargs) -> str:
    return subprocess.run(
        [str(c) for c in cmd], check=True, capture_output=True, text=True, **kwargs
    ).stdout


def measured(cmd: list) -> tuple[str, float]:
    """(stdout+stderr, peak RSS in MiB) of one child process."""
    done, peak = run_with_peak_rss(cmd, check=True, capture_output=True, text=True)
    return done.stdout + done.stderr, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--global-batch-size", type=int, default=8)
    args = parser.parse_args()
    tools = REPO / "tools"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(
            [
                sys.executable,
                tools / "train_tokenizer.py",
                "--input",
                DATA / "general_train.jsonl",
                "--vocab-size",
                "2048",
                "--output",
                tmp / "tok",
            ]
        )
        run(
            [
                sys.executable,
                tools / "init_model.py",
                "--preset",
                "bench-llama-16",
                "--tokenizer",
                tmp / "tok",
                "--out",
                tmp / "hf",
            ]
        )
        run(
            [sys.executable, tools / "convert_hf.py", "--hf-dir", tmp / "hf", "--out", tmp / "base"]
        )
        run(
            [
                sys.executable,
                tools / "expand_ckpt.py",
                "--load",
                tmp / "base",
                "--out",
                tmp / "top4",
                "--layers",
                "11,12,13,14",
            ]
        )
        run(
            [
                sys.executable,
                tools / "expand_ckpt.py",
                "--load",
                tmp / "base",
                "--out",
                tmp / "uniform4",
                "--uniform",
                "--k",
                "4",
            ]
        )
        run(
            [
                sys.executable,
                tools / "preprocess_data.py",
                "--input",
                DATA / "domain_train.jsonl",
                "--output-prefix",
                tmp / "domain",
                "--tokenizer",
                tmp / "tok",
            ]
        )
        loads = {"pt-full": "top4", "adept": "top4", "no-stage2": "top4", "llama-pro": "uniform4"}
        results = {}
        for mode, load in loads.items():
            out, peak = measured(
                [
                    sys.executable,
                    REPO / "pretrain_adept.py",
                    "--load",
                    tmp / load,
                    "--mode",
                    mode,
                    "--data-path",
                    tmp / "domain",
                    "--probe-data",
                    DATA / "general_probe.jsonl",
                    "--train-iters",
                    args.iters,
                    "--global-batch-size",
                    args.global_batch_size,
                    "--micro-batch-size",
                    args.global_batch_size,
                    "--seq-length",
                    args.seq_length,
                    "--log-interval",
                    1,
                    "--lr",
                    "1e-4",
                    "--split",
                    "100,0,0",
                ]
            )
            tokens = args.global_batch_size * args.seq_length
            steps = [tokens / float(rate) for i, rate in STEP.findall(out) if int(i) > 2]
            refresh = [float(s) for s in REFRESH.findall(out)]
            results[mode] = (sum(steps) / len(steps), peak, refresh[0] if refresh else None)
    base_time, base_peak, _ = results["pt-full"]
    print(
        f"16+4 layers, global batch {args.global_batch_size} x {args.seq_length} tokens, "
        f"{args.iters} iterations per mode (first 2 not timed)"
    )
    print(f"{'mode':10s} {'step s':>8s} {'vs pt-full':>10s} {'peak MiB':>9s} {'vs pt-full':>10s}")
    for mode, (step, peak, _) in results.items():
        print(
            f"{mode:10s} {step:8.3f} {step / base_time:10.2f} {peak:9.0f} {peak / base_peak:10.2f}"
        )
    step, _, refresh = results["adept"]
    share = refresh / (refresh + 500 * step)
    print(f"adept importance refresh: {refresh:.2f} s, {100 * share:.2f}% of wall time at 500")


if __name__ == "__main__":
    main()
