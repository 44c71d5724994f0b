"""Duplicate decoder layers of a megatron checkpoint with function-preserving copies.

  python tools/expand_ckpt.py --load IN --out OUT
      (--layers 22,23,25,27 | --importance importance.json --k 4 | --uniform --k 4)

Each selected layer (0-based) gets a copy inserted right after it; the copy's attention output
projection and MLP down projection are zero and everything else is an exact copy, so the
expanded model computes exactly what the original did. The layer map in adept_meta.json
records which layers are copies. --uniform is LLaMA-Pro's placement: a copy after every
(L // k)-th layer (L/k-1, 2L/k-1, ..., L-1 when k divides L; 6, 13, 20, 27 for L=30, k=4),
spread evenly where that rule does not give k copies; the log and the provenance in
adept_meta.json say which rule placed them. --load may be a training --save directory (its
latest checkpoint). Runs in one process, in host memory on the CPU whatever the node; holds
one copy of the expanded model.
"""

from dataclasses import dataclass

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.config.cli import Command, run_cli
from megatron_adept.config.groups import OutputConfig, load_flag
from megatron_adept.expansion.plan import ExpansionSelection


@dataclass
class ExpandInput:
    """The checkpoint to expand."""

    load: str = load_flag()


COMMAND = Command(__doc__, (ExpandInput, OutputConfig, ExpansionSelection))


def main() -> None:
    source, output, selection = COMMAND.parse()
    load, _ = resolve_load(source.load)
    plan = selection.plan(CheckpointMeta.load(load).arch.num_layers)
    from megatron_adept.expansion.expand import expand_checkpoint
    from megatron_adept.parallel.log import setup_logging

    setup_logging()
    expand_checkpoint(load, output.out, plan, output.overwrite)


if __name__ == "__main__":
    run_cli(main)
