"""ADEPT Stage 1: score the importance of every decoder layer for general competence.

  torchrun --nproc-per-node N tools/probe_importance.py --load CKPT
      --probe-data FILE.jsonl --method {masking,cumulative,rank,fisher} --out importance.json
      [--k 4] [--plot heatmap.png] [--tensor-model-parallel-size T]
      [--pipeline-model-parallel-size P] [--seq-length S --micro-batch-size B]

Also runs as plain `python` in one process. The probe corpus is JSONL with {"text": ...} items
(every token counts) or {"prompt": ..., "answer": ...} items (only answer tokens count).
masking (the default) scores layer l by the probe loss increase when l is bypassed through
the residual; unit_scores holds mean |θ·∂L/∂θ| per unit for every method. `selected` lists the
k least important layers (0-based) for tools/expand_ckpt.py --importance; suggested_k is the
largest jump among the lowest quarter of the sorted scores. The result is the same at every
parallel layout. --out is the importance.json, --plot a heatmap of unit importance with the
layer scores beside it.
"""

from megatron_adept.config.cli import Command, run_cli
from megatron_adept.config.groups import BatchConfig, TokenizerConfig
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.probe.config import ProbeConfig

COMMAND = Command(
    __doc__,
    (ProbeConfig, BatchConfig, TokenizerConfig, ParallelConfig, PrecisionConfig),
    defaults={"seq_length": 512, "micro_batch_size": 4},
)


def main() -> None:
    config, batch, tokenizer, parallel, precision = COMMAND.parse()
    precision.refuse_fp16_gradients("the probe (unit importance takes gradients)")
    from megatron_adept.parallel import runtime
    from megatron_adept.parallel.log import setup_logging
    from megatron_adept.probe.runner import load_probe_batches, run_probe

    setup_logging()
    batches, checkpoint = load_probe_batches(config, batch, parallel, tokenizer)
    runtime.initialize(parallel)
    try:
        run_probe(config, parallel, precision, batches, checkpoint)
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
