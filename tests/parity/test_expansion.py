"""Function-preserving expansion: same logits at every layout, copies placed and zeroed right."""

import json

import pytest
import torch
from hf_fixtures import CONVERT, EXPAND, hf_logits, hf_tensors, save_hf, tool
from torchrun_harness import run_torchrun
from transformers import AutoModelForCausalLM
from workers_tokens import sample_tokens

BATCH, SEQ, SEED = 2, 16, 9
SELECTED = "1,3"  # tiny-llama has 4 layers -> expanded layers 0,1,1c,2,3,3c
EXPANDED_SOURCES = [0, 1, 1, 2, 3, 3]
COPIES = {2: 1, 5: 3}  # expanded index -> original index
ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    root = tmp_path_factory.mktemp("expand")
    model = save_hf("tiny-llama", root / "hf")
    tool(CONVERT, "--hf-dir", str(root / "hf"), "--out", str(root / "base"))
    tool(
        EXPAND, "--load", str(root / "base"), "--out", str(root / "expanded"), "--layers", SELECTED
    )
    tool(
        CONVERT,
        "--hf-dir",
        str(root / "hf"),
        "--out",
        str(root / "converted_expanded"),
        "--expand-layers",
        SELECTED,
    )
    for name in ("expanded", "converted_expanded"):
        tool(CONVERT, "--to-hf", "--load", str(root / name), "--out", str(root / f"{name}_hf"))
    out = root / "logits.pt"
    run_torchrun(
        "ckpt_logits.py",
        4,
        [str(out), str(BATCH), str(SEQ), str(SEED), str(root / "base"), str(root / "expanded")],
    )
    return root, model, torch.load(out)


def test_both_tools_write_identical_checkpoints(expanded):
    root, _, _ = expanded
    a, b = hf_tensors(root / "expanded_hf"), hf_tensors(root / "converted_expanded_hf")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[name], b[name]) for name in a)
    meta_a = json.loads((root / "expanded" / "adept_meta.json").read_text())
    meta_b = json.loads((root / "converted_expanded" / "adept_meta.json").read_text())
    assert meta_a["layer_map"] == meta_b["layer_map"] and meta_a["arch"] == meta_b["arch"]


def test_expanded_logits_equal_original_at_every_layout(expanded):
    root, _, logits = expanded
    base, grown = logits[str(root / "base")], logits[str(root / "expanded")]
    for layout in base:
        assert (grown[layout] - base[layout]).abs().max().item() <= 1e-6, layout


def test_layer_map_placement_and_exact_tensors(expanded):
    root, _, _ = expanded
    meta = json.loads((root / "expanded" / "adept_meta.json").read_text())
    assert [e["source"] for e in meta["layer_map"]] == EXPANDED_SOURCES
    assert [i for i, e in enumerate(meta["layer_map"]) if e["kind"] == "copy"] == sorted(COPIES)
    original, grown = hf_tensors(root / "hf"), hf_tensors(root / "expanded_hf")
    for name, tensor in grown.items():
        if not name.startswith("model.layers."):
            assert torch.equal(tensor, original[name]), name
            continue
        index, rest = name.split(".", 3)[2], name.split(".", 3)[3]
        source = f"model.layers.{EXPANDED_SOURCES[int(index)]}.{rest}"
        if int(index) in COPIES and rest in ZEROED:
            assert torch.count_nonzero(tensor) == 0, name
        else:
            assert torch.equal(tensor, original[source]), name


def test_exported_expansion_runs_in_transformers(expanded):
    root, model, _ = expanded
    exported = AutoModelForCausalLM.from_pretrained(root / "expanded_hf")
    assert exported.config.num_hidden_layers == 6
    tokens = sample_tokens(BATCH, SEQ, 256, SEED)
    assert (hf_logits(exported, tokens) - hf_logits(model, tokens)).abs().max().item() <= 1e-6
    layer_map = json.loads((root / "expanded_hf" / "adept_layer_map.json").read_text())
    assert [e["kind"] for e in layer_map].count("copy") == 2


def test_reimported_export_keeps_layer_map(expanded, tmp_path):
    root, _, _ = expanded
    tool(CONVERT, "--hf-dir", str(root / "expanded_hf"), "--out", str(tmp_path / "again"))
    meta = json.loads((tmp_path / "again" / "adept_meta.json").read_text())
    assert [e["source"] for e in meta["layer_map"]] == EXPANDED_SOURCES
