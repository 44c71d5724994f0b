"""Held-out loss of a checkpoint on JSONL corpora (same item formats as the probe corpus).

  torchrun --nproc-per-node N tools/eval_loss.py --load CKPT --data general.jsonl \\
      [domain.jsonl ...] [--out losses.json] [--tensor-model-parallel-size T ...]

Prints one line per corpus; --out writes {file: {"loss": ..., "tokens": ...}}.
"""

from dataclasses import dataclass

import torch.distributed as dist

from megatron_adept.checkpoint.atomic import check_output_file, write_json_atomic
from megatron_adept.checkpoint.mcore_io import check_checkpoint_layout, load_model
from megatron_adept.config.cli import arg, build_parser, extract, run_cli
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.data.corpus import corpus_batches, load_corpus
from megatron_adept.data.tokenizer import resolve_tokenizer
from megatron_adept.errors import ConfigError
from megatron_adept.eval.heldout_loss import heldout_loss
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import setup_logging


@dataclass
class EvalLossConfig:
    """Checkpoint and corpora to score."""

    load: str = arg(help="Checkpoint to evaluate.")
    data: list[str] = arg(help="JSONL corpora ({'text'} or {'prompt','answer'} items).")
    out: str | None = arg(None, "Write the losses as JSON.")
    seq_length: int = arg(512, "Tokens per sequence (longer items are truncated).")
    micro_batch_size: int = arg(8, "Sequences per forward pass.")
    tokenizer: str | None = arg(None, "Tokenizer (default: the one stored beside --load).")

    def __post_init__(self) -> None:
        for name in ("seq_length", "micro_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be > 0")
        if self.out is not None:
            check_output_file(self.out, "--out")  # before the evaluation, not after it


def main() -> None:
    args = build_parser(__doc__, EvalLossConfig, ParallelConfig).parse_args()
    config, parallel = extract(args, EvalLossConfig), extract(args, ParallelConfig)
    check_checkpoint_layout(config.load, parallel)
    tokenizer = resolve_tokenizer(config.tokenizer, config.load)
    corpora = {path: load_corpus(path, tokenizer) for path in config.data}
    setup_logging()
    runtime.initialize(parallel)
    try:
        model, _ = load_model(config.load, parallel)
        results = {}
        for path, items in corpora.items():
            loss, tokens = heldout_loss(
                model, corpus_batches(items, config.seq_length, config.micro_batch_size)
            )
            results[path] = {"loss": loss, "tokens": tokens}
            if dist.get_rank() == 0:
                print(f"{path}: loss {loss:.4f} over {tokens} tokens")
        if config.out and dist.get_rank() == 0:
            write_json_atomic(config.out, results)
        dist.barrier()
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
