"""The unit-lr update rescale on whole fp32 parameters against torch AdamW with one param group
per unit at lr·m (the distributed-optimizer shards are covered by
tests/distributed/test_train_adept.py)."""

from types import SimpleNamespace

import torch

from megatron_adept.models.units import UnitSlice
from megatron_adept.optimizer.update_scaling import UnitUpdateScaling

LR, WD = 1e-2, 0.1
ROWS = {"q": (0, 3, 0.5), "k": (3, 5, 2.0), "v": (5, 6, 1.0)}  # unit: (first, end, multiplier)


def _adamw(groups):
    return torch.optim.AdamW(groups, lr=LR, weight_decay=WD, betas=(0.9, 0.95), eps=1e-3)


def test_fused_rows_and_whole_tensors_step_as_one_group_per_unit():
    gen = torch.Generator().manual_seed(0)
    fused = torch.nn.Parameter(torch.randn(6, 4, generator=gen))  # like linear_qkv
    whole = torch.nn.Parameter(torch.randn(5, 3, generator=gen))  # like linear_proj
    grads = [torch.randn(6, 4, generator=gen), torch.randn(5, 3, generator=gen)]

    units = [
        UnitSlice(0, name, "linear_qkv.weight", fused, torch.arange(a, b), False)
        for name, (a, b, _) in ROWS.items()
    ] + [UnitSlice(0, "o", "linear_proj.weight", whole, None, False)]
    multipliers = {(0, name): m for name, (_, _, m) in ROWS.items()} | {(0, "o"): 0.25}
    inner = _adamw([{"params": [fused, whole]}])
    megatron_like = SimpleNamespace(optimizer=inner, is_stub_optimizer=False)
    scaling = UnitUpdateScaling(megatron_like, units)
    scaling.set_multipliers(multipliers)
    assert not any(  # per-row multipliers broadcast: nothing of the parameter's size is kept
        torch.is_tensor(s) and s.numel() == fused.numel()
        for s in (x for _, x in scaling._scaled[inner])
    )

    parts = [torch.nn.Parameter(fused.detach()[a:b].clone()) for a, b, _ in ROWS.values()]
    ref_whole = torch.nn.Parameter(whole.detach().clone())
    groups = [
        {"params": [p], "lr": LR * m} for p, (_, _, m) in zip(parts, ROWS.values(), strict=True)
    ]
    reference = _adamw([*groups, {"params": [ref_whole], "lr": LR * 0.25}])

    for _ in range(3):
        fused.grad, whole.grad = grads[0].clone(), grads[1].clone()
        for p, (a, b, _) in zip(parts, ROWS.values(), strict=True):
            p.grad = grads[0][a:b].clone()
        ref_whole.grad = grads[1].clone()
        inner.step()
        reference.step()

    torch.testing.assert_close(fused.detach(), torch.cat([p.detach() for p in parts]))
    torch.testing.assert_close(whole.detach(), ref_whole.detach())
    assert (fused.detach()[5] - fused.detach()[4]).abs().max() > 0  # the step really moved
