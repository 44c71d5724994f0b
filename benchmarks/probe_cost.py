"""The masking probe's cost against its FLOP bound at the training FLOP/s of the same run.

Times Stage 1's library entry (``probe_layers``, what ``tools/probe_importance.py`` runs:
the unit-importance gradient pass, then the masking probe with prefix reuse) on a random
model of the preset, with ``--items`` probe items of ``--seq-length`` tokens (every token
counted, as ``{"text"}`` items), in micro-batches of ``--micro-batch-size``. In the same
process it times pt-full training steps of the same model and batch size
(``benchmarks/step_harness.py``) for the FLOP/s a training step achieves, and divides the
probe's FLOP bound by that rate: the rate of the steps' forward and backward phases, which
is higher than the whole step's (the optimizer does no matmuls), so the bound is the stricter.

The bound counts what the probe must compute (``megatron_adept.training.flops`` conventions):

* unit importance: a forward through every layer and the output layer, and a backward with
  activation and weight gradients for every decoder layer (the output layer back-propagates
  its activation gradient only): ``step_flops`` with every decoder layer trainable;
* masking: the variant "layer l bypassed" starts from layer l's input, which the base pass
  already computed, and runs layers l+1..L-1 and the output layer: sum over l of
  (L - 1 - l) layers, plus L output layers. The base loss and layer inputs can come from the
  gradient pass's forward, so no further base pass is counted.

  python benchmarks/probe_cost.py --threads 1 --clock cpu       # SmolLM2-135M, 16 x 128
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_breakdown import PASSES  # noqa: E402
from step_harness import (  # noqa: E402
    WARMUP_STEPS,
    add_malloc_argument,
    allocator,
    build_mode,
    set_malloc_policy,
    synthetic_batches,
)

from megatron_adept.config.parallel import ParallelConfig  # noqa: E402
from megatron_adept.models.archs import ModelArch  # noqa: E402
from megatron_adept.models.builder import build_model  # noqa: E402
from megatron_adept.models.pipeline import MicroBatch  # noqa: E402
from megatron_adept.models.presets import preset_config  # noqa: E402
from megatron_adept.parallel import runtime  # noqa: E402
from megatron_adept.probe import runner  # noqa: E402
from megatron_adept.training.flops import (  # noqa: E402
    attention_flops_per_token,
    output_flops_per_token,
    projection_flops_per_token,
    step_flops,
)


def probe_bound_flops(arch: ModelArch, seq_length: int, tokens: int) -> dict[str, float]:
    """{phase: matmul FLOPs} of the probe's unavoidable work (see the module docstring)."""
    layer = projection_flops_per_token(arch) + attention_flops_per_token(arch, seq_length)
    layers = arch.num_layers
    gradient = step_flops(arch, range(layers), seq_length, tokens).total
    variants = layers * (layers - 1) / 2 * layer + layers * output_flops_per_token(arch)
    return {"unit importance": gradient, "masking": tokens * variants}


def random_items(vocab: int, items: int, seq_length: int, micro: int) -> list[MicroBatch]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (items, seq_length + 1), generator=gen)
    return [
        MicroBatch(ids[i : i + micro, :-1], ids[i : i + micro, 1:], torch.ones(micro, seq_length))
        for i in range(0, items, micro)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--items", type=int, default=16, help="probe items")
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=3, help="timed pt-full steps")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    add_malloc_argument(parser)
    parser.add_argument("--out", help="results markdown")
    args = parser.parse_args()
    set_malloc_policy(args.malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    started = datetime.datetime.now(datetime.UTC)
    parallel = ParallelConfig()
    runtime.initialize(parallel)
    arch = ModelArch.from_hf_config(preset_config(args.preset))
    micro, seq = args.micro_batch_size, args.seq_length

    # Training FLOP/s: pt-full steps of the base model on batches of the probe's shape.
    train = build_mode("pt-full", arch, (), (), seq, micro * seq, parallel)
    batches = synthetic_batches(train.arch, seq, micro, micro, args.train_steps + WARMUP_STEPS)
    for _ in range(WARMUP_STEPS):
        train.step(batches)
    field = 0 if args.clock == "wall" else 1  # PhaseTimer.FIELDS
    step_s, pass_s = [], []
    for _ in range(args.train_steps):
        phases = train.step(batches)[1]
        step_s.append(sum(v[field] for v in phases.values()))
        pass_s.append(sum(v[field] for p, v in phases.items() if p.startswith(PASSES)))
    train_flops = train.flops.total
    step_rate = train_flops / statistics.median(step_s)
    train_rate = train_flops / statistics.median(pass_s)  # the stricter of the two
    del train, batches

    # The probe, as tools/probe_importance.py runs it, its phases timed apart.
    model = build_model(arch, parallel)
    probe_batches = random_items(arch.vocab_size, args.items, seq, micro)
    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + clock() - t0

        return wrapper

    with (
        mock.patch.object(runner, "loss_gradient", timed("unit importance", runner.loss_gradient)),
        mock.patch.object(runner, "masking_probe", timed("masking", runner.masking_probe)),
    ):
        t0 = clock()
        scores = runner.probe_layers(model, probe_batches, "masking", k=4)
        total = clock() - t0
    runtime.teardown()

    tokens = args.items * seq
    bound = probe_bound_flops(arch, seq, tokens)
    bound_s = {name: flops / train_rate for name, flops in bound.items()}
    bound_total = sum(bound_s.values())
    lines = [
        f"# Masking probe cost vs its FLOP bound ({args.preset})",
        "",
        f"`{' '.join(['python', *sys.argv])}`",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), fp32, {args.clock} time, {allocator()}. "
        "Random weights, "
        f"{arch.num_layers} layers, hidden {arch.hidden_size}, vocab {arch.vocab_size}; "
        f"{args.items} items x {seq} tokens in micro-batches of {micro}; selected "
        f"{scores.selected}.",
        "",
        f"Training rate (pt-full steps of this model, {micro} x {seq} tokens, "
        f"{train_flops / 1e9:.1f} GFLOP, median of {args.train_steps}): "
        f"{train_rate / 1e9:.1f} GFLOP/s over the forward and backward phases "
        f"({statistics.median(pass_s):.2f} s), {step_rate / 1e9:.1f} GFLOP/s over the whole "
        f"step ({statistics.median(step_s):.2f} s, optimizer included). The bound uses the "
        "forward + backward rate, the higher one.",
        "",
        f"| phase | {args.clock} s | FLOP bound (GFLOP) | bound s at training rate | ratio |",
        "|---|---|---|---|---|",
    ]
    for name in ("unit importance", "masking"):
        lines.append(
            f"| {name} | {phases.get(name, 0.0):.1f} | {bound[name] / 1e9:.0f} | "
            f"{bound_s[name]:.1f} | {phases.get(name, 0.0) / bound_s[name]:.2f}x |"
        )
    lines.append(
        f"| **probe_layers total** | **{total:.1f}** | {sum(bound.values()) / 1e9:.0f} | "
        f"**{bound_total:.1f}** | **{total / bound_total:.2f}x** |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
