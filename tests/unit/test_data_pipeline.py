"""Preprocessing, windows, blends and the probe corpus: checked against hand computations."""

import math
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from data_fixtures import hf_tokenizer, random_texts, sentencepiece_tokenizer, write_jsonl
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_adept.data.corpus import corpus_batches, counted_tokens, load_corpus
from megatron_adept.data.datasets import DataConfig, build_datasets
from megatron_adept.data.preprocess import PreprocessConfig, preprocess
from megatron_adept.data.tokenizer import load_tokenizer
from megatron_adept.data.windows import num_windows, window_spans
from megatron_adept.errors import DataError


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"sentencepiece": sentencepiece_tokenizer(root / "sp"), "hf": hf_tokenizer(root / "hf")}


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_round_trip_gives_back_documents_plus_eos(tokenizers, tmp_path, kind):
    texts = random_texts(50, seed=3) + ["Line one\nline two\ttab  double  space"]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    config = PreprocessConfig(
        input=str(source),
        output_prefix=str(tmp_path / "docs"),
        tokenizer=str(tokenizers[kind]),
        workers=2,
    )
    summary = preprocess(config)
    tokenizer = load_tokenizer(tokenizers[kind])
    dataset = IndexedDataset(str(tmp_path / "docs"))
    assert len(dataset) == summary.documents == len(texts)
    for text, sequence in zip(texts, dataset, strict=True):
        ids = sequence.tolist()
        assert ids[-1] == tokenizer.eos_id
        assert tokenizer.decode(ids[:-1]) == text
    assert summary.tokens == sum(len(s) for s in dataset)


def test_sft_items_become_question_reasoning_answer(tokenizers, tmp_path):
    source = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"q": "what is a cache", "cot": "memory near the kernel", "a": "a layer"},
            {"q": "name a protocol", "a": "network packet"},
        ],
    )
    config = PreprocessConfig(
        input=str(source),
        output_prefix=str(tmp_path / "sft"),
        tokenizer=str(tokenizers["sentencepiece"]),
        format="sft",
        prompt_key="q",
        reasoning_key="cot",
        response_key="a",
    )
    preprocess(config)
    tokenizer = load_tokenizer(tokenizers["sentencepiece"])
    docs = [tokenizer.decode(s.tolist()[:-1]) for s in IndexedDataset(str(tmp_path / "sft"))]
    assert docs == [
        "what is a cache\nmemory near the kernel\na layer",
        "name a protocol\nnetwork packet",
    ]


@pytest.mark.parametrize(
    "n, w, s", [(10, 4, 3), (4, 4, 3), (5, 4, 3), (2, 4, 3), (100, 16, 12), (17, 8, 1)]
)
def test_windows_count_overlap_and_cover(n, w, s):
    spans = window_spans(n, w, s)
    expected = 1 if n <= w else math.ceil((n - (w - s)) / s)
    assert len(spans) == num_windows(n, w, s) == expected
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(end - start <= w for start, end in spans)
    for (a0, a1), (b0, _) in zip(spans, spans[1:], strict=False):
        assert b0 == a0 + s and a1 - b0 == w - s  # overlap of exactly w - s tokens
    covered = set().union(*(range(a, b) for a, b in spans))
    assert covered == set(range(n))


def test_edge_cases_of_the_paper_formula():
    assert window_spans(4096, 4096, 3072) == [(0, 4096)]
    assert window_spans(4097, 4096, 3072) == [(0, 4096), (3072, 4097)]
    assert window_spans(10, 4096, 3072) == [(0, 10)]


