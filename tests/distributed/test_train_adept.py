"""pretrain_adept.py against independent references: one adept step, frozen tensors, pt-full."""

import json

from hf_fixtures import CONVERT, tool
from torchrun_harness import run_torchrun
from train_fixtures import PRETRAIN, pretrain_args


def test_adept_step_equals_adamw_with_one_group_per_unit(train_inputs, tmp_path):
    """TP=2 x DP=2 DistributedOptimizer step vs torch AdamW, one group per unit at lr*m."""
    save = tmp_path / "run"
    run_torchrun(
        PRETRAIN,
        4,
        pretrain_args(
            train_inputs,
            "--tensor-model-parallel-size",
            "2",
            "--use-distributed-optimizer",
            "--train-iters",
            "1",
            "--save",
            str(save),
        ),
        timeout=400,
    )
    result_path = tmp_path / "reference.json"
    run_torchrun(
        "train_reference.py",
        1,
        [
            str(train_inputs.expanded),
            str(save),
            str(train_inputs.data),
            str(train_inputs.probe),
            "1e-2",
            "0.1",
            "1.0",
            str(result_path),
        ],
    )
    result = json.loads(result_path.read_text())
    assert result["units"] == 18 and result["units_in_state"] == [18, 18]
    assert result["multiplier_range"] == [0.0, 2.0]  # the rule really reallocates
    assert result["grad_norm"] > 1.0  # clipping is part of the compared step
    assert result["multiplier_diff"] <= 1e-5
    assert result["max_update"] > 1e-3
    assert result["update_diff"] <= 1e-6
    assert result["frozen_diff"] == 0.0


def _diffs(a, b, out):
    run_torchrun("train_diff.py", 1, [str(a), str(b), str(out)])
    return json.loads(out.read_text())


def test_adept_keeps_frozen_tensors_bit_identical_with_a_frozen_pipeline_stage(
    train_inputs, tmp_path
):
    """PP=3: stage 0 (layers 0-1, embeddings) is frozen and below every copy (2 and 5)."""
    save = tmp_path / "run"
    run_torchrun(
        PRETRAIN,
        3,
        pretrain_args(
            train_inputs,
            "--pipeline-model-parallel-size",
            "3",
            "--train-iters",
            "2",
            "--adept-lr-floor",  # with floor 0 the most important unit would not move at all
            "0.2",
            "--save",
            str(save),
        ),
        timeout=400,
    )
    diffs = _diffs(train_inputs.expanded, save / "iter_0000002", tmp_path / "diff.json")
    trained = [n for n in diffs if n.startswith(("decoder.layers.2.", "decoder.layers.5."))]
    frozen = [n for n in diffs if n not in trained]
    assert len(trained) == 2 * 6 and len(frozen) > 20
    assert all(diffs[n] == 0.0 for n in frozen), {n: diffs[n] for n in frozen if diffs[n]}
    assert all(diffs[n] > 1e-4 for n in trained), {n: diffs[n] for n in trained}


def test_pt_full_changes_every_tensor(train_inputs, tmp_path):
    save = tmp_path / "run"
    run_torchrun(
        PRETRAIN,
        1,
        pretrain_args(train_inputs, "--mode", "pt-full", "--train-iters", "1", "--save", str(save)),
    )
    diffs = _diffs(train_inputs.expanded, save / "iter_0000001", tmp_path / "diff.json")
    assert all(value > 0.0 for value in diffs.values()), diffs

    # every --load accepts the --save directory itself and reads its latest checkpoint
    for name, load in (("latest", save), ("explicit", save / "iter_0000001")):
        tool(CONVERT, "--to-hf", "--load", str(load), "--out", str(tmp_path / name))
    exported = sorted(p.name for p in (tmp_path / "explicit").iterdir())
    assert "model.safetensors" in exported
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == exported
    for name in exported:
        assert (tmp_path / "latest" / name).read_bytes() == (
            tmp_path / "explicit" / name
        ).read_bytes(), name
