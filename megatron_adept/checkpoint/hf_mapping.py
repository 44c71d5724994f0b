"""The one name table between Hugging Face tensors and megatron-core checkpoint keys.

Each row maps one megatron tensor to the HF tensor(s) it is made of; ``{i}`` stands for the
0-based layer index. Megatron names are ``dist_checkpointing`` keys, which are the same for the
local and the Transformer Engine layer specs (megatron saves the local spec's
``input_layernorm``/``pre_mlp_layernorm`` under TE's fused names ``linear_qkv.layer_norm_weight``
/ ``linear_fc1.layer_norm_weight``), so a conversion never depends on which spec was built.

Optional rows carry a feature that the architecture switches on (q/k/v bias for Qwen2, q/k
norms for Qwen3, an untied head), so one table serves every family in
:data:`megatron_adept.models.archs.FAMILIES`. Layout changes are named pure functions, and both
directions of conversion are derived from the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_adept.models.archs import ModelArch

LAYER = "{i}"


def interleave_qkv(
    arch: ModelArch, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """HF q/k/v (weights ``[rows, h]`` or biases ``[rows]``) -> megatron ``linear_qkv``.

    Megatron stores the rows per query group: ``[q heads of group g; k_g; v_g]`` for each g,
    which is what lets tensor parallelism split the fused tensor by groups.
    """
    groups = arch.num_query_groups
    heads_per_group = arch.num_attention_heads // groups
    tail = q.shape[1:]
    q = q.reshape(groups, heads_per_group * arch.head_dim, *tail)
    k = k.reshape(groups, arch.head_dim, *tail)
    v = v.reshape(groups, arch.head_dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def split_qkv(arch: ModelArch, fused: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of :func:`interleave_qkv`: megatron ``linear_qkv`` -> [q, k, v]."""
    groups = arch.num_query_groups
    q_rows = arch.num_attention_heads // groups * arch.head_dim
    tail = fused.shape[1:]
    per_group = fused.reshape(groups, q_rows + 2 * arch.head_dim, *tail)
    q, k, v = torch.split(per_group, [q_rows, arch.head_dim, arch.head_dim], dim=1)
    return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]