def test_windows_in_preprocessing(tokenizers, tmp_path):
    texts = random_texts(20, seed=4, low=30, high=80)
    source = write_jsonl(tmp_path / "long.jsonl", [{"text": t} for t in texts])
    config = PreprocessConfig(
        input=str(source),
        output_prefix=str(tmp_path / "win"),
        tokenizer=str(tokenizers["sentencepiece"]),
        window=16,
        stride=12,
    )
    summary = preprocess(config)
    tokenizer = load_tokenizer(tokenizers["sentencepiece"])
    expected = []
    for text in texts:
        ids = tokenizer.encode(text) + [tokenizer.eos_id]
        expected += [ids[a:b] for a, b in window_spans(len(ids), 16, 12)]
    assert [s.tolist() for s in IndexedDataset(str(tmp_path / "win"))] == expected
    assert summary.windows == len(expected) > summary.documents


def _dataset(tokenizer_dir, tmp_path, name, seed):
    source = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in random_texts(300, seed)])
    preprocess(
        PreprocessConfig(
            input=str(source), output_prefix=str(tmp_path / name), tokenizer=str(tokenizer_dir)
        )
    )
    return str(tmp_path / name)


@pytest.fixture
def one_process_group(tmp_path):
    """megatron's dataset cache coordinates through a process group, even for one process."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_blend_shares_and_reproducible_order(tokenizers, tmp_path, one_process_group):
    tok = load_tokenizer(tokenizers["sentencepiece"])
    a = _dataset(tokenizers["sentencepiece"], tmp_path, "a", 5)
    b = _dataset(tokenizers["sentencepiece"], tmp_path, "b", 6)
    config = DataConfig(data_path=["0.3", a, "0.7", b], split="100,0,0")
    first = build_datasets(config, 32, (4000, 0, 0), 1234, tok.vocab_size, tok.eos_id)[0]
    shares = Counter(int(i) for i in first.dataset_index[:4000])
    assert abs(shares[0] / 4000 - 0.3) <= 0.02 and abs(shares[1] / 4000 - 0.7) <= 0.02
    again = build_datasets(config, 32, (4000, 0, 0), 1234, tok.vocab_size, tok.eos_id)[0]
    for index in (0, 1, 17, 999, 3999):
        assert torch.equal(first[index]["tokens"], again[index]["tokens"])
    other = build_datasets(config, 32, (4000, 0, 0), 99, tok.vocab_size, tok.eos_id)[0]
    assert any(not torch.equal(first[i]["tokens"], other[i]["tokens"]) for i in range(10))


def test_probe_corpus_masks_only_answer_tokens(tokenizers, tmp_path):
    tok = load_tokenizer(tokenizers["sentencepiece"])
    path = write_jsonl(
        tmp_path / "probe.jsonl",
        [
            {"text": "memory cache kernel"},
            {"prompt": "name a protocol:", "answer": " network packet"},
        ],
    )
    items = load_corpus(path, tok)
    batches = corpus_batches(items, seq_length=24, micro_batch_size=2)
    prompt, answer = tok.encode("name a protocol:"), tok.encode(" network packet")
    text_ids = tok.encode("memory cache kernel")
    batch = batches[0]
    assert batch.loss_mask[0].sum() == len(text_ids) - 1
    assert batch.loss_mask[1].sum() == len(answer)
    counted = batch.labels[1][batch.loss_mask[1].bool()].tolist()
    assert counted == answer
    assert batch.tokens[1, : len(prompt) + len(answer) - 1].tolist() == (prompt + answer)[:-1]
    assert counted_tokens(batches) == len(text_ids) - 1 + len(answer)


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "is empty"),
        ([{"prompt": "x"}], "probe.jsonl:1: expected a 'text' key or 'prompt' and 'answer' keys"),
        (
            [{"text": "ok"}, {"prompt": "x", "answer": ""}],
            "probe.jsonl:2: the answer tokenizes to nothing",
        ),
    ],
)
def test_probe_corpus_errors(tokenizers, tmp_path, items, message):
    path = write_jsonl(tmp_path / "probe.jsonl", items)
    with pytest.raises(DataError, match=message):
        load_corpus(path, load_tokenizer(tokenizers["sentencepiece"]))
