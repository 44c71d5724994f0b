"""Convert Hugging Face checkpoints to megatron-core and back.

  python tools/convert_hf.py --hf-dir DIR --out CKPT [--expand-layers 22,23 | --importance
      importance.json --k 4 | --uniform-expand 4] [--dtype bf16]
  python tools/convert_hf.py --to-hf --load CKPT --out DIR

The megatron checkpoint loads at any tensor/pipeline/data-parallel layout. With an expansion
option the selected layers are duplicated on the way (function-preserving copies right after
their originals), exactly as tools/expand_ckpt.py does on a megatron checkpoint.
"""

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
from megatron_adept.parallel.log import setup_logging


def main() -> None:
    args = build_parser(__doc__, ConvertConfig, ConvertExpansion).parse_args()
    config, expansion = extract(args, ConvertConfig), extract(args, ConvertExpansion)
    setup_logging()
    try:
        if config.to_hf:
            if any(v is not None for v in vars(expansion).values()):
                raise AdeptError("expansion options apply only when converting from Hugging Face")
            convert_mcore_to_hf(
                config.load,
                config.out,
                config.dtype,
                config.overwrite,
                int(config.max_shard_size_gb * 2**30),
            )
        else:
            plan = expansion.plan(ModelArch.from_hf_dir(config.hf_dir).num_layers)
            convert_hf_to_mcore(config.hf_dir, config.out, config.dtype, plan, config.overwrite)
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
