"""Launch multi-process torchrun jobs from pytest: gloo, loopback rendezvous, bounded time.

A failing job fails the test with its exit code and the tail of every rank's output, so a
distributed failure reads like a local one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = REPO / "tests" / "workers"


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        CUDA_VISIBLE_DEVICES="",
    )
    env.update(extra or {})
    return env


def run_torchrun(
    script: str | Path,
    nproc: int,
    args: list[str] | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``script`` (a path, or a name under ``tests/workers``) on ``nproc`` local ranks.

    ``--standalone`` makes torchrun pick a free port, so concurrent tests never collide.
    """
    path = Path(script)
    if not path.is_absolute():
        path = WORKERS / path
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--tee=3",
        str(path),
        *(args or []),
    ]
    return run_command(cmd, timeout=timeout, env=env, check=check)


def run_command(
    cmd: list[str],
    timeout: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run a command with the test environment; on failure raise with its output tail."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_env(env), cwd=cwd or REPO
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or "")[-3000:] if isinstance(exc.stdout, str) else ""
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{tail}") from None
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
            f"--- stdout (tail) ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-6000:]}"
        )
    return proc
