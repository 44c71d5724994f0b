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

import torch.distributed as dist

from megatron_adept.checkpoint.atomic import write_json_atomic
from megatron_adept.checkpoint.mcore_io import check_checkpoint_layout
from megatron_adept.config.cli import build_parser, extract, run_cli
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.data.corpus import corpus_batches, load_corpus
from megatron_adept.data.tokenizer import TokenizerConfig, resolve_tokenizer
from megatron_adept.eval.comparable import check_shared_vocabulary
from megatron_adept.eval.token_shift import TokenShiftConfig, plot_token_shift, token_shift
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger, setup_logging

logger = get_logger("token_shift")


def main() -> None:
    args = build_parser(
        __doc__, TokenShiftConfig, TokenizerConfig, ParallelConfig, PrecisionConfig
    ).parse_args()
    config = extract(args, TokenShiftConfig)
    parallel, precision = extract(args, ParallelConfig), extract(args, PrecisionConfig)
    metas = {
        ckpt: check_checkpoint_layout(ckpt, parallel) for ckpt in (config.base, config.adapted)
    }
    tokenizer = resolve_tokenizer(extract(args, TokenizerConfig).tokenizer, config.base)
    check_shared_vocabulary(metas, tokenizer)
    items = load_corpus(config.data, tokenizer)
    batches = corpus_batches(items, config.seq_length, config.micro_batch_size)
    setup_logging()
    runtime.initialize(parallel)
    try:
        shift = token_shift(config.base, config.adapted, parallel, batches, precision.params_dtype)
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
        dist.barrier()
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
