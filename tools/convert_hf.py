"""Convert Hugging Face checkpoints to megatron-core and back.

  python tools/convert_hf.py --hf-dir DIR --out CKPT [--dtype bf16]
      [--layers 22,23,25,27 | --importance importance.json --k 4 | --uniform --k 4]
  python tools/convert_hf.py --to-hf --load CKPT --out DIR [--dtype bf16]

The megatron checkpoint loads at any tensor/pipeline/data-parallel layout. With a layer
selection the selected layers are duplicated on the way (function-preserving copies right
after their originals), exactly as tools/expand_ckpt.py does on a megatron checkpoint. The
export loads with transformers.AutoModelForCausalLM.from_pretrained(DIR) and keeps the layer
map in adept_layer_map.json; --load may be a training --save directory (its latest
checkpoint). Runs in one process, in host memory on the CPU whatever the node (a whole model
rarely fits one GPU), streaming tensor by tensor.
"""

from megatron_adept.checkpoint.config import ConvertConfig
from megatron_adept.checkpoint.resolve import open_checkpoint
from megatron_adept.config.cli import Command, run_cli
from megatron_adept.errors import AdeptError
from megatron_adept.expansion.plan import ExpansionSelection
from megatron_adept.models.archs import ModelArch

COMMAND = Command(__doc__, (ConvertConfig, ExpansionSelection))


def main() -> None:
    config, selection = COMMAND.parse()
    if config.to_hf:
        if selection.mode is not None:
            raise AdeptError("expansion options apply only when converting from Hugging Face")
        checkpoint = open_checkpoint(config.load)
    else:
        num_layers = ModelArch.from_hf_dir(config.hf_dir).num_layers
        plan = None if selection.mode is None else selection.plan(num_layers)
    from megatron_adept.checkpoint.convert import convert_hf_to_mcore, convert_mcore_to_hf
    from megatron_adept.parallel.log import get_logger, setup_logging

    setup_logging()
    if config.to_hf:
        convert_mcore_to_hf(
            checkpoint.path, config.out, config.dtype, config.overwrite, config.max_shard_bytes
        )
    else:
        layer_map = None if plan is None else plan.layer_map()
        if plan is not None:
            get_logger("convert_hf").info("copies of layers %s (%s)", list(plan.selected), plan.how)
        convert_hf_to_mcore(config.hf_dir, config.out, config.dtype, layer_map, config.overwrite)


if __name__ == "__main__":
    run_cli(main)
