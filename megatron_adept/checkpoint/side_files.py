"""The files that travel beside the weights: tokenizer and generation settings.

A Hugging Face directory's tokenizer and ``generation_config.json`` are copied into every
checkpoint converted from it (under ``tokenizer/``), carried through expansion, training and
merging, and copied back beside the weights of an export, so each stage stands alone.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
"""Files that make up a Hugging Face or sentencepiece tokenizer."""
GENERATION_FILES = ("generation_config.json",)
"""Files beside the weights that are not the tokenizer but travel with it to the export."""
SIDE_FILES = TOKENIZER_FILES + GENERATION_FILES
"""Every non-weight file carried from an HF directory through the checkpoint to the export."""


def copy_files(src: Path, dst: Path, names: Iterable[str] = SIDE_FILES) -> list[str]:
    """Copy those of ``names`` that ``src`` holds into ``dst``; returns the names copied."""
    copied = []
    for name in names:
        if (Path(src) / name).is_file():
            Path(dst).mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy whatever tokenizer files ``src`` holds into ``dst``; returns their names."""
    return copy_files(src, dst, TOKENIZER_FILES)


def has_tokenizer(directory: Path) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)
