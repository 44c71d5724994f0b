"""Peak memory of HF -> megatron conversion versus the model's size.

Builds a random Llama-style model of a few hundred MB, saves it with transformers, converts it
with tools/convert_hf.py in a child process, and prints the child's peak resident set size
(``ru_maxrss`` of the finished child) next to the model size and to the peak RSS of a child
that only imports the converter (interpreter + torch + megatron-core). The converter streams:
tensors are read one at a time into an uninitialised model, so the extra memory should stay
close to one copy of the model, not two.

  python benchmarks/convert_memory.py [--hidden 768 --layers 12]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_adept.models.presets import build_hf_model

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of one child process, in MiB (each measurement in a fresh interpreter)."""
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_hf_model(
            "bench-llama-16",
            num_hidden_layers=args.layers,
            hidden_size=args.hidden,
            intermediate_size=args.hidden * 8 // 3 // 64 * 64,
            num_attention_heads=args.hidden // 64,
            num_key_value_heads=args.hidden // 256,
            head_dim=64,
            vocab_size=16384,
        )
        size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        model.save_pretrained(Path(tmp) / "hf")
        del model
        baseline = peak_rss_mb([sys.executable, "-c", "import megatron_adept.checkpoint.convert"])
        peak = peak_rss_mb(
            [
                sys.executable,
                str(REPO / "tools" / "convert_hf.py"),
                "--hf-dir",
                str(Path(tmp) / "hf"),
                "--out",
                str(Path(tmp) / "ckpt"),
            ]
        )
    print(f"model size                     {size_mb:8.1f} MiB")
    print(f"peak RSS, imports only         {baseline:8.1f} MiB")
    print(f"peak RSS, conversion           {peak:8.1f} MiB")
    print(f"(conversion - imports) / model {(peak - baseline) / size_mb:8.2f}x")


if __name__ == "__main__":
    main()
