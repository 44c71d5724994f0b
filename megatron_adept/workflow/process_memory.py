"""Peak resident memory of a command, read from the kernel's high-water mark, not sampled.

The command runs under a small launcher process. Linux carries a process's RSS high-water mark
over fork and exec, so a command started straight from a large process (one that imported
torch) would report at least that process's peak; started from the launcher, it reports its own.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

# Runs argv[2:] and writes its peak RSS (KiB on Linux; the command's and its descendants') to
# argv[1]; exits with the command's code, or 128 + N if signal N killed it.
_LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
    "sys.exit(code if code >= 0 else 128 - code)"
)


def run_with_peak_rss(
    cmd: Sequence[object], **run_kwargs
) -> tuple[subprocess.CompletedProcess, float]:
    """``subprocess.run(cmd, **run_kwargs)`` through the launcher.

    Returns the completed process and the command's peak RSS in MiB (0 if the launcher itself
    was killed before it could read it).
    """
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak_kib"
        done = subprocess.run(
            [str(c) for c in (sys.executable, "-c", _LAUNCHER, peak_file, *cmd)], **run_kwargs
        )
        peak_kib = int(peak_file.read_text()) if peak_file.is_file() else 0
    return done, peak_kib / 1024
