"""Logits of several checkpoints at several layouts, for comparison in the test process.

argv: OUT_FILE BATCH SEQ SEED CKPT [CKPT ...] [--resave SRC DST]
Writes {ckpt: {layout: logits [b, s, vocab]}} with torch.save on rank 0 (4 ranks expected).
With --resave, the checkpoint SRC loaded at TP=2 x PP=2 is saved again to DST, as training
saves it: tensor- and pipeline-sharded.
"""

import sys

import torch
from common import sample_tokens, switch_layout

from megatron_adept.checkpoint.mcore_io import load_model, save_model
from megatron_adept.models.pipeline import full_logits
from megatron_adept.parallel import runtime

LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2_pp2": (2, 2)}


def main(args: list[str]) -> None:
    resave = None
    if "--resave" in args:
        at = args.index("--resave")
        resave, args = args[at + 1 : at + 3], args[:at] + args[at + 3 :]
    out_file, batch, seq, seed, *ckpts = args
    results: dict[str, dict[str, torch.Tensor]] = {ckpt: {} for ckpt in ckpts}
    for name, (tp, pp) in LAYOUTS.items():
        parallel = switch_layout(tp, pp)
        for ckpt in ckpts:
            model, meta = load_model(ckpt, parallel)
            tokens = sample_tokens(int(batch), int(seq), meta.arch.vocab_size, int(seed))
            results[ckpt][name] = full_logits(model, tokens, meta.arch.vocab_size)
    if resave is not None:
        model, meta = load_model(resave[0], parallel)
        save_model(model, resave[1], meta)
    if torch.distributed.get_rank() == 0:
        torch.save(results, out_file)
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
