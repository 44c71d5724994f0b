"""Convert Hugging Face checkpoints to megatron-core and back.

  python tools/convert_hf.py --hf-dir DIR --out CKPT [--dtype bf16]
      [--expand-layers 22,23,25,27 | --importance importance.json --k 4 | --uniform-expand 4]
  python tools/convert_hf.py --to-hf --load CKPT --out DIR [--dtype bf16]

The megatron checkpoint loads at any tensor/pipeline/data-parallel layout. With an expansion
option the selected layers are duplicated on the way (function-preserving copies right after
their originals), exactly as tools/expand_ckpt.py does on a megatron checkpoint. The export
loads with transformers.AutoModelForCausalLM.from_pretrained(DIR) and keeps the layer map in
adept_layer_map.json. Runs in one process, on CPU, streaming tensor by tensor.
"""
# ruff: noqa: E402

import os

# A whole model at TP=1 rarely fits one GPU: conversion runs in host memory on any node.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

from megatron_adept.checkpoint.convert import (
    ConvertConfig,
    convert_hf_to_mcore,
    convert_mcore_to_hf,
)
from megatron_adept.config.cli import build_parser, extract, run_cli
from megatron_adept.errors import AdeptError
from megatron_adept.expansion.plan import ConvertExpansion
from megatron_adept.models.archs import ModelArch
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import get_logger, setup_logging

logger = get_logger(__name__)


def main() -> None:
    args = build_parser(__doc__, ConvertConfig, ConvertExpansion).parse_args()
    setup_logging()
    config, expansion = extract(args, ConvertConfig), extract(args, ConvertExpansion)
    try:
        if config.to_hf:
            if expansion.requested:
                raise AdeptError("expansion options apply only when converting from Hugging Face")
            convert_mcore_to_hf(
                config.load, config.out, config.dtype, config.overwrite, config.max_shard_bytes
            )
        else:
            plan = expansion.plan(ModelArch.from_hf_dir(config.hf_dir).num_layers)
            layer_map = None if plan is None else plan.layer_map()
            if plan is not None:
                logger.info("copies of layers %s (%s)", list(plan.selected), plan.how)
            convert_hf_to_mcore(
                config.hf_dir, config.out, config.dtype, layer_map, config.overwrite
            )
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
