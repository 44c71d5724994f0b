"""Token sampling shared by test processes and torchrun workers (same seed, same tokens)."""

import torch


def sample_tokens(batch: int, seq: int, vocab: int, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
