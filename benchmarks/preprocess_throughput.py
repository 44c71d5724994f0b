"""Tokenization throughput of tools/preprocess_data.py with 1 versus N workers.

Generates a ~50 MB JSONL corpus, trains a small sentencepiece model on a slice of it, then
preprocesses the corpus once per worker count and prints tokens/s side by side.

  python benchmarks/preprocess_throughput.py [--megabytes 50] [--workers 1 2]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_adept.data.preprocess import PreprocessConfig, preprocess

REPO = Path(__file__).resolve().parents[1]
WORDS = [w.strip(".,") for w in __doc__.split() + (REPO / "README.md").read_text().split()]


def write_corpus(path: Path, megabytes: float) -> None:
    rng = random.Random(0)
    written = 0
    with path.open("w") as handle:
        while written < megabytes * 2**20:
            line = json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(50, 400)))}) + "\n"
            handle.write(line)
            written += len(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, sample = Path(tmp) / "corpus.jsonl", Path(tmp) / "sample.jsonl"
        write_corpus(corpus, args.megabytes)
        write_corpus(sample, 1)
        subprocess.run(
            [
                sys.executable,
                str(REPO / "tools" / "train_tokenizer.py"),
                "--input",
                str(sample),
                "--vocab-size",
                "4000",
                "--output",
                str(Path(tmp) / "tok"),
            ],
            check=True,
        )
        rates = {}
        for workers in args.workers:
            summary = preprocess(
                PreprocessConfig(
                    input=str(corpus),
                    output_prefix=str(Path(tmp) / f"out{workers}"),
                    tokenizer=str(Path(tmp) / "tok"),
                    workers=workers,
                )
            )
            rates[workers] = summary.tokens / summary.seconds
    base = rates[args.workers[0]]
    print(f"corpus {args.megabytes:.0f} MB, {summary.tokens} tokens")
    for workers, rate in rates.items():
        print(f"workers={workers:<3} {rate:12.0f} tokens/s   x{rate / base:.2f}")


if __name__ == "__main__":
    main()
