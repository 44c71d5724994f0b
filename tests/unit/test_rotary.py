"""Our RoPE kernel equals megatron-core's unfused RoPE bit for bit, and configs built here use it
where Transformer Engine does not fill megatron's fused-RoPE slot."""

import pytest
import torch
from megatron.core.models.common.embeddings import rope_utils

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.builder import build_transformer_config
from megatron_adept.models.presets import preset_config
from megatron_adept.models.rotary import apply_rotary, install_fused_rope


def _freqs(seq: int, rot: int) -> torch.Tensor:
    """RoPE angles ``[s, 1, 1, r]`` laid out as megatron's ``RotaryEmbedding`` lays them out
    (each frequency in both halves)."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    return torch.cat((angles, angles), dim=-1)[:, None, None, :]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rot", "percent"), [(16, 1.0), (8, 0.5)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_rotary_equals_megatron_unfused_bit_for_bit(dtype, rot, percent, contiguous):
    seq, batch, heads, dim = 12, 3, 4, int(rot / percent)
    gen = torch.Generator().manual_seed(3)
    freqs = _freqs(seq, rot)
    assert freqs.shape == (seq, 1, 1, rot)
    # a key split from a fused projection is a strided view, as in megatron's attention
    wide = torch.randn(seq, batch, heads, 3 * dim, generator=gen).to(dtype)
    source = wide[..., dim : 2 * dim] if not contiguous else wide[..., :dim].contiguous()
    grad_out = torch.randn(seq, batch, heads, dim, generator=gen).to(dtype)
    results = []
    for rope in (rope_utils._apply_rotary_pos_emb_bshd, apply_rotary):
        t = source.detach().clone() if contiguous else source.detach()
        t.requires_grad_(True)
        out = rope(t, freqs)
        out.backward(grad_out)
        results.append((out, t.grad))
    (ref_out, ref_grad), (out, grad) = results
    assert ref_out.abs().max() > 0.5
    assert out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)


def test_rotary_interleaved_is_megatrons():
    freqs = _freqs(6, 8)
    t = torch.randn(6, 2, 2, 8)
    expected = rope_utils._apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=True)
    assert torch.equal(apply_rotary(t, freqs, interleaved=True), expected)


def test_config_enables_fusion_exactly_when_the_slot_holds_our_kernel(monkeypatch):
    arch = ModelArch.from_hf_config(preset_config("tiny-llama"))
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", None)
    assert build_transformer_config(arch, ParallelConfig(), on_cpu=True).apply_rope_fusion
    assert rope_utils.fused_apply_rotary_pos_emb is apply_rotary

    def other_kernel(t, freqs, interleaved=False):  # stands in for Transformer Engine's
        return t

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", other_kernel)
    assert not install_fused_rope()
    assert not build_transformer_config(arch, ParallelConfig(), on_cpu=True).apply_rope_fusion
