"""The step FLOP model against hand counts, 6·N·T, and torch's FLOP counter on HF models."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megatron_adept.errors import ConfigError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import build_hf_model, preset_config
from megatron_adept.training.flops import step_flops


def _arch(**overrides) -> ModelArch:
    fields = dict(
        model_type="llama",
        num_layers=3,
        hidden_size=8,
        ffn_hidden_size=16,
        num_attention_heads=2,
        num_query_groups=1,
        head_dim=4,
        vocab_size=10,
        max_position_embeddings=64,
        rope_theta=10000.0,
        norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    return ModelArch(**{**fields, **overrides})


# Per token of the tiny arch (h=8, f=16, 2 heads, 1 KV head, d=4, V=10), s=4:
#   projections: qkv 8x(2+2)x4=128, proj 8x8=64, fc1 8x32=256, fc2 16x8=128 -> 2x576 = 1152
#   causal attention: (1+2+3+4)/4 = 2.5 keys per query, 2 heads, 2x4 score + 2x4 value -> 80
#   output layer: 2x8x10 = 160
# forward/token = 3 x (1152 + 80) + 160 = 3856
HAND = [
    # trainable layers, backward per token
    # pt-full: 3 layers x (act 1152 + weight 1152 + attention 160) + head act 160 + weight 160
    (None, 3 * (1152 + 1152 + 160) + 160 + 160),
    # layer 1 only: layers 1, 2 back-propagate (1152 + 160 each), weights of 1, head act
    ([1], 2 * (1152 + 160) + 1152 + 160),
    # layers 0 and 2: every layer back-propagates, two weight gradients, head act
    ([2, 0], 3 * (1152 + 160) + 2 * 1152 + 160),
    # the top layer: only it back-propagates
    ([2], (1152 + 160) + 1152 + 160),
    ([], 0),
]


@pytest.mark.parametrize(("trainable", "backward_per_token"), HAND)
def test_step_flops_matches_a_hand_count(trainable, backward_per_token):
    flops = step_flops(_arch(), trainable, seq_length=4, tokens=8)
    assert flops.forward == 8 * 3856
    assert flops.backward == 8 * backward_per_token
    assert flops.total == flops.forward + flops.backward


def test_pt_full_approaches_six_n_t_when_attention_is_negligible():
    """6·N·T counts every matrix parameter (the tied one once) three times two FLOPs a token."""
    arch = _arch(
        num_layers=2,
        hidden_size=1024,
        ffn_hidden_size=4096,
        num_attention_heads=16,
        num_query_groups=16,
        head_dim=64,
        vocab_size=1000,
        tie_word_embeddings=True,
    )
    per_layer = 1024 * 3 * 1024 + 1024 * 1024 + 3 * 1024 * 4096
    n = 2 * per_layer + 1000 * 1024
    tokens = 4 * 8
    flops = step_flops(arch, None, seq_length=8, tokens=tokens)
    assert flops.total == pytest.approx(6 * n * tokens, rel=1e-3)
    assert flops.backward == pytest.approx(2 * flops.forward, rel=1e-3)


def _counted(model: torch.nn.Module, trainable: list[int] | None, tokens: torch.Tensor):
    """(forward, backward) FLOPs torch's counter sees in one HF training step."""
    model.requires_grad_(trainable is None)
    for i in trainable or []:
        model.model.layers[i].requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        loss = model(input_ids=tokens, labels=tokens).loss
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        if trainable != []:
            loss.backward()
    return forward, counter.get_total_flops()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("trainable", [None, [0], [1, 3], [2], [3], []])
def test_step_flops_equals_torch_flop_counter_on_hf_models(preset, trainable):
    """Length-1 sequences: causal and full attention coincide, so the count is exact.

    The HF model freezes like our modes do (frozen embeddings and head outside pt-full), and
    autograd then computes exactly the gradients the FLOP model counts. Qwen2 ties its
    embeddings and has q/k/v biases (no matmul FLOPs).
    """
    model = build_hf_model(preset, attn_implementation="eager")
    arch = ModelArch.from_hf_config(preset_config(preset))
    tokens = torch.randint(0, arch.vocab_size, (6, 1))
    forward, backward = _counted(model, trainable, tokens)
    flops = step_flops(arch, trainable, seq_length=1, tokens=tokens.numel())
    assert (flops.forward, flops.backward) == (forward, backward)


def test_step_flops_rejects_layers_outside_the_model():
    with pytest.raises(ConfigError, match=r"\[3\]"):
        step_flops(_arch(), [1, 3], seq_length=4, tokens=8)
    with pytest.raises(ConfigError, match="seq_length=0"):
        step_flops(_arch(), None, seq_length=0, tokens=8)
