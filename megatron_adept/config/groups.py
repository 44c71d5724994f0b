"""Flags that several tools share, each declared once.

A flag means the same in every tool that has it; only its default may differ, passed by the
tool to its :class:`~megatron_adept.config.cli.Command` (a probe reads 4 sequences per
micro-batch, training 1). Groups are dataclasses; single flags that belong to no group
(``--load``, ``--out``, ``--overwrite``) are field factories, so their help text and type
live here alone.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from typing import Any

from megatron_adept.config.cli import arg, require_positive


def load_flag(default: Any = MISSING) -> Any:
    """``--load``: the checkpoint a tool reads."""
    return arg(
        default,
        "Checkpoint to read: a converted, expanded or trained checkpoint directory, or a "
        "training --save directory, which stands for its latest checkpoint (pretrain_adept.py "
        "resumes it).",
    )


def out_flag(default: Any = MISSING) -> Any:
    """``--out``: where a tool writes its result."""
    return arg(
        default,
        "Where to write the result (see the usage above for what it is); it appears whole "
        "or not at all.",
    )


def overwrite_flag() -> Any:
    """``--overwrite``: permission to replace an existing output."""
    return arg(False, "Replace an existing output instead of refusing it.")


@dataclass
class OutputConfig:
    """Where a tool that writes a directory (checkpoint, model, tokenizer) puts it."""

    out: str = out_flag()
    overwrite: bool = overwrite_flag()


@dataclass
class BatchConfig:
    """Shape of the batches a tool runs through the model."""

    seq_length: int = arg(
        4096,
        "Tokens per sequence: training samples have exactly this many; longer probe and "
        "evaluation items are truncated.",
    )
    micro_batch_size: int = arg(1, "Sequences per forward pass on one data-parallel rank.")

    def __post_init__(self) -> None:
        require_positive(self, "seq_length", "micro_batch_size")


def tokenizer_flag(default: Any = None) -> Any:
    """``--tokenizer``: which tokenizer turns raw text into token ids."""
    return arg(
        default,
        "A sentencepiece .model file, or a directory holding a Hugging Face tokenizer or a "
        "tokenizer.model. Tools that read a checkpoint default to the tokenizer stored in it.",
    )


@dataclass
class TokenizerConfig:
    """Which tokenizer turns raw text into token ids, and whether texts start with BOS."""

    tokenizer: str | None = tokenizer_flag()
    add_bos: bool = arg(
        True,
        "Start every document and every probe and evaluation item with the BOS token when the "
        "tokenizer's own convention adds one (Llama 2/3 and Mistral tokenizers do, SmolLM2's "
        "and Qwen's do not); --no-add-bos never adds it.",
    )


def plot_flag() -> Any:
    """``--plot``: an optional figure beside the result."""
    return arg(None, "Also write a PNG figure of the result (see the usage above).")


def eval_data_flag() -> Any:
    """``--data``: what an evaluation tool scores."""
    return arg(help="Evaluation data, JSONL (see the usage above for the item format).")


def probe_data_flag(default: Any = MISSING) -> Any:
    """``--probe-data``: the general-competence corpus of Stage 1 and of Stage 2's refreshes."""
    return arg(
        default,
        'General-competence probe corpus, JSONL: {"text": ...} items (every token counts) or '
        '{"prompt": ..., "answer": ...} items (only answer tokens count).',
    )


def importance_flag() -> Any:
    """``--importance``: a Stage-1 result."""
    return arg(
        None,
        "A Stage-1 importance.json (tools/probe_importance.py): expansion duplicates its --k "
        "least important layers; --mode no-stage1 trains its selected layers.",
    )


def k_flag() -> Any:
    """``--k``: how many layers Stage 1 selects and expansion duplicates."""
    return arg(
        None,
        "Number of layers to select and duplicate (probe: default the suggested k; expansion: "
        "with --importance or --uniform).",
    )


def seed_flag(default: int) -> Any:
    """``--seed``: the one seed of a run's randomness."""
    return arg(default, "Random seed (new weights, data order, dropout).")


def base_flag() -> Any:
    """``--base``: the checkpoint others derive from."""
    return arg(
        help="The base checkpoint the others were expanded and trained from (token_shift: the "
        "model whose ranks are reported; merging: the source of the original layers)."
    )
