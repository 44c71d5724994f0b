"""One optimizer step at a given layout; the 8-rank run compares itself with a TP=1 reference.

argv: PRESET WORKDIR TP PP DISTRIBUTED(0/1) RESULT_JSON
Run first with TP=PP=1 on one rank: writes WORKDIR/init (random weights) and WORKDIR/after
(weights after one step). A later run at another layout loads WORKDIR/init, takes the same
step on the same global batch, and reports the largest difference to WORKDIR/after.
"""

import os
import sys

import torch
import torch.distributed as dist
from common import arch_for, randomize, sample_tokens, switch_layout, write_result
from megatron.core import parallel_state

from megatron_adept.checkpoint.mcore_io import load_model, save_model
from megatron_adept.checkpoint.metadata import CheckpointMeta, LayerMap
from megatron_adept.models.builder import build_model
from megatron_adept.models.pipeline import MicroBatch
from megatron_adept.models.units import decoder_layers, layer_index
from megatron_adept.optimizer.build import build_optimizer, wrap_ddp
from megatron_adept.optimizer.config import OptimizerSettings
from megatron_adept.parallel import runtime
from megatron_adept.training.step import train_step

GLOBAL_BATCH, SEQ = 4, 16


def freeze_some(model: torch.nn.Module) -> None:
    """Freeze the embeddings and global layer 0, as ADEPT freezes the original model."""
    for name, param in model.named_parameters():
        if name.startswith("embedding."):
            param.requires_grad_(False)
    for layer in decoder_layers(model):
        if layer_index(layer) == 0:
            layer.requires_grad_(False)


def micro_batches(vocab: int, dp_rank: int, dp_size: int) -> list[MicroBatch]:
    data = sample_tokens(GLOBAL_BATCH, SEQ + 1, vocab, seed=11)
    per_rank = GLOBAL_BATCH // dp_size
    rows = data[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    return [MicroBatch(r[None, :-1].clone(), r[None, 1:].clone(), torch.ones(1, SEQ)) for r in rows]


def main() -> None:
    preset, workdir, tp, pp, distributed, result_path = sys.argv[1:7]
    arch = arch_for(preset)
    parallel = switch_layout(int(tp), int(pp))
    meta = CheckpointMeta(arch, LayerMap.identity(arch.num_layers))
    reference_run = not os.path.exists(f"{workdir}/init/adept_meta.json")
    if reference_run:
        model = build_model(arch, parallel)
        randomize(model, seed=3)
        save_model(model, f"{workdir}/init", meta)
    else:
        model, _ = load_model(f"{workdir}/init", parallel)
    freeze_some(model)
    ddp = wrap_ddp(model, use_distributed_optimizer=distributed == "1")
    settings = OptimizerSettings(
        lr=1e-2,
        adam_eps=1e-3,  # keeps Adam's first step well-conditioned for float32 comparisons
        weight_decay=0.1,
        clip_grad=1.0,
        use_distributed_optimizer=distributed == "1",
    )
    optimizer = build_optimizer(ddp, settings)
    dp_rank, dp_size = (
        parallel_state.get_data_parallel_rank(),
        parallel_state.get_data_parallel_world_size(),
    )
    result = train_step(ddp, optimizer, micro_batches(arch.vocab_size, dp_rank, dp_size))
    if reference_run:
        save_model(model, f"{workdir}/after", meta)
        write_result(result_path, {"loss": result.loss, "grad_norm": result.grad_norm})
    else:
        expected, _ = load_model(f"{workdir}/after", parallel)
        initial, _ = load_model(f"{workdir}/init", parallel)
        got, want, before = model.state_dict(), expected.state_dict(), initial.state_dict()
        diff = torch.zeros(())
        changed = torch.zeros(())
        for key, value in want.items():
            if key.endswith("_extra_state"):
                continue
            diff = torch.maximum(diff, (got[key].float() - value.float()).abs().max())
            changed = torch.maximum(changed, (value.float() - before[key].float()).abs().max())
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        dist.all_reduce(changed, op=dist.ReduceOp.MAX)
        write_result(
            result_path,
            {
                "loss": result.loss,
                "grad_norm": result.grad_norm,
                "max_abs_diff": diff.item(),
                "max_update": changed.item(),
            },
        )
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
