"""Write a small random "expanded" checkpoint for the Stage-2 tests.

argv: PRESET TOKENIZER_DIR VOCAB_SIZE OUT LAYOUT [OUT LAYOUT ...]
LAYOUT lists the layers as o<source> (original) or c<source> (copy), e.g. o0,o1,c1,o2,o3,c3.
Every tensor is random (copies too), so every unit has a non-zero gradient from step 0.
"""

import shutil
import sys
from dataclasses import replace

import torch
from common import arch_for, randomize

from megatron_adept.checkpoint.mcore_io import save_model
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerEntry, LayerMap
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.models.builder import build_model
from megatron_adept.parallel import runtime


def main() -> None:
    preset, tokenizer_dir, vocab, *outputs = sys.argv[1:]
    parallel = ParallelConfig()
    runtime.initialize(parallel, seed=1234)
    for out, layout in zip(outputs[0::2], outputs[1::2], strict=True):
        entries = tuple(
            LayerEntry("original" if e[0] == "o" else "copy", int(e[1:])) for e in layout.split(",")
        )
        arch = replace(arch_for(preset), num_layers=len(entries), vocab_size=int(vocab))
        model = build_model(arch, parallel)
        randomize(model, seed=5)
        meta = CheckpointMeta(arch, LayerMap(entries), {"tool": "tests"}, TOKENIZER_DIR)
        save_model(model, out, meta)
        shutil.copytree(tokenizer_dir, f"{out}/{TOKENIZER_DIR}")
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
