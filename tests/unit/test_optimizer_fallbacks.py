"""The plain-PyTorch optimizer fallbacks that ``build_optimizer`` speeds up: the fused Adam
switch and in-place gradient clipping, each against megatron-core's own fallback."""

from types import SimpleNamespace

import torch
from megatron.core.utils import local_multi_tensor_scale

from megatron_adept.optimizer import build


def test_in_place_scale_matches_megatron_fallback_bit_for_bit():
    torch.manual_seed(0)
    grads = [torch.randn(37, 5), torch.randn(11)]
    expected = [g.clone() for g in grads]
    local_multi_tensor_scale(2048, None, [expected, expected], 0.3127)
    storage = [g.data_ptr() for g in grads]
    build._scale_in_place(2048, None, [grads, grads], 0.3127)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected, strict=True))
    assert [g.data_ptr() for g in grads] == storage  # no copy was made
    dst = [torch.zeros(3)]
    build._scale_in_place(2048, None, [[torch.ones(3)], dst], 2.0)
    assert torch.equal(dst[0], torch.full((3,), 2.0))


def test_fused_adam_switch_keeps_adam_updates():
    torch.manual_seed(0)
    start = [torch.randn(64, 48), torch.randn(48)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]

    def train(fused: bool) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(p.clone()) for p in start]
        adam = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        if fused:
            build.use_fused_adam(SimpleNamespace(optimizer=adam))
            assert adam.param_groups[0]["fused"] is True
        for step in grads:
            for param, grad in zip(params, step, strict=True):
                param.grad = grad.clone()
            adam.step()
        return params

    for fused, plain in zip(train(True), train(False), strict=True):
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-6)
