"""Stage 1 probe against an independent transformers computation, at TP=1, TP=2 and PP=2.

One tiny Qwen3 (q/k norms exercise the tensor-parallel gradient sums) is converted once and
probed by the command line (python at TP=1, torchrun at PP=2) and by a worker looping over
TP=1 x DP=2, TP=2 and PP=2. The references run transformers in float64: masking deletes
layer l from ``model.model.layers``; gradients come from ``loss.backward()`` on the HF model.
"""

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
SEQ, MICRO = 40, 3
SFT_ITEMS = [
    {"prompt": "name a protocol: the", "answer": " network packet kernel"},
    {"prompt": "the river and the mountain of", "answer": " forest music"},
    {"prompt": "", "answer": " memory cache thread process compiler"},
    {"prompt": " ".join(random_texts(1, seed=5, low=50, high=50)), "answer": " truncated away"},
]
MIXED_ITEMS = [{"text": t} for t in random_texts(6, seed=11, low=5, high=40)] + SFT_ITEMS[:2]
HF_UNITS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
HF_UNITS |= {"input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"}


def relative(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-12)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    tokenizer = sentencepiece_tokenizer(root / "tok")
    model = build_hf_model("tiny-qwen3", vocab_size=320)
    with torch.no_grad():  # every bypass moves the loss by >= 0.1, far above fp32 rounding
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.mul_(6.0 if ".layers." in name else 12.0)
    model.save_pretrained(root / "hf")
    shutil.copy(tokenizer / "tokenizer.model", root / "hf" / "tokenizer.model")
    tool(CONVERT, "--hf-dir", str(root / "hf"), "--out", str(root / "ckpt"))
    mixed = write_jsonl(root / "mixed.jsonl", MIXED_ITEMS)
    sft = write_jsonl(root / "sft.jsonl", SFT_ITEMS)
    common = ["--load", str(root / "ckpt"), "--probe-data", str(mixed)]
    common += ["--seq-length", str(SEQ), "--micro-batch-size", str(MICRO), "--k", "2"]
    cli = {"cli_tp1": root / "cli_tp1.json", "cli_pp2": root / "cli_pp2.json"}
    plot = root / "heatmap.png"
    run_command([sys.executable, PROBE, *common, "--out", str(cli["cli_tp1"]), "--plot", str(plot)])
    run_torchrun(
        PROBE, 2, [*common, "--out", str(cli["cli_pp2"]), "--pipeline-model-parallel-size", "2"]
    )
    layouts_out = root / "layouts.json"
    run_torchrun(
        "probe_layouts.py",
        2,
        [str(root / "ckpt"), str(mixed), str(sft), str(SEQ), str(MICRO), str(layouts_out)],
    )
    reference = AutoModelForCausalLM.from_pretrained(root / "hf").double().eval()
    return {
        "tokenizer": load_tokenizer(tokenizer),
        "hf": reference,
        "cli": {name: json.loads(path.read_text()) for name, path in cli.items()},
        "layouts": json.loads(layouts_out.read_text()),
        "plot": plot,
    }


