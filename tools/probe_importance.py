"""ADEPT Stage 1: score every decoder layer's importance for general competence.

  torchrun --nproc-per-node N tools/probe_importance.py --load CKPT --probe-data FILE.jsonl \\
      --method masking --out importance.json [--k 4] [--plot heatmap.png] \\
      [--tensor-model-parallel-size T --pipeline-model-parallel-size P]

Also runs as plain `python` in one process. Masking (the default) scores layer l by the loss
increase when l is bypassed through the residual; `selected` lists the k least important
layers (0-based) for tools/expand_ckpt.py --importance. suggested_k is the knee of the sorted
scores, capped at a quarter of the layers.
"""

import torch.distributed as dist

from megatron_adept.checkpoint.atomic import write_json_atomic
from megatron_adept.checkpoint.mcore_io import check_checkpoint_layout, load_model
from megatron_adept.config.cli import build_parser, extract, run_cli
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.data.corpus import corpus_batches, load_corpus
from megatron_adept.data.tokenizer import resolve_tokenizer
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger, setup_logging
from megatron_adept.probe import ProbeConfig, probe_layers
from megatron_adept.probe.heatmap import plot_importance

logger = get_logger("probe_importance")


def main() -> None:
    args = build_parser(__doc__, ProbeConfig, ParallelConfig).parse_args()
    config, parallel = extract(args, ProbeConfig), extract(args, ParallelConfig)
    meta = check_checkpoint_layout(config.load, parallel)
    items = load_corpus(config.probe_data, resolve_tokenizer(config.tokenizer, config.load))
    batches = corpus_batches(items, config.seq_length, config.micro_batch_size)
    setup_logging()
    runtime.initialize(parallel, config.seed)
    try:
        model, _ = load_model(config.load, parallel)
        logger.info(
            "probing %d layers on %d items (%s)", meta.arch.num_layers, len(items), config.method
        )
        result = probe_layers(model, batches, meta.arch.num_layers, config.method, config.k)
        result.update(
            checkpoint=config.load, probe_data=config.probe_data, model_type=meta.arch.model_type
        )
        if dist.get_rank() == 0:
            write_json_atomic(config.out, result)
            if config.plot:
                plot_importance(
                    result["unit_scores"],
                    result["layer_scores"],
                    result["selected"],
                    config.plot,
                    f"{config.method} importance, {config.load}",
                )
            logger.info(
                "base loss %.4f; selected layers %s (k=%d, suggested %d); wrote %s",
                result["base_loss"],
                result["selected"],
                result["k"],
                result["suggested_k"],
                config.out,
            )
        dist.barrier()
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
