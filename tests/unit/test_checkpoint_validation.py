"""Checkpoints are checked on load: damaged files are named, mismatched runs refused.

Every case fails before any process group exists, so the tools run in this process.
"""

import json
import shutil

import pytest
from hf_fixtures import run_tool_inprocess
from test_convert_errors import assert_one_line_error
from torchrun_harness import REPO
from train_fixtures import PRETRAIN, pretrain_args

from megatron_adept.checkpoint.manifest import MANIFEST_FILE
from megatron_adept.training.checkpointing import TRACKER_FILE, TRAINING_STATE_FILE


@pytest.fixture
def run(monkeypatch, capsys):
    def run(script, *args):
        return run_tool_inprocess(str(script), [str(a) for a in args], monkeypatch, capsys)

    return run


def damaged_copy(source, tmp_path, damage):
    """A copy of checkpoint ``source`` with ``damage(directory)`` applied; returns the copy."""
    copy = tmp_path / "ckpt"
    shutil.copytree(source, copy)
    damage(copy)
    return copy


def truncate(directory):
    path = directory / "__0_0.distcp"
    path.write_bytes(path.read_bytes()[:-100])


def flip_byte(directory):
    path = directory / "__0_1.distcp"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (truncate, ["__0_0.distcp", "truncated"]),
        (lambda d: (d / MANIFEST_FILE).unlink(), ["no manifest.json", "incomplete"]),
        (lambda d: (d / "common.pt").unlink(), ["common.pt", "missing"]),
    ],
)
def test_training_refuses_a_damaged_checkpoint(train_inputs, tmp_path, run, damage, fragments):
    ckpt = damaged_copy(train_inputs.expanded, tmp_path, damage)
    save = tmp_path / "run"
    result = run(
        PRETRAIN,
        *pretrain_args(train_inputs, "--train-iters", "1", "--save", str(save), load=ckpt),
    )
    assert_one_line_error(result, str(ckpt), *fragments)
    assert not save.exists()


def test_checksum_mismatch_is_named_by_a_tool(train_inputs, tmp_path, run):
    ckpt = damaged_copy(train_inputs.expanded, tmp_path, flip_byte)
    out = tmp_path / "hf"
    result = run(REPO / "tools" / "convert_hf.py", "--to-hf", "--load", ckpt, "--out", out)
    assert_one_line_error(result, str(ckpt / "__0_1.distcp"), "checksum")
    assert not out.exists() and not list(tmp_path.glob(".hf*"))


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--num-layers", "7"], ["--num-layers=7 but the checkpoint has 6"]),
        (
            ["--expanded-layers", "0", "2", "--hidden-size", "64"],
            ["--expanded-layers=0,2 but the checkpoint has 1,3"],
        ),
    ],
)
def test_flags_that_contradict_the_checkpoint(train_inputs, tmp_path, run, flags, fragments):
    save = tmp_path / "run"
    args = pretrain_args(train_inputs, "--train-iters", "1", "--save", str(save), *flags)
    assert_one_line_error(run(PRETRAIN, *args), str(train_inputs.expanded), *fragments)
    assert not save.exists()


def test_resume_with_another_mode_is_refused(train_inputs, tmp_path, run):
    save = tmp_path / "run"
    shutil.copytree(train_inputs.expanded, save / "iter_0000003")
    (save / "iter_0000003" / TRAINING_STATE_FILE).write_text(
        json.dumps({"iteration": 3, "consumed_samples": 12, "scheduler": {}, "mode": "pt-full"})
    )
    (save / TRACKER_FILE).write_text("3\n")
    args = pretrain_args(train_inputs, "--train-iters", "5", "--save", str(save), load=save)
    assert_one_line_error(run(PRETRAIN, *args), "--mode adept", "--mode pt-full")


def test_fresh_start_into_another_runs_save_is_refused(train_inputs, tmp_path, run):
    save = tmp_path / "run"
    save.mkdir()
    (save / TRACKER_FILE).write_text("3\n")
    args = pretrain_args(train_inputs, "--train-iters", "1", "--save", str(save))
    assert_one_line_error(run(PRETRAIN, *args), str(save), "already holds a run (iteration 3)")
