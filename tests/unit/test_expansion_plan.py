"""Layer selection for expansion: explicit lists, importance, LLaMA-Pro's uniform placement."""

import json

import pytest
from hf_fixtures import CONVERT, EXPAND, save_hf, tool
from test_convert_errors import assert_one_line_error, siblings_clean

from megatron_adept.errors import AdeptError
from megatron_adept.expansion.plan import from_importance, from_layer_list, select_plan, uniform


def test_uniform_placement_matches_llama_pro():
    assert uniform(4, 32).selected == (7, 15, 23, 31)
    assert uniform(2, 4).selected == (1, 3)
    assert uniform(4, 4).selected == (0, 1, 2, 3)
    with pytest.raises(AdeptError, match="28 % 3"):
        uniform(3, 28)


def test_importance_picks_lowest_with_ties_to_lower_index(tmp_path):
    path = tmp_path / "importance.json"
    path.write_text(json.dumps({"layer_scores": [0.5, 0.1, 0.3, 0.1, 0.9]}))
    assert from_importance(path, 2, 5).selected == (1, 3)
    assert from_importance(path, 3, 5).selected == (1, 2, 3)
    with pytest.raises(AdeptError, match="scores 5 layers but the model has 4"):
        from_importance(path, 2, 4)


def test_layer_map_inserts_copies_after_originals():
    layer_map = from_layer_list("2,0", 4).layer_map(4)
    assert [(e.kind, e.source) for e in layer_map.layers] == [
        ("original", 0),
        ("copy", 0),
        ("original", 1),
        ("original", 2),
        ("copy", 2),
        ("original", 3),
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": "1,9"}, "layer index 9 is out of range 0..3"),
        ({"layers": "1,1"}, "duplicate layer index 1"),
        ({"layers": "1,x"}, "'x' is not an integer"),
        ({"uniform_k": 0}, "--k=0 must be between 1 and the number of layers (4)"),
        ({"uniform_k": 5}, "--k=5 must be between 1"),
        ({"layers": "1", "uniform_k": 2}, "exactly one layer selection, got layers and uniform"),
    ],
)
def test_bad_selections(kwargs, message):
    with pytest.raises(AdeptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_plan(4, **kwargs)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    save_hf("tiny-llama", root / "hf")
    tool(CONVERT, "--hf-dir", str(root / "hf"), "--out", str(root / "base"))
    (root / "imp.json").write_text(json.dumps({"layer_scores": [0.1] * 7}))
    return root


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--layers", "4"], "out of range"),
        (["--layers", "0,0"], "duplicate"),
        (["--layers", "a"], "not an integer"),
        (["--uniform", "--k", "0"], "--k=0"),
        (["--uniform", "--k", "5"], "--k=5"),
        (["--importance", "IMP", "--k", "2"], "scores 7 layers but the model has 4"),
        (["--layers", "1", "--uniform", "--k", "2"], "exactly one layer selection"),
    ],
)
def test_expand_tool_rejects_bad_selection(base_ckpt, tmp_path, args, fragment):
    args = [str(base_ckpt / "imp.json") if a == "IMP" else a for a in args]
    out = tmp_path / "out"
    result = tool(EXPAND, "--load", str(base_ckpt / "base"), "--out", str(out), *args, check=False)
    assert_one_line_error(result, fragment)
    assert siblings_clean(out)
