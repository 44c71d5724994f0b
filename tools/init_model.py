"""Write a randomly initialised Hugging Face model for a named preset, with a tokenizer.

  python tools/init_model.py --preset demo-llama --tokenizer TOK --out DIR [--seed 0]

The vocabulary size follows the tokenizer. Used to pretrain the quickstart's small base model
from scratch, so that the rest of the pipeline starts from an HF directory like a user's.
"""

from dataclasses import dataclass

from megatron_adept.checkpoint.atomic import atomic_output_dir, check_output_dir
from megatron_adept.config.cli import REQUIRED, Command, arg, run_cli
from megatron_adept.config.groups import OutputConfig, seed_flag, tokenizer_flag
from megatron_adept.models.presets import PRESETS


@dataclass
class InitModelConfig:
    """Which architecture, initialised how."""

    tokenizer: str = tokenizer_flag(REQUIRED)
    preset: str = arg("demo-llama", "Architecture preset.", choices=tuple(PRESETS))
    seed: int = seed_flag(0)


COMMAND = Command(__doc__, (InitModelConfig, OutputConfig))


def main() -> None:
    config, output = COMMAND.parse()
    check_output_dir(output.out, output.overwrite)
    from megatron_adept.data.tokenizer import load_tokenizer
    from megatron_adept.models.presets import build_hf_model

    tokenizer = load_tokenizer(config.tokenizer)
    model = build_hf_model(
        config.preset,
        seed=config.seed,
        vocab_size=tokenizer.vocab_size,
        bos_token_id=getattr(tokenizer, "bos_id", None),
        eos_token_id=tokenizer.eos_id,
    )
    with atomic_output_dir(output.out, output.overwrite) as out:
        model.save_pretrained(out)
        tokenizer.save(out)
    print(f"wrote {output.out}: {config.preset}, vocab {tokenizer.vocab_size}")


if __name__ == "__main__":
    run_cli(main)
