"""Workflow pieces of the real-model example and the replications (no model involved)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from megatron_adept.workflow.real_model import subsample
from megatron_adept.workflow.replication import StoredRuns, run_name
from megatron_adept.workflow.stages import WorkflowError


def test_subsample_is_evenly_spaced_and_keeps_short_files(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(10)))
    picked = subsample(src, tmp_path / "four.jsonl", 4).read_text().splitlines()
    assert [json.loads(line)["i"] for line in picked] == [0, 2, 5, 7]  # i * 10 // 4
    assert subsample(src, tmp_path / "all.jsonl", None).read_text() == src.read_text()
    assert subsample(src, tmp_path / "more.jsonl", 50).read_text() == src.read_text()


def test_run_names_are_file_names():
    assert run_name("w/o Stage-1", 2) == "wo_Stage-1-seed2"
    assert run_name("PT-Full lr=2e-05", None) == "PT-Full_lr-2e-05"


@dataclass(frozen=True)
class _Settings:
    iters: int


def test_stored_result_under_other_settings_is_refused(tmp_path):
    runs = StoredRuns(tmp_path)
    assert runs.cached("ADEPT", 1, _Settings(4)) is None
    runs.store("ADEPT", 1, {"settings": {"iters": 4}, "seconds": 1.0})
    assert runs.cached("ADEPT", 1, _Settings(4))["seconds"] == 1.0
    with pytest.raises(WorkflowError, match="use another --out"):
        runs.cached("ADEPT", 1, _Settings(8))


def test_step_cost_of_a_short_run_is_its_fastest_step(tmp_path):
    from megatron_adept.training.metrics import METRICS_FILE
    from megatron_adept.workflow.replication import training_cost

    steps = [{"seconds": s} for s in (20.0, 9.0, 5.0, 14.0)]
    (tmp_path / METRICS_FILE).write_text(json.dumps({"trainable_params": 25, "steps": steps}))
    assert training_cost(tmp_path, 100) == {"trainable_pct": 25.0, "step_seconds": 5.0}
