"""Token shift: the shares and top tokens equal a plain transformers re-computation."""

import json
import random
from collections import defaultdict

import pytest
import sentencepiece
import torch
from data_fixtures import WORDS, write_jsonl
from eval_fixtures import TOKEN_SHIFT, eval_checkpoints, run_tool
from torchrun_harness import run_torchrun
from transformers import AutoModelForCausalLM

from megatron_adept.eval.token_shift import TokenShift, shift_class

TOP = 8


def corpus(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    phrase = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    items = [{"text": phrase(rng.randint(8, 40))} for _ in range(7)]
    items.append({"prompt": phrase(10), "answer": phrase(6)})
    return items


def reference(root, items: list[dict]) -> dict:
    """Counts and top shifted tokens, position by position, from the two HF exports."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(root / "tokenizer/tokenizer.model"))
    base = AutoModelForCausalLM.from_pretrained(root / "base_hf").eval()
    adapted = AutoModelForCausalLM.from_pretrained(root / "adapted_a_hf").eval()
    counts = {"unshifted": 0, "marginal": 0, "shifted": 0}
    ratios = defaultdict(list)
    for item in items:
        if "text" in item:
            ids, first = sp.encode(item["text"]), 0
        else:
            prompt = sp.encode(item["prompt"])
            ids, first = prompt + sp.encode(item["answer"]), len(prompt) - 1
        with torch.no_grad():
            base_logits = base(input_ids=torch.tensor([ids])).logits[0]
            adapted_logits = adapted(input_ids=torch.tensor([ids])).logits[0]
        for position in range(first, len(ids) - 1):
            greedy = int(adapted_logits[position].argmax())
            row = base_logits[position]
            rank = 1 + int((row > row[greedy]).sum())
            if rank == 1:
                counts["unshifted"] += 1
            elif rank <= 3:
                counts["marginal"] += 1
            else:
                counts["shifted"] += 1
                ratios[greedy].append(rank / 1)  # the adapted rank of a greedy token is 1
    top = sorted(
        ((sum(r) / len(r), len(r), token) for token, r in ratios.items()),
        key=lambda t: (-t[0], -t[1], t[2]),
    )[:TOP]
    return {"counts": counts, "top": [(token, count, ratio) for ratio, count, token in top]}


@pytest.fixture(scope="module")
def shift_runs(tmp_path_factory):
    root = eval_checkpoints(tmp_path_factory)
    work = tmp_path_factory.mktemp("token_shift")
    items = corpus()
    data = write_jsonl(work / "texts.jsonl", items)
    common = ["--data", str(data), "--top", str(TOP), "--micro-batch-size", "3"]
    run_torchrun(
        TOKEN_SHIFT,
        2,
        ["--base", str(root / "base"), "--adapted", str(root / "adapted_a"), *common]
        + ["--tensor-model-parallel-size", "2", "--out", str(work / "shift.json")]
        + ["--plot", str(work / "shift.png")],
    )
    run_tool(
        TOKEN_SHIFT,
        *["--base", str(root / "base"), "--adapted", str(root / "base"), *common],
        *["--out", str(work / "same.json")],
    )
    return (
        json.loads((work / "shift.json").read_text()),
        json.loads((work / "same.json").read_text()),
        reference(root, items),
        work,
    )


def test_shares_and_top_tokens_equal_the_reference(shift_runs):
    shift, _, expected, work = shift_runs
    assert shift["counts"] == expected["counts"]
    total = sum(expected["counts"].values())
    assert shift["positions"] == total
    for name, count in expected["counts"].items():
        assert shift["percent"][name] == pytest.approx(100 * count / total, abs=1e-9)
    # the pair is neither identical nor unrelated: every class occurs
    assert all(count > 0 for count in expected["counts"].values())
    got = [(t["token_id"], t["count"], t["ratio"]) for t in shift["top_shifted"]]
    assert [g[:2] for g in got] == [e[:2] for e in expected["top"]]
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected["top"]], abs=1e-9)
    assert (work / "shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_identical_models_are_entirely_unshifted(shift_runs):
    _, same, expected, _ = shift_runs
    total = sum(expected["counts"].values())
    assert same["counts"] == {"unshifted": total, "marginal": 0, "shifted": 0}
    assert same["percent"] == {"unshifted": 100.0, "marginal": 0.0, "shifted": 0.0}
    assert same["top_shifted"] == []


def test_classes_and_top_tokens_by_hand():
    assert [shift_class(r) for r in (1, 2, 3, 4, 50)] == [
        "unshifted",
        "marginal",
        "marginal",
        "shifted",
        "shifted",
    ]
    shift = TokenShift(
        tokens=torch.tensor([5, 5, 7, 7, 9, 9, 4, 8]),
        ranks=torch.tensor([1, 10, 4, 8, 2, 3, 20, 6]),
    )
    assert shift.counts() == {"unshifted": 1, "marginal": 2, "shifted": 5}
    assert shift.percentages() == {"unshifted": 12.5, "marginal": 25.0, "shifted": 62.5}
    # token 5: shifted once at rank 10; token 7: ranks 4 and 8 -> 6; token 8: 6 once
    assert shift.top_shifted(4) == [
        {"token_id": 4, "count": 1, "ratio": 20.0},
        {"token_id": 5, "count": 1, "ratio": 10.0},
        {"token_id": 7, "count": 2, "ratio": 6.0},
        {"token_id": 8, "count": 1, "ratio": 6.0},
    ]
