"""Tokenize a JSONL corpus into a megatron-core indexed dataset (PREFIX.bin / PREFIX.idx).

  python tools/preprocess_data.py --input FILE.jsonl[.gz] --output-prefix PREFIX \\
      --tokenizer TOK --workers N [--json-keys text] [--window 4096 --stride 3072]
  python tools/preprocess_data.py ... --format sft --prompt-key question \\
      [--reasoning-key cot] --response-key answer

TOK is a sentencepiece .model file or a tokenizer directory (e.g. the tokenizer/ of a
converted checkpoint). An EOS token ends every document. With --window/--stride, documents
longer than the window are stored as windows of at most `window` tokens starting every
`stride` tokens (overlap window - stride), each ending with EOS.
"""

from megatron_adept.config.cli import REQUIRED, Command, run_cli
from megatron_adept.config.groups import TokenizerConfig
from megatron_adept.data.config import PreprocessConfig

COMMAND = Command(__doc__, (PreprocessConfig, TokenizerConfig), defaults={"tokenizer": REQUIRED})


def main() -> None:
    config, tokenizer_config = COMMAND.parse()
    from megatron_adept.data.preprocess import preprocess
    from megatron_adept.data.tokenizer import load_tokenizer, text_prefix
    from megatron_adept.parallel.log import get_logger, setup_logging

    tokenizer = load_tokenizer(tokenizer_config.tokenizer)
    setup_logging()
    summary = preprocess(config, tokenizer, text_prefix(tokenizer, tokenizer_config.add_bos))
    rate = summary.tokens / max(summary.seconds, 1e-9)
    get_logger("preprocess_data").info(
        "wrote %s.bin/.idx: %d documents, %d tokens, %d windows in %.1fs (%.0f tokens/s)",
        config.output_prefix,
        summary.documents,
        summary.tokens,
        summary.windows,
        summary.seconds,
        rate,
    )


if __name__ == "__main__":
    run_cli(main)
