"""Where a Stage-2 step's time and memory go, for every mode, side by side in one process.

For each mode (adept, no-stage2, llama-pro, no-stage1, pt-full) the script sets the model up
as ``pretrain_adept.py`` does and times the phases of the trainer's step: data, forward
(decoder; output layer + loss), backward (output layer + loss; decoder), DDP's gradient sync,
gradient norm and clipping, the unit-lr update rescale and the optimizer. Steps of all modes
are interleaved (the order rotates every round), so machine noise hits them alike; ratios
to pt-full are taken round by round and reported as median [min-max]. Beside each mode stand
its FLOP model (``megatron_adept.training.flops``) and achieved FLOP/s. Then each mode runs
alone in a child process for its peak RSS and its peak tensor memory (live tensors, what a GPU
counts), split into weights, gradient buffers, optimizer state, the activations autograd saves
(by region of the model), the rescale's snapshots, and what the malloc keeps. By default glibc
keeps freed memory for the next step (``--malloc keep``), as torch's caching allocator does on
a GPU, so no mode pays for faulting its transients in again every step.

adept, no-stage2 and pt-full run on the base model expanded after ``--copies``, llama-pro on
the one expanded after ``--llama-pro-copies``, no-stage1 on the base model training the
``--copies`` layers. Weights are random (a checkpoint's with ``--load``, for the modes on its
layer map); the batches are random token ids through the trainer's batching.

  python benchmarks/step_breakdown.py                         # SmolLM2-135M, ~15 min on 2 cores
  python benchmarks/step_breakdown.py --preset bench-llama-16 --seq-length 256
  python benchmarks/step_breakdown.py --load ckpt/expanded --modes adept pt-full

On a shared machine, ``--threads 1 --clock cpu`` compares CPU time instead of wall time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import psutil
import torch
from step_harness import (
    MODES,
    PHASES,
    WARMUP_STEPS,
    SavedActivations,
    TensorPeak,
    add_malloc_argument,
    allocator,
    build_mode,
    set_malloc_policy,
    static_memory,
)
from step_harness import synthetic_batches as batches_for

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config
from megatron_adept.parallel import runtime
from megatron_adept.workflow.process_memory import run_with_peak_rss

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_COPIES = {
    "smollm2-135m": ("5,13,17,18", "6,13,20,27"),
    "bench-llama-16": ("11,12,14,15", "3,7,11,15"),
}
MiB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="smollm2-135m", help="architecture preset")
    source.add_argument("--hf-config", help="a Hugging Face config.json instead of a preset")
    source.add_argument("--load", help="an (expanded) checkpoint: its arch, map and weights")
    parser.add_argument("--copies", help="0-based base layers ADEPT copies, e.g. 5,13,17,18")
    parser.add_argument("--llama-pro-copies", help="layers LLaMA-Pro copies, e.g. 6,13,20,27")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--global-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument(
        "--warmup",
        type=int,
        default=WARMUP_STEPS,
        help="untimed steps per mode first (the malloc settles in two)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument(
        "--attention",
        choices=("sdpa", "local", "both"),
        default="sdpa",
        help="core attention: SDPA (the builder's), megatron's local one, or both side by side",
    )
    add_malloc_argument(parser)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS children")
    parser.add_argument("--out", help="results markdown (default: benchmarks/results/...)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ATTN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.global_batch_size % args.micro_batch_size:
        parser.error("--global-batch-size must be a multiple of --micro-batch-size")
    return args


def resolve_model(args) -> tuple[ModelArch, tuple, tuple, tuple | None, str]:
    """(base arch, copies, llama-pro copies, (load dir, layer map) or None, a short name)."""
    load = None
    if args.load:
        meta = CheckpointMeta.load(args.load)
        layer_map = meta.layer_map
        base = meta.arch.with_layers(layer_map.num_original)
        copies = tuple(layer_map.copied_sources)
        load, name = (args.load, layer_map), Path(args.load).name
    elif args.hf_config:
        base = ModelArch.from_hf_config(json.loads(Path(args.hf_config).read_text()))
        name = Path(args.hf_config).parent.name or "hf-config"
    else:
        base, name = ModelArch.from_hf_config(preset_config(args.preset)), args.preset
    defaults = DEFAULT_COPIES.get(args.preset if not (args.load or args.hf_config) else "", ())
    text = args.copies or (defaults[0] if defaults else None)
    pro_text = args.llama_pro_copies or (defaults[1] if defaults else None)
    if load is None:
        if text is None:
            sys.exit("error: --copies is required for this model")
        copies = tuple(sorted(int(x) for x in text.split(",")))
    if pro_text is None:
        step = base.num_layers // len(copies)
        pro = tuple(step * (j + 1) - 1 for j in range(len(copies)))
    else:
        pro = tuple(sorted(int(x) for x in pro_text.split(",")))
    return base, copies, pro, load, name


def setup(args):
    set_malloc_policy(args.malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime.initialize(ParallelConfig())
    return resolve_model(args)


def variants(args) -> list[tuple[str, str]]:
    """(mode, core attention) pairs to run, in display order."""
    kinds = ("local", "sdpa") if args.attention == "both" else (args.attention,)
    return [(mode, kind) for kind in kinds for mode in args.modes]


def label(mode: str, attention: str, args) -> str:
    return f"{mode} ({attention})" if args.attention == "both" else mode


def _build(args, mode, attention, base, copies, pro, load):
    tokens = args.global_batch_size * args.seq_length
    return build_mode(
        mode, base, copies, pro, args.seq_length, tokens, ParallelConfig(), load, attention
    )


def child(args) -> None:
    """One mode alone: print its memory account as JSON (the parent reads the peak RSS)."""
    base, copies, pro, load, _ = setup(args)
    baseline = psutil.Process().memory_info().rss
    with TensorPeak() as tensors:
        run = _build(args, *args.child, base, copies, pro, load)
        batches = batches_for(
            run.arch, args.seq_length, args.global_batch_size, args.micro_batch_size, 3
        )
        run.step(batches)
        activations = SavedActivations(run).measure(batches)
        run.step(batches)
    print(
        "MEMORY "
        + json.dumps(
            {
                "baseline": baseline,
                "tensor peak": tensors.peak,
                "static": static_memory(run),
                "activations": activations,
            }
        )
    )


def time_modes(args, base, copies, pro, load):
    runs = {
        label(mode, kind, args): _build(args, mode, kind, base, copies, pro, load)
        for mode, kind in variants(args)
    }
    total_steps = args.warmup + args.steps
    batches = {
        name: batches_for(
            run.arch, args.seq_length, args.global_batch_size, args.micro_batch_size, total_steps
        )
        for name, run in runs.items()
    }
    for _ in range(args.warmup):
        for name, run in runs.items():
            run.step(batches[name])
    names, rounds = list(runs), []
    for r in range(args.steps):
        order = names[r % len(names) :] + names[: r % len(names)]
        rounds.append({name: runs[name].step(batches[name])[1] for name in order})
    return runs, rounds


def reference_of(name: str, runs) -> str | None:
    """The pt-full run with the same core attention as ``name``."""
    ref = name.replace(runs[name].mode, "pt-full", 1)
    return ref if ref in runs else None


def _med(values):
    return statistics.median(values)


def _spread(values, fmt="{:.2f}"):
    return f"{fmt.format(_med(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


PASSES = ("forward:", "backward:")
"""Phases whose work the FLOP model counts; the others scale with trainable parameters."""


def _trains(run) -> str:
    if run.plan.layers is None:
        return "all"
    return ",".join(map(str, run.plan.layers))


def timing_tables(args, runs, rounds) -> list[str]:
    clock = 0 if args.clock == "wall" else 1

    def per_step(field: int) -> dict[str, list[float]]:
        return {m: [sum(v[field] for v in rd[m].values()) for rd in rounds] for m in runs}

    step, wall, cpu = per_step(clock), per_step(0), per_step(1)
    kernel, faults = per_step(2), per_step(3)
    matmul = {  # the phases the FLOP model counts: forward and backward
        m: [sum(v[clock] for p, v in rd[m].items() if p.startswith(PASSES)) for rd in rounds]
        for m in runs
    }
    lines = [
        "| mode | layers | trains | step wall s | step CPU s | "
        f"{args.clock} vs pt-full | forward + backward vs pt-full | FLOP model vs pt-full | "
        f"GFLOP | GFLOP/s ({args.clock}) | kernel s | page faults |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, run in runs.items():
        ratio = pass_ratio = flop_ratio = "-"
        ref = reference_of(mode, runs)
        if ref:
            ratio = _spread([a / b for a, b in zip(step[mode], step[ref], strict=True)])
            pass_ratio = _spread([a / b for a, b in zip(matmul[mode], matmul[ref], strict=True)])
            flop_ratio = f"{run.flops.total / runs[ref].flops.total:.3f}"
        gflop = run.flops.total / 1e9
        lines.append(
            f"| {mode} | {run.arch.num_layers} | {_trains(run)} | {_spread(wall[mode])} | "
            f"{_spread(cpu[mode])} | {ratio} | {pass_ratio} | {flop_ratio} | {gflop:.1f} | "
            f"{gflop / _med(step[mode]):.1f} | {_med(kernel[mode]):.2f} | "
            f"{_med(faults[mode]):.0f} |"
        )
    lines += ["", f"Median {args.clock} time per phase, ms (share of the step):", ""]
    lines.append("| phase | " + " | ".join(runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for phase in PHASES:
        cells = []
        for mode in runs:
            values = [rd[mode][phase][clock] if phase in rd[mode] else 0.0 for rd in rounds]
            cells.append(f"{1e3 * _med(values):.0f} ({100 * _med(values) / _med(step[mode]):.0f}%)")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines += ["", "Median page faults per phase (fresh memory the kernel zero-fills):", ""]
    lines.append("| phase | " + " | ".join(runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for phase in PHASES:
        cells = [
            f"{_med([rd[m][phase][3] if phase in rd[m] else 0 for rd in rounds]):.0f}" for m in runs
        ]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return lines


def measure_memory(args) -> dict[str, dict]:
    results = {}
    forwarded = [a for a in sys.argv[1:] if a != "--no-memory"]
    rendezvous = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    for mode, kind in variants(args):
        done, peak = run_with_peak_rss(
            [sys.executable, __file__, *forwarded, "--child", mode, kind],
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            raise SystemExit(f"error: the memory run of {mode} failed:\n{done.stderr[-3000:]}")
        line = next(x for x in done.stdout.splitlines() if x.startswith("MEMORY "))
        results[label(mode, kind, args)] = {
            **json.loads(line[len("MEMORY ") :]),
            "peak": peak * MiB,
            "ref": label("pt-full", kind, args),
        }
    return results


STEADY = ("weights", "gradients", "optimizer state")
"""Tensors that live from setup on; the rescale's snapshots live only in the optimizer phase,
after backward has freed the activations, so they are not part of the peak."""


def memory_tables(memory: dict[str, dict]) -> list[str]:
    """Peak RSS and peak tensor memory, each against pt-full's, and the split of both."""
    modes = list(memory)
    regions = sorted({r for m in memory.values() for r in m["activations"]})
    with_ref = all(m["ref"] in memory for m in memory.values())

    def versus(key):
        return lambda m: m[key] / memory[m["ref"]][key]

    rows = [("peak RSS", lambda m: m["peak"])]
    rows += [("peak RSS vs pt-full", versus("peak"))] if with_ref else []
    rows += [("peak tensor memory (live tensors, as a GPU counts)", lambda m: m["tensor peak"])]
    rows += [("peak tensor memory vs pt-full", versus("tensor peak"))] if with_ref else []
    rows += [
        ("RSS: process before the model (torch, megatron)", lambda m: m["baseline"]),
        ("RSS: kept by the malloc (RSS - process - tensors)", _malloc_kept),
        ("tensors: weights", lambda m: m["static"]["weights"]),
        ("tensors: gradient buffers", lambda m: m["static"]["gradients"]),
        ("tensors: optimizer state", lambda m: m["static"]["optimizer state"]),
        ("tensors: activations saved for backward", lambda m: sum(m["activations"].values())),
    ]
    rows += [(f"  of which {r}", lambda m, r=r: m["activations"].get(r, 0)) for r in regions]
    rows += [
        ("tensors: other at the peak (transients)", _other_tensors),
        (
            "update-rescale snapshots (optimizer phase, not at the peak)",
            lambda m: m["static"]["rescale snapshots"],
        ),
    ]
    lines = ["| MiB | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for name, get in rows:
        values = [get(memory[m]) for m in modes]
        if name.endswith("vs pt-full"):
            cells = [f"{v:.2f}" for v in values]
        else:
            cells = [f"{v / MiB:.0f}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _malloc_kept(m: dict) -> float:
    return m["peak"] - m["baseline"] - m["tensor peak"]


def _other_tensors(m: dict) -> float:
    steady = sum(m["static"][k] for k in STEADY)
    return m["tensor peak"] - steady - sum(m["activations"].values())


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    start = time.monotonic()
    base, copies, pro, load, name = setup(args)
    runs, rounds = time_modes(args, base, copies, pro, load)
    head = [
        f"# Step breakdown: {name}",
        "",
        f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        "",
        f"{date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, fp32, TP=PP=DP=1, "
        f"core attention {args.attention}, {allocator()}. "
        f"Base model {base.num_layers} layers; ADEPT copies after {list(copies)}, "
        f"LLaMA-Pro after {list(pro)}; global batch {args.global_batch_size} x "
        f"{args.seq_length} tokens (micro-batch {args.micro_batch_size}); {args.steps} timed "
        f"rounds after {args.warmup} warm-up, modes interleaved; ratios are per round, "
        "median [min-max].",
        "",
    ]
    lines = head + timing_tables(args, runs, rounds)
    print("\n".join(lines), flush=True)
    if not args.no_memory:
        del runs  # hooks make reference cycles: collect now, or the children compete with
        gc.collect()  # every mode's model still held here (an OOM on a shared machine)
        memory = measure_memory(args)
        section = ["", "Peak memory of each mode alone (one process per mode):", ""]
        section += memory_tables(memory)
        print("\n".join(section))
        lines += section
    took = time.monotonic() - start
    lines += ["", f"The benchmark took {took:.0f} s."]
    print(lines[-1])
    out = Path(args.out) if args.out else RESULTS / f"step_breakdown_{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
