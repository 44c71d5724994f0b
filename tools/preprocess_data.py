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

from megatron_adept.config.cli import build_parser, extract, run_cli
from megatron_adept.data.preprocess import PreprocessConfig, preprocess
from megatron_adept.data.tokenizer import TokenizerConfig, resolve_tokenizer
from megatron_adept.parallel.log import get_logger, setup_logging

logger = get_logger("preprocess_data")


def main() -> None:
    args = build_parser(__doc__, PreprocessConfig, TokenizerConfig).parse_args()
    config = extract(args, PreprocessConfig)
    tokenizer = resolve_tokenizer(extract(args, TokenizerConfig).tokenizer, None)
    setup_logging()
    summary = preprocess(config, tokenizer)
    rate = summary.tokens / max(summary.seconds, 1e-9)
    logger.info(
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
