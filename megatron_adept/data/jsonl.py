"""Line-numbered JSONL reading (plain or gzip) with errors that name file and line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megatron_adept.errors import DataError


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {str(path)!r} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise DataError(
                    f"{path}:{number}: expected a JSON object, got {type(item).__name__}"
                )
            yield number, item


def require_str(item: dict[str, Any], key: str, where: str) -> str:
    """``item[key]`` as a string, or a DataError naming ``where`` (``file:line``)."""
    if key not in item:
        raise DataError(f"{where}: missing key {key!r}")
    value = item[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: key {key!r} is {type(value).__name__}, expected a string")
    return value
