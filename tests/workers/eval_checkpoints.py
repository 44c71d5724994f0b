"""Build the checkpoints of tests/eval_fixtures.py in one process.

argv: ROOT. Writes under ROOT:
  tokenizer/            sentencepiece model (vocabulary <= eval_fixtures.VOCAB)
  base, base_hf         tiny-llama converted from HF, and its --to-hf export
  expanded              base with copies of COPIED_LAYERS (function preserving)
  adapted_a, adapted_b  expanded with the copy layers perturbed (as if trained on two domains)
  adapted_a_hf          export of adapted_a
  other_base            adapted_a with one original tensor changed (a different base)
  complete              marker: everything above exists
"""

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_fixtures import sentencepiece_tokenizer  # noqa: E402
from eval_fixtures import COPIED_LAYERS, VOCAB  # noqa: E402

from megatron_adept.checkpoint.convert import convert_hf_to_mcore, convert_mcore_to_hf  # noqa: E402
from megatron_adept.checkpoint.mcore_io import load_model, save_model  # noqa: E402
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR  # noqa: E402
from megatron_adept.config.parallel import ParallelConfig  # noqa: E402
from megatron_adept.expansion.plan import from_layer_list  # noqa: E402
from megatron_adept.models.presets import build_hf_model  # noqa: E402
from megatron_adept.parallel import runtime  # noqa: E402

NOISE = 0.01


@torch.no_grad()
def derive(source: Path, out: Path, seed: int, original_change: str | None = None) -> None:
    """Copy ``source`` with its copy layers perturbed (and optionally one original tensor)."""
    model, meta = load_model(source, ParallelConfig())
    gen = torch.Generator().manual_seed(seed)
    prefixes = tuple(f"decoder.layers.{i}." for i in meta.layer_map.copy_indices)
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.add_(torch.randn(param.shape, generator=gen) * NOISE)
    if original_change is not None:
        dict(model.named_parameters())[original_change].add_(1e-3)
    save_model(model, out, meta)
    shutil.copytree(source / TOKENIZER_DIR, out / TOKENIZER_DIR)


def main() -> None:
    root = Path(sys.argv[1])
    tokenizer = sentencepiece_tokenizer(root / "tokenizer", vocab_size=VOCAB)
    hf = root / "hf_base"
    build_hf_model("tiny-llama", seed=0, vocab_size=VOCAB).save_pretrained(hf)
    shutil.copy(tokenizer / "tokenizer.model", hf / "tokenizer.model")
    with runtime.single_process():
        convert_hf_to_mcore(hf, root / "base")
        plan = from_layer_list(",".join(map(str, COPIED_LAYERS)), 4)
        convert_hf_to_mcore(hf, root / "expanded", expansion=plan.layer_map())
        derive(root / "expanded", root / "adapted_a", seed=1)
        derive(root / "expanded", root / "adapted_b", seed=2)
        derive(root / "expanded", root / "other_base", 1, "decoder.layers.0.mlp.linear_fc2.weight")
        convert_mcore_to_hf(root / "base", root / "base_hf")
        convert_mcore_to_hf(root / "adapted_a", root / "adapted_a_hf")
    (root / "complete").touch()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
