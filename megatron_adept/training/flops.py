"""The matmul FLOPs of one training step, for a layer map and the layers that train.

The model counts what a step must compute, not what a kernel happens to compute:

* Every matrix product ``[m, k] x [k, n]`` costs ``2·m·n·k`` FLOPs. Elementwise work (norms,
  RoPE, softmax, SiLU, residual adds, the cross-entropy, biases, the optimizer update) is not
  counted: it is a few percent of a step's FLOPs, though not always of its time.
* Projections: ``linear_qkv`` maps ``h -> (n + 2·g)·d`` (GQA: ``g`` key/value heads),
  ``linear_proj`` ``n·d -> h``, ``linear_fc1`` ``h -> 2·f`` (gate and up), ``linear_fc2``
  ``f -> h``; the output layer ``h -> V`` with the unpadded vocabulary ``V``.
* Core attention is causal: query ``i`` of a sequence of ``s`` tokens scores keys ``0..i``
  only, ``s·(s + 1)/2`` query-key pairs per sequence and head, each ``2·d`` FLOPs for the score
  and ``2·d`` for the value product. A kernel that computes the masked half of the ``[s, s]``
  score matrix (megatron-core's local ``DotProductAttention``) does up to twice this work.
* Forward runs through every layer and the output layer.
* Backward starts at the loss and ends at the input of the lowest trainable layer (below it
  nothing needs a gradient). Every layer in that range back-propagates activation
  gradients: one product per projection (``dX = dY·Wᵀ``, as many FLOPs as its forward) and
  four per attention core (twice its forward). Weight gradients (``dW = Xᵀ·dY``, again as
  many FLOPs as the forward product) are added for trainable layers only, and for the output
  layer only when every parameter trains. The output layer always back-propagates its
  activation gradient when anything trains.
* Embeddings are a lookup (forward) and a scatter-add (their gradient): no matmul FLOPs. With
  tied embeddings the shared matrix's gradient is the output layer's weight gradient, counted
  once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from megatron_adept.errors import ConfigError
from megatron_adept.models.archs import ModelArch


@dataclass(frozen=True)
class StepFlops:
    """Matmul FLOPs of one training step over all ranks (see the module docstring)."""

    forward: float
    """Every layer and the output layer."""
    backward: float
    """Activation gradients down to the lowest trainable layer, plus weight gradients."""

    @property
    def total(self) -> float:
        return self.forward + self.backward


def projection_flops_per_token(arch: ModelArch) -> float:
    """Forward FLOPs of one decoder layer's four projections for one token."""
    h, d = arch.hidden_size, arch.head_dim
    qkv = h * (arch.num_attention_heads + 2 * arch.num_query_groups) * d
    proj = arch.num_attention_heads * d * h
    mlp = 3 * h * arch.ffn_hidden_size
    return 2.0 * (qkv + proj + mlp)


def attention_flops_per_token(arch: ModelArch, seq_length: int) -> float:
    """Forward FLOPs of one layer's causal core attention, averaged over a sequence's tokens."""
    pairs_per_token = (seq_length + 1) / 2
    return 4.0 * arch.num_attention_heads * arch.head_dim * pairs_per_token


def output_flops_per_token(arch: ModelArch) -> float:
    """Forward FLOPs of the output layer (logits) for one token."""
    return 2.0 * arch.hidden_size * arch.vocab_size


def step_flops(
    arch: ModelArch, trainable_layers: Sequence[int] | None, seq_length: int, tokens: int
) -> StepFlops:
    """Matmul FLOPs of one step that trains ``trainable_layers`` on ``tokens`` tokens.

    Args:
        arch: the model as it is trained (after expansion: ``arch.num_layers`` counts copies).
        trainable_layers: 0-based decoder layers that train, embeddings and output layer
            frozen; None trains every parameter (pt-full). An empty sequence trains nothing
            (no backward).
        seq_length: tokens per sequence (sets the attention cost).
        tokens: tokens in the step, over every micro-batch and data-parallel rank.
    """
    if seq_length <= 0 or tokens <= 0:
        raise ConfigError(f"seq_length={seq_length} and tokens={tokens} must be positive")
    layers = range(arch.num_layers) if trainable_layers is None else sorted(set(trainable_layers))
    bad = [i for i in layers if not 0 <= i < arch.num_layers]
    if bad:
        raise ConfigError(f"trainable layers {bad} out of range 0..{arch.num_layers - 1}")
    projections = projection_flops_per_token(arch)
    attention = attention_flops_per_token(arch, seq_length)
    output = output_flops_per_token(arch)
    forward = arch.num_layers * (projections + attention) + output
    if not layers:
        return StepFlops(forward=tokens * forward, backward=0.0)
    through = arch.num_layers - min(layers)
    backward = through * (projections + 2 * attention) + len(layers) * projections + output
    if trainable_layers is None:
        backward += output
    return StepFlops(forward=tokens * forward, backward=tokens * backward)
