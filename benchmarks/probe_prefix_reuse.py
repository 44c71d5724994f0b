"""Masking probe cost: naive (every variant from the embedding) versus prefix reuse.

Runs both on the same random 16-layer model and probe batches, in one process, and prints the
wall time of each and their ratio. With prefix reuse the masked variant of layer l starts from
the cached input of layer l, so a batch costs about L^2/2 layer forwards instead of L^2.

  python benchmarks/probe_prefix_reuse.py [--layers 16 --seq-length 256 --batches 4]
"""

import argparse
import time

import torch

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_model
from megatron_adept.models.forward import MicroBatch
from megatron_adept.models.presets import preset_config
from megatron_adept.parallel import runtime
from megatron_adept.probe.layer_importance import masking_probe


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    runtime.initialize(ParallelConfig())
    arch = ModelArch.from_hf_config(preset_config("bench-llama-16", num_hidden_layers=args.layers))
    model = build_model(arch, ParallelConfig())
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(0, arch.vocab_size, (2, args.seq_length + 1), generator=gen)
        batches.append(MicroBatch(ids[:, :-1], ids[:, 1:], torch.ones(2, args.seq_length)))
    times = {}
    for reuse in (False, True):
        start = time.perf_counter()
        result = masking_probe(model, batches, arch.num_layers, reuse_prefix=reuse)
        times[reuse] = time.perf_counter() - start
        scores = result.layer_scores
    print(f"{arch.num_layers} layers, {args.batches} batches of 2 x {args.seq_length} tokens")
    print(f"naive masking probe      {times[False]:8.2f} s")
    print(f"prefix-reusing probe     {times[True]:8.2f} s")
    ratio = times[False] / times[True]
    print(f"speed-up                 {ratio:8.2f}x  (layer forwards: about 2x fewer)")
    print(f"layer scores (last run)  {[round(s, 4) for s in scores]}")
    runtime.teardown()


if __name__ == "__main__":
    main()
