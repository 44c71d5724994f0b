"""Function-preserving layer copies: the weights a layer map's ``copy`` entries start with.

A copy is an exact duplicate of its original except for the tensors that write into the
residual stream: the attention output projection (``linear_proj``) and the MLP down projection
(``linear_fc2``), with their biases if any, are zero. The copy then adds nothing to the
residual, so a model with copies computes exactly what the original did (Net2Net-style), while
its q/k/v, norms and gate/up start from trained values.

This lives beside :class:`~megatron_adept.checkpoint.metadata.LayerMap`, which defines what a
copy is, so that every writer of expanded checkpoints shares it: converting from Hugging Face
with expansion and expanding a megatron checkpoint both fill the originals first and then call
:func:`initialize_copies`, and therefore write identical tensors.
"""

from __future__ import annotations

import torch

from megatron_adept.checkpoint.metadata import LayerMap

RESIDUAL_WRITERS = (
    "self_attention.linear_proj.weight",
    "self_attention.linear_proj.bias",
    "mlp.linear_fc2.weight",
    "mlp.linear_fc2.bias",
)
"""Parameters inside a layer (same names in the local and TE specs) that are zero in a copy."""


def original_positions(layer_map: LayerMap) -> dict[int, int]:
    """Original layer index -> its 0-based position in the (expanded) model."""
    return {e.source: i for i, e in enumerate(layer_map.layers) if e.kind == "original"}


@torch.no_grad()
def initialize_copies(model: torch.nn.Module, layer_map: LayerMap) -> None:
    """Fill every copy layer of a whole (single-stage) model from its original.

    The originals must already hold their weights; the copies' memory is overwritten.
    """
    params = dict(model.named_parameters())
    positions = original_positions(layer_map)
    for index in layer_map.copy_indices:
        prefix = f"decoder.layers.{index}."
        source_prefix = f"decoder.layers.{positions[layer_map.layers[index].source]}."
        for name, param in params.items():
            if not name.startswith(prefix):
                continue
            local = name[len(prefix) :]
            if local in RESIDUAL_WRITERS:
                param.zero_()
            else:
                param.copy_(params[source_prefix + local])
