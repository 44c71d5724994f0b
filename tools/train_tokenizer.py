"""Train a sentencepiece tokenizer on JSONL text.

  python tools/train_tokenizer.py --input A.jsonl [B.jsonl ...] --vocab-size 2048 --output DIR

Writes DIR/tokenizer.model, loadable wherever a tokenizer is expected (--tokenizer DIR or the
file itself). Byte fallback and identity normalisation make every text round-trip exactly.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from megatron_adept.checkpoint.atomic import atomic_output_dir
from megatron_adept.config.cli import arg, build_parser, extract, run_cli
from megatron_adept.data.jsonl import read_jsonl, require_str
from megatron_adept.data.tokenizer import SENTENCEPIECE_FILE
from megatron_adept.errors import DataError


@dataclass
class TokenizerTrainingConfig:
    """Corpus and model of the sentencepiece training."""

    input: list[str] = arg(help="JSONL files to train on.", default_factory=list)
    output: str = arg("tokenizer", "Output directory for tokenizer.model.")
    json_keys: list[str] = arg(help="Keys holding text.", default_factory=lambda: ["text"])
    vocab_size: int = arg(2048, "Vocabulary size.")
    model_type: str = arg("bpe", "Sentencepiece model type.", choices=("bpe", "unigram"))
    overwrite: bool = arg(False, "Replace a non-empty output directory.")

    def __post_init__(self) -> None:
        if not self.input:
            raise DataError("--input needs at least one JSONL file")
        if self.vocab_size < 64:
            raise DataError(f"--vocab-size={self.vocab_size} is too small (minimum 64)")


def main() -> None:
    config = extract(
        build_parser(__doc__, TokenizerTrainingConfig).parse_args(), TokenizerTrainingConfig
    )
    import sentencepiece

    with (
        tempfile.TemporaryDirectory() as scratch,
        atomic_output_dir(config.output, config.overwrite) as out,
    ):
        corpus = Path(scratch) / "corpus.txt"
        lines = 0
        with corpus.open("w", encoding="utf-8") as handle:
            for path in config.input:
                for number, item in read_jsonl(path):
                    for key in config.json_keys:
                        text = require_str(item, key, f"{path}:{number}")
                        handle.write(text.replace("\n", " ") + "\n")
                        lines += 1
        if lines == 0:
            raise DataError(f"no text in {', '.join(config.input)}")
        try:
            sentencepiece.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=str(out / "tokenizer"),
                vocab_size=config.vocab_size,
                model_type=config.model_type,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                split_digits=True,
                character_coverage=1.0,
                bos_id=1,
                eos_id=2,
                unk_id=0,
                pad_id=-1,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            raise DataError(f"sentencepiece training failed: {str(exc).splitlines()[-1]}") from None
        (out / "tokenizer.vocab").unlink()
    model = Path(config.output) / SENTENCEPIECE_FILE
    print(f"wrote {model} ({config.vocab_size} pieces, trained on {lines} lines)")


if __name__ == "__main__":
    run_cli(main)
