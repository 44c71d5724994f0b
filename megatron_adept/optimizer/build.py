"""Wrap a model stage in megatron-core DDP and build its (distributed) optimizer.

Frozen parameters (``requires_grad=False``) get no gradient buffer and no optimizer state:
megatron's DDP and optimizers only see trainable parameters.

Without Transformer Engine or apex, megatron-core 0.16.1 falls back to plain PyTorch for the
two passes over every trainable parameter that follow the backward, and both fallbacks leave
speed behind: ``torch.optim.AdamW`` with its default, which off CUDA is the per-tensor loop
(each tensor's update allocates temporaries of its size), and gradient clipping through
``local_multi_tensor_scale``, which writes a scaled copy of every gradient and copies it back.
On CPU the two took 17 % of a full-parameter SmolLM2 step. :func:`build_optimizer` switches the
torch Adams of CPU parameters to torch's fused kernel (on CUDA torch's default is already its
multi-tensor path), and :func:`scale_grads_in_place` replaces the clipping fallback with one
in-place ``_foreach_mul_`` (same fp32 products, bit for bit).
"""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed.finalize_model_grads import finalize_model_grads
from megatron.core.optimizer import (
    MegatronOptimizer,
    OptimizerConfig,
    ParamGroupOverride,
    ParamKey,
    get_megatron_optimizer,
)

from megatron_adept.optimizer.adam_state import torch_adams
from megatron_adept.optimizer.config import OptimizerSettings

FUSED_ADAM_DEVICES = ("cpu",)
"""Devices whose parameters get torch's fused Adam kernel (torch >= 2.4 has it on CPU). CUDA is
left to torch's default multi-tensor path: the fused kernel there also wants every Adam step
tensor on the device, which the step placeholders of ``adam_state.py`` do not promise."""


def wrap_ddp(model: torch.nn.Module, use_distributed_optimizer: bool) -> DistributedDataParallel:
    """megatron DDP with fp32 gradient buffers for the trainable parameters only."""
    config = model.config
    config.finalize_model_grads_func = finalize_model_grads
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def build_optimizer(
    ddp_model: DistributedDataParallel,
    settings: OptimizerSettings,
    config_overrides: dict[ParamKey, ParamGroupOverride] | None = None,
) -> MegatronOptimizer:
    """Megatron's Adam (AdamW semantics) over ``ddp_model``'s trainable parameters."""
    model_config = ddp_model.config
    config = OptimizerConfig(
        optimizer="adam",
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        clip_grad=settings.clip_grad,
        use_distributed_optimizer=settings.use_distributed_optimizer,
        bf16=model_config.bf16,
        fp16=model_config.fp16,
        params_dtype=model_config.params_dtype,
    )
    optimizer = get_megatron_optimizer(config, [ddp_model], config_overrides=config_overrides)
    use_fused_adam(optimizer)
    scale_grads_in_place()
    return optimizer


def use_fused_adam(optimizer: MegatronOptimizer) -> None:
    """Step megatron's torch-Adam fallback with torch's fused kernel for CPU parameters.

    Same update as the per-tensor loop up to rounding (a few ulp): the kernel fuses the
    moment and parameter updates into one pass. Adams from Transformer Engine or apex are
    untouched.
    """
    for adam in torch_adams(optimizer):
        for group in adam.param_groups:
            params = group["params"]
            if all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in params):
                group["foreach"] = False
                group["fused"] = True


def _scale_in_place(chunk_size, noop_flag, tensor_lists, scale) -> None:  # noqa: ARG001
    """``local_multi_tensor_scale``'s contract for megatron's clipping call, where source and
    destination lists are the same gradients: scale them in place."""
    src, dst = tensor_lists
    if all(s is d for s, d in zip(src, dst, strict=True)):
        torch._foreach_mul_(dst, scale)
    else:
        torch._foreach_copy_(dst, torch._foreach_mul(src, scale))


def scale_grads_in_place() -> None:
    """Make megatron's gradient clipping scale in place when it uses the plain-torch fallback."""
    from megatron.core.optimizer import clip_grads
    from megatron.core.utils import local_multi_tensor_scale

    if clip_grads.multi_tensor_scale_impl is local_multi_tensor_scale:
        clip_grads.multi_tensor_scale_impl = _scale_in_place
