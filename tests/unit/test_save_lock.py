"""The ``--save`` lock: one live holder, named to the next comer, gone with its holder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from torchrun_harness import REPO, _env

from megatron_adept.errors import CheckpointError
from megatron_adept.training.save_dir import check_resume
from megatron_adept.training.save_lock import LOCK_FILE, check_save_unlocked, hold_save_dir


@pytest.fixture(autouse=True)
def rank_zero(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)


def test_a_held_save_refuses_others_by_name_until_released(tmp_path):
    save = str(tmp_path / "run")
    check_save_unlocked(save)  # nothing there yet: nothing to refuse, nothing written
    assert not (tmp_path / "run").exists()
    with hold_save_dir(save):
        holder = f"pid {os.getpid()} on host {socket.gethostname()}, since "
        for attempt in (lambda: check_save_unlocked(save), lambda: hold_save_dir(save).__enter__()):
            with pytest.raises(CheckpointError, match="in use by another run") as refused:
                attempt()
            assert holder in str(refused.value) and "torchrun" not in str(refused.value)
    check_save_unlocked(save)
    with hold_save_dir(save):
        pass


def test_other_ranks_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with hold_save_dir(str(tmp_path / "run")):
        assert not (tmp_path / "run").exists()


def test_a_stale_or_foreign_lock_file_blocks_nothing(tmp_path):
    save = tmp_path / "run"
    save.mkdir()
    (save / LOCK_FILE).write_text("not json\n")
    check_save_unlocked(str(save))
    check_resume(str(tmp_path / "ckpt"), str(save), "adept")  # no checkpoint: a fresh start
    with hold_save_dir(str(save)):
        assert json.loads((save / LOCK_FILE).read_text())["pid"] == os.getpid()


_HOLD_FORK_DIE = """
import os, signal, sys, time
from megatron_adept.training.save_lock import hold_save_dir
with hold_save_dir(sys.argv[1]):
    started, report = os.pipe()
    child = os.fork()
    if child == 0:  # like megatron's checkpoint writer processes
        os.write(report, b"x")  # its fork hooks have run
        time.sleep(60)
        os._exit(0)
    os.read(started, 1)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_lock_dies_with_its_holder_not_with_its_forked_children(tmp_path):
    save = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_FORK_DIE, save],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(None),
        cwd=REPO,
    )
    child = psutil.Process(int(holder.stdout.readline()))  # the pipe stays open in the child
    try:
        assert holder.wait(timeout=30) == -signal.SIGKILL
        assert child.is_running()
        check_save_unlocked(save)  # the killed holder's orphan keeps no copy of the lock
    finally:
        child.kill()
        holder.stdout.close()
