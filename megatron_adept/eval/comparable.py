"""Checks that several checkpoints can be scored on the same token ids."""

from __future__ import annotations

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.data.tokenizer import Tokenizer
from megatron_adept.errors import CheckpointError


def check_shared_vocabulary(metas: dict[str, CheckpointMeta], tokenizer: Tokenizer) -> None:
    """Refuse checkpoints of different vocabularies, or a tokenizer with ids beyond them.

    Args:
        metas: checkpoint path -> its metadata.
        tokenizer: the tokenizer the data is encoded with.
    """
    sizes = {path: meta.arch.vocab_size for path, meta in metas.items()}
    first = next(iter(sizes))
    for path, size in sizes.items():
        if size != sizes[first]:
            raise CheckpointError(
                f"checkpoints have different vocabularies: {first!r} has {sizes[first]} tokens, "
                f"{path!r} has {size}"
            )
    if tokenizer.vocab_size > sizes[first]:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the vocabulary of {first!r} "
            f"has only {sizes[first]}"
        )
