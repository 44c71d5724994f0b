"""A torchrun worker, and what it started, die with its launcher; a plain run does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import suppress

import psutil
import pytest
from torchrun_harness import REPO, _env

_LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)  # as torchrun
time.sleep(120)
"""

_WORKER = """
import os, subprocess, time
from megatron_adept.parallel.launcher import exit_with_launcher
with exit_with_launcher(poll_seconds=0.1):
    helper = subprocess.Popen(["sleep", "120"])
    print(os.getpid(), helper.pid, flush=True)
    time.sleep(120)
"""


def alive(processes: list[psutil.Process]) -> list[int]:
    """Pids still running (a zombie is dead; init here may never reap it)."""
    running = []
    for p in processes:
        with suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                running.append(p.pid)
    return running


@pytest.mark.parametrize("torchrun", [True, False], ids=["torchrun", "plain"])
def test_worker_and_its_helpers_die_with_the_launcher(torchrun):
    env = _env({"TORCHELASTIC_RUN_ID": "test"} if torchrun else None)
    if not torchrun:
        env.pop("TORCHELASTIC_RUN_ID", None)
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, _WORKER],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    worker_pid, helper_pid = map(int, launcher.stdout.readline().split())
    processes = [psutil.Process(worker_pid), psutil.Process(helper_pid)]
    try:
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + (5 if torchrun else 1.5)
        while time.monotonic() < deadline and alive(processes):
            time.sleep(0.05)
        assert alive(processes) == ([] if torchrun else [worker_pid, helper_pid])
    finally:
        with suppress(ProcessLookupError):
            os.killpg(worker_pid, signal.SIGKILL)
        launcher.stdout.close()
