"""Small tokenizers and corpora built on the fly (no downloads)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from torchrun_harness import REPO, run_command

WORDS = (
    "the a of memory cache kernel thread process network packet protocol compiler parser "
    "token layer model gradient river mountain forest music language history ünïcødé 42 7"
).split()


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def random_texts(count: int, seed: int = 0, low: int = 3, high: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(count)
    ]


def sentencepiece_tokenizer(directory: Path, vocab_size: int = 320) -> Path:
    """Train a tiny sentencepiece model with tools/train_tokenizer.py; returns its directory."""
    corpus = write_jsonl(
        directory.parent / f"{directory.name}_corpus.jsonl",
        [{"text": t} for t in random_texts(400, seed=1)],
    )
    run_command(
        [
            sys.executable,
            str(REPO / "tools" / "train_tokenizer.py"),
            "--input",
            str(corpus),
            "--vocab-size",
            str(vocab_size),
            "--output",
            str(directory),
        ]
    )
    return directory


def hf_tokenizer(directory: Path) -> Path:
    """A byte-level BPE tokenizer saved as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(random_texts(400, seed=2), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>").save_pretrained(
        directory
    )
    return directory
