"""ADEPT Stage 1: score the importance of every decoder layer for general competence.

  torchrun --nproc-per-node N tools/probe_importance.py --load CKPT
      --probe-data FILE.jsonl --method {masking,cumulative,rank,fisher} --out importance.json
      [--k 4] [--plot heatmap.png] [--tensor-model-parallel-size T]
      [--pipeline-model-parallel-size P] [--seq-length S --micro-batch-size B]

Also runs as plain `python` in one process. The probe corpus is JSONL with {"text": ...}
items (every token counts) or {"prompt": ..., "answer": ...} items (only answer tokens count).
masking (the default) scores layer l by the probe loss increase when l is bypassed through
the residual; unit_scores holds mean |θ·∂L/∂θ| per unit for every method. `selected` lists the
k least important layers (0-based) for tools/expand_ckpt.py --importance; suggested_k is the
largest jump among the lowest quarter of the sorted scores. The result is the same at every
parallel layout.
"""

from megatron_adept.config.cli import build_parser, extract, run_cli
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.data.tokenizer import TokenizerConfig
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import setup_logging
from megatron_adept.probe import ProbeConfig
from megatron_adept.probe.runner import load_probe_batches, run_probe


def main() -> None:
    groups = (ProbeConfig, TokenizerConfig, ParallelConfig, PrecisionConfig)
    args = build_parser(__doc__, *groups).parse_args()
    config, tokenizer, parallel, precision = (extract(args, group) for group in groups)
    setup_logging()
    batches, meta = load_probe_batches(config, parallel, tokenizer)
    runtime.initialize(parallel)
    try:
        run_probe(config, parallel, precision, batches, meta)
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
