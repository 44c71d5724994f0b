"""JSONL -> indexed dataset: read back and compared with the input documents."""

import gzip
import json

import pytest
from data_fixtures import TRICKY_TEXTS, hf_tokenizer, random_texts, sentencepiece_tokenizer
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_adept.data.preprocess import PreprocessConfig, preprocess
from megatron_adept.data.tokenizer import load_tokenizer
from megatron_adept.errors import DataError


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"sentencepiece": sentencepiece_tokenizer(root / "sp"), "hf": hf_tokenizer(root / "hf")}


def write_gz(path, items):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(item) + "\n" for item in items)
    return path


def run(tmp_path, items, tokenizer_dir, name="out", **options):
    source = write_gz(tmp_path / f"{name}.jsonl.gz", items)
    config = PreprocessConfig(input=str(source), output_prefix=str(tmp_path / name), **options)
    summary = preprocess(config, load_tokenizer(tokenizer_dir))
    return summary, [s.tolist() for s in IndexedDataset(str(tmp_path / name))]


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_round_trip_gives_back_documents_plus_eos(tokenizers, tmp_path, kind):
    texts = random_texts(150, seed=3) + TRICKY_TEXTS
    summary, sequences = run(tmp_path, [{"text": t} for t in texts], tokenizers[kind], workers=2)
    tokenizer = load_tokenizer(tokenizers[kind])
    eos = tokenizer.eos_id
    assert len(sequences) == summary.documents == summary.windows == len(texts)
    for text, ids in zip(texts, sequences, strict=True):
        assert ids[-1] == eos and eos not in ids[:-1]
        assert tokenizer.decode(ids[:-1]) == text
    assert summary.tokens == sum(map(len, sequences))


def test_worker_count_does_not_change_the_output(tokenizers, tmp_path):
    items = [{"text": t} for t in random_texts(300, seed=4)]
    outputs = []
    for workers in (1, 3):
        run(tmp_path, items, tokenizers["sentencepiece"], name=f"w{workers}", workers=workers)
        outputs.append([(tmp_path / f"w{workers}{s}").read_bytes() for s in (".bin", ".idx")])
    assert outputs[0] == outputs[1]


def test_sft_items_become_question_reasoning_answer(tokenizers, tmp_path):
    items = [
        {"q": "what is a cache", "cot": "memory near the kernel", "a": "a layer"},
        {"q": "name a protocol", "a": "network packet"},
    ]
    options = dict(format="sft", prompt_key="q", reasoning_key="cot", response_key="a")
    _, sequences = run(tmp_path, items, tokenizers["sentencepiece"], **options)
    tokenizer = load_tokenizer(tokenizers["sentencepiece"])
    assert [tokenizer.decode(ids[:-1]) for ids in sequences] == [
        "what is a cache\nmemory near the kernel\na layer",
        "name a protocol\nnetwork packet",
    ]


def test_several_json_keys_join_with_a_blank_line(tokenizers, tmp_path):
    items = [{"title": "river", "body": "mountain forest"}]
    _, sequences = run(tmp_path, items, tokenizers["hf"], json_keys=["title", "body"])
    assert load_tokenizer(tokenizers["hf"]).decode(sequences[0][:-1]) == "river\n\nmountain forest"


def test_windows_each_end_with_eos(tokenizers, tmp_path):
    texts = random_texts(30, seed=5, low=5, high=80)
    tokenizer = load_tokenizer(tokenizers["sentencepiece"])
    summary, sequences = run(
        tmp_path, [{"text": t} for t in texts], tokenizers["sentencepiece"], window=16, stride=12
    )
    expected = []
    for text in texts:
        ids = tokenizer.encode(text)
        if len(ids) <= 16:
            expected.append(ids + [tokenizer.eos_id])
            continue
        # Hand-rolled windows: start every 12 tokens, stop once one reaches the end.
        start = 0
        while True:
            expected.append(ids[start : start + 16] + [tokenizer.eos_id])
            if start + 16 >= len(ids):
                break
            start += 12
    assert sequences == expected
    assert summary.documents == len(texts) < summary.windows == len(expected)


def test_existing_output_needs_overwrite(tokenizers, tmp_path):
    items = [{"text": "river"}]
    run(tmp_path, items, tokenizers["hf"])
    with pytest.raises(DataError, match=r"out\.bin exists \(pass --overwrite"):
        run(tmp_path, items, tokenizers["hf"])
    _, sequences = run(tmp_path, [{"text": "forest"}], tokenizers["hf"], overwrite=True)
    assert load_tokenizer(tokenizers["hf"]).decode(sequences[0][:-1]) == "forest"