def concat_gate_up(arch: ModelArch, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF gate/up projections -> megatron ``linear_fc1`` (``[gate; up]``)."""
    return torch.cat([gate, up], dim=0)


def split_gate_up(arch: ModelArch, fused: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of :func:`concat_gate_up`."""
    return [t.contiguous() for t in torch.chunk(fused, 2, dim=0)]


@dataclass(frozen=True)
class Row:
    """One megatron tensor and the HF tensor(s) it is made of."""

    mcore: str
    hf: tuple[str, ...]
    feature: str | None = None
    """``qkv_bias``, ``qk_norm`` or ``untied``: the row exists only if the arch has it."""
    merge: Callable[..., torch.Tensor] | None = None
    """``(arch, *hf_tensors) -> megatron tensor``; None for single-tensor rows."""
    split: Callable[..., list[torch.Tensor]] | None = None
    """``(arch, megatron tensor) -> hf_tensors``, the inverse of ``merge``."""

    @property
    def per_layer(self) -> bool:
        return LAYER in self.mcore

    def to_mcore(self, arch: ModelArch, hf_tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.merge(arch, *hf_tensors) if self.merge else hf_tensors[0]

    def to_hf(self, arch: ModelArch, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self.split(arch, tensor) if self.split else [tensor]


_LAYER = "decoder.layers.{i}."
_ATTN = "model.layers.{i}.self_attn."
_MLP = "model.layers.{i}.mlp."
_QKV = tuple(_ATTN + f"{p}_proj.weight" for p in "qkv")
_QKV_BIAS = tuple(_ATTN + f"{p}_proj.bias" for p in "qkv")

ROWS: tuple[Row, ...] = (
    Row("embedding.word_embeddings.weight", ("model.embed_tokens.weight",)),
    Row(
        _LAYER + "self_attention.linear_qkv.layer_norm_weight",
        ("model.layers.{i}.input_layernorm.weight",),
    ),
    Row(_LAYER + "self_attention.linear_qkv.weight", _QKV, None, interleave_qkv, split_qkv),
    Row(
        _LAYER + "self_attention.linear_qkv.bias", _QKV_BIAS, "qkv_bias", interleave_qkv, split_qkv
    ),
    Row(_LAYER + "self_attention.q_layernorm.weight", (_ATTN + "q_norm.weight",), "qk_norm"),
    Row(_LAYER + "self_attention.k_layernorm.weight", (_ATTN + "k_norm.weight",), "qk_norm"),
    Row(_LAYER + "self_attention.linear_proj.weight", (_ATTN + "o_proj.weight",)),
    Row(
        _LAYER + "mlp.linear_fc1.layer_norm_weight",
        ("model.layers.{i}.post_attention_layernorm.weight",),
    ),
    Row(
        _LAYER + "mlp.linear_fc1.weight",
        (_MLP + "gate_proj.weight", _MLP + "up_proj.weight"),
        None,
        concat_gate_up,
        split_gate_up,
    ),
    Row(_LAYER + "mlp.linear_fc2.weight", (_MLP + "down_proj.weight",)),
    Row("decoder.final_layernorm.weight", ("model.norm.weight",)),
    Row("output_layer.weight", ("lm_head.weight",), "untied"),
)

VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")
"""Megatron tensors padded along the vocabulary (dim 0); HF holds only the real rows."""

_FEATURES: dict[str, Callable[[ModelArch], bool]] = {
    "qkv_bias": lambda arch: arch.family.qkv_bias,
    "qk_norm": lambda arch: arch.family.qk_layernorm,
    "untied": lambda arch: not arch.tie_word_embeddings,
}


def rows_for(arch: ModelArch) -> list[Row]:
    """The table rows that apply to ``arch`` (its family's features and tying)."""
    return [row for row in ROWS if row.feature is None or _FEATURES[row.feature](arch)]


def fill(template: str, layer: int | None) -> str:
    """Put a 0-based layer index into a name template."""
    return template if layer is None else template.replace(LAYER, str(layer))


def streaming_order(arch: ModelArch) -> list[tuple[Row, int | None]]:
    """(row, layer) pairs in the order checkpoints are streamed: layer by layer.

    Global rows before the layer rows in the table (the embedding) come first, those after
    them (final norm, head) last, like the tensors of an HF checkpoint.
    """
    rows = rows_for(arch)
    layer_rows = [row for row in rows if row.per_layer]
    first = rows.index(layer_rows[0])
    last = first + len(layer_rows)
    return (
        [(row, None) for row in rows[:first]]
        + [(row, layer) for layer in range(arch.num_layers) for row in layer_rows]
        + [(row, None) for row in rows[last:]]
    )


def expected_hf_shapes(arch: ModelArch) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of ``arch`` with the shape its config implies, in streaming order."""
    h, d = arch.hidden_size, arch.head_dim
    q_rows, kv_rows = arch.num_attention_heads * d, arch.num_query_groups * d
    templates = {
        "model.embed_tokens.weight": (arch.vocab_size, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (arch.vocab_size, h),
        "model.layers.{i}.input_layernorm.weight": (h,),
        _QKV[0]: (q_rows, h),
        _QKV[1]: (kv_rows, h),
        _QKV[2]: (kv_rows, h),
        _QKV_BIAS[0]: (q_rows,),
        _QKV_BIAS[1]: (kv_rows,),
        _QKV_BIAS[2]: (kv_rows,),
        _ATTN + "q_norm.weight": (d,),
        _ATTN + "k_norm.weight": (d,),
        _ATTN + "o_proj.weight": (h, q_rows),
        "model.layers.{i}.post_attention_layernorm.weight": (h,),
        _MLP + "gate_proj.weight": (arch.ffn_hidden_size, h),
        _MLP + "up_proj.weight": (arch.ffn_hidden_size, h),
        _MLP + "down_proj.weight": (h, arch.ffn_hidden_size),
    }
    return {
        fill(name, layer): templates[name]
        for row, layer in streaming_order(arch)
        for name in row.hf
    }
