"""Largest absolute difference of every tensor between two checkpoints (loaded at TP=1).

argv: CKPT_A CKPT_B RESULT_JSON
"""

import sys

import torch
from common import write_result

from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.parallel import runtime


def main() -> None:
    first, second, result_path = sys.argv[1:4]
    runtime.initialize(ParallelConfig(), seed=1234)
    a, _ = load_model(first, ParallelConfig())
    b, _ = load_model(second, ParallelConfig())
    b_params = dict(b.named_parameters())
    diffs = {
        name: (param.detach() - b_params[name].detach()).abs().max().item()
        for name, param in a.named_parameters()
    }
    write_result(result_path, diffs)
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
