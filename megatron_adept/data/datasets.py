"""Training data: megatron-core ``GPTDataset`` blends and a resumable global-batch sampler.

``--data-path`` and ``--split`` follow megatron's syntax, and the datasets come from
megatron-core's ``BlendedMegatronDatasetBuilder``: a blend ``W1 PREFIX1 W2 PREFIX2`` draws each
sample from prefix ``i`` with probability ``Wi / sum(W)`` (ADEPT's Replay baseline shuffles
general data into the domain data this way), and the sample order is a function of the seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import (
    BlendedMegatronDatasetBuilder,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from torch.utils.data import Dataset

from megatron_adept.data.config import DataConfig, parse_blend
from megatron_adept.errors import ConfigError, DataError
from megatron_adept.models.pipeline import MicroBatch


class _EodTokenizer:
    """The part of a tokenizer that ``GPTDataset`` reads: the end-of-document id.

    ``vocab_size`` is left unknown so megatron reads the token dtype from each ``.idx``.
    """

    def __init__(self, eos_id: int) -> None:
        self.eod = eos_id
        self.vocab_size = None
        self.unique_identifiers = {"class": "EodTokenizer", "eod": eos_id}


def build_train_valid_test_datasets(
    config: DataConfig,
    seq_length: int,
    num_samples: tuple[int, int, int],
    seed: int,
    eos_id: int,
) -> list[Dataset | None]:
    """Train/valid/test datasets of ``seq_length``-token samples, built by megatron-core.

    Collective: every rank calls it after ``torch.distributed`` is initialised. Rank 0 builds
    the sample indices into the cache directory, the other ranks then load them, so all ranks
    see identical samples.

    Args:
        config: prefixes, blend weights, split and cache directory.
        seq_length: tokens per sample (each sample reads ``seq_length + 1`` tokens so that
            inputs and next-token labels both have ``seq_length``).
        num_samples: samples wanted from each split; a split with weight 0 yields None.
        seed: seed of the document shuffle and the blend order.
        eos_id: the EOS id the datasets were preprocessed with.

    Returns:
        ``[train, valid, test]``; each sample is a dict of ``tokens``, ``labels``,
        ``loss_mask`` and ``position_ids``, each ``[seq_length]``.
    """
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
        tokenizer=_EodTokenizer(eos_id),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    builder = BlendedMegatronDatasetBuilder(GPTDataset, list(num_samples), lambda: True, gpt_config)
    return builder.build()


def global_batches(
    dataset: Dataset,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    consumed_samples: int = 0,
) -> Iterator[list[MicroBatch]]:
    """This data-parallel rank's micro-batches of each global batch, from ``consumed_samples``.

    Global batch ``g`` is samples ``[g * global, (g + 1) * global)``; rank ``r`` takes the
    ``r``-th contiguous slice of ``global / dp_size`` samples and cuts it into micro-batches.
    Everything is a function of ``consumed_samples``, so a run resumed from a saved count
    continues the exact sample order. Iteration stops before an incomplete global batch.
    """
    if global_batch_size % (micro_batch_size * dp_size):
        raise ConfigError(
            f"global batch size {global_batch_size} is not a multiple of micro batch size "
            f"{micro_batch_size} x data-parallel size {dp_size}"
        )
    per_rank = global_batch_size // dp_size
    position = consumed_samples
    while position + global_batch_size <= len(dataset):
        first = position + dp_rank * per_rank
        micro_batches = []
        for start in range(first, first + per_rank, micro_batch_size):
            samples = [dataset[i] for i in range(start, start + micro_batch_size)]
            micro_batches.append(
                MicroBatch(
                    torch.stack([s["tokens"] for s in samples]),
                    torch.stack([s["labels"] for s in samples]),
                    torch.stack([s["loss_mask"] for s in samples]).float(),
                )
            )
        yield micro_batches
        position += global_batch_size
