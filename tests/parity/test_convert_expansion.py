"""Function-preserving expansion: same logits at every layout, copies placed and zeroed right.

``expanded`` comes from tools/expand_ckpt.py on a converted checkpoint, ``converted_expanded``
from tools/convert_hf.py --expand-layers in one pass from HF; both duplicate layers 1 and 3 of
a 4-layer tiny-qwen2 (q/k/v biases, tied embeddings).
"""

import json
import re

import pytest
import torch
from hf_fixtures import (
    EXPANDED_PRESET,
    LOGITS_SEED,
    LOGITS_SHAPE,
    STALE_FILE,
    TRAINED_TENSOR,
    checkpoint_tensors,
    hf_logits,
    hf_tensors,
)
from transformers import AutoModelForCausalLM
from workers_tokens import sample_tokens

EXPANDED_SOURCES = [0, 1, 1, 2, 3, 3]
COPIES = {2: 1, 5: 3}  # expanded position -> original index
ZEROED = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
LAYER_KEY = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


@pytest.fixture(scope="module")
def stored(conversion_suite, tmp_path_factory):
    """Stored tensors of the base and both expanded checkpoints, by checkpoint key."""
    scratch = tmp_path_factory.mktemp("stored")
    root = conversion_suite.root
    paths = {
        "base": conversion_suite.ckpt(EXPANDED_PRESET),
        "expanded": root / "expanded",
        "converted_expanded": root / "converted_expanded",
        "reimported": root / "reimported",
    }
    return {name: checkpoint_tensors(path, scratch / f"{name}.pt") for name, path in paths.items()}


def test_both_tools_write_identical_checkpoints(conversion_suite, stored):
    a, b = stored["expanded"], stored["converted_expanded"]
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    root = conversion_suite.root
    meta_a = json.loads((root / "expanded" / "adept_meta.json").read_text())
    meta_b = json.loads((root / "converted_expanded" / "adept_meta.json").read_text())
    assert meta_a["layer_map"] == meta_b["layer_map"] and meta_a["arch"] == meta_b["arch"]
    assert meta_a["arch"]["num_layers"] == 6


def test_copies_follow_originals_zeroed_and_exact(conversion_suite, stored):
    meta = json.loads((conversion_suite.root / "expanded" / "adept_meta.json").read_text())
    assert [e["source"] for e in meta["layer_map"]] == EXPANDED_SOURCES
    assert [i for i, e in enumerate(meta["layer_map"]) if e["kind"] == "copy"] == sorted(COPIES)
    base, grown = stored["base"], stored["expanded"]
    expected_keys = set()
    for key in base:
        match = LAYER_KEY.match(key)
        if match is None:
            expected_keys.add(key)
            continue
        for position, source in enumerate(EXPANDED_SOURCES):
            if source == int(match.group(1)):
                expected_keys.add(f"decoder.layers.{position}.{match.group(2)}")
    assert set(grown) == expected_keys
    zeroed = 0
    for key, tensor in grown.items():
        match = LAYER_KEY.match(key)
        if match is None:
            assert torch.equal(tensor, base[key]), key
            continue
        position, local = int(match.group(1)), match.group(2)
        original = base[f"decoder.layers.{EXPANDED_SOURCES[position]}.{local}"]
        if position in COPIES and local in ZEROED:
            assert tensor.shape == original.shape and torch.count_nonzero(tensor) == 0, key
            assert torch.count_nonzero(original) > 0, key
            zeroed += 1
        else:
            assert tensor.dtype == original.dtype and torch.equal(tensor, original), key
    assert zeroed == len(COPIES) * len(ZEROED)


def test_expanded_logits_equal_original_at_every_layout(conversion_suite):
    base = conversion_suite.logits[EXPANDED_PRESET]
    for name in ("expanded", "converted_expanded"):
        grown = conversion_suite.logits[name]
        assert sorted(grown) == sorted(base) == ["pp2", "tp1", "tp2", "tp2_pp2"]
        for layout in base:
            assert (grown[layout] - base[layout]).abs().max().item() <= 1e-6, (name, layout)


def test_export_runs_in_transformers_with_the_same_logits(conversion_suite):
    exported_dir = conversion_suite.expanded_hf
    exported = AutoModelForCausalLM.from_pretrained(exported_dir)
    assert exported.config.num_hidden_layers == 6
    tokens = sample_tokens(*LOGITS_SHAPE, 256, LOGITS_SEED)
    reference = hf_logits(conversion_suite.models[EXPANDED_PRESET], tokens)
    assert (hf_logits(exported, tokens) - reference).abs().max().item() <= 1e-6
    layer_map = json.loads((exported_dir / "adept_layer_map.json").read_text())
    assert [e["source"] for e in layer_map] == EXPANDED_SOURCES
    tensors = hf_tensors(exported_dir)
    for position in COPIES:
        for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            assert torch.count_nonzero(tensors[f"model.layers.{position}.{name}"]) == 0


def test_overwrite_replaced_the_older_export(conversion_suite):
    exported = conversion_suite.expanded_hf
    assert not (exported / STALE_FILE).exists() and (exported / "config.json").is_file()
    siblings = [p.name for p in exported.parent.iterdir() if p.name.startswith(".expanded_hf")]
    assert siblings == []


def test_reimported_export_keeps_layer_map_and_trained_copies(conversion_suite, stored):
    """Converting an export back reads the copies as they are (trained ones stay trained)."""
    meta = json.loads((conversion_suite.root / "reimported" / "adept_meta.json").read_text())
    assert [e["source"] for e in meta["layer_map"]] == EXPANDED_SOURCES
    assert [e["kind"] for e in meta["layer_map"]].count("copy") == len(COPIES)
    again, expanded = stored["reimported"], stored["expanded"]
    trained_key = "decoder.layers.2.self_attention.linear_proj.weight"
    trained = hf_tensors(conversion_suite.root / "trained_hf")[TRAINED_TENSOR]
    assert torch.count_nonzero(trained) > 0 and torch.equal(again[trained_key], trained)
    assert sorted(again) == sorted(expanded)
    for key in expanded:
        assert key == trained_key or torch.equal(again[key], expanded[key]), key
