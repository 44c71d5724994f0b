"""Flags of the data tools and of training data, checked before anything heavy is imported.

``--data-path`` and ``--split`` follow megatron's syntax (see :mod:`megatron_adept.data.datasets`
for how the blend is sampled); preprocessing options are those of ``tools/preprocess_data.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from megatron_adept.config.cli import arg, require_positive
from megatron_adept.config.groups import overwrite_flag
from megatron_adept.data.jsonl import check_input_file
from megatron_adept.data.windows import check_window
from megatron_adept.errors import DataError

INPUT_HELP = "Input JSONL (optionally .gz), one document per line."
DATASET_INFO_SUFFIX = ".info.json"
"""``PREFIX.info.json``: how the indexed dataset ``PREFIX`` was tokenized."""


@dataclass(frozen=True)
class DatasetInfo:
    """Contents of ``PREFIX.info.json``, written by ``tools/preprocess_data.py``."""

    bos_id: int | None
    """The BOS every document starts with, or None when documents start with text."""
    eos_id: int
    vocab_size: int
    documents: int
    tokens: int

    @classmethod
    def read(cls, prefix: str) -> DatasetInfo | None:
        """The info of dataset ``prefix``; None for one preprocessed before it was recorded."""
        path = Path(prefix + DATASET_INFO_SUFFIX)
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"{path} is corrupt ({type(exc).__name__}: {exc})") from None


def blend_bos(prefixes: list[str]) -> bool | None:
    """Whether the documents of every dataset in a blend start with BOS; refuses a mix.

    None when no dataset recorded it (preprocessed before the choice was recorded).
    """
    recorded = {p: info.bos_id is not None for p in prefixes if (info := DatasetInfo.read(p))}
    if len(set(recorded.values())) > 1:
        with_bos = [p for p, bos in recorded.items() if bos]
        without = [p for p, bos in recorded.items() if not bos]
        raise DataError(
            f"--data-path mixes datasets whose documents start with BOS ({', '.join(with_bos)}) "
            f"and without ({', '.join(without)}); preprocess them alike (--add-bos)"
        )
    return next(iter(recorded.values()), None)


def json_keys_flag() -> list[str]:
    """``--json-keys``: where a document's text is (preprocessing and tokenizer training)."""
    return arg(
        help="Keys holding a document's text (preprocessing joins several by a blank line).",
        default_factory=lambda: ["text"],
    )


@dataclass
class DataConfig:
    """Where the training data is and how it is split."""

    data_path: list[str] = arg(
        help="An indexed-dataset prefix (PREFIX.bin/PREFIX.idx), or a blend "
        "'W1 PREFIX1 W2 PREFIX2 ...' sampling each prefix in proportion to its weight.",
        default_factory=list,
    )
    split: str = arg("98,2,0", "Train,valid,test proportions of every dataset's documents.")
    data_cache_path: str | None = arg(
        None, "Directory for megatron's sample-index cache (default: PREFIX1's directory)."
    )

    def __post_init__(self) -> None:
        prefixes, _ = parse_blend(self.data_path)
        parse_split(self.split)
        blend_bos(prefixes)


def parse_blend(data_path: list[str]) -> tuple[list[str], list[float] | None]:
    """Megatron's ``--data-path`` syntax -> (prefixes, weights or None); checks the files.

    One value is a single prefix; otherwise the values alternate weight and prefix.
    """
    if len(data_path) <= 1:
        prefixes, weights = list(data_path), None
    else:
        if len(data_path) % 2:
            raise DataError(f"--data-path blend needs weight/prefix pairs, got {data_path}")
        try:
            weights = [float(w) for w in data_path[0::2]]
        except ValueError:
            raise DataError(f"--data-path blend weights must be numbers, got {data_path}") from None
        if min(weights) <= 0:
            raise DataError(f"--data-path blend weights must be positive, got {weights}")
        prefixes = list(data_path[1::2])
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).is_file():
                hint = " (give the prefix, without .bin/.idx)" if prefix.endswith(suffix) else ""
                raise DataError(f"--data-path {prefix!r}: {prefix + suffix} not found{hint}")
    return prefixes, weights


def parse_split(split: str) -> list[float]:
    """``"98,2,0"`` -> ``[98.0, 2.0, 0.0]``; missing trailing parts are 0, as in megatron."""
    try:
        parts = [float(p) for p in split.split(",")]
    except ValueError:
        raise DataError(f"--split={split!r} must be comma-separated numbers") from None
    if len(parts) > 3 or min(parts) < 0 or sum(parts) <= 0:
        raise DataError(f"--split={split!r} needs up to three non-negative proportions")
    return parts + [0.0] * (3 - len(parts))


@dataclass
class PreprocessConfig:
    """Input, output and document format of tools/preprocess_data.py."""

    input: str = arg(help=INPUT_HELP)
    output_prefix: str = arg(help="Output prefix: writes PREFIX.bin and PREFIX.idx.")
    workers: int = arg(1, "Tokenizer worker processes.")
    json_keys: list[str] = json_keys_flag()
    format: str = arg("pt", "Document format.", choices=("pt", "sft"))
    prompt_key: str = arg("prompt", "SFT: key of the question.")
    reasoning_key: str | None = arg(
        None, "SFT: key of the optional reasoning (chain of thought); items without it are fine."
    )
    response_key: str = arg("response", "SFT: key of the answer.")
    window: int | None = arg(None, "Split documents longer than this many tokens into windows.")
    stride: int | None = arg(None, "Start a new window every this many tokens (< --window).")
    overwrite: bool = overwrite_flag()

    def __post_init__(self) -> None:
        require_positive(self, "workers")
        if (self.window is None) != (self.stride is None):
            raise DataError("--window and --stride go together")
        if self.window is not None:
            check_window(self.window, self.stride)
        check_input_file(self.input)
        parent = Path(self.output_prefix).parent
        if not parent.is_dir():
            raise DataError(f"directory of --output-prefix {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK):
            raise DataError(f"directory of --output-prefix {str(parent)!r} is not writable")
        existing = [p for p in self.output_paths() if Path(p).exists()]
        if existing and not self.overwrite:
            raise DataError(f"{existing[0]} exists (pass --overwrite to replace it)")

    def output_paths(self) -> tuple[str, str, str]:
        prefix = self.output_prefix
        return f"{prefix}.bin", f"{prefix}.idx", f"{prefix}{DATASET_INFO_SUFFIX}"
