"""BOS where the tokenizer's convention puts it: probe and evaluation items, preprocessed
documents; recorded beside each dataset, and datasets with and without never mix."""

from __future__ import annotations

import json

import pytest
from data_fixtures import hf_tokenizer, sentencepiece_tokenizer, write_jsonl
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_adept.config.cli import Command
from megatron_adept.data.config import DataConfig, DatasetInfo, PreprocessConfig
from megatron_adept.data.corpus import load_corpus
from megatron_adept.data.preprocess import preprocess
from megatron_adept.data.tokenizer import load_tokenizer, text_prefix
from megatron_adept.errors import DataError
from megatron_adept.eval.multiple_choice import Item, encode_choices
from megatron_adept.training.config import RunConfig
from megatron_adept.training.loop import load_probe_batches

TEXT = "the kernel thread"
PROMPT, ANSWER = "the river of", " memory cache"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("bos")
    return {
        "bos": load_tokenizer(hf_tokenizer(root / "bos", bos=True)),
        "no_bos": load_tokenizer(hf_tokenizer(root / "no_bos")),
        "sentencepiece": load_tokenizer(sentencepiece_tokenizer(root / "sp")),
    }


def test_the_convention_is_read_from_the_tokenizer(tokenizers):
    bos = tokenizers["bos"]
    assert bos.adds_bos and bos.bos_id is not None
    assert bos._tok(TEXT)["input_ids"] == [bos.bos_id, *bos.encode(TEXT)]  # what HF does
    assert not tokenizers["no_bos"].adds_bos and tokenizers["no_bos"].bos_id is None
    # a bare sentencepiece model defines BOS but encodes texts without it
    assert tokenizers["sentencepiece"].bos_id == 1 and not tokenizers["sentencepiece"].adds_bos
    assert text_prefix(bos) == [bos.bos_id]
    assert text_prefix(bos, add_bos=False) == []
    assert text_prefix(tokenizers["no_bos"]) == text_prefix(tokenizers["sentencepiece"]) == []


def test_probe_and_eval_items_start_with_bos(tokenizers, tmp_path):
    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"text": TEXT}, {"prompt": PROMPT, "answer": ANSWER}]
    )
    bos = tokenizers["bos"]
    text, qa = load_corpus(corpus, bos, text_prefix(bos))
    assert list(text.ids) == [bos.bos_id, *bos.encode(TEXT)]
    prompt = [bos.bos_id, *bos.encode(PROMPT)]
    assert list(qa.ids) == prompt + bos.encode(ANSWER) and qa.context == len(prompt)
    for kind in ("no_bos", "sentencepiece"):  # unchanged
        tokenizer = tokenizers[kind]
        text, qa = load_corpus(corpus, tokenizer, text_prefix(tokenizer))
        assert list(text.ids) == tokenizer.encode(TEXT)
        assert list(qa.ids) == tokenizer.encode(PROMPT) + tokenizer.encode(ANSWER)
        assert qa.context == len(tokenizer.encode(PROMPT))


def test_multiple_choice_prompts_start_with_bos_even_when_truncated(tokenizers):
    bos = tokenizers["bos"]
    item = Item("which memory is fastest", ("cache", "disk"), 0, "hardware", 1)
    full = encode_choices(item, [], bos, 10_000, text_prefix(bos))
    prompt_length = full[0].context
    assert full[0].ids[0] == bos.bos_id
    assert list(full[0].ids[prompt_length:]) == bos.encode(" cache")
    short = encode_choices(item, [], bos, 8, text_prefix(bos))
    for choice, sequence in zip(("cache", "disk"), short, strict=True):
        assert len(sequence.ids) <= 8 and sequence.ids[0] == bos.bos_id
        assert list(sequence.ids[sequence.context :]) == bos.encode(" " + choice)
        assert (
            list(sequence.ids[1 : sequence.context])
            == list(full[0].ids[1:prompt_length])[-(sequence.context - 1) :]
        )
    plain = tokenizers["no_bos"]
    unchanged = encode_choices(item, [], plain, 10_000, text_prefix(plain))
    prompt = plain.encode(
        "The following are multiple choice questions about hardware.\n\n"
        "Question: which memory is fastest\nAnswer:"
    )
    assert list(unchanged[0].ids) == prompt + plain.encode(" cache")
    assert unchanged[0].context == len(prompt)


def _preprocess(tokenizer, source, prefix, out):
    config = PreprocessConfig(input=str(source), output_prefix=str(out), window=4, stride=2)
    preprocess(config, tokenizer, text_prefix(tokenizer, bool(prefix)))
    return IndexedDataset(str(out))


def test_preprocessed_documents_start_with_bos_and_record_it(tokenizers, tmp_path):
    bos, plain = tokenizers["bos"], tokenizers["no_bos"]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": TEXT}, {"text": "a b"}])
    with_bos = _preprocess(bos, source, True, tmp_path / "with")
    # windows of 4 tokens every 2: BOS starts the document, i.e. its first window only
    ids = [bos.bos_id, *bos.encode(TEXT)]
    first = list(with_bos[0])
    assert first == ids[:4] + [bos.eos_id]
    assert all(list(with_bos[i])[0] != bos.bos_id for i in range(1, len(with_bos) - 1))
    assert DatasetInfo.read(str(tmp_path / "with")).bos_id == bos.bos_id
    switched_off = _preprocess(bos, source, False, tmp_path / "off")
    assert list(switched_off[0]) == bos.encode(TEXT)[:4] + [bos.eos_id]
    assert DatasetInfo.read(str(tmp_path / "off")).bos_id is None
    without = _preprocess(plain, source, True, tmp_path / "without")
    assert list(without[0])[0] != bos.bos_id
    assert DatasetInfo.read(str(tmp_path / "without")).bos_id is None
    info = json.loads((tmp_path / "with.info.json").read_text())
    assert info["documents"] == 2 and info["eos_id"] == bos.eos_id

    with pytest.raises(DataError, match="mixes datasets whose documents start with BOS"):
        DataConfig(data_path=["1", str(tmp_path / "with"), "1", str(tmp_path / "off")])
    DataConfig(data_path=["1", str(tmp_path / "off"), "1", str(tmp_path / "without")])


def test_training_refuses_a_probe_corpus_encoded_otherwise_than_its_data(tokenizers, tmp_path):
    bos = tokenizers["bos"]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": TEXT}])
    _preprocess(bos, source, True, tmp_path / "data")
    probe = write_jsonl(tmp_path / "probe.jsonl", [{"text": TEXT}])

    def probe_batches(*flags):
        args = ["--load", "x", "--train-iters", "1", "--data-path", str(tmp_path / "data")]
        args += ["--probe-data", str(probe), "--tokenizer", str(bos.directory), *flags]
        config = RunConfig(*Command("", RunConfig.groups()).parse(args))
        return load_probe_batches(config, tmp_path, 10_000)

    (batch,) = probe_batches("--seq-length", "8")
    assert batch.tokens[0, 0].item() == bos.bos_id
    with pytest.raises(DataError, match="preprocessed with BOS, but the probe corpus would be"):
        probe_batches("--no-add-bos")
