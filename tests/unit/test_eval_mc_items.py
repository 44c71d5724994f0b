"""Multiple-choice items, few-shot prompts and batch layout, checked by hand on a char tokenizer."""

import json

import pytest
import torch

from megatron_adept.errors import DataError
from megatron_adept.eval.multiple_choice import (
    NO_SUBJECT,
    Evaluation,
    Item,
    build_prompt,
    comparison_table,
    encode_choices,
    load_items,
    padded_micro_batches,
    prepare_items,
    schedule_runs,
    split_few_shot,
)


class CharTokenizer:
    """One token per character (its code point): every boundary is visible by eye."""

    vocab_size = 256
    eos_id = 2
    bos_id = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def item(question: str, choices: list[str], answer: int, subject: str = NO_SUBJECT, line=1):
    return Item(question, tuple(choices), answer, subject, line)


def write(tmp_path, lines: list) -> str:
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def test_load_items_reads_subjects_and_lines(tmp_path):
    path = write(
        tmp_path,
        [
            {"question": "q1", "choices": ["a", "b"], "answer": 1, "subject": "law"},
            {"question": "q2", "choices": ["a", "b", "c"], "answer": 0},
        ],
    )
    assert load_items(path) == [
        Item("q1", ("a", "b"), 1, "law", 1),
        Item("q2", ("a", "b", "c"), 0, NO_SUBJECT, 2),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"question": "q", "choices": ["a"], "answer": 0},
            "1 choice(s); a question needs at least 2",
        ),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer index 2 is out of range"),
        ({"question": "q", "choices": ["a", "b"], "answer": -1}, "answer index -1 is out of range"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "'answer' must be the integer"),
        ({"question": "q", "choices": "ab", "answer": 0}, "'choices' must be a list of strings"),
        ({"choices": ["a", "b"], "answer": 0}, "missing key 'question'"),
        ({"question": "q", "choices": ["a", "b"], "answer": 0, "subject": 3}, "'subject' must"),
    ],
)
def test_bad_items_name_file_and_line(tmp_path, raw, message):
    good = {"question": "q", "choices": ["a", "b"], "answer": 0}
    path = write(tmp_path, [good, raw])
    with pytest.raises(DataError) as info:
        load_items(path)
    assert str(info.value).startswith(f"{path}:2: ") and message in str(info.value)


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no items"):
        load_items(tmp_path / "empty.jsonl")


def test_first_shots_items_of_each_subject_are_exemplars():
    items = [
        item("a1", ["x", "y"], 0, "a"),
        item("b1", ["x", "y"], 0, "b"),
        item("a2", ["x", "y"], 0, "a"),
        item("a3", ["x", "y"], 0, "a"),
        item("b2", ["x", "y"], 0, "b"),
        item("n1", ["x", "y"], 0),
        item("n2", ["x", "y"], 0),
    ]
    scored, exemplars = split_few_shot(items, 1)
    assert [i.question for i in scored] == ["a2", "a3", "b2", "n2"]
    assert {s: [i.question for i in ex] for s, ex in exemplars.items()} == {
        "a": ["a1"],
        "b": ["b1"],
        NO_SUBJECT: ["n1"],
    }
    assert split_few_shot(items, 0)[0] == items
    with pytest.raises(DataError, match="subject 'b' has only 2 item"):
        split_few_shot(items, 2)


def test_prompt_format_is_the_documented_one():
    shots = [item("What is 1+1?", ["2", "3"], 0, "high_school_math"), item("0*5?", ["5", "0"], 1)]
    target = item("What is 2+2?", ["4", "5"], 0, "high_school_math")
    assert build_prompt(target, shots) == (
        "The following are multiple choice questions about high school math.\n\n"
        "Question: What is 1+1?\nAnswer: 2\n\n"
        "Question: 0*5?\nAnswer: 0\n\n"
        "Question: What is 2+2?\nAnswer:"
    )
    assert build_prompt(item("q", ["a", "b"], 0), []) == "Question: q\nAnswer:"


