"""One writer per ``--save``: workers die with their launcher, a live run's lock refuses others.

Each test starts a real ``torchrun`` job that saves every step and is still training when it
is disturbed (``--train-iters`` far beyond what runs), so what is checked is what a user
would see after ``kill -9``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil
from torchrun_harness import REPO, _env, run_command, run_torchrun
from train_fixtures import PRETRAIN, TrainInputs, pretrain_args

from megatron_adept.checkpoint.resolve import latest_iteration
from megatron_adept.training.save_lock import LOCK_FILE

TRAIN_ITERS = ("--train-iters", "1000", "--save-interval", "1")
"""Far more steps than a test waits for: the run is always mid-training when disturbed."""


def start_run(inputs: TrainInputs, save: Path, nproc: int, log: Path) -> subprocess.Popen:
    """A torchrun job in a session of its own (so killing the test's group spares it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    args = pretrain_args(inputs, *TRAIN_ITERS, "--save", str(save))
    with log.open("w") as out:
        return subprocess.Popen(
            [*cmd, f"--nproc-per-node={nproc}", str(PRETRAIN), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(None),
            cwd=REPO,
            start_new_session=True,
        )


def wait_for_save(launcher: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until the job has published its first checkpoint (the log goes to a file, not a pipe,
    so workers whose launcher is gone never block on a full pipe)."""
    deadline = time.monotonic() + timeout
    while "saved iteration 1 " not in log.read_text():
        assert launcher.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def workers_of(launcher: subprocess.Popen, nproc: int) -> list[psutil.Process]:
    workers = [p for p in psutil.Process(launcher.pid).children() if str(PRETRAIN) in p.cmdline()]
    assert len(workers) == nproc
    return workers


def alive(processes: list[psutil.Process]) -> list[int]:
    """Pids still running (a zombie is dead: it only awaits its parent's wait)."""
    running = []
    for p in processes:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                running.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[int]:
    """Pids still alive after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(processes)


def kill_all(processes: list[psutil.Process]) -> None:
    for p in processes:
        with suppress(psutil.NoSuchProcess):
            p.kill()


def stop_job(launcher: subprocess.Popen, workers: list[psutil.Process]) -> None:
    """Whatever a test left running: the launcher and each worker's process group (torchrun
    makes every worker a group leader; its forked checkpoint writers share the group)."""
    for pid in [launcher.pid, *(w.pid for w in workers)]:
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    launcher.wait()


def resume_briefly(inputs: TrainInputs, save: Path) -> str:
    """One more step from ``save``'s newest checkpoint (raises if it fails to load)."""
    done = latest_iteration(save)
    args = ["--train-iters", str(done + 1), "--save", str(save)]
    out = run_torchrun(PRETRAIN, 1, pretrain_args(inputs, *args, load=save)).stdout
    assert f"at iteration {done}" in out, out[-2000:]
    assert latest_iteration(save) == done + 1
    return out


def test_killing_only_the_launcher_stops_every_worker(train_inputs, tmp_path):
    save, log = tmp_path / "run", tmp_path / "run.log"
    launcher = start_run(train_inputs, save, 2, log)
    workers: list[psutil.Process] = []
    try:
        wait_for_save(launcher, log)
        workers = workers_of(launcher, 2)
        # megatron's checkpoint helpers (Manager, resource tracker) belong to the run too
        helpers = [c for w in workers for c in w.children(recursive=True)]
        launcher.kill()
        launcher.wait()
        killed = time.monotonic()
        survivors = wait_gone(workers, 30)
        assert not survivors, f"workers {survivors} still run 30 s after their launcher died"
        assert not wait_gone(helpers, 5), "helpers of the workers survived"
        assert time.monotonic() - killed < 10
    finally:
        stop_job(launcher, workers)
    resume_briefly(train_inputs, save)  # the newest checkpoint loads; the stale lock is free


def test_a_live_run_holds_its_save_and_a_killed_one_does_not(train_inputs, tmp_path):
    save, log = tmp_path / "run", tmp_path / "run.log"
    launcher = start_run(train_inputs, save, 1, log)
    workers: list[psutil.Process] = []
    try:
        wait_for_save(launcher, log)
        workers = workers_of(launcher, 1)
        rank0 = workers[0]
        start = time.monotonic()
        second = run_command(
            [
                sys.executable,
                str(PRETRAIN),
                *pretrain_args(train_inputs, *TRAIN_ITERS, "--save", str(save)),
            ],
            check=False,
        )
        elapsed = time.monotonic() - start
        assert second.returncode == 2, second.stderr[-3000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr[-3000:]
        holder = f"pid {rank0.pid} on host {socket.gethostname()}, torchrun pid {launcher.pid}"
        assert str(save) in lines[0] and holder in lines[0], lines[0]
        assert elapsed < 10, f"refused only after {elapsed:.1f}s"

        # the whole run, by pid, as the OOM killer or `kill -9` would take it (a writer forked
        # after the listing may survive as an orphan; it must not keep the lock either)
        run = [psutil.Process(launcher.pid), rank0, *rank0.children(recursive=True)]
        kill_all(run)
        assert not wait_gone(run, 10)
    finally:
        stop_job(launcher, workers)
    stale = json.loads((save / LOCK_FILE).read_text())
    assert stale["pid"] == rank0.pid  # the file stays; only its lock died with the run
    resume_briefly(train_inputs, save)
    assert json.loads((save / LOCK_FILE).read_text())["pid"] != rank0.pid
