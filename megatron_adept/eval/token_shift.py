"""Token distribution shift between a base model and its adapted version (ADEPT App. I).

Both models read the same texts (teacher forcing). At every counted position t (every target
of a ``{"text"}`` item, the answer targets of a ``{"prompt", "answer"}`` item) the adapted
model's greedy token o_t is ranked in the base model's distribution: its rank η_t is one plus
the number of tokens the base model scores strictly higher. Positions are unshifted (η = 1),
marginal (1 < η ≤ 3) or shifted (η > 3).

The rank-improvement ratio of a shifted position is base_rank / adapted_rank; o_t is the adapted
model's top token, so its adapted rank is 1 and the ratio is η_t. Shifted tokens are listed by
their mean ratio over their shifted positions (then by how often they shifted, then by id).

The two models run one after the other on the same layout, so only one is in memory: the
adapted pass leaves o_t on the last pipeline stage, where the base pass ranks it.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state

from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import DataError
from megatron_adept.eval.vocab_parallel import greedy_tokens, token_ranks
from megatron_adept.models.pipeline import MicroBatch, data_parallel_share, forward_results
from megatron_adept.parallel.collectives import all_gather_objects
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)

CLASSES = ("unshifted", "marginal", "shifted")
MARGINAL_MAX_RANK = 3
"""Ranks 2..3 are marginal, higher ranks shifted."""


def shift_class(rank: int) -> str:
    """unshifted, marginal or shifted, for a 1-based base rank η."""
    if rank == 1:
        return "unshifted"
    return "marginal" if rank <= MARGINAL_MAX_RANK else "shifted"


@dataclass
class TokenShift:
    """The adapted greedy token and its base rank at every counted position."""

    tokens: torch.Tensor
    """o_t, ``[n]``."""
    ranks: torch.Tensor
    """η_t, ``[n]``."""

    def counts(self) -> dict[str, int]:
        unshifted = int((self.ranks == 1).sum())
        shifted = int((self.ranks > MARGINAL_MAX_RANK).sum())
        return {
            "unshifted": unshifted,
            "marginal": len(self.ranks) - unshifted - shifted,
            "shifted": shifted,
        }

    def percentages(self) -> dict[str, float]:
        total = max(len(self.ranks), 1)
        return {name: 100.0 * count / total for name, count in self.counts().items()}

    def top_shifted(self, top: int) -> list[dict[str, float]]:
        """Shifted tokens by mean rank-improvement ratio, then count, then id."""
        ratios: dict[int, list[int]] = defaultdict(list)
        for token, rank in zip(self.tokens.tolist(), self.ranks.tolist(), strict=True):
            if rank > MARGINAL_MAX_RANK:
                ratios[token].append(rank)
        listed = [
            {"token_id": token, "count": len(values), "ratio": sum(values) / len(values)}
            for token, values in ratios.items()
        ]
        listed.sort(key=lambda t: (-t["ratio"], -t["count"], t["token_id"]))
        return listed[:top]

    def summary(self, top: int, decode: Callable[[list[int]], str]) -> dict[str, Any]:
        return {
            "positions": len(self.ranks),
            "counts": self.counts(),
            "percent": self.percentages(),
            "top_shifted": [
                {"token": decode([entry["token_id"]]), **entry} for entry in self.top_shifted(top)
            ],
        }


def _keeps_results() -> bool:
    return (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
    )


def _run(
    ckpt: str,
    parallel: ParallelConfig,
    batches: list[MicroBatch],
    params_dtype: torch.dtype,
    per_position: Callable[[MicroBatch, torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """Load ``ckpt`` and map every micro-batch's logits to a ``[b, s]`` result (last stage)."""
    model, _ = load_model(ckpt, parallel, params_dtype)
    model.eval()
    with torch.no_grad():
        results = forward_results(model, batches, per_position, with_labels=False)
    del model
    gc.collect()
    return results


def token_shift(
    base: str,
    adapted: str,
    parallel: ParallelConfig,
    batches: list[MicroBatch],
    params_dtype: torch.dtype = torch.float32,
) -> TokenShift:
    """Collective: greedy tokens of ``adapted`` ranked by ``base``; the result is on every rank.

    Data-parallel ranks take every dp-th micro-batch.
    """
    mine = data_parallel_share(batches)
    logger.info("adapted model %s: greedy tokens of %d micro-batches", adapted, len(mine))
    greedy = _run(adapted, parallel, mine, params_dtype, lambda _, logits: greedy_tokens(logits))
    if greedy:
        mine = [
            MicroBatch(b.tokens, g.cpu(), b.loss_mask) for b, g in zip(mine, greedy, strict=True)
        ]
    logger.info("base model %s: ranks of those tokens", base)
    ranks = _run(
        base,
        parallel,
        mine,
        params_dtype,
        lambda batch, logits: token_ranks(logits, batch.labels.to(logits.device)),
    )
    local = ([], [])
    if _keeps_results():
        for batch, rank in zip(mine, ranks, strict=True):
            counted = batch.loss_mask.bool()
            local[0].append(batch.labels[counted])
            local[1].append(rank.cpu()[counted])
    gathered = all_gather_objects(local)
    tokens = torch.cat([t for part in gathered for t in part[0]])
    if not len(tokens):
        raise DataError("no position to compare: every item is shorter than two tokens")
    return TokenShift(tokens, torch.cat([r for part in gathered for r in part[1]]))


def plot_token_shift(summary: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Shares of the three classes beside the top shifted tokens by rank-improvement ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = summary["top_shifted"]
    fig, (shares, tokens) = plt.subplots(
        1, 2, figsize=(11, max(3.0, 0.3 * len(top) + 1.5)), gridspec_kw={"width_ratios": [1, 2]}
    )
    percent = [summary["percent"][name] for name in CLASSES]
    shares.bar(CLASSES, percent, color=["tab:green", "tab:orange", "tab:red"])
    shares.set_ylabel("% of positions")
    shares.set_ylim(0, 110)
    shares.set_title(f"{summary['positions']} positions")
    for x, value in enumerate(percent):
        shares.text(x, value, f"{value:.2f}%", ha="center", va="bottom")
    labels = [f"{entry['token']!r} ({entry['token_id']})" for entry in top]
    tokens.barh(range(len(top)), [entry["ratio"] for entry in top], color="tab:red")
    tokens.set_yticks(range(len(top)), labels)
    tokens.invert_yaxis()
    tokens.set_xlabel("mean rank improvement (base rank / adapted rank)")
    tokens.set_title("top shifted tokens")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
