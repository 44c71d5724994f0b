"""tools/eval_mc.py against a direct transformers computation on the --to-hf exports.

The reference below rebuilds the documented few-shot prompts itself, tokenizes with
sentencepiece directly and takes each choice's mean NLL from transformers' log-softmax.
"""

import json
import random
import re

import pytest
import sentencepiece
import torch
from data_fixtures import WORDS, write_jsonl
from eval_fixtures import EVAL_MC, eval_checkpoints
from torchrun_harness import run_torchrun
from transformers import AutoModelForCausalLM

SHOTS = 2
LAYOUTS = {
    # TP=1 with two data-parallel ranks splitting the questions
    "tp1_dp2": (2, ["--tensor-model-parallel-size", "1"]),
    # TP=2 x PP=2, with a padded vocabulary (320 -> 512 rows)
    "tp2_pp2": (
        4,
        [
            "--tensor-model-parallel-size",
            "2",
            "--pipeline-model-parallel-size",
            "2",
            "--make-vocab-size-divisible-by",
            "128",
        ],
    ),
}


def make_items(seed: int = 0) -> list[dict]:
    """Two subjects and a subject-less group, 2-4 choices each, answers spread out."""
    rng = random.Random(seed)
    phrase = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    groups = [("computer_science", 6), ("world_history", 6), (None, 4)]
    items = []
    for subject, count in groups:
        for _ in range(count):
            choices = [phrase(rng.randint(1, 3)) for _ in range(rng.randint(2, 4))]
            item = {"question": phrase(rng.randint(3, 10)) + "?", "choices": choices}
            item["answer"] = rng.randrange(len(choices))
            if subject:
                item["subject"] = subject
            items.append(item)
    return items


def reference(hf_dir, tokenizer_file, items: list[dict], shots: int) -> list[dict]:
    """Per scored item: subject, answer and the per-choice mean NLLs from transformers."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_file))
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    exemplars: dict = {}
    results = []
    for item in items:
        subject = item.get("subject")
        if len(exemplars.setdefault(subject, [])) < shots:
            exemplars[subject].append(item)
            continue
        prompt = ""
        if subject:
            topic = subject.replace("_", " ")
            prompt += f"The following are multiple choice questions about {topic}.\n\n"
        for ex in exemplars[subject]:
            prompt += f"Question: {ex['question']}\nAnswer: {ex['choices'][ex['answer']]}\n\n"
        prompt += f"Question: {item['question']}\nAnswer:"
        prompt_ids = sp.encode(prompt)
        nlls = []
        for choice in item["choices"]:
            choice_ids = sp.encode(" " + choice)
            ids = torch.tensor([prompt_ids + choice_ids])
            assert ids.shape[1] <= 256
            with torch.no_grad():
                logprobs = model(input_ids=ids).logits[0].double().log_softmax(-1)
            picked = [logprobs[len(prompt_ids) - 1 + j, t] for j, t in enumerate(choice_ids)]
            nlls.append(-float(sum(picked)) / len(choice_ids))
        results.append({"subject": subject or "(none)", "answer": item["answer"], "nll": nlls})
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = eval_checkpoints(tmp_path_factory)
    work = tmp_path_factory.mktemp("eval_mc")
    items = make_items()
    data = write_jsonl(work / "mc.jsonl", items)
    outputs = {}
    for name, (nproc, layout) in LAYOUTS.items():
        out = work / f"{name}.json"
        proc = run_torchrun(
            EVAL_MC,
            nproc,
            ["--load", str(root / "base"), "--compare", str(root / "adapted_a")]
            + ["--data", str(data), "--shots", str(SHOTS), "--questions-per-batch", "3"]
            + ["--out", str(out), *layout],
        )
        outputs[name] = (json.loads(out.read_text()), proc.stdout)
    tokenizer = root / "tokenizer" / "tokenizer.model"
    references = {
        "base": reference(root / "base_hf", tokenizer, items, SHOTS),
        "adapted_a": reference(root / "adapted_a_hf", tokenizer, items, SHOTS),
    }
    return outputs, references


def accuracy(rows: list[dict], preds: list[int]) -> float:
    return sum(r["answer"] == p for r, p in zip(rows, preds, strict=True)) / len(rows)


def argmin(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("model", ["base", "adapted_a"])
def test_choice_nlls_and_accuracy_equal_transformers(runs, layout, model):
    outputs, references = runs
    result = outputs[layout][0]
    got = result if model == "base" else result["compare"][0]
    assert got["checkpoint"].endswith(model)
    expected = references[model]
    assert len(got["items"]) == len(expected) == 10  # 16 items minus 2 exemplars per group
    for mine, ref in zip(got["items"], expected, strict=True):
        assert mine["subject"] == ref["subject"] and mine["answer"] == ref["answer"]
        assert len(mine["nll"]) == len(ref["nll"])
        for a, b in zip(mine["nll"], ref["nll"], strict=True):
            assert abs(a - b) <= 1e-4, (mine, ref)
        gaps = sorted(ref["nll"])
        assert gaps[1] - gaps[0] > 1e-3  # no near tie: the prediction is well defined
        assert mine["pred"] == argmin(ref["nll"])
    preds = [argmin(ref["nll"]) for ref in expected]
    assert got["accuracy"] == pytest.approx(accuracy(expected, preds), abs=1e-12)
    for subject, entry in got["subjects"].items():
        rows = [(r, p) for r, p in zip(expected, preds, strict=True) if r["subject"] == subject]
        assert entry["items"] == len(rows)
        assert entry["accuracy"] == pytest.approx(accuracy(*zip(*rows, strict=True)), abs=1e-12)
    assert sorted(got["subjects"]) == ["(none)", "computer_science", "world_history"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_table_shows_both_checkpoints_side_by_side(runs, layout):
    result, stdout = runs[0][layout]
    lines = [re.sub(r"^\[default\d+\]:", "", line) for line in stdout.splitlines()]
    overall = [line for line in lines if line.startswith("overall")]
    assert len(overall) == 1
    expected = ["overall", "10", f"{100 * result['accuracy']:.2f}"]
    expected.append(f"{100 * result['compare'][0]['accuracy']:.2f}")
    assert overall[0].split() == expected
