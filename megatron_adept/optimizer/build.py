"""Wrap a model stage in megatron-core DDP and build its (distributed) optimizer.

Frozen parameters (``requires_grad=False``) get no gradient buffer and no optimizer state:
megatron's DDP and optimizers only see trainable parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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

from megatron_adept.config.cli import arg
from megatron_adept.errors import ConfigError


@dataclass
class OptimizerSettings:
    """AdamW and gradient settings."""

    lr: float = arg(3.0e-5, "Peak learning rate (the paper's recipe: 3e-5).")
    min_lr: float = arg(0.0, "Learning rate at the end of the decay.")
    weight_decay: float = arg(0.01, "AdamW decoupled weight decay.")
    adam_beta1: float = arg(0.9, "AdamW beta1.")
    adam_beta2: float = arg(0.95, "AdamW beta2.")
    adam_eps: float = arg(1e-8, "AdamW epsilon.")
    clip_grad: float = arg(1.0, "Clip the global gradient norm to this value (0 disables).")
    use_distributed_optimizer: bool = arg(
        False, "Shard optimizer state across data-parallel ranks (megatron DistributedOptimizer)."
    )

    def __post_init__(self) -> None:
        for name in ("lr", "min_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be finite and >= 0")
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr={self.min_lr} is larger than --lr={self.lr}")
        if self.clip_grad < 0:
            raise ConfigError(f"--clip-grad={self.clip_grad} must be >= 0")


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
