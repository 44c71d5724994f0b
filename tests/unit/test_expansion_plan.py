"""Layer selection for expansion (explicit lists, importance, LLaMA-Pro's uniform placement) and
the one-line errors of both expanding tools on bad selections.

The error cases run in this process: the selection is checked from ``adept_meta.json`` or
``config.json`` alone, before any weights are read, so their fixtures hold no weights. The
uniform placement on a 30-layer model runs both tools as users do.
"""

import json

import pytest
from hf_fixtures import CONVERT, EXPAND, run_tool_inprocess, siblings_clean, tool
from test_convert_errors import assert_one_line_error

from megatron_adept.checkpoint.metadata import CheckpointMeta, LayerMap
from megatron_adept.errors import AdeptError
from megatron_adept.expansion.plan import (
    from_importance,
    from_layer_list,
    uniform,
)
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import build_hf_model, preset_config
from megatron_adept.probe.selection import least_important


def test_uniform_placement_matches_llama_pro():
    """LLaMA-Pro's script copies layer i when (i + 1) % (L // k) == 0; hand-computed here."""
    assert uniform(4, 32).selected == (7, 15, 23, 31)
    assert uniform(8, 32).selected == (3, 7, 11, 15, 19, 23, 27, 31)
    assert uniform(2, 4).selected == (1, 3)
    assert uniform(1, 4).selected == (3,)
    assert uniform(4, 4).selected == (0, 1, 2, 3)
    # k does not divide L, but L // (L // k) == k: LLaMA-Pro's rule still gives k copies
    assert uniform(4, 30).selected == (6, 13, 20, 27)  # split 7
    assert uniform(7, 30).selected == (3, 7, 11, 15, 19, 23, 27)  # split 4
    assert uniform(3, 28).selected == (8, 17, 26)  # split 9
    for plan in (uniform(4, 32), uniform(4, 30)):
        assert "LLaMA-Pro's rule" in plan.how
    assert uniform(4, 30).how == "uniform k=4: LLaMA-Pro's rule, a copy after every 7 layers"


def test_uniform_placement_spreads_evenly_where_llama_pro_gives_another_count():
    """floor((j + 1) L / k) - 1: the last layer of k near-equal consecutive groups."""
    plan = uniform(8, 30)  # split 3 would make 10 copies
    assert plan.selected == (2, 6, 10, 14, 17, 21, 25, 29)  # groups of 3,4,4,4,3,4,4,4
    assert plan.how.startswith("uniform k=8: even spread")
    assert "would make 10" in plan.how
    assert uniform(3, 4).selected == (0, 1, 3)  # split 1 would copy all 4 layers
    assert uniform(16, 30).selected == (0, 2, 4, 6, 8, 10, 12, 14, 15, 17, 19, 21, 23, 25, 27, 29)


def test_importance_picks_lowest_with_ties_to_lower_index(tmp_path):
    path = tmp_path / "importance.json"
    scores = [0.5, 0.1, 0.3, 0.1, 0.9, -0.2]
    path.write_text(json.dumps({"layer_scores": scores, "selected": [9], "suggested_k": 1}))
    assert from_importance(path, 1, 6).selected == (5,)
    assert from_importance(path, 2, 6).selected == (1, 5)  # 0.1 tie: layer 1 before layer 3
    assert from_importance(path, 3, 6).selected == (1, 3, 5)
    assert least_important([0.0, 0.0, 0.0], 2) == [0, 1]
    with pytest.raises(AdeptError, match="scores 6 layers but the model has 4"):
        from_importance(path, 2, 4)


