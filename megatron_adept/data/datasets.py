"""Training data: megatron-core ``GPTDataset`` blends and a resumable global-batch sampler."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import (
    BlendedMegatronDatasetBuilder,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from megatron_adept.config.cli import arg
from megatron_adept.errors import DataError
from megatron_adept.models.forward import MicroBatch


@dataclass
class DataConfig:
    """Where the training data is and how it is split."""

    data_path: list[str] = arg(
        help="An indexed-dataset prefix, or a blend 'W1 PREFIX1 W2 PREFIX2 ...'.",
        default_factory=list,
    )
    split: str = arg("98,2,0", "Train/valid/test split of every dataset, in proportions.")
    data_cache_path: str | None = arg(
        None, "Where megatron caches sample indices (default: beside the first dataset)."
    )

    def __post_init__(self) -> None:
        parse_blend(self.data_path)
        parts = self.split.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise DataError(f"--split={self.split!r} must be comma-separated numbers") from None
        if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
            raise DataError(f"--split={self.split!r} needs three non-negative proportions")


def parse_blend(data_path: list[str]) -> tuple[list[str], list[float] | None]:
    """Megatron's ``--data-path`` syntax -> (prefixes, weights or None); checks the files."""
    if not data_path:
        return [], None
    if len(data_path) == 1:
        prefixes, weights = data_path, None
    else:
        if len(data_path) % 2:
            raise DataError(f"--data-path blend needs weight/prefix pairs, got {data_path}")
        try:
            weights = [float(w) for w in data_path[0::2]]
        except ValueError:
            raise DataError(f"--data-path blend weights must be numbers, got {data_path}") from None
        if min(weights) < 0 or sum(weights) <= 0:
            raise DataError(f"--data-path weights must be non-negative, got {weights}")
        prefixes = data_path[1::2]
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                raise DataError(f"data path {prefix!r} has no {prefix + suffix}")
    return list(prefixes), weights


class _TokenizerView:
    """The attributes megatron's GPTDataset reads from a tokenizer."""

    def __init__(self, vocab_size: int, eos_id: int) -> None:
        self.vocab_size = vocab_size
        self.eod = eos_id
        self.unique_identifiers = {"vocab_size": vocab_size, "eod": eos_id}


def build_datasets(
    config: DataConfig,
    seq_length: int,
    num_samples: tuple[int, int, int],
    seed: int,
    vocab_size: int,
    eos_id: int,
) -> list[GPTDataset | None]:
    """Train/valid/test datasets (blended if weights are given), built by megatron-core."""
    prefixes, weights = parse_blend(config.data_path)
    if not prefixes:
        raise DataError("--data-path is required")
    cache = config.data_cache_path or str(Path(prefixes[0]).parent / "index-cache")
    gpt_config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=(prefixes, weights),
        split=config.split,
        path_to_cache=cache,
        tokenizer=_TokenizerView(vocab_size, eos_id),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    builder = BlendedMegatronDatasetBuilder(GPTDataset, list(num_samples), lambda: True, gpt_config)
    return builder.build()


def global_batches(
    dataset,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    consumed_samples: int = 0,
) -> Iterator[list[MicroBatch]]:
    """This data-parallel rank's micro-batches of each global batch, from ``consumed_samples``.

    Sample ``consumed + dp_rank * (global / dp) + j`` goes to micro-batch ``j // micro``, so
    resuming from a saved ``consumed_samples`` continues the exact sample order.
    """
    per_rank = global_batch_size // dp_size
    position = consumed_samples
    while position + global_batch_size <= len(dataset):
        first = position + dp_rank * per_rank
        samples = [dataset[first + j] for j in range(per_rank)]
        yield [
            MicroBatch(
                torch.stack([s["tokens"] for s in chunk]),
                torch.stack([s["labels"] for s in chunk]),
                torch.stack([s["loss_mask"] for s in chunk]).float(),
            )
            for chunk in (
                samples[k : k + micro_batch_size] for k in range(0, per_rank, micro_batch_size)
            )
        ]
        position += global_batch_size
