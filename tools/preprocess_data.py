"""Tokenize a JSONL corpus into a megatron-core indexed dataset (PREFIX.bin / PREFIX.idx).

  python tools/preprocess_data.py --input FILE.jsonl[.gz] --output-prefix PREFIX \\
      --tokenizer TOK --workers N [--json-keys text] [--window 4096 --stride 3072]
  python tools/preprocess_data.py ... --format sft --prompt-key question \\
      [--reasoning-key cot] --response-key answer

An EOS token ends every document. With --window/--stride, documents longer than the window
are stored as windows starting every `stride` tokens (overlap window - stride).
"""

from megatron_adept.config.cli import build_parser, extract, run_cli
from megatron_adept.data.preprocess import PreprocessConfig, preprocess
from megatron_adept.parallel.log import setup_logging


def main() -> None:
    config = extract(build_parser(__doc__, PreprocessConfig).parse_args(), PreprocessConfig)
    setup_logging()
    summary = preprocess(config)
    print(
        f"{config.output_prefix}: {summary.documents} documents, {summary.tokens} tokens, "
        f"{summary.windows} sequences (windows) in {summary.seconds:.1f}s "
        f"({summary.tokens / max(summary.seconds, 1e-9):.0f} tokens/s)"
    )


if __name__ == "__main__":
    run_cli(main)
