"""Stage 2 across layouts and restarts: the same multipliers, the same losses."""

import json
import re
import shutil

from torchrun_harness import run_torchrun
from train_fixtures import PRETRAIN, pretrain_args

LOSS = re.compile(r"iteration (\d+) \| loss ([0-9.]+)")


def losses(stdout: str) -> dict[int, str]:
    return {int(i): value for i, value in LOSS.findall(stdout)}


def units(path) -> dict[tuple[int, str], dict]:
    data = json.loads(path.read_text())
    return {(u["layer"], u["unit"]): u for u in data["units"]}


def test_multipliers_equal_at_tp2_pp2_dp2_and_tp1(train_inputs, tmp_path):
    one, eight = tmp_path / "tp1", tmp_path / "tp2pp2dp2"
    run_torchrun(PRETRAIN, 1, pretrain_args(train_inputs, "--train-iters", "1", "--save", str(one)))
    run_torchrun(
        PRETRAIN,
        8,
        pretrain_args(
            train_inputs,
            "--train-iters",
            "1",
            "--save",
            str(eight),
            "--tensor-model-parallel-size",
            "2",
            "--pipeline-model-parallel-size",
            "2",
            "--use-distributed-optimizer",
        ),
        timeout=500,
    )
    reference, distributed = units(one / "adept_state.json"), units(eight / "adept_state.json")
    assert len(reference) == 18 and reference.keys() == distributed.keys()
    assert {round(u["multiplier"], 6) for u in reference.values()} >= {0.0, 2.0}
    for key, want in reference.items():
        got = distributed[key]
        assert abs(got["multiplier"] - want["multiplier"]) <= 1e-5, key
        assert abs(got["importance"] - want["importance"]) <= 1e-5 * abs(want["importance"]), key


def test_resume_continues_exactly_and_at_another_layout(train_inputs, tmp_path):
    common = (
        "--train-iters",
        "4",
        "--save-interval",
        "2",
        "--importance-interval",
        "3",
        "--adept-lr-floor",
        "0.2",
    )
    straight = tmp_path / "straight"
    out = run_torchrun(PRETRAIN, 1, pretrain_args(train_inputs, *common, "--save", str(straight)))
    expected = losses(out.stdout)
    assert sorted(expected) == [1, 2, 3, 4]

    # the same run, stopped after its iteration-2 checkpoint and resumed from it
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "iter_0000002", resumed / "iter_0000002")
    (resumed / "latest_checkpointed_iteration.txt").write_text("2\n")
    out = run_torchrun(
        PRETRAIN,
        1,
        pretrain_args(train_inputs, *common, "--load", str(resumed), "--save", str(resumed)),
    )
    got = losses(out.stdout)
    assert sorted(got) == [3, 4]
    assert all(got[i] == expected[i] for i in (3, 4)), (got, expected)
    assert units(resumed / "iter_0000004" / "adept_state.json") == units(
        straight / "iter_0000004" / "adept_state.json"
    )
    saved = json.loads((straight / "iter_0000004" / "training_state.json").read_text())
    again = json.loads((resumed / "iter_0000004" / "training_state.json").read_text())
    assert saved == again  # iteration, consumed samples and the lr schedule

    # resumed at TP=2 from the same checkpoint: the loaded multipliers drive step 3
    other = tmp_path / "tp2"
    other.mkdir()
    shutil.copytree(straight / "iter_0000002", other / "iter_0000002")
    (other / "latest_checkpointed_iteration.txt").write_text("2\n")
    out = run_torchrun(
        PRETRAIN,
        2,
        pretrain_args(
            train_inputs,
            *common,
            "--load",
            str(other),
            "--save",
            str(other),
            "--tensor-model-parallel-size",
            "2",
        ),
    )
    got = losses(out.stdout)
    assert abs(float(got[3]) - float(expected[3])) <= 1e-5
    want = units(straight / "iter_0000004" / "adept_state.json")
    for key, unit in units(other / "iter_0000004" / "adept_state.json").items():
        assert abs(unit["multiplier"] - want[key]["multiplier"]) <= 1e-5, key
