"""Blended training data and the global-batch sampler, checked by sample provenance."""

import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_adept.data.config import parse_split
from megatron_adept.data.datasets import (
    DataConfig,
    build_train_valid_test_datasets,
    global_batches,
)
from megatron_adept.errors import ConfigError, DataError

EOS = 2
SOURCES = {"a": range(10, 100), "b": range(100, 200)}
"""Each dataset draws its tokens from its own id range, so a sample's tokens reveal its source."""


def write_dataset(prefix, ids, seed, documents=300):
    rng = random.Random(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(documents):
        doc = [rng.choice(ids) for _ in range(rng.randint(5, 40))] + [EOS]
        builder.add_document(np.array(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture
def prefixes(tmp_path):
    return {
        name: write_dataset(tmp_path / name, ids, seed=i)
        for i, (name, ids) in enumerate(SOURCES.items())
    }


@pytest.fixture
def process_group(tmp_path):
    """megatron's index cache is coordinated through a process group, even for one process."""
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def source_of(sample):
    tokens = [t for t in sample["tokens"].tolist() + sample["labels"].tolist() if t != EOS]
    (source,) = {name for name, ids in SOURCES.items() if all(t in ids for t in tokens)}
    return source


def train_set(config, seed, samples=4000):
    return build_train_valid_test_datasets(config, 32, (samples, 0, 0), seed, EOS)[0]


def test_shares_follow_weights_and_order_follows_seed(prefixes, process_group, tmp_path):
    config = DataConfig(
        data_path=["0.3", prefixes["a"], "0.7", prefixes["b"]],
        split="100,0,0",
        data_cache_path=str(tmp_path / "cache"),
    )
    first = train_set(config, seed=1234)
    assert len(first) >= 4000
    sources = [source_of(first[i]) for i in range(4000)]
    shares = Counter(sources)
    assert abs(shares["a"] / 4000 - 0.3) <= 0.02 and abs(shares["b"] / 4000 - 0.7) <= 0.02
    # Shares hold locally too: the blend interleaves rather than concatenates.
    assert 0.2 <= sources[:200].count("a") / 200 <= 0.4

    rebuilt = train_set(
        DataConfig(**{**vars(config), "data_cache_path": str(tmp_path / "c2")}), 1234
    )
    assert all(torch.equal(first[i]["tokens"], rebuilt[i]["tokens"]) for i in range(4000))
    other = train_set(config, seed=99)
    assert sum(not torch.equal(first[i]["tokens"], other[i]["tokens"]) for i in range(100)) > 90


def test_single_prefix_and_split(prefixes, process_group, tmp_path):
    config = DataConfig(data_path=[prefixes["a"]], split="90,10", data_cache_path=str(tmp_path))
    train, valid, test = build_train_valid_test_datasets(config, 16, (50, 10, 0), 0, EOS)
    assert test is None and len(train) >= 50 and len(valid) >= 10
    sample = train[0]
    assert sample["tokens"].shape == sample["labels"].shape == (16,)
    assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])  # labels are the next tokens
    assert {source_of(train[i]) for i in range(50)} == {"a"}


@pytest.mark.parametrize(
    "data_path, message",
    [
        (["missing"], "'missing': missing.bin not found"),
        (["0.5", "{a}", "0.5"], "weight/prefix pairs"),
        (["x", "{a}", "1", "{b}"], "weights must be numbers"),
        (["0", "{a}", "1", "{b}"], "weights must be positive"),
        (["{a}.bin"], "without .bin/.idx"),
    ],
)
def test_bad_data_path(prefixes, data_path, message):
    with pytest.raises(DataError, match=message):
        DataConfig(data_path=[p.format(**prefixes) for p in data_path])


def test_split_syntax():
    assert parse_split("98,2,0") == [98.0, 2.0, 0.0]
    assert parse_split("100") == [100.0, 0.0, 0.0]
    for bad in ("98,x", "1,1,1,1", "0,0,0", "-1,2,0"):
        with pytest.raises(DataError, match="--split"):
            parse_split(bad)


def fake_dataset(size):
    return [
        {"tokens": torch.tensor([i]), "labels": torch.tensor([i + 1]), "loss_mask": torch.ones(1)}
        for i in range(size)
    ]


def sample_ids(micro_batches):
    return [mb.tokens[:, 0].tolist() for mb in micro_batches]


def test_sampler_splits_global_batches_across_ranks_and_resumes():
    dataset = fake_dataset(50)
    ranks = [list(global_batches(dataset, 12, 3, rank, 2)) for rank in range(2)]
    assert [len(r) for r in ranks] == [4, 4]  # 50 samples hold 4 full global batches of 12
    assert sample_ids(ranks[0][0]) == [[0, 1, 2], [3, 4, 5]]
    assert sample_ids(ranks[1][0]) == [[6, 7, 8], [9, 10, 11]]
    assert sample_ids(ranks[1][3]) == [[42, 43, 44], [45, 46, 47]]
    resumed = list(global_batches(dataset, 12, 3, 1, 2, consumed_samples=24))
    assert [sample_ids(b) for b in resumed] == [sample_ids(b) for b in ranks[1][2:]]
    assert ranks[0][0][1].labels.tolist() == [[4], [5], [6]]
    with pytest.raises(ConfigError, match="not a multiple"):
        next(global_batches(dataset, 10, 3, 0, 2))
