"""Run the project's tools as subprocesses, one named stage at a time: time, peak memory, logs.

Light to import (no torch): a driver process stays small, and each stage's peak memory is its
own (see :mod:`megatron_adept.workflow.process_memory`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from megatron_adept.workflow.process_memory import run_with_peak_rss

REPO = Path(__file__).resolve().parents[2]
"""The checkout the tools run from."""


class WorkflowError(Exception):
    """A stage failed, or an output cannot be used; the message says which."""


def tool(name: str) -> list[str]:
    """The command line of ``tools/NAME`` in this interpreter."""
    return [sys.executable, str(REPO / "tools" / name)]


def torchrun(nproc: int, script: Path) -> list[str]:
    """``script`` under torchrun with ``nproc`` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(script),
    ]


def omp_threads(processes: int = 1, cpus: int | None = None) -> str:
    """Threads per process of a stage: OMP_NUM_THREADS if set, else the CPUs shared among the
    stage's processes. (On the demo models 1 and 2 threads give the same losses; 2 run a
    single-process stage about 1.5x faster.)"""
    if "OMP_NUM_THREADS" in os.environ:
        return os.environ["OMP_NUM_THREADS"]
    return str(max(1, (cpus or os.cpu_count() or 1) // processes))


def check_output(out: Path, min_free_bytes: int) -> None:
    """Refuse an output that cannot be written or a disk without room, before any work."""
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WorkflowError(f"output {out} is inside {parent}, which is not a directory")
    if not os.access(parent, os.W_OK):
        raise WorkflowError(f"output directory {parent} is not writable")
    free = shutil.disk_usage(parent).free
    if free < min_free_bytes:
        raise WorkflowError(
            f"only {free / 2**30:.2f} GiB free under {parent}; "
            f"the run needs {min_free_bytes / 2**30:.0f} GiB"
        )


class Stages:
    """Runs stages as subprocesses, timing each and recording its peak RSS.

    Output goes to the terminal, or appended to ``log`` so that several workflows can run
    side by side, each on its share of ``cpus`` (default: all of them).
    """

    def __init__(self, log: Path | None = None, cpus: int | None = None) -> None:
        self.log = log
        self.cpus = cpus
        self.times: dict[str, float] = {}
        self.peak_rss_mib: dict[str, float] = {}

    def run(self, stage: str, cmd: list, processes: int = 1) -> None:
        """Run one stage of ``processes`` processes; a failure raises :class:`WorkflowError`."""
        start = time.monotonic()
        env = {**os.environ, "OMP_NUM_THREADS": omp_threads(processes, self.cpus)}
        with contextlib.ExitStack() as stack:
            sink = None if self.log is None else stack.enter_context(self.log.open("a"))
            print(f"\n=== {stage} ===", file=sink or sys.stdout, flush=True)
            done, peak_mib = run_with_peak_rss(cmd, env=env, stdout=sink, stderr=sink)
            seconds = time.monotonic() - start
            print(
                f"--- {stage}: {seconds:.0f} s, peak RSS {peak_mib:.0f} MiB",
                file=sink or sys.stdout,
                flush=True,
            )
        self.times[stage] = self.times.get(stage, 0.0) + seconds
        self.peak_rss_mib[stage] = max(self.peak_rss_mib.get(stage, 0.0), peak_mib)
        if done.returncode != 0:
            where = "" if self.log is None else f"; see {self.log}"
            raise WorkflowError(f"stage '{stage}' failed (exit code {done.returncode}){where}")
