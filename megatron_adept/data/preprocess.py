"""JSONL -> megatron-core indexed datasets (``PREFIX.bin``/``PREFIX.idx``), tokenized in parallel.

Every document is stored as ``encode(text) + [eos]``. With ``--window``/``--stride`` a
document longer than the window is stored as overlapping windows (:mod:`windows`), each its
own sequence ending with EOS: ``GPTDataset`` concatenates sequences back to back, and the EOS
marks where a window ends so the model never reads one window running into the repeated
start of the next.

The main process only reads lines; workers parse, build the document text and tokenize, so
throughput scales with ``--workers``. Output is written under temporary names and renamed
only once complete: a failed run leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from megatron_adept.data.config import DATASET_INFO_SUFFIX, DatasetInfo, PreprocessConfig
from megatron_adept.data.jsonl import parse_line, read_lines, require_str
from megatron_adept.data.tokenizer import Tokenizer
from megatron_adept.data.windows import window_spans
from megatron_adept.errors import DataError
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)

PROGRESS_SECONDS = 5.0
CHUNK_LINES = 32
"""Lines per task sent to a worker: large enough to amortise inter-process traffic."""


@dataclass
class PreprocessSummary:
    """What a preprocessing run wrote."""

    documents: int = 0
    windows: int = 0
    """Stored sequences: one per document, or one per window of a windowed document."""
    tokens: int = 0
    """Stored tokens, EOS and window overlaps included."""
    seconds: float = 0.0


def document_text(item: dict[str, Any], config: PreprocessConfig, where: str) -> str:
    """The pretraining text of one JSONL item.

    SFT items become question, reasoning and answer joined by newlines (App. B.4, Example 3);
    an item with no or empty reasoning is question and answer. PT items join their
    ``--json-keys`` texts with a blank line.
    """
    if config.format == "sft":
        parts = [require_str(item, config.prompt_key, where)]
        if config.reasoning_key is not None and item.get(config.reasoning_key) not in (None, ""):
            parts.append(require_str(item, config.reasoning_key, where))
        parts.append(require_str(item, config.response_key, where))
        return "\n".join(parts)
    return "\n\n".join(require_str(item, key, where) for key in config.json_keys)


class DocumentEncoder:
    """One numbered JSONL line -> the token sequences it contributes to the dataset."""

    def __init__(
        self,
        config: PreprocessConfig,
        tokenizer: Tokenizer,
        dtype: type[np.number],
        prefix: list[int],
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.prefix = prefix

    def __call__(self, numbered_line: tuple[int, str]) -> list[np.ndarray]:
        number, line = numbered_line
        where = f"{self.config.input}:{number}"
        text = document_text(parse_line(line, where), self.config, where)
        ids = self.prefix + self.tokenizer.encode(text)
        if self.config.window is None:
            spans = [(0, len(ids))]
        else:
            spans = window_spans(len(ids), self.config.window, self.config.stride)
        eos = self.tokenizer.eos_id
        return [np.array(ids[start:end] + [eos], dtype=self.dtype) for start, end in spans]


_worker_encoder: DocumentEncoder | None = None
"""The encoder of a pool worker process, installed once by :func:`_install_encoder`."""


def _install_encoder(encoder: DocumentEncoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(numbered_line: tuple[int, str]) -> list[np.ndarray]:
    return _worker_encoder(numbered_line)


def _encoded_documents(encoder: DocumentEncoder, workers: int) -> Iterator[list[np.ndarray]]:
    """Encoded documents in input order, from ``workers`` processes (or this one)."""
    lines = read_lines(encoder.config.input)
    if workers == 1:
        yield from map(encoder, lines)
        return
    # fork hands the already-loaded tokenizer to the workers without pickling it.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_install_encoder, initargs=(encoder,)) as pool:
        yield from pool.imap(_encode_in_worker, lines, chunksize=CHUNK_LINES)


def _write(
    builder: IndexedDatasetBuilder,
    documents: Iterator[list[np.ndarray]],
    on_progress: Callable[[str], None],
) -> PreprocessSummary:
    """Append every document's sequences to ``builder``, reporting progress as it goes."""
    summary = PreprocessSummary()
    start = last_report = time.monotonic()
    for sequences in documents:
        for sequence in sequences:
            builder.add_document(sequence, [len(sequence)])
            summary.tokens += len(sequence)
        summary.documents += 1
        summary.windows += len(sequences)
        now = time.monotonic()
        if now - last_report >= PROGRESS_SECONDS:
            last_report = now
            elapsed = now - start
            on_progress(
                f"{summary.documents} documents, {summary.tokens} tokens "
                f"({summary.documents / elapsed:.0f} docs/s, "
                f"{summary.tokens / elapsed:.0f} tokens/s)"
            )
    summary.seconds = time.monotonic() - start
    return summary


def preprocess(
    config: PreprocessConfig,
    tokenizer: Tokenizer,
    prefix: list[int] | None = None,
    on_progress: Callable[[str], None] = logger.info,
) -> PreprocessSummary:
    """Tokenize ``config.input`` into ``config.output_prefix``.bin/.idx/.info.json.

    Args:
        config: input, output and document format.
        tokenizer: encodes the documents; its EOS ends every stored sequence.
        prefix: ids every document starts with (BOS, see
            :func:`~megatron_adept.data.tokenizer.text_prefix`); recorded in the
            ``.info.json`` beside the dataset, so that datasets with and without never mix.
        on_progress: receives a progress line (documents, tokens, rates) every few seconds.

    Returns:
        Counts of what was written.
    """
    prefix = list(prefix or [])
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    encoder = DocumentEncoder(config, tokenizer, dtype, prefix)
    output = Path(config.output_prefix)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    tmp_bin, tmp_idx, tmp_info = f"{tmp}.bin", f"{tmp}.idx", f"{tmp}{DATASET_INFO_SUFFIX}"
    builder = IndexedDatasetBuilder(tmp_bin, dtype=dtype)
    try:
        with closing(_encoded_documents(encoder, config.workers)) as documents:
            summary = _write(builder, documents, on_progress)
        if summary.documents == 0:
            raise DataError(f"input file {config.input!r} holds no documents")
        builder.finalize(tmp_idx)
        info = DatasetInfo(
            bos_id=prefix[0] if prefix else None,
            eos_id=tokenizer.eos_id,
            vocab_size=tokenizer.vocab_size,
            documents=summary.documents,
            tokens=summary.tokens,
        )
        Path(tmp_info).write_text(json.dumps(dataclasses.asdict(info), indent=1) + "\n")
        for tmp_path, path in zip((tmp_bin, tmp_idx, tmp_info), config.output_paths(), strict=True):
            os.replace(tmp_path, path)
    finally:
        builder.data_file.close()
        for path in (tmp_bin, tmp_idx, tmp_info):
            Path(path).unlink(missing_ok=True)
    return summary
