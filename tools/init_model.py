"""Write a randomly initialised Hugging Face model for a named preset, with a tokenizer.

  python tools/init_model.py --preset demo-llama --tokenizer TOK --out DIR [--seed 0]

The vocabulary size follows the tokenizer. Used to pretrain the quickstart's small base model
from scratch, so that the rest of the pipeline starts from an HF directory like a user's.
"""

from dataclasses import dataclass

from megatron_adept.checkpoint.atomic import atomic_output_dir
from megatron_adept.config.cli import arg, build_parser, extract, run_cli
from megatron_adept.data.tokenizer import load_tokenizer
from megatron_adept.models.presets import PRESETS, build_hf_model


@dataclass
class InitModelConfig:
    """Preset, tokenizer and output directory."""

    out: str = arg(help="Output Hugging Face directory.")
    tokenizer: str = arg(help="Tokenizer (sentencepiece file or directory) to ship with the model.")
    preset: str = arg("demo-llama", "Architecture preset.", choices=tuple(PRESETS))
    seed: int = arg(0, "Initialisation seed.")
    overwrite: bool = arg(False, "Replace a non-empty output directory.")


def main() -> None:
    config = extract(build_parser(__doc__, InitModelConfig).parse_args(), InitModelConfig)
    tokenizer = load_tokenizer(config.tokenizer)
    model = build_hf_model(
        config.preset,
        seed=config.seed,
        vocab_size=tokenizer.vocab_size,
        bos_token_id=getattr(tokenizer, "bos_id", None),
        eos_token_id=tokenizer.eos_id,
    )
    with atomic_output_dir(config.out, config.overwrite) as out:
        model.save_pretrained(out)
        tokenizer.save(out)
    print(f"wrote {config.out}: {config.preset}, vocab {tokenizer.vocab_size}")


if __name__ == "__main__":
    run_cli(main)
