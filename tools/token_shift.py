"""Token distribution shift from a base model to an adapted one (ADEPT App. I).

  torchrun --nproc-per-node N tools/token_shift.py --base CKPT_A --adapted CKPT_B \\
      --data FILE.jsonl [--out shift.json] [--plot shift.png] [--top 20] \\
      [--tensor-model-parallel-size T --pipeline-model-parallel-size P]

Also runs as plain `python` in one process. Both models read the texts of FILE.jsonl
({"text"} items: every token counts; {"prompt", "answer"} items: the answer tokens). At each
position the adapted model's greedy token is ranked in the base model's distribution (rank 1 =
the base model's top token): unshifted (rank 1), marginal (rank 2-3) or shifted (rank > 3).
Prints the shares and the top shifted tokens by rank-improvement ratio base_rank/adapted_rank
(the adapted rank of a greedy token is 1); --out writes them as JSON, --plot as a bar chart.
The models may differ in depth (e.g. an expanded model against its base) but not in
vocabulary.
"""

from megatron_adept.checkpoint.resolve import open_checkpoint
from megatron_adept.config.cli import Command, run_cli
from megatron_adept.config.groups import BatchConfig, TokenizerConfig
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.eval.config import TokenShiftConfig

COMMAND = Command(
    __doc__,
    (TokenShiftConfig, BatchConfig, TokenizerConfig, ParallelConfig, PrecisionConfig),
    defaults={"seq_length": 512, "micro_batch_size": 4},
)


def main() -> None:
    config, batch, tokenizer_config, parallel, precision = COMMAND.parse()
    base = open_checkpoint(config.base, parallel)
    adapted = open_checkpoint(config.adapted, parallel)
    import torch.distributed as dist

    from megatron_adept.checkpoint.atomic import write_json_atomic
    from megatron_adept.data.corpus import corpus_batches, load_corpus
    from megatron_adept.data.tokenizer import resolve_tokenizer, text_prefix
    from megatron_adept.eval.comparable import check_shared_vocabulary
    from megatron_adept.eval.token_shift import plot_token_shift, token_shift
    from megatron_adept.parallel import runtime
    from megatron_adept.parallel.collectives import barrier
    from megatron_adept.parallel.log import get_logger, setup_logging

    logger = get_logger("token_shift")
    tokenizer = resolve_tokenizer(tokenizer_config.tokenizer, base.path)
    check_shared_vocabulary({config.base: base.meta, config.adapted: adapted.meta}, tokenizer)
    items = load_corpus(config.data, tokenizer, text_prefix(tokenizer, tokenizer_config.add_bos))
    batches = corpus_batches(items, batch.seq_length, batch.micro_batch_size)
    setup_logging()
    runtime.initialize(parallel)
    try:
        shift = token_shift(base.path, adapted.path, parallel, batches, precision.params_dtype)
        summary = shift.summary(config.top, tokenizer.decode)
        if dist.get_rank() == 0:
            percent = summary["percent"]
            print(
                f"{summary['positions']} positions: unshifted {percent['unshifted']:.2f}%, "
                f"marginal {percent['marginal']:.2f}%, shifted {percent['shifted']:.2f}%"
            )
            for entry in summary["top_shifted"]:
                print(f"  {entry['token']!r:>20}  ratio {entry['ratio']:8.2f}  x{entry['count']}")
            if config.out:
                write_json_atomic(
                    config.out,
                    {
                        "base": config.base,
                        "adapted": config.adapted,
                        "data": config.data,
                        **summary,
                    },
                )
                logger.info("wrote %s", config.out)
            if config.plot:
                plot_token_shift(summary, config.plot, f"{config.adapted} vs {config.base}")
                logger.info("wrote %s", config.plot)
        barrier()
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