def test_layer_map_inserts_copies_right_after_originals():
    plan = from_layer_list("2,0", 4)
    assert plan.selected == (0, 2)
    layer_map = plan.layer_map()
    assert [(e.kind, e.source) for e in layer_map.layers] == [
        ("original", 0),
        ("copy", 0),
        ("original", 1),
        ("original", 2),
        ("copy", 2),
        ("original", 3),
    ]
    assert layer_map.copy_indices == [1, 4] and layer_map.num_original == 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Metadata of 4-layer checkpoints, 4-layer HF configs (with exported layer maps), and
    importance files: everything the selection needs, no weights."""
    root = tmp_path_factory.mktemp("plan")
    arch = ModelArch.from_hf_config(preset_config("tiny-llama"))
    CheckpointMeta(arch, LayerMap.identity(4)).save(root)
    expanded = root / "expanded"
    expanded.mkdir()
    CheckpointMeta(arch.with_layers(5), from_layer_list("1", 4).layer_map()).save(expanded)
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text(json.dumps(preset_config("tiny-llama")))
    grown = root / "hf_expanded"
    grown.mkdir()
    (grown / "config.json").write_text(json.dumps(preset_config("tiny-llama", num_hidden_layers=5)))
    layer_map = from_layer_list("1", 4).layer_map().to_list()
    (grown / "adept_layer_map.json").write_text(json.dumps(layer_map))
    (root / "hf_bad_map").mkdir()
    (root / "hf_bad_map" / "config.json").write_text(json.dumps(preset_config("tiny-llama")))
    (root / "hf_bad_map" / "adept_layer_map.json").write_text(json.dumps(layer_map))
    (root / "imp4.json").write_text(json.dumps({"layer_scores": [0.3, 0.1, 0.2, 0.4]}))
    (root / "imp7.json").write_text(json.dumps({"layer_scores": [0.1] * 7}))
    (root / "imp_bad.json").write_text(json.dumps({"layer_scores": [0.1, "x", 0.2, 0.3]}))
    (root / "not_json.json").write_text("{")
    return root


def substitute(args, inputs):
    names = {
        "IMP4": "imp4.json",
        "IMP7": "imp7.json",
        "IMPBAD": "imp_bad.json",
        "NOTJSON": "not_json.json",
    }
    return [str(inputs / names[a]) if a in names else a for a in args]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--layers", "4"], "layer index 4 is out of range 0..3"),
        (["--layers", "-1"], "layer index -1 is out of range"),
        (["--layers", "0,2,0"], "duplicate layer index 0 in '0,2,0'"),
        (["--layers", "1,a"], "layer index 'a' is not an integer"),
        (["--layers", "1.5"], "layer index '1.5' is not an integer"),
        (["--uniform", "--k", "0"], "--k=0 must be between 1 and the number of layers (4)"),
        (["--uniform", "--k", "5"], "--k=5 must be between 1"),
        (["--uniform"], "--uniform needs --k"),
        (["--importance", "IMP7", "--k", "2"], "scores 7 layers but the model has 4"),
        (["--importance", "IMPBAD", "--k", "2"], "layer_scores must be a list of finite numbers"),
        (["--importance", "NOTJSON", "--k", "2"], "not an importance.json"),
        (["--importance", "missing.json", "--k", "2"], "'missing.json' does not exist"),
        (["--importance", "IMP7"], "--importance needs --k"),
        (["--importance", "IMP4", "--k", "0"], "--k=0 must be between 1"),
        (["--layers", "1", "--k", "2"], "--k goes with --importance or --uniform"),
        (["--layers", "1", "--uniform", "--k", "2"], "got --layers and --uniform"),
        (["--layers", "1", "--importance", "IMP7", "--k", "2"], "got --layers and --importance"),
        ([], "give one of --layers, --importance with --k, or --uniform with --k"),
    ],
)
def test_expand_tool_rejects_bad_selection(inputs, tmp_path, monkeypatch, capsys, args, fragment):
    out = tmp_path / "out"
    argv = ["--load", str(inputs), "--out", str(out), *substitute(args, inputs)]
    assert_one_line_error(run_tool_inprocess(EXPAND, argv, monkeypatch, capsys), fragment)
    assert siblings_clean(out)


def test_expand_tool_refuses_expanded_or_missing_checkpoints(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--load", str(inputs / "expanded"), "--out", str(out), "--layers", "0"]
    result = run_tool_inprocess(EXPAND, argv, monkeypatch, capsys)
    assert_one_line_error(result, "is already expanded")
    argv = ["--load", str(tmp_path / "nope"), "--out", str(out), "--layers", "0"]
    result = run_tool_inprocess(EXPAND, argv, monkeypatch, capsys)
    assert_one_line_error(result, "does not exist")
    argv = ["--load", str(inputs), "--out", str(out), "--layers", "0"]  # metadata, no weights
    result = run_tool_inprocess(EXPAND, argv, monkeypatch, capsys)
    assert_one_line_error(result, "holds no dist_checkpointing weights")
    assert siblings_clean(out)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--expand-layers", "9"], "layer index 9 is out of range 0..3"),
        (["--expand-layers", "1,1"], "duplicate layer index 1"),
        (["--expand-layers", "x"], "'x' is not an integer"),
        (["--uniform-expand", "0"], "--uniform-expand=0 must be between 1"),
        (["--uniform-expand", "8"], "--uniform-expand=8 must be between 1"),
        (["--importance", "IMP7", "--k", "1"], "scores 7 layers but the model has 4"),
        (["--importance", "IMP7"], "--importance needs --k"),
        (["--k", "2"], "--k goes with --importance"),
        (["--importance", "IMP4", "--k", "5"], "--k=5 must be between 1 and the number of"),
        (["--expand-layers", "1", "--uniform-expand", "2"], "got --expand-layers and --uniform"),
    ],
)
def test_convert_tool_rejects_bad_selection(inputs, tmp_path, monkeypatch, capsys, args, fragment):
    out = tmp_path / "out"
    argv = ["--hf-dir", str(inputs / "hf"), "--out", str(out), *substitute(args, inputs)]
    assert_one_line_error(run_tool_inprocess(CONVERT, argv, monkeypatch, capsys), fragment)
    assert siblings_clean(out)


def test_convert_tool_checks_an_exported_layer_map(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--hf-dir", str(inputs / "hf_expanded"), "--out", str(out), "--expand-layers", "0"]
    result = run_tool_inprocess(CONVERT, argv, monkeypatch, capsys)
    assert_one_line_error(result, "is already expanded")
    argv = ["--hf-dir", str(inputs / "hf_bad_map"), "--out", str(out)]
    result = run_tool_inprocess(CONVERT, argv, monkeypatch, capsys)
    assert_one_line_error(result, "adept_layer_map.json has 5 layers, config.json 4")
    assert siblings_clean(out)


def test_expand_tool_places_uniform_copies_on_a_30_layer_model(tmp_path):
    """30 layers, --uniform --k 4: LLaMA-Pro's copies of 6, 13, 20, 27, logged and recorded."""
    build_hf_model("tiny-llama", num_hidden_layers=30).save_pretrained(tmp_path / "hf")
    tool(CONVERT, "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "base"))
    out = tmp_path / "k4"
    run = tool(EXPAND, "--load", str(tmp_path / "base"), "--out", str(out), "--uniform", "--k", "4")
    meta = CheckpointMeta.load(out)
    assert meta.layer_map.copied_sources == [6, 13, 20, 27]
    assert meta.layer_map.copy_indices == [7, 15, 23, 31]
    how = "uniform k=4: LLaMA-Pro's rule, a copy after every 7 layers"
    assert meta.source["expansion"] == how and meta.source["copies_of"] == [6, 13, 20, 27]
    assert f"copies of layers [6, 13, 20, 27] ({how})" in run.stdout + run.stderr
