"""Logits of the same weights at several TP/PP layouts versus TP=1 (4 ranks).

argv: PRESET WORKDIR RESULT_JSON
"""

import sys

import torch
import torch.distributed as dist
from common import arch_for, randomize, sample_tokens, switch_layout, write_result

from megatron_adept.checkpoint.mcore_io import load_model, save_model
from megatron_adept.checkpoint.metadata import CheckpointMeta, LayerMap
from megatron_adept.models.builder import build_model
from megatron_adept.models.pipeline import full_logits
from megatron_adept.parallel import runtime

LAYOUTS = {
    "tp2": (2, 1, None, None),
    "pp2": (1, 2, None, None),
    "pp2_uneven_1_3": (1, 2, 1, 3),
    "tp2_pp2": (2, 2, None, None),
}


def main() -> None:
    preset, workdir, result_path = sys.argv[1:4]
    arch = arch_for(preset)
    tokens = sample_tokens(2, 24, arch.vocab_size)
    parallel = switch_layout(1, 1)
    model = build_model(arch, parallel)
    randomize(model, seed=0)
    save_model(model, f"{workdir}/ckpt", CheckpointMeta(arch, LayerMap.identity(arch.num_layers)))
    reference = full_logits(model, tokens, arch.vocab_size)
    result = {"reference_abs_mean": reference.abs().mean().item()}
    for name, (tp, pp, first, last) in LAYOUTS.items():
        parallel = switch_layout(tp, pp, first, last)
        model, _ = load_model(f"{workdir}/ckpt", parallel)
        logits = full_logits(model, tokens, arch.vocab_size)
        diff = (logits - reference).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        result[name] = diff.item()
        result[f"{name}_layers_on_stage0"] = (
            len(model.decoder.layers) if dist.get_rank() == 0 else None
        )
    write_result(result_path, result)
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
