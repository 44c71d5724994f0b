"""Probe/eval corpus: loss masks and counts checked against hand-assembled rows."""

import pytest
from data_fixtures import sentencepiece_tokenizer, write_jsonl

from megatron_adept.data.corpus import corpus_batches, counted_tokens, load_corpus
from megatron_adept.data.tokenizer import load_tokenizer
from megatron_adept.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(sentencepiece_tokenizer(tmp_path_factory.mktemp("tok") / "sp"))


ITEMS = [
    {"text": "memory cache kernel"},
    {"prompt": "name a protocol:", "answer": " network packet"},
    {"text": "river mountain forest music"},
]


def test_only_answer_tokens_count(tokenizer, tmp_path):
    items = load_corpus(write_jsonl(tmp_path / "probe.jsonl", ITEMS), tokenizer)
    batches = corpus_batches(items, seq_length=24, micro_batch_size=2, pad_id=0)
    assert len(batches) == 2 and all(b.tokens.shape == (2, 24) for b in batches)
    text = tokenizer.encode("memory cache kernel")
    prompt, answer = tokenizer.encode("name a protocol:"), tokenizer.encode(" network packet")
    row = prompt + answer
    first = batches[0]
    # Row 0: every next token of the text counts.
    assert first.tokens[0, : len(text) - 1].tolist() == text[:-1]
    assert first.labels[0, : len(text) - 1].tolist() == text[1:]
    assert first.loss_mask[0].tolist() == [1.0] * (len(text) - 1) + [0.0] * (25 - len(text))
    # Row 1: the prompt is context; exactly the answer tokens are targets.
    assert first.tokens[1, : len(row) - 1].tolist() == row[:-1]
    expected_mask = [0.0] * (len(prompt) - 1) + [1.0] * len(answer)
    assert first.loss_mask[1].tolist() == expected_mask + [0.0] * (24 - len(expected_mask))
    assert first.labels[1][first.loss_mask[1].bool()].tolist() == answer
    # The last micro-batch is padded with a row that never counts.
    assert batches[1].loss_mask[1].sum() == 0 and batches[1].tokens[1].eq(0).all()
    rest = len(tokenizer.encode("river mountain forest music")) - 1
    assert counted_tokens(batches) == len(text) - 1 + len(answer) + rest


def test_long_items_are_truncated_on_the_right(tokenizer, tmp_path):
    prompt = "the memory of the kernel thread"
    items = load_corpus(
        write_jsonl(tmp_path / "long.jsonl", [{"prompt": prompt, "answer": " cache layer model"}]),
        tokenizer,
    )
    context = len(tokenizer.encode(prompt))
    seq_length = context + 1  # room for the prompt and the first two answer tokens as targets
    (batch,) = corpus_batches(items, seq_length=seq_length, micro_batch_size=1)
    full = list(items[0].ids)
    assert batch.tokens[0].tolist() == full[:seq_length]
    assert batch.labels[0].tolist() == full[1 : seq_length + 1]
    assert batch.loss_mask[0].tolist() == [0.0] * (context - 1) + [1.0, 1.0]


def test_batches_are_deterministic(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "probe.jsonl", ITEMS * 3)
    runs = [corpus_batches(load_corpus(path, tokenizer), 16, 4) for _ in range(2)]
    for a, b in zip(*runs, strict=True):
        assert a.tokens.equal(b.tokens) and a.labels.equal(b.labels)
        assert a.loss_mask.equal(b.loss_mask)


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "is empty"),
        ([{"prompt": "x"}], "probe.jsonl:1: expected a 'text' key or 'prompt' and 'answer' keys"),
        ([{"text": "ok go"}, {"prompt": "x", "answer": ""}], "probe.jsonl:2: the answer tokenizes"),
        ([{"text": ""}], "probe.jsonl:1: the text has fewer than two tokens"),
        ([{"text": ["a"]}], "probe.jsonl:1: key 'text' is list"),
    ],
)
def test_errors_name_file_and_line(tokenizer, tmp_path, items, message):
    path = write_jsonl(tmp_path / "probe.jsonl", items)
    with pytest.raises(DataError, match=message):
        load_corpus(path, tokenizer)
