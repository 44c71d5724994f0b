"""AdamW and gradient flags of ``pretrain_adept.py`` (Megatron-LM spelling)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_adept.config.cli import arg
from megatron_adept.errors import ConfigError

UNIT_LR_RULES = ("linear", "affine-optimal")
"""Values of ``--unit-lr-rule`` (see :mod:`megatron_adept.optimizer.unit_lr`)."""


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
