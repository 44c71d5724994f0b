"""Our ADEPT step against the authors' way of training the same expanded model, side by side.

The authors' code (a LLaMA-Factory fork) trains a ``transformers`` model whose original
layers, embeddings and head are frozen, with ``torch.optim.AdamW`` over the copies. The peer
here does the same in one process beside ours: a ``LlamaForCausalLM`` of the expanded
architecture (``attn_implementation="sdpa"``, transformers' default), ``requires_grad`` only
on the copies, one AdamW param group per unit tensor (q, k, v, o, gate, up, down and both
norms; per-unit learning rates are the authors' intent, and HF keeps every unit in its own
tensor) with lr = lr·multiplier, weight decay off for the norms as in HF's Trainer, gradient
clipping at 1.0, ``zero_grad(set_to_none=True)``. torch's AdamW runs with its defaults, as
megatron-core's does on CPU.

Ours is ``pretrain_adept.py --mode adept``'s setup and step (``benchmarks/step_harness.py``):
megatron-core's GPTModel and DDP, the same multipliers through the unit-lr update rescale,
backward stopped below the lowest copy. Both see the same batches, lr, threads, process and
malloc policy (``--malloc``, as in ``step_breakdown.py``); steps alternate, and the ratio
ours/peer is taken per round (median [min-max]). The peer's phases are marked at the same
points as ours (decoder stack, output layer and loss, their backward), so the table below the
ratio says where the two differ.

  python benchmarks/peer_step.py                      # SmolLM2-135M, copies after 5,13,17,18
  python benchmarks/peer_step.py --preset bench-llama-16 --seq-length 256
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from step_harness import (
    PHASES,
    WARMUP_STEPS,
    PhaseTimer,
    add_malloc_argument,
    allocator,
    build_mode,
    set_malloc_policy,
    spread_multipliers,
    synthetic_batches,
)
from transformers import AutoConfig, AutoModelForCausalLM

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config
from megatron_adept.models.units import (
    DOWN_PROJ,
    GATE_PROJ,
    INPUT_NORM,
    K_PROJ,
    O_PROJ,
    POST_ATTN_NORM,
    Q_PROJ,
    UP_PROJ,
    V_PROJ,
)
from megatron_adept.parallel import runtime

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COPIES = {"smollm2-135m": "5,13,17,18", "bench-llama-16": "11,12,14,15"}
HF_UNITS = {
    "self_attn.q_proj.weight": Q_PROJ,
    "self_attn.k_proj.weight": K_PROJ,
    "self_attn.v_proj.weight": V_PROJ,
    "self_attn.o_proj.weight": O_PROJ,
    "mlp.gate_proj.weight": GATE_PROJ,
    "mlp.up_proj.weight": UP_PROJ,
    "mlp.down_proj.weight": DOWN_PROJ,
    "input_layernorm.weight": INPUT_NORM,
    "post_attention_layernorm.weight": POST_ATTN_NORM,
}


class AuthorsStylePeer:
    """A frozen HF model with trainable copies and AdamW over one group per unit."""

    def __init__(self, arch: ModelArch, trainable: tuple[int, ...], lr: float, multipliers):
        config = AutoConfig.for_model(**arch.to_hf_config(), attn_implementation="sdpa")
        self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
        self.model.requires_grad_(False)
        groups = []
        for layer in trainable:
            for name, param in self.model.model.layers[layer].named_parameters():
                param.requires_grad_(True)
                m = multipliers[(layer, HF_UNITS[name])]
                decay = 0.0 if param.ndim == 1 else 0.01
                groups.append({"params": [param], "lr": lr * m, "weight_decay": decay})
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)
        self.timer = PhaseTimer()
        self._watch_model()

    def _watch_model(self) -> None:
        """The phase marks ours gets from :meth:`PhaseTimer.watch_model`, at the same points:
        the decoder stack's start and end (final norm included), the loss, and the gradient's
        arrival at the decoder's output."""
        mark = self.timer.mark

        def decoder_done(module, args, output):
            mark("forward: output layer + loss")
            hidden = output.last_hidden_state
            if hidden.requires_grad:
                hidden.register_hook(lambda grad: mark("backward: decoder"))

        self.model.model.register_forward_pre_hook(lambda *_: mark("forward: decoder"))
        self.model.model.register_forward_hook(decoder_done)
        self.model.register_forward_hook(lambda *_: mark("backward: output layer + loss"))

    def step(self, micro_batches) -> dict:
        for batch in micro_batches:
            loss = self.model(input_ids=batch.tokens, labels=batch.tokens).loss
            (loss / len(micro_batches)).backward()
        self.timer.mark("grad norm + clip")
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.timer.mark("optimizer")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.timer.mark("end")
        return self.timer.take()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--copies", help="0-based base layers that get a copy")
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--global-batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--warmup",
        type=int,
        default=WARMUP_STEPS,
        help="untimed steps first (the malloc settles in two)",
    )
    parser.add_argument("--threads", type=int)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    add_malloc_argument(parser)
    parser.add_argument("--out")
    args = parser.parse_args()
    set_malloc_policy(args.malloc)
    start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    copies_text = args.copies or DEFAULT_COPIES.get(args.preset)
    if copies_text is None:
        parser.error(f"--copies is required for preset {args.preset}")
    copies = tuple(sorted(int(x) for x in copies_text.split(",")))
    runtime.initialize(ParallelConfig())
    base = ModelArch.from_hf_config(preset_config(args.preset))
    tokens = args.global_batch_size * args.seq_length
    ours = build_mode("adept", base, copies, copies, args.seq_length, tokens, ParallelConfig())
    multipliers = spread_multipliers(sorted({(u[0], u[1]) for u in _unit_keys(ours)}))
    ours.scaling.set_multipliers(multipliers)
    peer = AuthorsStylePeer(ours.arch, ours.plan.layers, args.lr, multipliers)
    steps = args.warmup + args.steps
    ours_batches = synthetic_batches(
        ours.arch, args.seq_length, args.global_batch_size, args.micro_batch_size, steps
    )
    peer_batches = synthetic_batches(
        ours.arch, args.seq_length, args.global_batch_size, args.micro_batch_size, steps
    )
    clock = 0 if args.clock == "wall" else 1
    rows = {"ours": [], "peer": []}
    for r in range(steps):
        first_ours = r % 2 == 0
        for who in ("ours", "peer") if first_ours else ("peer", "ours"):
            if who == "ours":
                phases = ours.step(ours_batches)[1]
            else:
                phases = peer.step(next(peer_batches))
            if r >= args.warmup:
                rows[who].append(phases)
    lines = report(args, ours, rows, clock, copies, start)
    out = (
        Path(args.out)
        if args.out
        else REPO / "benchmarks" / "results" / f"peer_step_{args.preset}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    runtime.teardown()


def _unit_keys(run):
    from megatron_adept.models.units import model_units

    return [(u.layer, u.unit) for u in model_units(run.ddp.module, 1) if u.param.requires_grad]


def _spread(values) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def report(args, ours, rows, clock, copies, start) -> list[str]:
    totals = {who: [sum(v[clock] for v in p.values()) for p in rows[who]] for who in rows}
    ratios = [a / b for a, b in zip(totals["ours"], totals["peer"], strict=True)]
    gflop = ours.flops.total / 1e9
    lines = [
        f"# Our ADEPT step vs the authors' style: {args.preset}",
        "",
        f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        "",
        f"{date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, fp32, {allocator()}. "
        f"{ours.arch.num_layers} layers (copies "
        f"after {list(copies)} at {list(ours.plan.layers)}), batch {args.global_batch_size} x "
        f"{args.seq_length} (micro-batch {args.micro_batch_size}), lr {args.lr}; "
        f"{args.steps} rounds after {args.warmup} warm-up, alternating who goes first.",
        "",
        f"| | step {args.clock} s, median [min-max] | GFLOP/s (FLOP model {gflop:.1f} GFLOP) |",
        "|---|---|---|",
    ]
    for who, label in (("ours", "ours: pretrain_adept.py --mode adept"), ("peer", "peer")):
        lines.append(
            f"| {label} | {_spread(totals[who])} | {gflop / statistics.median(totals[who]):.1f} |"
        )
    lines += ["", f"**ours / peer: {_spread(ratios)}**", "", f"Median {args.clock} ms per phase:"]
    lines += ["", "| phase | ours | peer |", "|---|---|---|"]
    for phase in PHASES:
        cells = [
            statistics.median(s[phase][clock] if phase in s else 0.0 for s in rows[who])
            for who in ("ours", "peer")
        ]
        if any(cells):
            lines.append(f"| {phase} | " + " | ".join(f"{1e3 * c:.0f}" for c in cells) + " |")
    lines += ["", f"The benchmark took {time.monotonic() - start:.0f} s."]
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
