"""One live run per ``--save`` directory: a lock that dies with the run holding it.

Rank 0 holds ``fcntl.flock(LOCK_EX)`` on ``SAVE/.lock`` from before its process group
exists until it exits, and writes who it is into the file (host, pid, torchrun launcher pid,
start time). A second run on the same ``--save`` finds the lock taken and stops with one
line naming that holder: already in the checks that run before torch loads
(:func:`check_save_unlocked`), or, if it started at the same moment, when it takes the lock
(:func:`hold_save_dir`). The kernel drops a flock when its holder's last file descriptor
closes, so a run killed in any way (``kill -9``, the OOM killer, a lost node) never blocks
the next one; the file itself stays, and a stale file is simply locked again.

The descriptor is closed in every child rank 0 forks: megatron-core's checkpoint writer
processes are forked during each save, and one whose parent was killed mid-save waits
forever on a multiprocessing semaphore (seen with megatron-core 0.16.1). Holding a copy of
the descriptor, it would keep the lock of a run that is gone, under the name of a rank 0
that no longer exists.

Only rank 0 takes the lock: ranks on other nodes see the directory over a shared filesystem
where flock is not reliable everywhere, and every rank of a run waits for rank 0 in the
process-group rendezvous, so no rank of a refused run gets as far as writing.

Checkpoint discovery, ``--keep-last``, manifests and resume checks look only at the tracker
file and ``iter_*`` directories, so the hidden lock file changes none of them. Light to
import (no torch), like ``save_dir``.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from megatron_adept.errors import CheckpointError
from megatron_adept.parallel.launcher import under_torchrun

LOCK_FILE = ".lock"


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _refuse_if_held(fd: int, operation: int, path: Path) -> None:
    """Take ``operation`` (a non-blocking flock) on ``fd``, or raise naming the holder."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CheckpointError(
            f"--save {str(path.parent)!r} is in use by another run ({_holder(path)}); stop it "
            "or choose another --save"
        ) from None


def _holder(path: Path) -> str:
    """The holder a lock file names, in words."""
    try:
        info = json.loads(path.read_text())
        launcher = f", torchrun pid {info['launcher_pid']}" if info.get("launcher_pid") else ""
        return f"pid {info['pid']} on host {info['host']}{launcher}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path} does not name it yet"


def check_save_unlocked(save: str) -> None:
    """Refuse (rank 0) a ``--save`` another live run holds; writes nothing.

    Part of the checks before any work: a later check or a bad flag must leave no file behind,
    so this only looks; :func:`hold_save_dir` takes the lock once every check has passed.
    """
    path = Path(save) / LOCK_FILE
    if not _is_rank_zero() or not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _refuse_if_held(fd, fcntl.LOCK_SH, path)
    finally:
        os.close(fd)


class _Descriptor:
    """An open lock file that forked children do not keep (see the module docstring).

    ``os.register_at_fork`` cannot unregister a hook, so the hook of a closed one does
    nothing (its number may by then name another file).
    """

    def __init__(self, path: Path) -> None:
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.register_at_fork(after_in_child=self.close)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextmanager
def hold_save_dir(save: str | None) -> Iterator[None]:
    """Rank 0: hold ``SAVE/.lock`` for the whole block (creating ``save``), else do nothing.

    Raises:
        CheckpointError: another live run holds the lock (it took it since the check).
    """
    if save is None or not _is_rank_zero():
        yield
        return
    path = Path(save) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _Descriptor(path)
    fd = descriptor.fd
    try:
        _refuse_if_held(fd, fcntl.LOCK_EX, path)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "launcher_pid": os.getppid() if under_torchrun() else None,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        descriptor.close()  # releases the lock: no other process holds the descriptor
