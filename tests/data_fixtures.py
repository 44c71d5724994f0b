"""Small tokenizers and corpora built on the fly (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from megatron_adept.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

WORDS = (
    "the a of memory cache kernel thread process network packet protocol compiler parser "
    "token layer model gradient river mountain forest music language history ünïcødé 42 7"
).split()

TRICKY_TEXTS = [
    " leading space",
    "trailing space ",
    "two  spaces\tand a tab",
    "line one\nline two\n\nafter a blank line",
    "unseen: 日本語 ✓ 🙂 Ωmega",
    "digits 31415926 and punctuation!?",
    "spaces before punctuation: don 't , ok . right ?",
]
"""Texts that a tokenizer must round-trip although its training corpus never showed them."""


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def random_texts(count: int, seed: int = 0, low: int = 3, high: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(count)
    ]


def sentencepiece_tokenizer(directory: Path, vocab_size: int = 320) -> Path:
    """Train a tiny sentencepiece model with the project's trainer; returns its directory."""
    corpus = write_jsonl(
        directory.parent / f"{directory.name}_corpus.jsonl",
        [{"text": t} for t in random_texts(400, seed=1)],
    )
    train_tokenizer(
        TokenizerTrainingConfig(input=[str(corpus)], output=str(directory), vocab_size=vocab_size)
    )
    return directory


def hf_tokenizer(directory: Path, bos: bool = False) -> Path:
    """A byte-level BPE tokenizer saved as a Hugging Face tokenizer directory.

    With ``bos`` it also defines ``<s>`` and, like Llama's and Mistral's, prepends it to every
    text it encodes with special tokens; without, it has no BOS at all (like Qwen's).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>", "<s>"] if bos else ["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(random_texts(400, seed=2), trainer)
    specials = {"eos_token": "<eos>"}
    if bos:
        bos_id = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
        specials["bos_token"] = "<s>"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials).save_pretrained(directory)
    return directory
