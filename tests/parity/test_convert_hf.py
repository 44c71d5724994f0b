"""HF -> megatron -> HF: logits equal transformers' at every layout; the round trip is exact."""

import json

import pytest
import torch
from hf_fixtures import CONVERT, hf_logits, hf_tensors, save_hf, tool
from torchrun_harness import run_torchrun
from transformers import AutoModelForCausalLM
from workers_tokens import sample_tokens

PRESETS = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral"]
BATCH, SEQ, SEED = 2, 20, 5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every preset saved by transformers, converted once, and its logits at four layouts."""
    root = tmp_path_factory.mktemp("convert")
    models, ckpts = {}, {}
    for preset in PRESETS:
        models[preset] = save_hf(preset, root / preset / "hf")
        ckpts[preset] = root / preset / "ckpt"
        tool(CONVERT, "--hf-dir", str(root / preset / "hf"), "--out", str(ckpts[preset]))
    out = root / "logits.pt"
    run_torchrun(
        "ckpt_logits.py",
        4,
        [str(out), str(BATCH), str(SEQ), str(SEED)] + [str(c) for c in ckpts.values()],
    )
    logits = torch.load(out)
    return root, models, {p: logits[str(c)] for p, c in ckpts.items()}


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_match_transformers_at_every_layout(converted, preset):
    _, models, logits = converted
    reference = hf_logits(models[preset], sample_tokens(BATCH, SEQ, 256, SEED))
    assert reference.abs().mean() > 1e-2
    for layout, got in logits[preset].items():
        assert (got - reference).abs().max().item() <= 1e-4, layout
    # converted once, loaded at TP=2xPP=2 and at TP=1: the same logits
    assert (logits[preset]["tp2_pp2"] - logits[preset]["tp1"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_is_bit_exact(converted, preset):
    root, _, _ = converted
    source, exported = root / preset / "hf", root / preset / "hf_export"
    tool(CONVERT, "--to-hf", "--load", str(root / preset / "ckpt"), "--out", str(exported))
    before, after = hf_tensors(source), hf_tensors(exported)
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    original = json.loads((source / "config.json").read_text())
    config = json.loads((exported / "config.json").read_text())
    for key in (
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "tie_word_embeddings",
        "hidden_size",
        "intermediate_size",
        "vocab_size",
    ):
        assert config[key] == original[key], key
    assert config["rope_parameters"]["rope_theta"] == original["rope_parameters"]["rope_theta"]
    reloaded = AutoModelForCausalLM.from_pretrained(exported)
    assert type(reloaded).__name__ == original["architectures"][0]
