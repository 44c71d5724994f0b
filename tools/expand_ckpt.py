"""Duplicate decoder layers of a megatron checkpoint with function-preserving copies.

  python tools/expand_ckpt.py --load IN --out OUT
      (--layers 22,23,25,27 | --importance importance.json --k 4 | --uniform --k 4)

Each selected layer (0-based) gets a copy inserted right after it; the copy's attention output
projection and MLP down projection are zero and everything else is an exact copy, so the
expanded model computes exactly what the original did. The layer map in adept_meta.json
records which layers are copies. --uniform is LLaMA-Pro's placement: a copy after every
(L // k)-th layer (L/k-1, 2L/k-1, ..., L-1 when k divides L; 6, 13, 20, 27 for L=30, k=4),
spread evenly where that rule does not give k copies; the log and the provenance in
adept_meta.json say which rule placed them. Runs in one process, on CPU; holds one copy of
the expanded model.
"""
# ruff: noqa: E402

import os

# A whole model at TP=1 rarely fits one GPU: expansion runs in host memory on any node.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

from dataclasses import dataclass

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.config.cli import arg, build_parser, extract, run_cli
from megatron_adept.expansion.expand import expand_checkpoint
from megatron_adept.expansion.plan import ExpandSelection
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import setup_logging


@dataclass
class ExpandIO:
    """Input and output checkpoints."""

    load: str = arg(help="Checkpoint to expand (converted or trained, not yet expanded).")
    out: str = arg(help="Output checkpoint directory.")
    overwrite: bool = arg(False, "Replace a non-empty output directory.")


def main() -> None:
    args = build_parser(__doc__, ExpandIO, ExpandSelection).parse_args()
    setup_logging()
    io, selection = extract(args, ExpandIO), extract(args, ExpandSelection)
    plan = selection.plan(CheckpointMeta.load(io.load).arch.num_layers)
    try:
        expand_checkpoint(io.load, io.out, plan, io.overwrite)
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
