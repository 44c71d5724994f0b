"""Probe and evaluation corpora: JSONL items turned into fixed-length, loss-masked batches.

Two item kinds (ADEPT App. B.3, App. H):

* ``{"text": ...}``: pretraining style, every token is a target.
* ``{"prompt": ..., "answer": ...}``: question -> answer, only answer tokens are targets and
  the prompt is context. Prompt and answer are tokenized separately and concatenated: the
  boundary between context and targets must be exact, and tokenizing the joined string could
  merge the prompt's last characters with the answer's first into one token.

This is the one implementation of tokenization and loss masks for Stage 1, the Stage 2
importance refresh and evaluation. An item longer than ``seq_length + 1`` tokens is truncated
from the right (its targets beyond the window are dropped, never wrapped into another row);
padding never counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_adept.data.jsonl import read_jsonl, require_str
from megatron_adept.data.tokenizer import Tokenizer
from megatron_adept.errors import DataError
from megatron_adept.models.pipeline import MicroBatch


@dataclass(frozen=True)
class CorpusItem:
    """Token ids of one item and how many leading ones are context only."""

    ids: tuple[int, ...]
    context: int
    """Number of leading prompt tokens; targets start at ``ids[context]``."""


def load_corpus(
    path: str | Path, tokenizer: Tokenizer, prefix: Sequence[int] = ()
) -> list[CorpusItem]:
    """Tokenize every item of a probe/eval JSONL file, in file order.

    Args:
        path: the JSONL file.
        tokenizer: encodes the texts.
        prefix: ids every item starts with (BOS, see
            :func:`~megatron_adept.data.tokenizer.text_prefix`); context, never a target.
    """
    prefix = list(prefix)
    items = []
    for number, item in read_jsonl(path):
        where = f"{path}:{number}"
        if "text" in item:
            ids = prefix + tokenizer.encode(require_str(item, "text", where))
            if len(ids) < 2:
                raise DataError(f"{where}: the text has fewer than two tokens (no target)")
            items.append(CorpusItem(tuple(ids), len(prefix)))
        elif "prompt" in item and "answer" in item:
            prompt = prefix + tokenizer.encode(require_str(item, "prompt", where))
            answer = tokenizer.encode(require_str(item, "answer", where))
            if not answer:
                raise DataError(f"{where}: the answer tokenizes to nothing")
            items.append(CorpusItem(tuple(prompt + answer), len(prompt)))
        else:
            raise DataError(f"{where}: expected a 'text' key or 'prompt' and 'answer' keys")
    if not items:
        raise DataError(f"probe corpus {str(path)!r} is empty")
    return items


def check_vocabulary(items: list[CorpusItem], vocab_size: int, tokenizer_source: str) -> None:
    """Refuse token ids the model has no embedding for (a tokenizer of another model)."""
    largest = max((max(item.ids) for item in items if item.ids), default=-1)
    if largest >= vocab_size:
        raise DataError(
            f"tokenizer ({tokenizer_source}) produced token id {largest}, but the model's "
            f"vocabulary has {vocab_size} entries: wrong --tokenizer?"
        )


def item_row(item: CorpusItem, seq_length: int) -> tuple[list[int], list[int], list[float]]:
    """(tokens, labels, loss mask) of one item, at most ``seq_length`` positions long.

    Position ``p`` predicts ``ids[p + 1]``, which counts when it lies past the prompt.
    """
    ids = item.ids[: seq_length + 1]
    tokens, labels = list(ids[:-1]), list(ids[1:])
    mask = [float(p + 1 >= item.context) for p in range(len(labels))]
    return tokens, labels, mask


def corpus_batches(
    items: list[CorpusItem], seq_length: int, micro_batch_size: int, pad_id: int = 0
) -> list[MicroBatch]:
    """Micro-batches ``[micro_batch_size, seq_length]`` holding the items in order.

    Each item fills one row from the left; the rest of the row (and of the last micro-batch)
    is ``pad_id`` with loss mask 0, so the batches are the same for every run and every rank.
    """
    batches = []
    for start in range(0, len(items), micro_batch_size):
        tokens = torch.full((micro_batch_size, seq_length), pad_id, dtype=torch.long)
        labels = torch.full((micro_batch_size, seq_length), pad_id, dtype=torch.long)
        mask = torch.zeros(micro_batch_size, seq_length)
        for row, item in enumerate(items[start : start + micro_batch_size]):
            row_tokens, row_labels, row_mask = item_row(item, seq_length)
            tokens[row, : len(row_tokens)] = torch.tensor(row_tokens, dtype=torch.long)
            labels[row, : len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
            mask[row, : len(row_mask)] = torch.tensor(row_mask)
        batches.append(MicroBatch(tokens, labels, mask))
    return batches


def counted_tokens(batches: list[MicroBatch]) -> int:
    """Number of target tokens that count in the loss (the denominator of a mean loss)."""
    return int(sum(batch.loss_mask.sum().item() for batch in batches))
