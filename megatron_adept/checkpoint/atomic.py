"""Outputs appear whole or not at all: write into a temporary sibling, rename at the end."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from megatron_adept.errors import AdeptError


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty output unless ``overwrite``, or a missing parent."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AdeptError(
            f"output {str(out)!r} exists and is not empty (pass --overwrite to replace it)"
        )
    if not out.parent.is_dir():
        raise AdeptError(f"parent directory of output {str(out)!r} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise AdeptError(f"output directory {str(out.parent)!r} is not writable")
    return out


def check_output_file(path: str | Path, flag: str) -> Path:
    """Refuse an output file that is a directory or whose directory is missing or read-only,
    before any work: a long evaluation must not end in a failed write."""
    path = Path(path)
    if path.is_dir():
        raise AdeptError(f"{flag} {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise AdeptError(f"directory of {flag} {str(path)!r} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise AdeptError(f"directory of {flag} {str(path)!r} is not writable")
    return path


def temp_sibling(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary directory is removed and
    ``out`` is left as it was.
    """
    out = check_output_dir(out, overwrite)
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out)


def publish(tmp: Path, out: Path) -> None:
    """Atomically replace ``out`` by ``tmp`` (the old ``out`` is removed after the swap)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def write_json_atomic(path: str | Path, data: object) -> None:
    """Write JSON to a temporary sibling, then rename: readers never see half a file."""
    path = Path(path)
    tmp = temp_sibling(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
