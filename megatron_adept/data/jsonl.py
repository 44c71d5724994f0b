"""Line-numbered JSONL reading (plain or gzip) with errors that name file and line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from megatron_adept.errors import DataError


def check_input_file(path: str | Path) -> Path:
    """Name an input that is missing or a directory before anything tries to read it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"input file {str(path)!r} is a directory")
    if not path.is_file():
        raise DataError(f"input file {str(path)!r} does not exist")
    return path


def open_text(path: str | Path) -> IO[str]:
    """Open a ``.jsonl`` or ``.jsonl.gz`` file for reading, or name the missing file."""
    path = check_input_file(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for every non-blank line, numbered from 1."""
    with open_text(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise DataError(f"{path}: unreadable ({exc})") from None


def parse_line(line: str, where: str) -> dict[str, Any]:
    """One JSON object, or a DataError naming ``where`` (``file:line``)."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: malformed JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return item


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of ``path``."""
    for number, line in read_lines(path):
        yield number, parse_line(line, f"{path}:{number}")


def require_str(item: dict[str, Any], key: str, where: str) -> str:
    """``item[key]`` as a string, or a DataError naming ``where`` (``file:line``)."""
    if key not in item:
        raise DataError(f"{where}: missing key {key!r}")
    value = item[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: key {key!r} is {type(value).__name__}, expected a string")
    return value
