"""ADEPT's parameter units, located inside megatron-core's fused tensors.

ADEPT (App. C) treats each projection and norm of a decoder layer as a unit with its own
importance and learning rate. megatron-core fuses q/k/v into ``linear_qkv`` (rows interleaved
per query group: ``[q heads of group g; k_g; v_g]``) and gate/up into ``linear_fc1`` (``[gate;
up]`` on every tensor-parallel rank), so a unit is a parameter plus the rows it owns. Unit names
are the Hugging Face module names users know.

This module is also the only place megatron's 1-based ``layer_number`` becomes our 0-based
layer index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Q_PROJ, K_PROJ, V_PROJ, O_PROJ = "q_proj", "k_proj", "v_proj", "o_proj"
GATE_PROJ, UP_PROJ, DOWN_PROJ = "gate_proj", "up_proj", "down_proj"
INPUT_NORM, POST_ATTN_NORM = "input_layernorm", "post_attention_layernorm"
Q_NORM, K_NORM = "q_norm", "k_norm"

UNIT_NAMES = (
    Q_PROJ,
    K_PROJ,
    V_PROJ,
    O_PROJ,
    GATE_PROJ,
    UP_PROJ,
    DOWN_PROJ,
    INPUT_NORM,
    POST_ATTN_NORM,
    Q_NORM,
    K_NORM,
)
"""All unit names, in display order."""

UnitKey = tuple[int, str]
"""(0-based global layer index in the (possibly expanded) model, unit name)."""


def unit_order(key: UnitKey) -> tuple[int, int]:
    """Sort key of units: by layer, then in :data:`UNIT_NAMES` order."""
    return key[0], UNIT_NAMES.index(key[1])


# Parameter name inside a TransformerLayer -> the unit(s) it holds. Both the local spec and the
# Transformer Engine spec (norms fused into the following linear) are covered.
_WHOLE_PARAMS = {
    "self_attention.linear_proj.weight": O_PROJ,
    "mlp.linear_fc2.weight": DOWN_PROJ,
    "input_layernorm.weight": INPUT_NORM,
    "self_attention.linear_qkv.layer_norm_weight": INPUT_NORM,
    "pre_mlp_layernorm.weight": POST_ATTN_NORM,
    "mlp.linear_fc1.layer_norm_weight": POST_ATTN_NORM,
    "self_attention.q_layernorm.weight": Q_NORM,
    "self_attention.k_layernorm.weight": K_NORM,
}
_QKV_PARAMS = ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias")
_FC1_PARAM = "mlp.linear_fc1.weight"
_TP_SHARDED = {
    "self_attention.linear_proj.weight",
    "mlp.linear_fc2.weight",
    _FC1_PARAM,
    *_QKV_PARAMS,
}


@dataclass(frozen=True)
class UnitSlice:
    """The part of one parameter that belongs to one unit of one layer."""

    layer: int
    """0-based global index of the decoder layer in the (possibly expanded) model."""
    unit: str
    param_name: str
    """Name of the parameter inside its ``TransformerLayer``."""
    param: torch.nn.Parameter
    rows: torch.Tensor | None
    """Indices along dim 0 owned by the unit, or None for the whole parameter."""
    tp_sharded: bool
    """True if the parameter is split across tensor-parallel ranks (sum over TP to reduce)."""

    def values(self, tensor: torch.Tensor) -> torch.Tensor:
        """This unit's part of ``tensor`` (the parameter, its gradient, or an update)."""
        return tensor if self.rows is None else tensor.index_select(0, self.rows.to(tensor.device))


def qkv_row_groups(
    num_heads: int, num_query_groups: int, head_dim: int, tp_size: int
) -> dict[str, torch.Tensor]:
    """Local row indices of q, k and v in one tensor-parallel shard of ``linear_qkv``."""
    groups = num_query_groups // tp_size
    q_per_group = num_heads // num_query_groups * head_dim
    block = q_per_group + 2 * head_dim
    rows: dict[str, list[int]] = {Q_PROJ: [], K_PROJ: [], V_PROJ: []}
    for g in range(groups):
        start = g * block
        rows[Q_PROJ].extend(range(start, start + q_per_group))
        rows[K_PROJ].extend(range(start + q_per_group, start + q_per_group + head_dim))
        rows[V_PROJ].extend(range(start + q_per_group + head_dim, start + block))
    return {name: torch.tensor(idx, dtype=torch.long) for name, idx in rows.items()}


def layer_index(layer: torch.nn.Module) -> int:
    """0-based global index of a megatron ``TransformerLayer``."""
    return layer.layer_number - 1


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``TransformerLayer`` modules of this pipeline stage (unwrapping DDP if needed)."""
    module = model
    while not hasattr(module, "decoder") and hasattr(module, "module"):
        module = module.module
    return list(module.decoder.layers)


def layer_units(layer: torch.nn.Module, tp_size: int) -> list[UnitSlice]:
    """Every unit of one decoder layer, in :data:`UNIT_NAMES` order."""
    config = layer.config
    index = layer_index(layer)
    params = dict(layer.named_parameters())
    slices: list[UnitSlice] = []
    for name in _QKV_PARAMS:
        if name in params:
            rows = qkv_row_groups(
                config.num_attention_heads, config.num_query_groups, config.kv_channels, tp_size
            )
            slices += [
                UnitSlice(index, u, name, params[name], rows[u], True)
                for u in (Q_PROJ, K_PROJ, V_PROJ)
            ]
    if _FC1_PARAM in params:
        half = params[_FC1_PARAM].shape[0] // 2
        gate, up = torch.arange(half), torch.arange(half, 2 * half)
        slices += [
            UnitSlice(index, GATE_PROJ, _FC1_PARAM, params[_FC1_PARAM], gate, True),
            UnitSlice(index, UP_PROJ, _FC1_PARAM, params[_FC1_PARAM], up, True),
        ]
    for name, unit in _WHOLE_PARAMS.items():
        if name in params:
            slices.append(UnitSlice(index, unit, name, params[name], None, name in _TP_SHARDED))
    order = {u: i for i, u in enumerate(UNIT_NAMES)}
    return sorted(slices, key=lambda s: (order[s.unit], s.param_name))


def model_units(model: torch.nn.Module, tp_size: int) -> list[UnitSlice]:
    """Every unit of every decoder layer on this pipeline stage."""
    return [s for layer in decoder_layers(model) for s in layer_units(layer, tp_size)]
