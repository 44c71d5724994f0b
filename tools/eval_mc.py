"""Multiple-choice accuracy by perplexity, as ADEPT evaluates (App. B.9).

  torchrun --nproc-per-node N tools/eval_mc.py --load CKPT --data FILE.jsonl [--shots 5] \\
      [--out results.json] [--compare CKPT2 ...] \\
      [--tensor-model-parallel-size T --pipeline-model-parallel-size P]

Also runs as plain `python` in one process; data parallelism is what remains of the world size
and splits the questions. Items are JSONL lines {"question", "choices": [...], "answer": index}
with an optional "subject".

Few-shot exemplars: the first --shots items of each subject (in file order; items without a
subject form one group) are that subject's exemplars and are not scored, so give each
subject's dev items before its test items. The prompt is
  [The following are multiple choice questions about SUBJECT.\\n\\n]
  Question: Q1\\nAnswer: A1\\n\\n ... Question: Q\\nAnswer:
and each choice is scored as the continuation " CHOICE": its mean negative log-likelihood
given the prompt. PPL = exp(mean NLL); the prediction is the choice with the lowest PPL.

Prints accuracy per subject and overall, one column per checkpoint (--load, then --compare).
--out writes JSON: accuracy, subjects (per-subject accuracy), items (per item: nll, the
per-choice mean NLLs, and pred), and the same for every --compare checkpoint under "compare".
"""

from megatron_adept.checkpoint.resolve import open_checkpoint
from megatron_adept.config.cli import Command, run_cli
from megatron_adept.config.groups import TokenizerConfig
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.eval.config import MultipleChoiceConfig

COMMAND = Command(__doc__, (MultipleChoiceConfig, TokenizerConfig, ParallelConfig, PrecisionConfig))


def main() -> None:
    config, tokenizer_config, parallel, precision = COMMAND.parse()
    checkpoints = {ckpt: open_checkpoint(ckpt, parallel) for ckpt in config.checkpoints}
    import torch.distributed as dist

    from megatron_adept.checkpoint.atomic import write_json_atomic
    from megatron_adept.checkpoint.mcore_io import load_model
    from megatron_adept.data.tokenizer import resolve_tokenizer, text_prefix
    from megatron_adept.eval.comparable import check_shared_vocabulary
    from megatron_adept.eval.multiple_choice import (
        comparison_table,
        evaluate_multiple_choice,
        load_items,
        prepare_items,
    )
    from megatron_adept.parallel import runtime
    from megatron_adept.parallel.collectives import barrier
    from megatron_adept.parallel.log import get_logger, setup_logging

    logger = get_logger("eval_mc")
    metas = {ckpt: checkpoint.meta for ckpt, checkpoint in checkpoints.items()}
    items = load_items(config.data)
    tokenizer = resolve_tokenizer(tokenizer_config.tokenizer, checkpoints[config.load].path)
    check_shared_vocabulary(metas, tokenizer)
    max_positions = min(meta.arch.max_position_embeddings for meta in metas.values())
    prepared = prepare_items(
        items,
        config.shots,
        tokenizer,
        max_positions + 1,
        config.questions_per_batch,
        text_prefix(tokenizer, tokenizer_config.add_bos),
    )
    setup_logging()
    logger.info(
        "%d questions to score (%d exemplars), %d micro-batches",
        len(prepared.items),
        len(items) - len(prepared.items),
        len(prepared.batches),
    )
    runtime.initialize(parallel)
    try:
        evaluations = {}
        for ckpt, checkpoint in checkpoints.items():
            model, _ = load_model(checkpoint.path, parallel, precision.params_dtype)
            evaluations[ckpt] = evaluate_multiple_choice(model, prepared)
            del model
        if dist.get_rank() == 0:
            print(comparison_table(evaluations), flush=True)
            if config.out:
                result = {
                    "checkpoint": config.load,
                    "data": config.data,
                    "shots": config.shots,
                    **evaluations[config.load].to_dict(),
                }
                if config.compare:
                    result["compare"] = [
                        {"checkpoint": ckpt, **evaluations[ckpt].to_dict()}
                        for ckpt in config.compare
                    ]
                write_json_atomic(config.out, result)
                logger.info("wrote %s", config.out)
        barrier()
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
