"""A torchrun worker stops when its launcher dies, together with every process it started.

torchrun starts each worker in a session of its own (``start_new_session=True``), so that it
can kill a worker's whole process group when the job ends or fails. When the launcher itself
dies without that cleanup (``kill -9``, the OOM killer, a lost node agent), nothing tells the
workers: they keep training and saving into ``--save``, and a restarted job then writes the
same directory at the same time. This module closes that gap; it is light to import (no
torch), so a worker installs it before anything else.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil

POLL_SECONDS = 0.5
"""How often a worker looks for its launcher: the most a dead launcher's workers run on."""


def under_torchrun() -> bool:
    """Whether this process is a worker of a torchrun (torchelastic) launcher."""
    return "TORCHELASTIC_RUN_ID" in os.environ


@contextmanager
def exit_with_launcher(poll_seconds: float = POLL_SECONDS) -> Iterator[None]:
    """Under torchrun, SIGKILL this worker and its descendants soon after the launcher dies.

    A daemon thread polls ``os.getppid()``; once the launcher is gone the worker has been
    reparented (to init or a subreaper), and the thread kills the worker's process group. A
    plain ``python`` run is left alone: its parent is a shell, which may go away on purpose
    (``nohup``).

    Why a polling thread and not ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the parent-death
    signal kills only the process that asked for it. megatron-core's ``dist_checkpointing``
    starts helpers of its own (a ``multiprocessing`` Manager and resource tracker, spawned
    once, and forked writer processes during each save); they would outlive a worker killed
    that way. The thread kills the whole group in one ``killpg`` (torchrun made the worker a
    group leader), so nothing the run started survives. The signal is also Linux-only and
    fires when the parent *thread* exits, which would tie the workers to a detail of how the
    launcher is threaded. The thread needs the GIL to notice, but torch releases the GIL in
    its kernels and collectives, so a worker that is training or saving is interrupted
    within about ``poll_seconds``; one wedged in C code while holding the GIL makes no
    progress and writes nothing (and if it is rank 0, its lock on ``--save`` names it to the
    next run).

    A launcher that dies before this is installed (during interpreter start-up) goes
    unnoticed; entry points therefore install it first.

    Args:
        poll_seconds: the interval between looks at the parent pid.
    """
    if not under_torchrun():
        yield
        return
    launcher = os.getppid()
    stop = threading.Event()
    watchdog = threading.Thread(
        target=_watch, args=(launcher, stop, poll_seconds), name="launcher-watchdog", daemon=True
    )
    watchdog.start()
    try:
        yield
    finally:
        stop.set()


def _watch(launcher: int, stop: threading.Event, poll_seconds: float) -> None:
    while not stop.wait(poll_seconds):
        if os.getppid() != launcher:
            kill_process_tree()


def kill_process_tree() -> None:
    """SIGKILL this process and every process it started (no cleanup runs, nothing prints).

    Nothing is logged first: stdout may be a pipe that nobody reads any more, and a write
    into a full pipe would block the kill.
    """
    if os.getpgrp() == os.getpid():  # torchrun's case: the group is this worker's own
        os.killpg(os.getpid(), signal.SIGKILL)
    else:  # a group shared with others (a shell's job): only this process and its descendants
        for child in psutil.Process().children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                child.kill()
        os.kill(os.getpid(), signal.SIGKILL)
