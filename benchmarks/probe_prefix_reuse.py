"""Masking probe cost: naive (every variant from the embeddings) versus prefix reuse.

Runs both, side by side in one process, on the same random model (preset bench-llama-16) and
probe batches, and prints wall time, decoder-layer forwards per micro-batch, their ratios, and
the largest difference between the two sets of layer scores (which must agree). Naive runs
megatron's forward-only schedule once per variant: L + 1 passes, L + L (L - 1) = L^2 layer forwards.
Prefix reuse starts the variant of layer l from the cached input of layer l: L + L (L - 1) / 2
layer forwards, about half. Embedding and output layer run L + 1 times in both.

  python benchmarks/probe_prefix_reuse.py [--layers 16 --seq-length 256 --batches 4]
"""

import argparse
import time

import torch

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_model
from megatron_adept.models.pipeline import MicroBatch
from megatron_adept.models.presets import preset_config
from megatron_adept.models.units import decoder_layers
from megatron_adept.parallel import runtime
from megatron_adept.probe.layer_importance import masking_probe


def random_batches(vocab: int, count: int, seq_length: int) -> list[MicroBatch]:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, vocab, (2, seq_length + 1), generator=gen)
        batches.append(MicroBatch(ids[:, :-1], ids[:, 1:], torch.ones(2, seq_length)))
    return batches


def count_layer_forwards(model: torch.nn.Module) -> list[int]:
    """A one-element counter of decoder layers actually computed (bypassed ones skip attention)."""
    counter = [0]

    def hook(module, args, kwargs):
        counter[0] += 1

    for layer in decoder_layers(model):
        layer.self_attention.register_forward_pre_hook(hook, with_kwargs=True)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (>= 16)")
    parser.add_argument("--seq-length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batches", type=int, default=4, help="micro-batches of 2 sequences")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each (best kept)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (more than free cores distorts timing)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parallel = ParallelConfig()
    runtime.initialize(parallel)
    arch = ModelArch.from_hf_config(preset_config("bench-llama-16", num_hidden_layers=args.layers))
    model = build_model(arch, parallel)
    batches = random_batches(arch.vocab_size, args.batches, args.seq_length)
    counter = count_layer_forwards(model)
    rows = {}
    for _ in range(args.repeats):  # alternate the two and keep each one's best time
        for name, reuse in (("naive", False), ("prefix reuse", True)):
            counter[0] = 0
            start = time.perf_counter()
            result = masking_probe(model, batches, reuse_prefix=reuse)
            seconds = min(time.perf_counter() - start, rows.get(name, (float("inf"),))[0])
            rows[name] = (seconds, counter[0] // len(batches), result)
    runtime.teardown()

    (naive_s, naive_fw, naive), (reuse_s, reuse_fw, reuse) = rows.values()
    diff = max(abs(a - b) for a, b in zip(naive.layer_scores, reuse.layer_scores, strict=True))
    print(f"{arch.num_layers} layers, hidden {arch.hidden_size}, vocab {arch.vocab_size}")
    print(
        f"{args.batches} micro-batches of 2 x {args.seq_length} tokens, 1 process, "
        f"CPU x {args.threads} thread(s)"
    )
    print(f"{'':14} {'seconds':>9} {'layer forwards / micro-batch':>30}  (best of {args.repeats})")
    for name, (seconds, forwards, _) in rows.items():
        print(f"{name:14} {seconds:9.2f} {forwards:30d}")
    print(f"{'ratio':14} {naive_s / reuse_s:8.2f}x {naive_fw / reuse_fw:29.2f}x")
    print(f"largest layer-score difference naive vs prefix reuse: {diff:.2e}")


if __name__ == "__main__":
    main()