def examples(items, tokenizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(token ids [1, n], counted-target mask [n-1]) per item, tokenized like corpus.py."""
    out = []
    for item in items:
        if "text" in item:
            ids, context = tokenizer.encode(item["text"]), 0
        else:
            prompt = tokenizer.encode(item["prompt"])
            ids, context = prompt + tokenizer.encode(item["answer"]), len(prompt)
        ids = torch.tensor(ids[: SEQ + 1])[None]
        counted = torch.arange(1, ids.shape[1]) >= context  # target position p+1 is an answer
        out.append((ids, counted))
    return out


def nll_sum(model, ids: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids[:, :-1]).logits[0].double()
    losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    return losses[counted].sum()


def mean_loss(model, batch) -> torch.Tensor:
    return sum(nll_sum(model, ids, c) for ids, c in batch) / sum(int(c.sum()) for _, c in batch)


def masking_reference(model, batch) -> tuple[float, list[float]]:
    with torch.no_grad():
        base = mean_loss(model, batch).item()
        scores = []
        for layer in range(model.config.num_hidden_layers):
            bypassed = copy.deepcopy(model)
            del bypassed.model.layers[layer]
            scores.append(mean_loss(bypassed, batch).item() - base)
    return base, scores


def layer_grads(model, loss: torch.Tensor) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per layer: {parameter name: (θ, ∂loss/∂θ)}."""
    model.zero_grad()
    loss.backward()
    return [
        {name: (p.detach(), p.grad.detach().clone()) for name, p in layer.named_parameters()}
        for layer in model.model.layers
    ]


@pytest.fixture(scope="module")
def reference(probed):
    model, tokenizer = probed["hf"], probed["tokenizer"]
    mixed = examples(MIXED_ITEMS, tokenizer)
    base, masking = masking_reference(model, mixed)
    grads = layer_grads(model, mean_loss(model, mixed))
    units = []
    for layer in grads:
        taylor: dict[str, list[torch.Tensor]] = {}
        for name, (theta, grad) in layer.items():
            taylor.setdefault(name.split(".")[-2], []).append((theta * grad).reshape(-1))
        units.append({unit: torch.cat(parts).abs().mean().item() for unit, parts in taylor.items()})
    cumulative = [-sum((t * g).sum().item() for t, g in layer.values()) for layer in grads]
    fisher = [0.0] * len(grads)
    for ids, counted in mixed:
        if counted.any():
            for index, layer in enumerate(layer_grads(model, nll_sum(model, ids, counted))):
                fisher[index] += sum(g.square().sum().item() for _, g in layer.values())
    fisher = [value / sum(bool(c.any()) for _, c in mixed) for value in fisher]
    sft = examples(SFT_ITEMS, tokenizer)
    with torch.no_grad():
        sft_base = mean_loss(model, sft).item()
    return {
        "base": base,
        "masking": masking,
        "units": units,
        "cumulative": cumulative,
        "fisher": fisher,
        "tokens": sum(int(c.sum()) for _, c in mixed),
        "sft_base": sft_base,
        "sft_tokens": sum(int(c.sum()) for _, c in sft),
        "sft_all_tokens_loss": mean_loss(model, [(i, torch.ones_like(c)) for i, c in sft]).item(),
    }


def all_runs(probed) -> dict[str, dict]:
    """Masking results of every run: the two CLI runs and the worker's three layouts."""
    runs = dict(probed["cli"])
    runs.update({name: result["masking"] for name, result in probed["layouts"].items()})
    return runs


def test_masking_scores_match_transformers(probed, reference):
    assert min(abs(s) for s in reference["masking"]) > 0.1
    for name, result in all_runs(probed).items():
        assert result["method"] == "masking"
        assert relative(result["base_loss"], reference["base"]) <= 1e-6, name
        assert result["counted_tokens"] == reference["tokens"], name
        for got, want in zip(result["layer_scores"], reference["masking"], strict=True):
            assert relative(got, want) <= 1e-5, (name, got, want)
        order = sorted(range(len(reference["masking"])), key=lambda i: reference["masking"][i])
        assert result["selected"] == sorted(order[: result["k"]]), name
    assert all(result["k"] == 2 for result in probed["cli"].values())


def test_sft_items_count_answer_tokens_only(probed, reference):
    # the context-only loss differs clearly, so counting prompt tokens would fail the check
    assert relative(reference["sft_all_tokens_loss"], reference["sft_base"]) > 1e-2
    for name, result in probed["layouts"].items():
        sft = result["sft"]
        assert sft["counted_tokens"] == reference["sft_tokens"], name
        assert relative(sft["base_loss"], reference["sft_base"]) <= 1e-6, name


def test_prefix_reuse_equals_megatron_schedule(probed):
    for name, result in probed["layouts"].items():
        naive, reuse = result["naive"], result["masking"]
        assert relative(naive["base_loss"], reuse["base_loss"]) <= 1e-7, name
        for got, want in zip(reuse["masked_losses"], naive["masked_losses"], strict=True):
            assert relative(got, want) <= 1e-7, name


def test_unit_scores_match_transformers_for_every_method(probed, reference):
    for name, layout in probed["layouts"].items():
        for method, result in [*layout.items(), *probed["cli"].items()]:
            if "unit_scores" not in result:
                continue
            for got, want in zip(result["unit_scores"], reference["units"], strict=True):
                assert set(got) == HF_UNITS
                for unit, value in want.items():
                    assert relative(got[unit], value) <= 1e-5, (name, method, unit)


def test_gradient_methods_match_transformers(probed, reference):
    for name, layout in probed["layouts"].items():
        for method in ("cumulative", "fisher"):
            got = layout[method]["layer_scores"]
            for layer, (value, want) in enumerate(zip(got, reference[method], strict=True)):
                assert relative(value, want) <= 1e-4, (name, method, layer, value, want)
        assert relative(layout["fisher"]["base_loss"], reference["base"]) <= 1e-6


def test_every_method_is_identical_across_layouts(probed):
    layouts = probed["layouts"]
    for method in ("masking", "cumulative", "rank", "fisher"):
        want = layouts["dp2"][method]
        for name in ("tp2", "pp2"):
            got = layouts[name][method]
            assert got["selected"] == want["selected"] and got["k"] == want["k"], (name, method)
            for a, b in zip(got["layer_scores"], want["layer_scores"], strict=True):
                assert relative(a, b) <= 1e-5, (name, method)


def test_unit_importance_through_ddp_leaves_training_state_alone(probed):
    for name, layout in probed["layouts"].items():
        ddp = layout["ddp"]
        assert ddp["main_grad_untouched"] and ddp["grad_none"], name
        assert ddp["rng_untouched"] and ddp["still_training"], name
        assert ddp["flags_unchanged"], name
        full = layout["masking"]["unit_scores"]
        assert sorted({int(key.split("/")[0]) for key in ddp["means"]}) == [2, 3]
        for key, value in ddp["means"].items():
            layer, unit = key.split("/")
            assert relative(value, full[int(layer)][unit]) <= 1e-6, (name, key)


def test_heatmap_written(probed):
    from PIL import Image

    with Image.open(probed["plot"]) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 200
