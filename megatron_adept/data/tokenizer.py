"""One tokenizer interface over sentencepiece models and Hugging Face tokenizer directories.

Every tool that reads raw text goes through :func:`resolve_tokenizer`: the tokenizer stored
beside the checkpoint, unless ``--tokenizer`` names another one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.errors import DataError

SENTENCEPIECE_FILE = "tokenizer.model"


class Tokenizer(Protocol):
    """What the project needs from a tokenizer."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without any special tokens."""

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> None:
        """Copy the tokenizer's files into ``directory`` (loadable by :func:`load_tokenizer`)."""


class SentencePieceTokenizer:
    def __init__(self, model_file: Path) -> None:
        import sentencepiece

        self.model_file = Path(model_file)
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size = self._sp.get_piece_size()
        self.eos_id = self._sp.eos_id()
        if self.eos_id < 0:
            raise DataError(f"sentencepiece model {str(model_file)!r} defines no EOS token")

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.model_file, directory / SENTENCEPIECE_FILE)


class HFTokenizer:
    def __init__(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        self.directory = Path(directory)
        try:
            self._tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot load tokenizer from {str(directory)!r}: {exc}") from None
        self.vocab_size = len(self._tok)
        if self._tok.eos_token_id is None:
            raise DataError(f"tokenizer in {str(directory)!r} defines no EOS token")
        self.eos_id = int(self._tok.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def save(self, directory: Path) -> None:
        self._tok.save_pretrained(str(directory))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A sentencepiece ``.model`` file, or a directory with an HF or sentencepiece tokenizer."""
    path = Path(path)
    if path.is_file():
        try:
            return SentencePieceTokenizer(path)
        except (RuntimeError, OSError):
            raise DataError(f"tokenizer {str(path)!r} is not a sentencepiece model") from None
    if path.is_dir():
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            return HFTokenizer(path)
        if (path / SENTENCEPIECE_FILE).is_file():
            return SentencePieceTokenizer(path / SENTENCEPIECE_FILE)
    raise DataError(
        f"tokenizer path {str(path)!r} is neither a sentencepiece model file nor a directory "
        "holding a Hugging Face or sentencepiece tokenizer"
    )


def resolve_tokenizer(explicit: str | None, ckpt_dir: str | Path | None) -> Tokenizer:
    """``--tokenizer`` if given, else the tokenizer stored beside the checkpoint."""
    if explicit is not None:
        return load_tokenizer(explicit)
    if ckpt_dir is not None:
        stored = CheckpointMeta.load(ckpt_dir).tokenizer_path(ckpt_dir)
        if stored is not None:
            return load_tokenizer(stored)
    raise DataError(f"checkpoint {str(ckpt_dir)!r} stores no tokenizer; pass --tokenizer")
