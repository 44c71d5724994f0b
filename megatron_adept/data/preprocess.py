"""JSONL -> megatron-core ``IndexedDataset`` (``.bin``/``.idx``), tokenized in parallel.

Each document becomes ``encode(text) + [eos]``. With ``--window``/``--stride`` a document
longer than the window is stored as overlapping windows (each its own sequence; the last one
ends with the EOS). Files are written under temporary names and renamed only when complete.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_adept.config.cli import arg
from megatron_adept.data.jsonl import read_jsonl, require_str
from megatron_adept.data.tokenizer import Tokenizer, load_tokenizer
from megatron_adept.data.windows import check_window, window_spans
from megatron_adept.errors import DataError
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)


@dataclass
class PreprocessConfig:
    """Input, output and document format of tools/preprocess_data.py."""

    input: str = arg(help="Input JSONL file (optionally .gz), one document per line.")
    output_prefix: str = arg(help="Output prefix: writes PREFIX.bin and PREFIX.idx.")
    tokenizer: str = arg(help="A sentencepiece .model file or a Hugging Face tokenizer directory.")
    workers: int = arg(1, "Tokenizer worker processes.")
    json_keys: list[str] = arg(
        help="Keys holding the text of PT documents (several are joined by a blank line).",
        default_factory=lambda: ["text"],
    )
    format: str = arg("pt", "Document format.", choices=("pt", "sft"))
    prompt_key: str = arg("prompt", "SFT: key of the question.")
    reasoning_key: str | None = arg(None, "SFT: key of the optional reasoning (chain of thought).")
    response_key: str = arg("response", "SFT: key of the answer.")
    window: int | None = arg(None, "Split documents longer than this many tokens into windows.")
    stride: int | None = arg(None, "Start a new window every this many tokens (< --window).")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise DataError(f"--workers={self.workers} must be >= 1")
        if (self.window is None) != (self.stride is None):
            raise DataError("--window and --stride go together")
        if self.window is not None:
            check_window(self.window, self.stride)
        parent = Path(self.output_prefix).parent
        if not parent.is_dir():
            raise DataError(f"directory of --output-prefix {str(parent)!r} does not exist")


def document_text(item: dict, config: PreprocessConfig, where: str) -> str:
    """The pretraining text of one JSONL item.

    SFT items become question, reasoning and answer joined by newlines (App. B.4, Example 3).
    """
    if config.format == "sft":
        parts = [require_str(item, config.prompt_key, where)]
        if config.reasoning_key is not None and item.get(config.reasoning_key):
            parts.append(require_str(item, config.reasoning_key, where))
        parts.append(require_str(item, config.response_key, where))
        return "\n".join(parts)
    return "\n\n".join(require_str(item, key, where) for key in config.json_keys)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(tokenizer_path)


def _encode(text: str) -> list[int]:
    return _worker_tokenizer.encode(text) + [_worker_tokenizer.eos_id]


@dataclass
class PreprocessSummary:
    documents: int = 0
    tokens: int = 0
    windows: int = 0
    seconds: float = 0.0


def _texts(config: PreprocessConfig) -> Iterator[str]:
    for number, item in read_jsonl(config.input):
        yield document_text(item, config, f"{config.input}:{number}")


def preprocess(config: PreprocessConfig) -> PreprocessSummary:
    """Tokenize ``config.input`` into ``config.output_prefix``.bin/.idx."""
    tokenizer = load_tokenizer(config.tokenizer)
    dtype = np.uint16 if tokenizer.vocab_size < 65500 else np.int32
    prefix = Path(config.output_prefix)
    tmp = prefix.parent / f".{prefix.name}.tmp-{os.getpid()}"
    summary = PreprocessSummary()
    start = last_log = time.monotonic()
    builder = IndexedDatasetBuilder(f"{tmp}.bin", dtype=dtype)
    try:
        with multiprocessing.get_context("fork").Pool(
            config.workers, initializer=_init_worker, initargs=(config.tokenizer,)
        ) as pool:
            for ids in pool.imap(_encode, _texts(config), chunksize=64):
                spans = (
                    window_spans(len(ids), config.window, config.stride)
                    if config.window
                    else [(0, len(ids))]
                )
                for begin, end in spans:
                    builder.add_item(torch.tensor(ids[begin:end], dtype=torch.int64))
                    builder.end_document()
                summary.documents += 1
                summary.tokens += len(ids)
                summary.windows += len(spans)
                now = time.monotonic()
                if now - last_log > 2:
                    last_log = now
                    elapsed = now - start
                    logger.info(
                        "%d docs, %d tokens (%.0f docs/s, %.0f tokens/s)",
                        summary.documents,
                        summary.tokens,
                        summary.documents / elapsed,
                        summary.tokens / elapsed,
                    )
        if summary.documents == 0:
            raise DataError(f"input file {config.input!r} holds no documents")
        builder.finalize(f"{tmp}.idx")
        os.replace(f"{tmp}.bin", f"{prefix}.bin")
        os.replace(f"{tmp}.idx", f"{prefix}.idx")
    finally:
        for suffix in (".bin", ".idx"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    summary.seconds = time.monotonic() - start
    return summary
