"""The authors' importance estimator and App. F.3's affine lr rule in a TP=2 x DP=2 run,
against a hand computation at TP=1."""

import json

from torchrun_harness import run_torchrun
from train_fixtures import PRETRAIN, pretrain_args

FLOOR = "0.3"


def test_authors_estimator_and_affine_rule_at_tp2_dp2_equal_tp1_by_hand(train_inputs, tmp_path):
    save = tmp_path / "run"
    args = pretrain_args(
        train_inputs,
        "--train-iters",
        "1",
        "--unit-importance",
        "authors",
        "--unit-lr-rule",
        "affine-optimal",
        "--adept-lr-floor",
        FLOOR,
        "--tensor-model-parallel-size",
        "2",
        "--save",
        str(save),
    )
    run_torchrun(PRETRAIN, 4, args, timeout=400)
    result_path = tmp_path / "reference.json"
    run_torchrun(
        "rules_reference.py",
        1,
        [str(train_inputs.expanded), str(save), str(train_inputs.probe), FLOOR, str(result_path)],
    )
    result = json.loads(result_path.read_text())
    assert result["options"] == ["authors", "affine-optimal", "source"]
    assert result["units"] == 18
    assert result["importance_rel_diff"] <= 1e-5
    assert result["multiplier_diff"] <= 1e-5
    assert abs(result["weighted_mean"] - 1.0) <= 1e-6
    assert result["at_floor"] >= 1  # the floor bites, and the mean is restored
    low, high = result["multiplier_range"]
    assert low == float(FLOOR) and high > 1.0  # lr moves from the important units to the rest
