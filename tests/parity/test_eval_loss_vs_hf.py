"""tools/eval_loss.py against transformers on the --to-hf export: corpus and per-item losses.

Per-item values let two models be compared document by document (a paired confidence
interval); the reference tokenizes with sentencepiece and sums transformers' NLLs itself.
"""

import json

import pytest
import sentencepiece
import torch
from data_fixtures import random_texts, write_jsonl
from eval_fixtures import eval_checkpoints
from torchrun_harness import REPO, run_torchrun
from transformers import AutoModelForCausalLM

EVAL_LOSS = str(REPO / "tools" / "eval_loss.py")
SEQ = 24
LAYOUTS = {
    "tp1_dp2": (2, []),
    "tp2_pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
}


def items() -> list[dict]:
    texts = [{"text": t} for t in random_texts(9, seed=11, low=3)]
    return [*texts, {"prompt": "the river of", "answer": " memory cache"}]


def reference(hf_dir, tokenizer_file, corpus: list[dict]) -> list[tuple[float, int]]:
    """(Σ NLL over the counted targets, their number) per item, truncated to SEQ positions."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_file))
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    rows = []
    for item in corpus:
        if "text" in item:
            ids, context = sp.encode(item["text"]), 0
        else:
            prompt = sp.encode(item["prompt"])
            ids, context = prompt + sp.encode(item["answer"]), len(prompt)
        ids = ids[: SEQ + 1]
        with torch.no_grad():
            logprobs = model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
        logprobs = logprobs.log_softmax(-1)
        targets = [(p, t) for p, t in enumerate(ids[1:]) if p + 1 >= context]
        rows.append((-float(sum(logprobs[p, t] for p, t in targets)), len(targets)))
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = eval_checkpoints(tmp_path_factory)
    work = tmp_path_factory.mktemp("eval_loss")
    data = write_jsonl(work / "heldout.jsonl", items())
    outputs = {}
    for name, (nproc, layout) in LAYOUTS.items():
        out = work / f"{name}.json"
        run_torchrun(
            EVAL_LOSS,
            nproc,
            ["--load", str(root / "adapted_a"), "--data", str(data), "--out", str(out)]
            + ["--seq-length", str(SEQ), "--micro-batch-size", "3", *layout],
        )
        outputs[name] = json.loads(out.read_text())[str(data)]
    tokenizer = root / "tokenizer" / "tokenizer.model"
    return outputs, reference(root / "adapted_a_hf", tokenizer, items())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corpus_and_item_losses_equal_transformers(runs, layout):
    outputs, expected = runs
    got = outputs[layout]
    assert len(got["items"]) == len(expected) == 10
    for mine, (loss_sum, tokens) in zip(got["items"], expected, strict=True):
        assert mine["tokens"] == tokens
        assert abs(mine["loss_sum"] - loss_sum) <= 1e-4 * max(1.0, abs(loss_sum)), (mine, tokens)
    total = sum(s for s, _ in expected)
    count = sum(n for _, n in expected)
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
