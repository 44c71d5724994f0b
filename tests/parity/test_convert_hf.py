"""HF -> megatron -> HF: logits equal transformers' at every layout; the round trip is exact."""

import json

import pytest
import torch
from hf_fixtures import LOGITS_SEED, LOGITS_SHAPE, PRESETS, hf_logits, hf_tensors
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from workers_tokens import sample_tokens

CONFIG_FIELDS = (
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_size",
    "intermediate_size",
    "vocab_size",
    "rms_norm_eps",
    "tie_word_embeddings",
    "model_type",
    "architectures",
)


def tokens():
    return sample_tokens(*LOGITS_SHAPE, 256, LOGITS_SEED)


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_match_transformers_at_every_layout(conversion_suite, preset):
    reference = hf_logits(conversion_suite.models[preset], tokens())
    assert reference.abs().mean() > 1e-2
    logits = conversion_suite.logits[preset]
    assert sorted(logits) == ["pp2", "tp1", "tp2", "tp2_pp2"]
    for layout, got in logits.items():
        assert (got - reference).abs().max().item() <= 1e-4, layout
    # converted once, loaded at TP=2 x PP=2 and at TP=1: the same logits
    assert (logits["tp2_pp2"] - logits["tp1"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip_is_bit_exact(conversion_suite, preset):
    source, exported = conversion_suite.hf(preset), conversion_suite.export(preset)
    before, after = hf_tensors(source), hf_tensors(exported)
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    original = json.loads((source / "config.json").read_text())
    config = json.loads((exported / "config.json").read_text())
    for key in CONFIG_FIELDS:
        assert config[key] == original[key], key
    assert config["rope_parameters"]["rope_theta"] == original["rope_parameters"]["rope_theta"]
    assert (exported / "generation_config.json").read_bytes() == (
        source / "generation_config.json"
    ).read_bytes()
    reloaded = AutoModelForCausalLM.from_pretrained(exported)
    assert type(reloaded).__name__ == original["architectures"][0]


def test_sharded_input_and_output(conversion_suite):
    """tiny-qwen3 was read from index + shards; tiny-llama was written into several shards."""
    assert (conversion_suite.hf("tiny-qwen3") / "model.safetensors.index.json").is_file()
    exported = conversion_suite.export("tiny-llama")
    index = json.loads((exported / "model.safetensors.index.json").read_text())
    shards = sorted(exported.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    for shard in shards:
        with safe_open(shard, "pt") as handle:
            names = set(handle.keys())
        assert names == {n for n, f in index["weight_map"].items() if f == shard.name}
    total = sum(t.numel() * t.element_size() for t in hf_tensors(exported).values())
    assert index["metadata"]["total_size"] == total


def test_tokenizer_files_travel(conversion_suite):
    ckpt = conversion_suite.ckpt("tiny-llama")
    meta = json.loads((ckpt / "adept_meta.json").read_text())
    assert meta["tokenizer"] == "tokenizer"
    source = conversion_suite.hf("tiny-llama") / "tokenizer.json"
    assert (ckpt / "tokenizer" / "tokenizer.json").read_bytes() == source.read_bytes()
    exported = conversion_suite.export("tiny-llama") / "tokenizer.json"
    assert exported.read_bytes() == source.read_bytes()
    assert (
        json.loads((conversion_suite.ckpt("tiny-qwen2") / "adept_meta.json").read_text())[
            "tokenizer"
        ]
        is None
    )


def test_bf16_source_keeps_its_dtype_bit_for_bit(conversion_suite):
    meta = json.loads((conversion_suite.ckpt("bf16") / "adept_meta.json").read_text())
    assert meta["arch"]["dtype"] == "bfloat16"
    before, after = (
        hf_tensors(conversion_suite.hf("bf16")),
        hf_tensors(conversion_suite.export("bf16")),
    )
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(after[name], tensor), name
    config = json.loads((conversion_suite.export("bf16") / "config.json").read_text())
    assert config["dtype"] == "bfloat16"


def test_dtype_override_casts_once(conversion_suite):
    """--dtype bf16 on an fp32 source: every tensor is the fp32 one rounded to bf16."""
    meta = json.loads((conversion_suite.ckpt("cast") / "adept_meta.json").read_text())
    assert meta["arch"]["dtype"] == "bfloat16"
    before = hf_tensors(conversion_suite.hf("tiny-llama"))
    after = hf_tensors(conversion_suite.export("cast"))
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor.to(torch.bfloat16)), name


def test_checkpoint_saved_sharded_exports_bit_exact(conversion_suite):
    """A checkpoint saved at TP=2 x PP=2 (as training writes it) exports the same tensors."""
    before = hf_tensors(conversion_suite.hf("tiny-qwen2"))
    after = hf_tensors(conversion_suite.export("resaved"))
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
