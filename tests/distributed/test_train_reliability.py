"""Stage 2 under faults: preemption signals, a kill during a save, NaN steps, rotation."""

import signal
import subprocess
import sys

import psutil
import torch
from test_train_resume import losses
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torchrun_harness import REPO, _env, run_command, run_torchrun
from train_fixtures import PRETRAIN, pretrain_args

from megatron_adept.training.checkpointing import TRACKER_FILE


def tracker(save) -> int:
    return int((save / TRACKER_FILE).read_text())


def checkpoint_tensors(directory, scratch) -> dict:
    """Every tensor of a training checkpoint (model and optimizer) plus the Adam step."""
    out = scratch / f"{directory.name}.pt"
    dcp_to_torch_save(directory, out)
    tensors = torch.load(out, weights_only=False)
    common = torch.load(directory / "common.pt", weights_only=False)
    tensors["adam_step"] = common["optimizer"]["state"]["common_step"]
    return tensors


def test_sigterm_saves_exits_zero_and_resume_matches_uninterrupted(train_inputs, tmp_path):
    common = ("--train-iters", "24")
    reference = losses(run_torchrun(PRETRAIN, 2, pretrain_args(train_inputs, *common)).stdout)
    assert sorted(reference) == list(range(1, 25))

    save = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    args = pretrain_args(train_inputs, *common, "--save", str(save), "--save-interval", "100")
    launcher = subprocess.Popen(
        [*cmd, str(PRETRAIN), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(None),
        cwd=REPO,
    )
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "iteration 3 |" in line:
            # one worker only: the ranks must still agree on where to stop
            workers = [
                p
                for p in psutil.Process(launcher.pid).children(recursive=True)
                if str(PRETRAIN) in p.cmdline()
            ]
            assert len(workers) == 2
            workers[-1].send_signal(signal.SIGTERM)
            break
    lines += launcher.stdout.readlines()
    assert launcher.wait(timeout=120) == 0, "".join(lines[-30:])
    output = "".join(lines)
    stopped = tracker(save)
    assert 3 <= stopped < 24, output
    assert f"exiting at iteration {stopped}: received SIGTERM" in output
    assert sorted(losses(output)) == list(range(1, stopped + 1))

    resumed = run_torchrun(
        PRETRAIN, 2, pretrain_args(train_inputs, *common, "--load", str(save), "--save", str(save))
    )
    got = losses(resumed.stdout)
    assert sorted(got) == list(range(stopped + 1, 25))
    assert all(got[i] == reference[i] for i in got), (got, reference)


def test_kill_during_save_resumes_from_previous_checkpoint(train_inputs, tmp_path):
    save = tmp_path / "run"
    args = pretrain_args(
        train_inputs, "--train-iters", "6", "--save", str(save), "--save-interval", "2"
    )
    reference = losses(
        run_torchrun(PRETRAIN, 1, pretrain_args(train_inputs, "--train-iters", "6")).stdout
    )

    killed = run_torchrun(PRETRAIN, 1, [*args, "--kill-during-save-at", "4"], check=False)
    assert killed.returncode != 0
    assert tracker(save) == 2
    assert not (save / "iter_0000004").exists()
    assert (save / ".iter_0000004.tmp").is_dir()  # the half-written save

    resumed = run_torchrun(PRETRAIN, 1, [*args, "--load", str(save)])
    assert "at iteration 2" in resumed.stdout
    got = losses(resumed.stdout)
    assert sorted(got) == [3, 4, 5, 6]
    assert all(got[i] == reference[i] for i in got)
    assert tracker(save) == 6
    assert not list(save.glob(".iter_*.tmp"))


def test_nan_step_is_skipped_without_changing_state(train_inputs, tmp_path):
    save = tmp_path / "run"
    args = pretrain_args(
        train_inputs, "--train-iters", "5", "--save", str(save), "--save-interval", "1"
    )
    out = run_torchrun(PRETRAIN, 1, [*args, "--inject-nan-at", "3"]).stdout
    assert "iteration 3 skipped: loss nan" in out
    assert sorted(losses(out)) == [1, 2, 4, 5]  # finite losses go on after the skip

    before, skipped, after = (
        checkpoint_tensors(save / f"iter_000000{i}", tmp_path) for i in (2, 3, 4)
    )
    assert before.keys() == skipped.keys()
    assert any(key.startswith("optimizer.") for key in before)
    for key, value in before.items():
        assert torch.equal(value, skipped[key]), key
    # the copy's projections train on (its layer norms may have multiplier 0)
    trainable = [k for k in before if k.startswith("decoder.layers.2.") and "linear" in k]
    trainable = [k for k in trainable if "layer_norm" not in k]
    assert len(trainable) == 4 and all(not torch.equal(before[k], after[k]) for k in trainable)


def test_consecutive_nan_steps_stop_with_last_good_state(train_inputs, tmp_path):
    save = tmp_path / "run"
    args = pretrain_args(
        train_inputs, "--train-iters", "8", "--save", str(save), "--save-interval", "2"
    )
    faults = ["--inject-nan-at", "3", "4", "--max-skipped-steps", "2"]
    result = run_command([sys.executable, str(PRETRAIN), *args, *faults], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 consecutive steps")
    assert "--max-skipped-steps=2" in result.stderr and "Traceback" not in result.stderr
    assert tracker(save) == 4
    good = checkpoint_tensors(save / "iter_0000002", tmp_path)
    stopped = checkpoint_tensors(save / "iter_0000004", tmp_path)
    assert good.keys() == stopped.keys()
    for key, value in good.items():
        assert torch.equal(value, stopped[key]), key


def test_keep_last_never_deletes_the_resumed_checkpoint(train_inputs, tmp_path):
    save = tmp_path / "run"
    first = pretrain_args(
        train_inputs, "--train-iters", "2", "--save", str(save), "--save-interval", "1"
    )
    run_torchrun(PRETRAIN, 1, first)
    run_torchrun(
        PRETRAIN,
        1,
        pretrain_args(
            train_inputs,
            "--train-iters",
            "5",
            "--load",
            str(save),
            "--save",
            str(save),
            "--save-interval",
            "1",
            "--keep-last",
            "2",
        ),
    )
    assert sorted(p.name for p in save.glob("iter_*")) == [
        "iter_0000002",
        "iter_0000004",
        "iter_0000005",
    ]


def test_exit_interval_and_duration_stop_with_a_checkpoint(train_inputs, tmp_path):
    for name, flags, stop in (
        ("interval", ["--exit-interval", "3"], 3),
        ("duration", ["--exit-duration-in-mins", "0.001"], 1),
    ):
        save = tmp_path / name
        args = pretrain_args(train_inputs, "--train-iters", "10", "--save", str(save), *flags)
        out = run_command([sys.executable, str(PRETRAIN), *args]).stdout
        assert f"exiting at iteration {stop}: {flags[0]}={flags[1]} reached" in out
        assert tracker(save) == stop
        assert sorted(p.name for p in save.glob("iter_*")) == [f"iter_{stop:07d}"]
