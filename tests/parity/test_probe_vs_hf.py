"""Stage 1 masking scores equal an independent transformers computation at TP=1, TP=2, PP=2."""

import copy
import json
import shutil
import sys

import pytest
import torch
from data_fixtures import random_texts, sentencepiece_tokenizer, write_jsonl
from hf_fixtures import CONVERT, tool
from torchrun_harness import REPO, run_command, run_torchrun
from transformers import AutoModelForCausalLM

from megatron_adept.data.tokenizer import load_tokenizer
from megatron_adept.models.presets import build_hf_model

PROBE = str(REPO / "tools" / "probe_importance.py")
SEQ = 48
ITEMS = [{"text": t} for t in random_texts(5, seed=11, low=10, high=40)] + [
    {"prompt": "name a protocol:", "answer": " network packet kernel"},
    {"prompt": "the river and the mountain", "answer": " forest music"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    tokenizer = sentencepiece_tokenizer(root / "tok")
    model = build_hf_model("tiny-llama", vocab_size=320)
    with torch.no_grad():  # larger weights: bypassing a layer moves the loss visibly
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(4.0)
    model.save_pretrained(root / "hf")
    shutil.copy(tokenizer / "tokenizer.model", root / "hf" / "tokenizer.model")
    tool(CONVERT, "--hf-dir", str(root / "hf"), "--out", str(root / "ckpt"))
    write_jsonl(root / "probe.jsonl", ITEMS)
    common = [
        "--load",
        str(root / "ckpt"),
        "--probe-data",
        str(root / "probe.jsonl"),
        "--seq-length",
        str(SEQ),
        "--micro-batch-size",
        "2",
        "--k",
        "2",
    ]
    run_command(
        [
            sys.executable,
            PROBE,
            *common,
            "--out",
            str(root / "tp1.json"),
            "--plot",
            str(root / "heat.png"),
        ]
    )
    # TP=2 with a padded vocabulary (320 -> 512): padded logits must not change the loss
    run_torchrun(
        PROBE,
        2,
        [
            *common,
            "--out",
            str(root / "tp2.json"),
            "--tensor-model-parallel-size",
            "2",
            "--make-vocab-size-divisible-by",
            "128",
        ],
    )
    run_torchrun(
        PROBE, 2, [*common, "--out", str(root / "pp2.json"), "--pipeline-model-parallel-size", "2"]
    )
    results = {
        name: json.loads((root / f"{name}.json").read_text()) for name in ("tp1", "tp2", "pp2")
    }
    return root, load_tokenizer(tokenizer), results


def reference_loss(model, tokenizer) -> float:
    """Mean next-token loss over counted tokens, computed independently in float64."""
    total, count = 0.0, 0
    for item in ITEMS:
        if "text" in item:
            ids, context = tokenizer.encode(item["text"]), 0
        else:
            prompt = tokenizer.encode(item["prompt"])
            ids, context = prompt + tokenizer.encode(item["answer"]), len(prompt)
        ids = torch.tensor(ids[: SEQ + 1])[None]
        with torch.no_grad():
            logits = model(input_ids=ids[:, :-1]).logits[0].double()
        losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        counted = torch.arange(1, ids.shape[1]) >= max(context, 1)
        total += losses[counted].sum().item()
        count += int(counted.sum())
    return total / count


def test_masking_scores_match_transformers(setup):
    root, tokenizer, results = setup
    model = AutoModelForCausalLM.from_pretrained(root / "hf").double().eval()
    base = reference_loss(model, tokenizer)
    expected = []
    for layer in range(model.config.num_hidden_layers):
        bypassed = copy.deepcopy(model)
        del bypassed.model.layers[layer]
        expected.append(reference_loss(bypassed, tokenizer) - base)
    assert max(abs(s) for s in expected) > 0.01
    for name, result in results.items():
        assert abs(result["base_loss"] - base) <= 1e-5 * base, name
        for got, want in zip(result["layer_scores"], expected, strict=True):
            assert abs(got - want) <= 1e-5 * abs(want) + 1e-6, (name, got, want)
        ranking = sorted(range(len(expected)), key=lambda i: (expected[i], i))
        assert result["selected"] == sorted(ranking[:2])


def test_sft_items_count_only_answer_tokens(setup):
    _, tokenizer, results = setup
    expected = 0
    for item in ITEMS:
        if "text" in item:
            expected += min(len(tokenizer.encode(item["text"])), SEQ + 1) - 1
        else:
            expected += len(tokenizer.encode(item["answer"]))
    assert all(result["counted_tokens"] == expected for result in results.values())


def test_probe_tool_rejects_bad_corpus(setup, tmp_path):
    root, _, _ = setup
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"question": "no"}])
    result = run_command(
        [
            sys.executable,
            PROBE,
            "--load",
            str(root / "ckpt"),
            "--probe-data",
            str(tmp_path / "bad.jsonl"),
            "--out",
            str(tmp_path / "x.json"),
        ],
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'bad.jsonl'}:2: expected a 'text' key or 'prompt' and 'answer' keys"
    ]
    assert not (tmp_path / "x.json").exists()


def test_unit_scores_agree_across_layouts(setup):
    root, _, results = setup
    reference = results["tp1"]["unit_scores"]
    assert set(reference[0]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "input_layernorm",
        "post_attention_layernorm",
    }
    for name in ("tp2", "pp2"):
        for got_layer, want_layer in zip(results[name]["unit_scores"], reference, strict=True):
            for unit, want in want_layer.items():
                assert abs(got_layer[unit] - want) <= 1e-5 * abs(want) + 1e-12, (name, unit)
    assert (root / "heat.png").stat().st_size > 10_000
