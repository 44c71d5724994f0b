"""Save and resume across layouts, optimizers and modes, including ranks with nothing to train.

Each case trains 4 iterations saving at 2, then resumes a copy of the iteration-2 checkpoint:
iterations 3 and 4 must repeat the uninterrupted run exactly (loss, lr, unit multipliers,
schedule), with an importance refresh after the resume (``--importance-interval 3``). The
``TOP`` checkpoint has copies only in its upper half, so at PP=2 the first stage (and each of
its data-parallel shards of the distributed optimizer) owns no trainable parameter.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from torchrun_harness import run_torchrun
from train_fixtures import PRETRAIN, TrainInputs, pretrain_args

STEP = re.compile(r"iteration (\d+) \| loss ([0-9.]+) \| lr ([0-9.e+-]+)")
DISTOPT = "--use-distributed-optimizer"


@dataclass(frozen=True)
class Case:
    nproc: int
    mode: str
    checkpoint: str
    """``expanded``, ``plain`` or ``top`` (see ``train_fixtures``)."""
    flags: tuple[str, ...] = ()
    selected: tuple[int, ...] = ()
    """The layers no-stage1 trains."""


CASES = {
    "one-process-adept-distopt": Case(1, "adept", "expanded", (DISTOPT,)),
    "tp2-no-stage1": Case(2, "no-stage1", "plain", ("--tensor-model-parallel-size", "2"), (1, 3)),
    "dp2-pt-full-distopt": Case(2, "pt-full", "expanded", (DISTOPT,)),
    "frozen-stage-pp2-adept": Case(2, "adept", "top", ("--pipeline-model-parallel-size", "2")),
    "frozen-stage-tp2pp2-adept-distopt": Case(
        4,
        "adept",
        "top",
        ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", DISTOPT),
    ),
    "frozen-stage-pp2dp2-no-stage1-distopt": Case(
        4, "no-stage1", "top", ("--pipeline-model-parallel-size", "2", DISTOPT), (5, 6)
    ),
}


def steps(stdout: str) -> dict[int, tuple[str, str]]:
    return {int(i): (loss, lr) for i, loss, lr in STEP.findall(stdout)}


def units(directory: Path) -> dict[tuple[int, str], dict]:
    data = json.loads((directory / "adept_state.json").read_text())
    return {(u["layer"], u["unit"]): u for u in data["units"]}


def case_args(
    inputs: TrainInputs, case: Case, tmp_path: Path, load: Path, save: Path, flags: tuple[str, ...]
) -> list[str]:
    """The case's run from ``load`` into ``save`` at layout ``flags``."""
    extra = ["--mode", case.mode, "--train-iters", "4", "--save-interval", "2", "--save", str(save)]
    extra += ["--importance-interval", "3", *flags]
    if case.selected:
        importance = tmp_path / "importance.json"
        scores = [1.0] * (8 if case.checkpoint == "top" else 4)
        importance.write_text(json.dumps({"layer_scores": scores, "selected": case.selected}))
        extra += ["--importance", str(importance)]
    return pretrain_args(inputs, *extra, load=load)


def resume_dir(straight: Path, target: Path) -> Path:
    """A ``--save`` holding only the iteration-2 checkpoint of ``straight``."""
    target.mkdir()
    shutil.copytree(straight / "iter_0000002", target / "iter_0000002")
    (target / "latest_checkpointed_iteration.txt").write_text("2\n")
    return target


@pytest.mark.parametrize("name", list(CASES))
def test_resume_continues_exactly(train_inputs, tmp_path, name):
    case = CASES[name]
    straight = tmp_path / "straight"
    start = getattr(train_inputs, case.checkpoint)
    args = case_args(train_inputs, case, tmp_path, start, straight, case.flags)
    expected = steps(run_torchrun(PRETRAIN, case.nproc, args, timeout=400).stdout)
    assert sorted(expected) == [1, 2, 3, 4]

    resumed = resume_dir(straight, tmp_path / "resumed")
    args = case_args(train_inputs, case, tmp_path, resumed, resumed, case.flags)
    out = run_torchrun(PRETRAIN, case.nproc, args, timeout=400).stdout
    assert "resumed from" in out
    got = steps(out)
    assert got == {i: expected[i] for i in (3, 4)}, (got, expected)
    saved, again = (
        json.loads((run / "iter_0000004" / "training_state.json").read_text())
        for run in (straight, resumed)
    )
    assert saved == again  # iteration, consumed samples, lr schedule, Adam step
    if case.mode != "pt-full":
        assert units(resumed / "iter_0000004") == units(straight / "iter_0000004")

    if name == "frozen-stage-tp2pp2-adept-distopt":
        # the same checkpoint resumed by one process: the optimizer state reshards
        other = resume_dir(straight, tmp_path / "one-process")
        args = case_args(train_inputs, case, tmp_path, other, other, (DISTOPT,))
        got = steps(run_torchrun(PRETRAIN, 1, args).stdout)
        for i in (3, 4):
            assert abs(float(got[i][0]) - float(expected[i][0])) <= 1e-5, (i, got, expected)
            assert got[i][1] == expected[i][1]
        want = units(straight / "iter_0000004")
        for key, unit in units(other / "iter_0000004").items():
            assert abs(unit["multiplier"] - want[key]["multiplier"]) <= 1e-5, key
