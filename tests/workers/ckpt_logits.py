"""Logits of several checkpoints at several layouts, for comparison in the test process.

argv: OUT_FILE BATCH SEQ SEED CKPT [CKPT ...]
Writes {ckpt: {layout: logits [b, s, vocab]}} with torch.save on rank 0 (4 ranks expected).
"""

import sys

import torch
from common import sample_tokens, switch_layout

from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.models.forward import full_logits
from megatron_adept.parallel import runtime

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2_pp2": (2, 2)}


def main() -> None:
    out_file, batch, seq, seed, *ckpts = sys.argv[1:]
    results: dict[str, dict[str, torch.Tensor]] = {ckpt: {} for ckpt in ckpts}
    for name, (tp, pp) in LAYOUTS.items():
        parallel = switch_layout(tp, pp)
        for ckpt in ckpts:
            model, meta = load_model(ckpt, parallel)
            tokens = sample_tokens(int(batch), int(seq), meta.arch.vocab_size, int(seed))
            results[ckpt][name] = full_logits(model, tokens, meta.arch.vocab_size)
    if torch.distributed.get_rank() == 0:
        torch.save(results, out_file)
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
