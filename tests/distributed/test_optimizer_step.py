"""One DistributedOptimizer step at TP=2xPP=2xDP=2 equals the same step at TP=1xDP=1."""

import json

from torchrun_harness import run_torchrun


def test_distributed_optimizer_step_matches_single_process(tmp_path):
    run_torchrun(
        "optimizer_step.py",
        1,
        ["tiny-llama", str(tmp_path), "1", "1", "0", str(tmp_path / "ref.json")],
    )
    run_torchrun(
        "optimizer_step.py",
        8,
        ["tiny-llama", str(tmp_path), "2", "2", "1", str(tmp_path / "dist.json")],
        timeout=400,
    )
    reference = json.loads((tmp_path / "ref.json").read_text())
    distributed = json.loads((tmp_path / "dist.json").read_text())
    assert abs(distributed["loss"] - reference["loss"]) <= 1e-5
    assert abs(distributed["grad_norm"] - reference["grad_norm"]) <= 1e-5 * reference["grad_norm"]
    assert distributed["max_update"] > 1e-3  # the step really moved the weights
    assert distributed["max_abs_diff"] <= 1e-6
