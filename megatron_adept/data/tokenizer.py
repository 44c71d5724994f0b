"""One tokenizer interface over sentencepiece models and Hugging Face tokenizer directories.

Raw text is tokenized with the tokenizer stored beside the checkpoint
(:meth:`CheckpointMeta.tokenizer_path`) unless ``--tokenizer`` names another one; every tool
applies that rule through :func:`resolve_tokenizer`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.checkpoint.side_files import copy_tokenizer_files
from megatron_adept.errors import DataError

SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILES = ("tokenizer.json", "tokenizer_config.json")


class Tokenizer(Protocol):
    """What the project needs from a tokenizer."""

    vocab_size: int
    """Number of token ids (the largest id plus one), including added special tokens."""
    eos_id: int
    bos_id: int | None
    adds_bos: bool
    """The tokenizer's own convention starts every text with ``bos_id`` (Llama, Mistral): the
    model was pretrained on texts that begin so."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special tokens."""

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; ``decode(encode(text)) == text`` for the tokenizers we train."""

    def save(self, directory: str | Path) -> None:
        """Copy the tokenizer's files into ``directory`` (loadable by :func:`load_tokenizer`)."""


class SentencePieceTokenizer:
    """A sentencepiece ``.model`` file (e.g. one written by tools/train_tokenizer.py)."""

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece

        self.model_file = Path(model_file)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        except (RuntimeError, OSError):
            raise DataError(f"tokenizer {str(model_file)!r} is not a sentencepiece model") from None
        self.vocab_size = self._sp.get_piece_size()
        self.eos_id = self._sp.eos_id()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.adds_bos = False  # a bare sentencepiece model encodes texts as they are
        if self.eos_id < 0:
            raise DataError(f"sentencepiece model {str(model_file)!r} defines no EOS token")

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.model_file, Path(directory) / SENTENCEPIECE_FILE)


class HFTokenizer:
    """A Hugging Face tokenizer directory, loaded offline with ``AutoTokenizer``."""

    def __init__(self, directory: str | Path) -> None:
        from transformers import AutoTokenizer

        self.directory = Path(directory)
        try:
            self._tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"cannot load tokenizer from {str(directory)!r}: {reason}") from None
        # Documents are tokenized whole and windowed afterwards: never warn about or truncate
        # to the model's context length.
        self._tok.model_max_length = 2**62
        self.vocab_size = len(self._tok)
        if self._tok.eos_token_id is None:
            raise DataError(f"tokenizer in {str(directory)!r} defines no EOS token")
        self.eos_id = int(self._tok.eos_token_id)
        self.bos_id = None if self._tok.bos_token_id is None else int(self._tok.bos_token_id)
        with_specials = self._tok.encode("a")
        self.adds_bos = (
            self.bos_id is not None
            and with_specials[:1] == [self.bos_id]
            and self.encode("a")[:1] != [self.bos_id]
        )

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), clean_up_tokenization_spaces=False)

    def save(self, directory: str | Path) -> None:
        copy_tokenizer_files(self.directory, Path(directory))


def text_prefix(tokenizer: Tokenizer, add_bos: bool = True) -> list[int]:
    """The ids every document and item starts with: ``[bos]`` where the tokenizer's convention
    adds it (and ``add_bos``, the ``--add-bos`` flag, allows it), else none."""
    return [tokenizer.bos_id] if add_bos and tokenizer.adds_bos else []


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A sentencepiece ``.model`` file, or a directory with an HF or sentencepiece tokenizer.

    A directory with HF files wins over a ``tokenizer.model`` beside them, because HF
    directories of sentencepiece-based models ship both and the HF files carry the special
    tokens.
    """
    path = Path(path)
    if path.is_file():
        return SentencePieceTokenizer(path)
    if path.is_dir():
        if any((path / name).is_file() for name in HF_FILES):
            return HFTokenizer(path)
        if (path / SENTENCEPIECE_FILE).is_file():
            return SentencePieceTokenizer(path / SENTENCEPIECE_FILE)
    raise DataError(
        f"tokenizer path {str(path)!r} is neither a sentencepiece model file nor a directory "
        f"holding a Hugging Face tokenizer ({', '.join(HF_FILES)}) or a {SENTENCEPIECE_FILE}"
    )


def resolve_tokenizer(explicit: str | Path | None, ckpt_dir: str | Path | None) -> Tokenizer:
    """``--tokenizer`` if given, else the tokenizer stored beside the checkpoint ``ckpt_dir``."""
    if explicit is not None:
        return load_tokenizer(explicit)
    if ckpt_dir is None:
        raise DataError("--tokenizer is required to tokenize raw text")
    stored = CheckpointMeta.load(ckpt_dir).tokenizer_path(ckpt_dir)
    if stored is None:
        raise DataError(f"checkpoint {str(ckpt_dir)!r} stores no tokenizer; pass --tokenizer")
    return load_tokenizer(stored)
