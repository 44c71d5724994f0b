"""Probe and evaluation corpora: JSONL items turned into fixed-length, loss-masked batches.

Two item kinds (ADEPT App. B.3, App. H):
* ``{"text": ...}``: pretraining style, every token is a target.
* ``{"prompt": ..., "answer": ...}``: SFT style, only answer tokens are targets; the prompt is
  context. Prompt and answer are tokenized separately and concatenated so that the boundary
  between context and targets is exact, whatever the tokenizer would merge across it.

This is the single implementation of tokenization and loss masks for Stage 1, the Stage 2
importance refresh and evaluation. Sequences longer than ``seq_length + 1`` tokens are
truncated from the right; padding never counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_adept.data.jsonl import read_jsonl, require_str
from megatron_adept.data.tokenizer import Tokenizer
from megatron_adept.errors import DataError
from megatron_adept.models.forward import MicroBatch


@dataclass(frozen=True)
class CorpusItem:
    """Token ids of one item and how many leading ones are context only."""

    ids: tuple[int, ...]
    context: int


def load_corpus(path: str | Path, tokenizer: Tokenizer) -> list[CorpusItem]:
    """Tokenize every item of a probe/eval JSONL file."""
    items = []
    for number, item in read_jsonl(path):
        where = f"{path}:{number}"
        if "text" in item:
            ids = tokenizer.encode(require_str(item, "text", where))
            items.append(CorpusItem(tuple(ids), 0))
        elif "prompt" in item and "answer" in item:
            prompt = tokenizer.encode(require_str(item, "prompt", where))
            answer = tokenizer.encode(require_str(item, "answer", where))
            if not answer:
                raise DataError(f"{where}: the answer tokenizes to nothing")
            items.append(CorpusItem(tuple(prompt + answer), len(prompt)))
        else:
            raise DataError(f"{where}: expected a 'text' key or 'prompt' and 'answer' keys")
    if not items:
        raise DataError(f"probe corpus {str(path)!r} is empty")
    return items


def item_targets(item: CorpusItem, seq_length: int) -> tuple[list[int], list[int], list[float]]:
    """(inputs, targets, mask) of one item, truncated to ``seq_length`` positions."""
    ids = list(item.ids[: seq_length + 1])
    inputs, targets = ids[:-1], ids[1:]
    mask = [1.0 if position + 1 >= item.context else 0.0 for position in range(len(targets))]
    return inputs, targets, mask


def corpus_batches(
    items: list[CorpusItem], seq_length: int, micro_batch_size: int, pad_id: int = 0
) -> list[MicroBatch]:
    """Deterministic micro-batches ``[micro_batch_size, seq_length]`` in file order."""
    batches = []
    for start in range(0, len(items), micro_batch_size):
        chunk = items[start : start + micro_batch_size]
        tokens = torch.full((micro_batch_size, seq_length), pad_id, dtype=torch.long)
        labels = torch.full((micro_batch_size, seq_length), pad_id, dtype=torch.long)
        mask = torch.zeros(micro_batch_size, seq_length)
        for row, item in enumerate(chunk):
            inputs, targets, weights = item_targets(item, seq_length)
            tokens[row, : len(inputs)] = torch.tensor(inputs, dtype=torch.long)
            labels[row, : len(targets)] = torch.tensor(targets, dtype=torch.long)
            mask[row, : len(weights)] = torch.tensor(weights)
        batches.append(MicroBatch(tokens, labels, mask))
    return batches


def counted_tokens(batches: list[MicroBatch]) -> int:
    return int(sum(batch.loss_mask.sum().item() for batch in batches))
