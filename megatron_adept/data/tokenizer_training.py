"""Training a sentencepiece tokenizer on JSONL text (a new domain, or the embedded demo).

The model is trained from an in-memory line iterator and written without any file path in
its training spec, so the same corpus and options always give byte-identical files. Byte
fallback and identity normalisation make every text round-trip exactly:
``decode(encode(text)) == text``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

from megatron_adept.checkpoint.atomic import atomic_output_dir, check_output_dir
from megatron_adept.config.cli import arg, require_positive
from megatron_adept.config.groups import overwrite_flag
from megatron_adept.data.config import INPUT_HELP, json_keys_flag
from megatron_adept.data.jsonl import read_jsonl, require_str
from megatron_adept.data.tokenizer import SENTENCEPIECE_FILE
from megatron_adept.errors import DataError

MAX_LINE_BYTES = 1 << 16
"""Longer lines are skipped by sentencepiece (its default limit of 4 KiB drops most
paragraphs of real documents)."""


@dataclass
class TokenizerTrainingConfig:
    """Corpus and model of the sentencepiece training."""

    input: list[str] = arg(help=INPUT_HELP)
    output: str = arg(help="Output directory; receives tokenizer.model.")
    json_keys: list[str] = json_keys_flag()
    vocab_size: int = arg(2048, "Vocabulary size (an upper bound if the corpus is small).")
    model_type: str = arg("bpe", "Sentencepiece model type.", choices=("bpe", "unigram"))
    overwrite: bool = overwrite_flag()

    def __post_init__(self) -> None:
        require_positive(self, "vocab_size")
        check_output_dir(self.output, self.overwrite)


def corpus_lines(config: TokenizerTrainingConfig) -> Iterator[str]:
    """Every non-empty line of every ``--json-keys`` text, file by file in order."""
    for path in config.input:
        for number, item in read_jsonl(path):
            for key in config.json_keys:
                text = require_str(item, key, f"{path}:{number}")
                yield from (line for line in text.splitlines() if line.strip())


def train_tokenizer(config: TokenizerTrainingConfig) -> int:
    """Train on ``config.input`` and write ``config.output``/tokenizer.model.

    Returns:
        The vocabulary size of the written model.
    """
    import sentencepiece

    lines = list(corpus_lines(config))
    if not lines:
        raise DataError(f"no text under keys {config.json_keys} in {', '.join(config.input)}")
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=config.vocab_size,
            hard_vocab_limit=False,
            model_type=config.model_type,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            character_coverage=1.0,
            max_sentence_length=MAX_LINE_BYTES,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0].split("] ", 1)[-1]
        raise DataError(f"sentencepiece training failed (--vocab-size?): {reason}") from None
    with atomic_output_dir(config.output, config.overwrite) as out:
        (out / SENTENCEPIECE_FILE).write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    return processor.get_piece_size()
