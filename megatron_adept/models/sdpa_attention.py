"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``, for the local spec.

megatron-core's local ``DotProductAttention`` repeats every key/value head for its query heads,
writes the full ``[b·n, s, s]`` score matrix, builds and applies a causal mask, and keeps the
probabilities for backward. PyTorch's fused kernel (flash attention on CPU and on GPU without
Transformer Engine) skips the masked half, shares key/value heads across their query heads
(GQA) and recomputes the probabilities in backward instead of storing them.

The module takes the local one's place in the layer spec (``core_attention`` of
``SelfAttentionSubmodules``) and has the same inputs and outputs: query ``[sq, b, np, hn]``,
key and value ``[sk, b, ng, hn]`` with this rank's heads (tensor parallelism splits heads, so
each rank attends over its own and nothing is communicated), output ``[sq, b, np·hn]``. It has
no parameters, so checkpoints are the same as the local spec's. Pipeline parallelism does not
reach inside a layer.

What it refuses (at construction, naming the setting): context parallelism (the local module
refuses it too; megatron implements it in Transformer Engine), sliding-window attention,
softmax variants other than ``vanilla``, and attention dropout (the project trains without
it). At run time it refuses an explicit mask tensor, packed sequences and attention biases:
our models are causal and pass none.

``apply_query_key_layer_scaling`` only moves a factor between the scores and the softmax in
the local module (``softmax_scale / layer_number`` there, ``x layer_number`` in the softmax),
so the scale used here is ``softmax_scale`` (default ``1/sqrt(kv_channels)``) either way.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from megatron_adept.errors import ConfigError


class SDPAttention(MegatronModule):
    """Causal (or unmasked) self-attention over this rank's heads with PyTorch's fused kernel.

    Args:
        config: the transformer config (``num_query_groups`` may have been raised to the
            tensor-parallel size by ``SelfAttention`` when there are fewer key/value heads).
        layer_number: 1-based layer number (unused: see the module docstring on scaling).
        attn_mask_type: ``causal`` or ``no_mask``; a forward call may override it.
        attention_type: ``self`` (kept for the spec's signature).
        attention_dropout: must be 0 (or None with ``config.attention_dropout == 0``).
        softmax_scale: score scale; None means ``1/sqrt(kv_channels)``.
        cp_comm_type: context-parallel communication (context parallelism is refused).
        pg_collection: process groups; the tensor-parallel group sets the heads per rank.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ConfigError(
                f"context_parallel_size={config.context_parallel_size}: SDPA core attention "
                "supports no context parallelism (use the Transformer Engine spec)"
            )
        if config.window_size is not None:
            raise ConfigError(f"window_size={config.window_size}: sliding windows unsupported")
        if config.softmax_type != "vanilla":
            raise ConfigError(f"softmax_type={config.softmax_type!r} unsupported (vanilla only)")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ConfigError(f"attention_dropout={dropout}: SDPA core attention needs 0")
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.no_mask):
            raise ConfigError(f"attn_mask_type={attn_mask_type}: causal or no_mask only")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.attn_mask_type = attn_mask_type
        self.heads_per_partition = divide(config.num_attention_heads, tp)
        self.groups_per_partition = divide(config.num_query_groups, tp)
        self.softmax_scale = (
            1.0 / math.sqrt(config.kv_channels) if softmax_scale is None else softmax_scale
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """Attention output ``[sq, b, np·hn]`` of query ``[sq, b, np, hn]`` and key/value
        ``[sk, b, ng, hn]``."""
        if attention_mask is not None or attention_bias is not None or packed_seq_params:
            raise ConfigError(
                "SDPA core attention takes no attention mask tensor, bias or packed sequences"
            )
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        sq, b = query.shape[:2]
        # The local module masks nothing for one query (a KV-cache step or a 1-token context).
        causal = mask_type == AttnMaskType.causal and sq > 1
        if causal and sq != key.shape[0]:
            raise ConfigError(
                f"causal attention needs as many keys as queries ({sq} != {key.shape[0]})"
            )
        # The value is a view into the fused QKV projection's output (query and key left it
        # through RoPE): its own copy lets that output go, rather than keeping it, several
        # times the value's size, for backward in every layer.
        value = value.contiguous()
        # [s, b, heads, hn] -> [b, heads, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=causal,
            scale=self.softmax_scale,
            enable_gqa=self.heads_per_partition != self.groups_per_partition,
        )
        # [b, np, sq, hn] -> [sq, b, np·hn]
        return context.permute(2, 0, 1, 3).reshape(sq, b, -1)


def with_sdpa_core_attention(layer_spec: ModuleSpec) -> ModuleSpec:
    """``layer_spec`` (a local-spec ``TransformerLayer``) with :class:`SDPAttention` as its
    core attention; every other submodule, and so every checkpoint key, is unchanged."""
    attention = layer_spec.submodules.self_attention
    core = dataclasses.replace(attention.submodules, core_attention=SDPAttention)
    self_attention = dataclasses.replace(attention, submodules=core)
    submodules = dataclasses.replace(layer_spec.submodules, self_attention=self_attention)
    return dataclasses.replace(layer_spec, submodules=submodules)
