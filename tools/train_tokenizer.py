"""Train a sentencepiece tokenizer on JSONL text.

  python tools/train_tokenizer.py --input A.jsonl [B.jsonl.gz ...] --output DIR \\
      [--json-keys text] [--vocab-size 2048] [--model-type bpe|unigram]

Writes DIR/tokenizer.model, usable wherever a tokenizer is expected (--tokenizer DIR or the
file itself). Byte fallback makes every text round-trip exactly, and the same input always
gives the same file.
"""

from megatron_adept.config.cli import Command, run_cli
from megatron_adept.data.tokenizer_training import TokenizerTrainingConfig

COMMAND = Command(__doc__, (TokenizerTrainingConfig,))


def main() -> None:
    (config,) = COMMAND.parse()
    from megatron_adept.data.tokenizer import SENTENCEPIECE_FILE
    from megatron_adept.data.tokenizer_training import train_tokenizer

    vocab_size = train_tokenizer(config)
    print(f"wrote {config.output}/{SENTENCEPIECE_FILE} ({vocab_size} pieces)")


if __name__ == "__main__":
    run_cli(main)
