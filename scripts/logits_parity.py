"""Logits of megatron checkpoints against transformers' forward pass of their Hugging Face exports.

  python scripts/logits_parity.py --load CKPT [CKPT ...] --hf-dir DIR [DIR ...]
      --data TEXT.jsonl --out parity.json [--impls local [transformer_engine]] [--bf16]
      [--batch 4 --seq-length 256]

One of the stages of scripts/gpu_check.py (one process for every checkpoint, to spare
start-ups). The reference is transformers in fp32 on the same device, so that the difference
measures megatron's forward (in bf16 with --bf16, as trained) rather than two rounding
patterns. Each checkpoint is loaded once per layer implementation (--impls, see
--transformer-impl); with two, their logits are also compared with each other, which is how a
checkpoint written with one spec is shown to load with the other. Writes {CKPT: {"megatron":
{impl: stats vs the reference}, "cross": {"A vs B": stats}}}, each stats {"max_abs_diff",
"ref_max_abs", "mean_abs_diff", "ref_mean_abs", "argmax_agreement"}; the caller applies its
tolerances.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.checkpoint.resolve import open_checkpoint
from megatron_adept.config.parallel import TRANSFORMER_IMPLS, ParallelConfig
from megatron_adept.data.corpus import CorpusItem, load_corpus
from megatron_adept.data.tokenizer import resolve_tokenizer, text_prefix
from megatron_adept.errors import DataError
from megatron_adept.models.pipeline import full_logits
from megatron_adept.parallel import runtime


def packed_tokens(items: list[CorpusItem], batch: int, seq_length: int) -> torch.Tensor:
    """The corpus' token ids end to end, cut into ``[batch, seq_length]`` (real text, not
    random ids: a trained model's logits on text are the ones that matter)."""
    needed = batch * seq_length
    ids = list(itertools.islice(itertools.chain.from_iterable(i.ids for i in items), needed))
    if len(ids) < needed:
        raise DataError(f"the corpus has {len(ids)} tokens; {needed} are needed")
    return torch.tensor(ids, dtype=torch.long).view(batch, seq_length)


def difference(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """How far ``got`` is from ``ref`` (both ``[b, s, vocab]`` fp32)."""
    diff = (got - ref).abs()
    return {
        "max_abs_diff": diff.max().item(),
        "ref_max_abs": ref.abs().max().item(),
        "mean_abs_diff": diff.mean().item(),
        "ref_mean_abs": ref.abs().mean().item(),
        "argmax_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
    }


def hf_reference(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    """transformers' logits in fp32 on ``tokens``' device (bf16 weights upcast exactly)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model = model.to(tokens.device).eval()
    with torch.no_grad():
        logits = model(input_ids=tokens).logits.float()
    del model
    return logits


def compare(
    load: str,
    hf_dir: str,
    data: str,
    impls: list[str],
    dtype: torch.dtype,
    batch: int,
    seq_length: int,
    device: torch.device,
) -> dict:
    """One checkpoint's stats (see the module docstring)."""
    checkpoint = open_checkpoint(load)
    tokenizer = resolve_tokenizer(None, checkpoint.path)
    items = load_corpus(data, tokenizer, text_prefix(tokenizer))
    tokens = packed_tokens(items, batch, seq_length).to(device)
    reference = hf_reference(hf_dir, tokens)
    logits = {}
    for impl in impls:
        model, meta = load_model(checkpoint.path, ParallelConfig(transformer_impl=impl), dtype)
        logits[impl] = full_logits(model, tokens, meta.arch.vocab_size)
        del model
    first, *others = impls
    return {
        "tokens": tokens.numel(),
        "megatron": {impl: difference(got, reference) for impl, got in logits.items()},
        "cross": {f"{first} vs {o}": difference(logits[o], logits[first]) for o in others},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load", nargs="+", required=True, help="Megatron checkpoints.")
    parser.add_argument("--hf-dir", nargs="+", required=True, help="Their HF exports, in order.")
    parser.add_argument("--data", required=True, help="JSONL text whose tokens are scored.")
    parser.add_argument("--out", required=True, help="Where the JSON result goes.")
    parser.add_argument(
        "--impls", nargs="+", default=["auto"], choices=TRANSFORMER_IMPLS, help="Layer specs."
    )
    parser.add_argument("--bf16", action="store_true", help="Megatron forward in bfloat16.")
    parser.add_argument("--batch", type=int, default=4, help="Sequences.")
    parser.add_argument("--seq-length", type=int, default=256, help="Tokens per sequence.")
    args = parser.parse_args()
    if len(args.load) != len(args.hf_dir):
        parser.error(f"{len(args.load)} --load checkpoints but {len(args.hf_dir)} --hf-dir exports")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    device = runtime.initialize(ParallelConfig()).device
    try:
        result = {
            load: compare(
                load, hf_dir, args.data, args.impls, dtype, args.batch, args.seq_length, device
            )
            for load, hf_dir in zip(args.load, args.hf_dir, strict=True)
        }
    finally:
        runtime.teardown()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