def test_choices_follow_the_prompt_and_long_prompts_lose_their_oldest_tokens():
    tok = CharTokenizer()
    question = item("q", ["ab", "xyz"], 0)
    prompt = tok.encode("Question: q\nAnswer:")
    full = encode_choices(question, [], tok, max_length=100)
    assert [(s.ids, s.context) for s in full] == [
        (tuple(prompt + tok.encode(" ab")), len(prompt)),
        (tuple(prompt + tok.encode(" xyz")), len(prompt)),
    ]
    cut = encode_choices(question, [], tok, max_length=len(prompt) + 2)
    assert cut[0].ids == tuple(prompt[1:] + tok.encode(" ab")) and cut[0].context == len(prompt) - 1
    assert (
        cut[1].ids == tuple(prompt[2:] + tok.encode(" xyz")) and cut[1].context == len(prompt) - 2
    )
    with pytest.raises(DataError, match="choice 1 has 4 tokens"):
        encode_choices(question, [], tok, max_length=4)


def test_all_choices_of_a_question_share_a_micro_batch_and_only_choice_tokens_count():
    tok = CharTokenizer()
    items = [item("long question", ["a", "b", "c"], 0), item("q", ["de", "f"], 1)]
    prepared = prepare_items(items, 0, tok, max_length=100, questions_per_batch=1)
    # shortest question first, each alone in its micro-batch with all of its choices
    assert [b.questions for b in prepared.batches] == [(1,), (0,)]
    assert [b.choice_counts for b in prepared.batches] == [(2,), (3,)]
    short, long = padded_micro_batches(prepared.batches)
    prompt = tok.encode("Question: q\nAnswer:")
    seq = len(tok.encode("Question: long question\nAnswer: a")) - 1
    assert short.tokens.shape == long.tokens.shape == (3, seq)
    row = prompt + tok.encode(" de")
    assert short.tokens[0, : len(row) - 1].tolist() == row[:-1]
    assert short.labels[0, : len(row) - 1].tolist() == row[1:]
    expected = torch.zeros(seq)
    expected[len(prompt) - 1 : len(prompt) + 2] = 1  # targets " ", "d", "e"
    assert torch.equal(short.loss_mask[0], expected)
    assert short.loss_mask[1].sum() == 2 and short.loss_mask[2].sum() == 0  # " f"; padding row
    assert batch_split(prepared.batches[1]) == {0: [0.0, 1.0, 2.0]}


def batch_split(batch):
    return batch.split([float(i) for i in range(len(batch.rows))])


def test_predictions_accuracy_and_subjects():
    items = [
        item("q", ["a", "b"], 1, "x"),
        item("q", ["a", "b", "c"], 2, "x"),
        item("q", ["a", "b"], 0, "y"),
    ]
    evaluation = Evaluation(items, [[2.0, 1.0], [0.5, 0.7, 0.5], [1.0, 1.0]])
    assert evaluation.predictions == [1, 0, 0]  # ties go to the first choice
    assert evaluation.accuracy == pytest.approx(2 / 3)
    assert evaluation.subject_accuracy() == {
        "x": {"accuracy": 0.5, "items": 2},
        "y": {"accuracy": 1.0, "items": 1},
    }
    result = evaluation.to_dict()
    assert result["items"][0]["pred"] == 1 and result["items"][0]["nll"] == [2.0, 1.0]
    other = Evaluation(items, [[0.0, 1.0], [0.5, 0.7, 0.1], [1.0, 0.0]])
    table = comparison_table({"vanilla": evaluation, "adapted": other}).splitlines()
    assert table[0].split() == ["subject", "items", "vanilla", "adapted"]
    assert table[2].split() == ["x", "2", "50.00", "50.00"]
    assert table[3].split() == ["y", "1", "100.00", "0.00"]
    assert table[5].split() == ["overall", "3", "66.67", "33.33"]


def test_runs_end_before_a_much_longer_micro_batch():
    tok = CharTokenizer()
    # 20 questions of 100-119 characters (within 1.25x of each other), then one of 200
    questions = ["x" * (100 + i) for i in range(20)] + ["y" * 200]
    items = [item(q, ["a", "b"], 0) for q in questions]
    prepared = prepare_items(items, 0, tok, max_length=1000, questions_per_batch=1)
    lengths = [b.seq_length for b in prepared.batches]
    runs = schedule_runs(prepared.batches)
    assert [b for run in runs for b in run] == prepared.batches  # order kept, nothing lost
    for run in runs:
        assert len(run) <= 16
        assert max(b.seq_length for b in run) <= 1.25 * run[0].seq_length
    # 20 short ones: one full run of 16, the rest, then the long question alone
    assert [len(run) for run in runs] == [16, 4, 1]
    assert runs[-1][0].seq_length == max(lengths)
