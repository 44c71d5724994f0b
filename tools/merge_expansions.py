"""Merge layer expansions trained on different domains from the same base (ADEPT App. J).

  python tools/merge_expansions.py --base CKPT --inputs A B [--weights 0.5 0.5] --out CKPT_M

A and B must be expanded from CKPT with the same layer map (e.g. by tools/expand_ckpt.py with
the same layers) and then trained with ADEPT, which changes only the copy layers. The result
keeps every original tensor of CKPT and sets each copy-layer tensor to the weighted mean of
the inputs' (weights normalised to sum to 1; default equal). Inputs with another architecture
or layer map, or whose original tensors differ from CKPT's, are refused. Any checkpoint may be
a training --save directory (its latest checkpoint). Runs in one process, in host memory on
the CPU whatever the node.
"""

from megatron_adept.config.cli import Command, run_cli
from megatron_adept.expansion.config import MergeConfig

COMMAND = Command(__doc__, (MergeConfig,))


def main() -> None:
    (config,) = COMMAND.parse()
    from megatron_adept.expansion.merge import merge_expansions
    from megatron_adept.parallel.log import setup_logging

    setup_logging()
    merge_expansions(
        config.base, config.inputs, config.normalised_weights, config.out, config.overwrite
    )


if __name__ == "__main__":
    run_cli(main)
