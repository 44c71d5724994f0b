"""megatron-core's MLP with the SwiGLU computed as ``silu(gate) * up``, for the local spec.

megatron-core 0.16.1's unfused gated path (no Transformer Engine, no bias-activation fusion)
computes ``silu(gate) * (up + glu_linear_offset)``: with the usual offset 0 that is a full
copy of the up half in every layer's forward, about 3 % of a SmolLM2 forward on CPU
(``benchmarks/peer_step.py``). Its fused path compiles with ``torch.compile``, which the local
spec cannot assume. :class:`SwiGLUMLP` takes the plain path where the configuration allows it
(SiLU gate, no linear bias, no offset, no clamp, no fusion, no per-token scale) and megatron's
own forward otherwise. Its backward (:class:`SwiGLUFunction`) writes the gate's and the up
half's gradients straight into the two halves of one tensor, where autograd's backward of
``torch.chunk`` concatenates them in a further copy, in every layer the gradient passes
through, frozen ones included. Like megatron's fused SwiGLU it keeps only its input for
backward and recomputes ``silu(gate)`` there (one elementwise pass, about 1 % of the layer's
backward on CPU), where autograd's graph of the expression keeps ``silu(gate)`` too: half as
much again per layer, in frozen layers as in trainable ones. Forward and backward run the
same kernels on the same operands as autograd does for megatron's expression
(``x + 0.0 == x``), so results are equal bit for bit; the parameters, and so every checkpoint
key and TP shard, are megatron's.

megatron's ``TransformerLayer`` hands its tensor-parallel group only to an MLP whose class is
exactly ``MLP`` and logs "Unknown MLP type" for any other; the MLP then takes megatron's
global tensor-parallel group, which is the layer's own in every model this project builds
(none passes a custom process-group collection). :func:`with_swiglu_mlp` filters that one
warning out.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.spec_utils import ModuleSpec


class SwiGLUFunction(torch.autograd.Function):
    """``silu(gate) * up`` of ``x = [gate | up]`` (last dimension), with a concatenation-free
    backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        gate, up = torch.chunk(x, 2, dim=-1)
        ctx.save_for_backward(x)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        gate, up = torch.chunk(x, 2, dim=-1)
        grad_x = torch.empty_like(x)
        grad_gate, grad_up = torch.chunk(grad_x, 2, dim=-1)
        # silu(gate) again, in place of a saved copy half the size of x: the same kernel on
        # the same operand, so the product below is autograd's bit for bit.
        torch.mul(grad, F.silu(gate), out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_x


class SwiGLUMLP(MLP):
    """:class:`~megatron.core.transformer.mlp.MLP` without the gated path's offset copy."""

    def __init__(self, config, submodules, *args, **kwargs) -> None:
        super().__init__(config, submodules, *args, **kwargs)
        self.plain_swiglu = (
            config.gated_linear_unit
            and self.activation_func is F.silu
            and not config.add_bias_linear
            and config.glu_linear_offset == 0
            and config.activation_func_clamp_value is None
            and not config.bias_activation_fusion
            and not config.use_te_activation_func
        )

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if not self.plain_swiglu or per_token_scale is not None:
            return super().forward(hidden_states, per_token_scale, **kwargs)
        intermediate, _ = self.linear_fc1(hidden_states)
        return self.linear_fc2(SwiGLUFunction.apply(intermediate))


class _KnownMLPFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unknown MLP type")


_LAYER_LOGGER = logging.getLogger("megatron.core.transformer.transformer_layer")


def with_swiglu_mlp(layer_spec: ModuleSpec) -> ModuleSpec:
    """``layer_spec`` (a local-spec ``TransformerLayer``) with :class:`SwiGLUMLP` as its MLP."""
    if not any(isinstance(f, _KnownMLPFilter) for f in _LAYER_LOGGER.filters):
        _LAYER_LOGGER.addFilter(_KnownMLPFilter())
    mlp = dataclasses.replace(layer_spec.submodules.mlp, module=SwiGLUMLP)
    submodules = dataclasses.replace(layer_spec.submodules, mlp=mlp)
    return dataclasses.replace(layer_spec, submodules=submodules)
