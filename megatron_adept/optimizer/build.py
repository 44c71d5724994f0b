"""Wrap a model stage in megatron-core DDP and build its (distributed) optimizer.

Frozen parameters (``requires_grad=False``) get no gradient buffer and no optimizer state:
megatron's DDP and optimizers only see trainable parameters.
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

from megatron_adept.optimizer.config import OptimizerSettings


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
    return get_megatron_optimizer(config, [ddp_model], config_overrides=config_overrides)
