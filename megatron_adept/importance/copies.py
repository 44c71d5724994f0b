"""Importance of a function-preserving copy: its source layer's, until the copy has moved.

A fresh copy's attention output projection (``linear_proj``) and MLP down projection
(``linear_fc2``) are zero, and every other unit of the copy reaches the loss only through
them. So every unit of the copy has θ·∂L/∂θ = 0 exactly: o_proj and down_proj because θ = 0,
the rest because ∂L/∂θ = 0 (|θ|·|∂L_b/∂θ| likewise). Normalising those zeros says nothing
about the units. ADEPT's own argument (App. F.1) is that a fresh copy and its original act as
one block whose importance is the original's; so while a copy is function-preserving, each of
its units takes the importance of the same unit of its source layer, measured on the expanded
model (``--copy-importance source``). Once a step has moved either projection, the copy's own
scores are informative and are used.

The test is exact and layout-independent: a copy is function-preserving when every element of
its residual writers (:data:`~megatron_adept.checkpoint.layer_copies.RESIDUAL_WRITERS`) is
zero on every tensor-parallel shard, decided by one maximum over all ranks so that every rank
agrees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from megatron_adept.checkpoint.layer_copies import RESIDUAL_WRITERS, original_positions
from megatron_adept.checkpoint.metadata import LayerMap
from megatron_adept.importance.unit_importance import UnitKey
from megatron_adept.models.units import decoder_layers, layer_index
from megatron_adept.parallel.collectives import all_reduce_, comm_device


def function_preserving(model: torch.nn.Module, copies: Sequence[int]) -> list[int]:
    """The layers among ``copies`` whose residual writers are exactly zero everywhere.

    Collective over the whole world; ``copies`` (0-based global layers) must be the same on
    every rank.
    """
    largest = torch.zeros(len(copies), dtype=torch.float32, device=comm_device())
    for layer in decoder_layers(model):
        index = layer_index(layer)
        if index not in copies:
            continue
        params = dict(layer.named_parameters())
        writers = [params[name].detach() for name in RESIDUAL_WRITERS if name in params]
        values = torch.stack([w.abs().amax().float() for w in writers])
        largest[copies.index(index)] = values.amax().to(largest.device)  # NaN stays NaN
    all_reduce_(largest, op=torch.distributed.ReduceOp.MAX)
    return [copy for copy, value in zip(copies, largest.tolist(), strict=True) if value == 0.0]


def source_layers(layer_map: LayerMap, copies: Iterable[int]) -> dict[int, int]:
    """Copy layer -> position of the original it was made from (0-based, current model)."""
    positions = original_positions(layer_map)
    return {copy: positions[layer_map.layers[copy].source] for copy in copies}


def with_source_importance(
    scores: Mapping[UnitKey, float], keys: Iterable[UnitKey], sources: Mapping[int, int]
) -> dict[UnitKey, float]:
    """``scores`` of ``keys``, the units of every copy in ``sources`` taking its source's."""
    return {(layer, unit): scores[(sources.get(layer, layer), unit)] for layer, unit in keys}
