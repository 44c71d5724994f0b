"""Peak memory of checkpoint conversion and expansion versus the model's size.

Builds a random Llama-style model of a few hundred MB (the ``bench-llama-16`` preset scaled up),
saves it with transformers, and runs the three streaming commands, each in a fresh child
process:

1. ``tools/convert_hf.py --hf-dir`` (HF -> megatron),
2. ``tools/expand_ckpt.py --uniform --k 4`` (megatron -> expanded megatron),
3. ``tools/convert_hf.py --to-hf`` (megatron -> HF).

How it is measured: a small wrapper process starts the command with ``subprocess.run`` and,
once it has exited, reads ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, the peak resident
set size of the command (the kernel's high-water mark, so no sampling can miss a short spike).
The same is done for a child that only imports the converter, whose peak (interpreter, torch,
megatron-core, transformers) is subtracted. The remainder is what the command itself held at
its peak, printed as a ratio to the size of the model the command writes.

Expected: HF -> megatron and the expansion hold about one copy of their output model plus one
tensor (the output is built in memory and saved by megatron's ``dist_checkpointing``); the
export holds a few copies of the largest tensor (embedding or head), independent of depth.

  python benchmarks/convert_memory.py [--hidden 768 --layers 12]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_adept.models.presets import build_hf_model
from megatron_adept.workflow.process_memory import run_with_peak_rss

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib(*cmd: str) -> float:
    """Peak RSS of one command run in a fresh child process, in MiB."""
    return run_with_peak_rss(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)[
        1
    ]


def tool(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "tools" / name), *args]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=768, help="hidden size")
    parser.add_argument("--layers", type=int, default=12, help="decoder layers (divisible by 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
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
        sizes = {n: p.numel() * p.element_size() / 2**20 for n, p in model.named_parameters()}
        layer_mib = sum(size for n, size in sizes.items() if n.startswith("model.layers.0."))
        model.save_pretrained(root / "hf")
        del model
        baseline = peak_rss_mib(sys.executable, "-c", "import megatron_adept.checkpoint.convert")
        runs = {
            "HF -> megatron": tool(
                "convert_hf.py", "--hf-dir", str(root / "hf"), "--out", str(root / "ckpt")
            ),
            "expand (+k=4 layers)": tool(
                "expand_ckpt.py", "--load", str(root / "ckpt"), "--out", str(root / "exp"),
                "--uniform", "--k", "4",
            ),
            "megatron -> HF": tool(
                "convert_hf.py", "--to-hf", "--load", str(root / "ckpt"), "--out",
                str(root / "export"),
            ),
        }  # fmt: skip
        peaks = {name: peak_rss_mib(*cmd) for name, cmd in runs.items()}
    model_mib = sum(sizes.values())
    outputs = {name: model_mib for name in runs}
    outputs["expand (+k=4 layers)"] = model_mib + 4 * layer_mib
    print(f"model size (fp32)          {model_mib:8.1f} MiB")
    print(f"one decoder layer          {layer_mib:8.1f} MiB")
    print(f"largest tensor             {max(sizes.values()):8.1f} MiB")
    print(f"peak RSS, imports only     {baseline:8.1f} MiB")
    print(f"{'command':24} {'peak RSS':>9} {'- imports':>10} {'output model':>13} {'ratio':>6}")
    for name, peak in peaks.items():
        extra, output = peak - baseline, outputs[name]
        print(f"{name:24} {peak:9.1f} {extra:10.1f} {output:13.1f} {extra / output:5.2f}x")


if __name__ == "__main__":
    main()
