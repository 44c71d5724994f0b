"""Held-out loss of a checkpoint on JSONL corpora (same item formats as the probe corpus).

  torchrun --nproc-per-node N tools/eval_loss.py --load CKPT --data general.jsonl \\
      [domain.jsonl ...] [--out losses.json] [--tensor-model-parallel-size T ...]

--data takes {"text"} items (every token counts) or {"prompt", "answer"} items (the answer
tokens count). Prints one line per corpus; --out writes {file: {"loss", "tokens", "items":
[{"loss_sum", "tokens"} per item, in file order]}}: per-item values serve paired comparisons
of two models.
"""

from megatron_adept.checkpoint.resolve import open_checkpoint
from megatron_adept.config.cli import Command, run_cli
from megatron_adept.config.groups import BatchConfig, TokenizerConfig
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.eval.config import HeldoutLossConfig

COMMAND = Command(
    __doc__,
    (HeldoutLossConfig, BatchConfig, TokenizerConfig, ParallelConfig),
    defaults={"seq_length": 512, "micro_batch_size": 8},
)


def main() -> None:
    config, batch, tokenizer_config, parallel = COMMAND.parse()
    checkpoint = open_checkpoint(config.load, parallel)
    import torch.distributed as dist

    from megatron_adept.checkpoint.atomic import write_json_atomic
    from megatron_adept.checkpoint.mcore_io import load_model
    from megatron_adept.data.corpus import corpus_batches, load_corpus
    from megatron_adept.data.tokenizer import resolve_tokenizer, text_prefix
    from megatron_adept.eval.heldout_loss import heldout_loss
    from megatron_adept.parallel import runtime
    from megatron_adept.parallel.collectives import barrier
    from megatron_adept.parallel.log import setup_logging

    tokenizer = resolve_tokenizer(tokenizer_config.tokenizer, checkpoint.path)
    prefix = text_prefix(tokenizer, tokenizer_config.add_bos)
    corpora = {path: load_corpus(path, tokenizer, prefix) for path in config.data}
    setup_logging()
    runtime.initialize(parallel)
    try:
        model, _ = load_model(checkpoint.path, parallel)
        results = {}
        for path, items in corpora.items():
            batches = corpus_batches(items, batch.seq_length, batch.micro_batch_size)
            result = heldout_loss(model, batches)
            results[path] = {
                "loss": result.loss,
                "tokens": result.tokens,
                "items": [
                    {"loss_sum": loss_sum, "tokens": tokens}
                    for loss_sum, tokens in zip(
                        result.item_loss_sums[: len(items)], result.item_tokens, strict=False
                    )
                ],
            }
            if dist.get_rank() == 0:
                print(f"{path}: loss {result.loss:.4f} over {result.tokens} tokens")
        if config.out and dist.get_rank() == 0:
            write_json_atomic(config.out, results)
        barrier()
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
