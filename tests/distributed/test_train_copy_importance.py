"""Stage 2 on a real function-preserving expansion: step-0 unit importance from the sources.

The expansion is tools/expand_ckpt.py --layers 2,3 of the 4-layer random checkpoint: layers
o0 o1 o2 c2 o3 c3, copies at 3 and 5 with zero linear_proj and linear_fc2, sources at 2 and 4.
At PP=2 (3 + 3 layers) copy 3 begins stage 1 and its source sits on stage 0.
"""

import json

import pytest
from hf_fixtures import EXPAND, tool
from torchrun_harness import run_torchrun
from train_fixtures import PRETRAIN, pretrain_args

COMMON = ("--importance-interval", "1", "--save-interval", "1")


@pytest.fixture(scope="module")
def runs(train_inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("copy_importance")
    fpi = root / "fpi"
    tool(EXPAND, "--load", str(train_inputs.plain), "--out", str(fpi), "--layers", "2,3")
    tp1 = root / "tp1"
    args = pretrain_args(train_inputs, *COMMON, "--train-iters", "2", "--save", str(tp1), load=fpi)
    out = run_torchrun(PRETRAIN, 1, args)
    result = root / "reference.json"
    run_torchrun(
        "copy_importance_reference.py",
        1,
        [str(fpi), str(tp1), str(train_inputs.probe), str(result)],
    )
    return {
        "fpi": fpi,
        "root": root,
        "log": out.stdout + out.stderr,
        "ref": json.loads(result.read_text()),
    }


def test_step0_multipliers_come_from_the_source_layers(runs):
    ref = runs["ref"]
    assert ref["copies"] == [3, 5] and ref["sources"] == [2, 4]
    assert ref["own_at_start_max"] == 0.0  # the copies' own scores say nothing at step 0
    assert ref["step0_iteration"] == 0 and ref["step0_source_scored"] == [[3, 2], [5, 4]]
    assert ref["options"] == ["abs-gradient", "linear", "source"]
    multipliers = ref["step0_multipliers"]
    assert len(multipliers) == 18 and multipliers[0] == 0.0 and multipliers[-1] == 2.0
    assert len({round(m, 6) for m in multipliers}) == 18  # every unit its own lr
    assert ref["step0_diff"] <= 1e-5
    assert "copies scored from their source layer: 3 <- 2, 5 <- 4" in runs["log"]


def test_a_later_refresh_uses_the_copies_own_scores(runs):
    ref = runs["ref"]
    assert ref["projections_after_step"] > 0  # step 1 moved both projections of both copies
    assert ref["step1_iteration"] == 1 and ref["step1_source_scored"] == []
    assert ref["step1_diff"] <= 1e-5
    assert len({round(m, 6) for m in ref["step1_multipliers"]}) > 2
    assert "copies scored from their source layer: none" in runs["log"]


def test_own_keeps_the_degenerate_step0_multipliers(train_inputs, runs):
    save = runs["root"] / "own"
    args = pretrain_args(
        train_inputs,
        "--train-iters",
        "1",
        "--copy-importance",
        "own",
        "--save",
        str(save),
        load=runs["fpi"],
    )
    run_torchrun(PRETRAIN, 1, args)
    data = json.loads((save / "adept_state.json").read_text())
    assert data["copy_importance"] == "own" and data["source_scored"] == []
    assert {u["multiplier"] for u in data["units"]} == {1.0}
    assert {u["importance"] for u in data["units"]} == {0.0}


def test_source_rule_across_a_pipeline_boundary_at_tp2_pp2(train_inputs, runs):
    """Copy 3 is the first layer of stage 1 and the lowest copy; its source is on stage 0."""
    save = runs["root"] / "tp2pp2"
    args = pretrain_args(
        train_inputs,
        "--train-iters",
        "1",
        "--save",
        str(save),
        "--tensor-model-parallel-size",
        "2",
        "--pipeline-model-parallel-size",
        "2",
        load=runs["fpi"],
    )
    run_torchrun(PRETRAIN, 4, args, timeout=400)
    got = json.loads((save / "adept_state.json").read_text())
    want = json.loads((runs["root"] / "tp1" / "adept_state.json").read_text())
    assert got["source_scored"] == [[3, 2], [5, 4]]
    pairs = zip(got["units"], want["units"], strict=True)
    for a, b in pairs:
        assert (a["layer"], a["unit"]) == (b["layer"], b["unit"])
        assert abs(a["multiplier"] - b["multiplier"]) <= 1e-5, a
        assert abs(a["importance"] - b["importance"]) <= 1e-5 * b["importance"], a
