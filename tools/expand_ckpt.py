"""Duplicate decoder layers of a megatron checkpoint with function-preserving copies.

  python tools/expand_ckpt.py --load IN --out OUT (--layers 22,23,25,27 |
      --importance importance.json --k 4 | --uniform --k 4)

Each selected layer gets a copy inserted right after it; the copy's attention output
projection and MLP down projection are zero, so the expanded model computes exactly what the
original did. The layer map in the checkpoint records which layers are copies.
"""

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

    load: str = arg(help="Checkpoint to expand.")
    out: str = arg(help="Output checkpoint directory.")
    overwrite: bool = arg(False, "Replace a non-empty output directory.")


def main() -> None:
    args = build_parser(__doc__, ExpandIO, ExpandSelection).parse_args()
    io, selection = extract(args, ExpandIO), extract(args, ExpandSelection)
    setup_logging()
    plan = selection.plan(CheckpointMeta.load(io.load).arch.num_layers)
    try:
        expand_checkpoint(io.load, io.out, plan, io.overwrite)
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
