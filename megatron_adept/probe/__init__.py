"""Stage 1 of ADEPT: which decoder layers matter least for general competence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from megatron_adept.config.cli import arg
from megatron_adept.errors import AdeptError
from megatron_adept.importance.unit_importance import unit_importance
from megatron_adept.models.forward import MicroBatch
from megatron_adept.probe.layer_importance import masking_probe
from megatron_adept.probe.methods import GRADIENT_METHODS
from megatron_adept.probe.selection import select_layers, suggested_k

METHODS = ("masking", "cumulative", "rank", "fisher")


@dataclass
class ProbeConfig:
    """What tools/probe_importance.py measures and where it writes."""

    load: str = arg(help="Checkpoint to probe (converted from Hugging Face or trained).")
    probe_data: str = arg(help="General-competence JSONL: {'text'} or {'prompt', 'answer'} items.")
    out: str = arg("importance.json", "Output JSON.")
    method: str = arg("masking", "Layer importance method.", choices=METHODS)
    k: int | None = arg(None, "Number of layers to select (default: the suggested k).")
    plot: str | None = arg(None, "Write a PNG heatmap of unit importance with layer bars.")
    seq_length: int = arg(512, "Tokens per probe sequence (longer items are truncated).")
    micro_batch_size: int = arg(4, "Sequences per forward pass.")
    tokenizer: str | None = arg(None, "Tokenizer (default: the one stored beside --load).")
    seed: int = arg(1234, "Random seed.")

    def __post_init__(self) -> None:
        if self.seq_length < 2 or self.micro_batch_size < 1:
            raise AdeptError(
                f"--seq-length={self.seq_length} must be >= 2 and --micro-batch-size="
                f"{self.micro_batch_size} >= 1"
            )
        if self.k is not None and self.k <= 0:
            raise AdeptError(f"--k={self.k} must be positive")


def probe_layers(
    model: torch.nn.Module, batches: list[MicroBatch], num_layers: int, method: str, k: int | None
) -> dict[str, Any]:
    """Everything ``importance.json`` holds (identical on every rank)."""
    if k is not None and k > num_layers:
        raise AdeptError(f"--k={k} is larger than the number of layers ({num_layers})")
    units = unit_importance(model, batches)
    if method == "masking":
        masking = masking_probe(model, batches, num_layers)
        scores, base_loss, tokens = masking.layer_scores, masking.base_loss, masking.counted_tokens
        extra = {"masked_losses": masking.masked_losses}
    else:
        scores = GRADIENT_METHODS[method](units, num_layers)
        base_loss, tokens, extra = units.loss, None, {}
    used_k, selected = select_layers(scores, k)
    unit_scores = [{} for _ in range(num_layers)]
    for (layer, unit), value in units.mean().items():
        unit_scores[layer][unit] = value
    return {
        "method": method,
        "base_loss": base_loss,
        "layer_scores": scores,
        "unit_scores": unit_scores,
        "suggested_k": suggested_k(scores),
        "k": used_k,
        "selected": selected,
        "num_layers": num_layers,
        "counted_tokens": tokens,
        **extra,
    }
