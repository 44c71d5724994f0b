"""Every probe method on one checkpoint at several layouts of 2 ranks (TP=1 x DP=2, TP=2, PP=2).

argv: CKPT MIXED_JSONL SFT_JSONL SEQ MICRO_BATCH OUT_JSON
Writes {layout: {...}} on rank 0: importance.json contents per method, the naive masking
losses, the masking probe of the SFT-only corpus, and unit importance taken through megatron's
DDP wrapper in train mode with only layers 2 and 3 trainable (as in Stage 2), with a report
of what that call left untouched.
"""

import sys

import torch
from common import switch_layout, write_result

from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.data.corpus import corpus_batches, load_corpus
from megatron_adept.data.tokenizer import resolve_tokenizer
from megatron_adept.importance.unit_importance import unit_importance
from megatron_adept.models.units import decoder_layers, layer_index
from megatron_adept.optimizer.build import wrap_ddp
from megatron_adept.parallel import runtime
from megatron_adept.probe.config import METHODS
from megatron_adept.probe.layer_importance import masking_probe
from megatron_adept.probe.runner import probe_layers

LAYOUTS = {"dp2": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}
DDP_LAYERS = [2, 3]
SENTINEL = 0.5


def ddp_unit_importance(model: torch.nn.Module, batches) -> dict:
    """Stage 2's call: only layers 2 and 3 trainable, through DDP, in train mode."""
    model.requires_grad_(False)
    for layer in decoder_layers(model):
        layer.requires_grad_(layer_index(layer) in DDP_LAYERS)
    flags = [p.requires_grad for p in model.parameters()]
    ddp = wrap_ddp(model, use_distributed_optimizer=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for param in trainable:
        param.main_grad.fill_(SENTINEL)
    ddp.train()
    rng = torch.get_rng_state()
    units = unit_importance(ddp, batches, only_trainable=True)
    return {
        "means": {f"{layer}/{unit}": value for (layer, unit), value in units.mean().items()},
        "main_grad_untouched": all(bool((p.main_grad == SENTINEL).all()) for p in trainable),
        "grad_none": all(p.grad is None for p in model.parameters()),
        "rng_untouched": torch.equal(rng, torch.get_rng_state()),
        "still_training": model.training,
        "flags_unchanged": flags == [p.requires_grad for p in model.parameters()],
    }


def main() -> None:
    ckpt, mixed, sft, seq, micro, out = sys.argv[1:]
    tokenizer = resolve_tokenizer(None, ckpt)
    mixed_batches = corpus_batches(load_corpus(mixed, tokenizer), int(seq), int(micro))
    sft_batches = corpus_batches(load_corpus(sft, tokenizer), int(seq), int(micro))
    results = {}
    for name, (tp, pp) in LAYOUTS.items():
        parallel = switch_layout(tp, pp)
        model, _ = load_model(ckpt, parallel)
        result = {m: probe_layers(model, mixed_batches, m).to_dict() for m in METHODS}
        naive = masking_probe(model, mixed_batches, reuse_prefix=False)
        result["naive"] = {"base_loss": naive.base_loss, "masked_losses": naive.masked_losses}
        sft_probe = masking_probe(model, sft_batches)
        result["sft"] = {
            "base_loss": sft_probe.base_loss,
            "counted_tokens": sft_probe.counted_tokens,
        }
        result["ddp"] = ddp_unit_importance(model, mixed_batches)
        results[name] = result
    write_result(out, results)
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
