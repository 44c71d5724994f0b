"""Tokenization throughput of tools/preprocess_data.py with 1 versus N workers.

Generates a ~50 MB JSONL corpus of random words, trains a small sentencepiece model on a
slice of it, then preprocesses the whole corpus once per worker count and prints tokens/s
side by side, with the CPU time each run used (on a busy machine the wall-clock rates mostly
measure the share of the CPUs the run got; tokens per CPU-second do not).

  python benchmarks/preprocess_throughput.py [--megabytes 50] [--workers 1 2]
"""

import argparse
import json
import os
import random
import resource
import tempfile
from pathlib import Path

from megatron_adept.data.preprocess import PreprocessConfig, preprocess
from megatron_adept.data.tokenizer import load_tokenizer
from megatron_adept.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
WORDS = sorted({w.strip(".,:;()`'\"*#") for w in (REPO / "README.md").read_text().split()} - {""})


def write_corpus(path: Path, megabytes: float, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        while handle.tell() < megabytes * 2**20:
            words = rng.choices(WORDS, k=rng.randint(50, 400))
            handle.write(json.dumps({"text": " ".join(words)}) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool workers)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=50, help="Corpus size.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, sample = Path(tmp) / "corpus.jsonl", Path(tmp) / "sample.jsonl"
        write_corpus(corpus, args.megabytes, seed=0)
        write_corpus(sample, 1, seed=1)
        train_tokenizer(
            TokenizerTrainingConfig(input=[str(sample)], output=f"{tmp}/tok", vocab_size=4000)
        )
        tokenizer = load_tokenizer(f"{tmp}/tok")
        rows = []
        for workers in args.workers:
            config = PreprocessConfig(
                input=str(corpus), output_prefix=f"{tmp}/out{workers}", workers=workers
            )
            cpu_before = cpu_seconds()
            summary = preprocess(config, tokenizer, on_progress=print)
            rows.append((workers, summary, cpu_seconds() - cpu_before))
    first = rows[0][1]
    base = first.tokens / first.seconds
    print(
        f"corpus {args.megabytes:.0f} MB: {first.documents} documents, {first.tokens} tokens; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    header = ("workers", "seconds", "docs/s", "tokens/s", "speedup", "cpu s", "tokens/cpu-s")
    print("".join(f"{h:>13}" for h in header))
    for workers, summary, cpu in rows:
        rate = summary.tokens / summary.seconds
        values = (
            workers,
            f"{summary.seconds:.1f}",
            f"{summary.documents / summary.seconds:.0f}",
            f"{rate:.0f}",
            f"{rate / base:.2f}x",
            f"{cpu:.1f}",
            f"{summary.tokens / cpu:.0f}",
        )
        print("".join(f"{v:>13}" for v in values))


if __name__ == "__main__":
    main()
