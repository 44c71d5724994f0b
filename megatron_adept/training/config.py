"""Flags of ``pretrain_adept.py`` (Megatron-LM spelling) and their cross-group checks.

Light to import: ``pretrain_adept.py --help`` and bad flags are answered before torch loads.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron_adept.config.cli import arg, require_positive
from megatron_adept.config.groups import (
    BatchConfig,
    TokenizerConfig,
    importance_flag,
    load_flag,
    probe_data_flag,
    seed_flag,
)
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.data.config import DataConfig
from megatron_adept.errors import CheckpointError, ConfigError
from megatron_adept.importance.config import ESTIMATORS
from megatron_adept.optimizer.config import UNIT_LR_RULES, OptimizerSettings

if TYPE_CHECKING:
    from megatron_adept.checkpoint.metadata import CheckpointMeta

MODES = ("adept", "pt-full", "llama-pro", "no-stage1", "no-stage2")
"""What ``--mode`` can train (see :mod:`megatron_adept.training.modes`)."""
RUN_CONFIG_FILE = "run_config.json"
"""The resolved configuration, saved in every training checkpoint."""

COPY_IMPORTANCE = ("source", "own")
"""Values of ``--copy-importance``."""


@dataclass
class TrainingConfig:
    """Batch, length and schedule of the run."""

    train_iters: int = arg(help="Optimizer steps to train for (in total, across resumes).")
    global_batch_size: int = arg(8, "Sequences per optimizer step over all data-parallel ranks.")
    lr_decay_style: str = arg(
        "cosine", "Learning-rate decay after warmup.", choices=("cosine", "linear", "constant")
    )
    lr_warmup_fraction: float = arg(0.03, "Fraction of --train-iters spent warming up.")
    seed: int = seed_flag(1234)
    recompute_activations: bool = arg(False, "Recompute each layer's activations in backward.")

    def __post_init__(self) -> None:
        require_positive(self, "global_batch_size", "train_iters")
        if not 0.0 <= self.lr_warmup_fraction < 1.0:
            raise ConfigError(f"--lr-warmup-fraction={self.lr_warmup_fraction} must be in [0, 1)")

    @property
    def warmup_iters(self) -> int:
        return int(self.lr_warmup_fraction * self.train_iters)


@dataclass
class CheckpointConfig:
    """Where training starts from and where it saves."""

    load: str = load_flag()
    save: str | None = arg(None, "Directory for training checkpoints (iter_XXXXXXX/).")
    save_interval: int | None = arg(
        None, "Save every this many iterations (and always at the end when --save is set)."
    )
    keep_last: int | None = arg(
        None,
        "Keep only the newest this many checkpoints in --save (the one the run resumed from "
        "is never deleted).",
    )

    def __post_init__(self) -> None:
        require_positive(self, "save_interval", "keep_last")


@dataclass
class FaultToleranceConfig:
    """Early exits (Megatron-LM spelling) and numerical faults."""

    exit_duration_in_mins: float | None = arg(
        None, "Save and exit cleanly once the job has run this many minutes."
    )
    exit_interval: int | None = arg(
        None, "Save and exit cleanly at the first iteration that is a multiple of this."
    )
    max_skipped_steps: int = arg(
        10,
        "Stop, saving the last good state, after this many consecutive steps skipped for a "
        "NaN/Inf loss or gradient norm.",
    )
    inject_nan_at: list[int] | None = arg(
        None, "Fault injection: give these iterations a NaN loss.", hidden=True
    )
    kill_during_save_at: int | None = arg(
        None,
        "Fault injection: SIGKILL every rank halfway through this iteration's save.",
        hidden=True,
    )

    def __post_init__(self) -> None:
        require_positive(self, "exit_duration_in_mins", "exit_interval", "max_skipped_steps")


@dataclass
class ExpectedModelConfig:
    """Optional checks of the checkpoint in --load: a mismatch is refused, naming it."""

    num_layers: int | None = arg(None, "Expected number of decoder layers (copies included).")
    hidden_size: int | None = arg(None, "Expected hidden size.")
    ffn_hidden_size: int | None = arg(None, "Expected MLP hidden size.")
    num_attention_heads: int | None = arg(None, "Expected number of attention heads.")
    num_query_groups: int | None = arg(None, "Expected number of key/value heads.")
    expanded_layers: list[int] | None = arg(
        None, "Expected copies: the 0-based original layers that were duplicated, in order."
    )

    def check(self, meta: CheckpointMeta, load: str) -> None:
        """Raise naming every field where the checkpoint differs from the flags."""
        copies = meta.layer_map.copied_sources
        found = {
            "num_layers": meta.arch.num_layers,
            "hidden_size": meta.arch.hidden_size,
            "ffn_hidden_size": meta.arch.ffn_hidden_size,
            "num_attention_heads": meta.arch.num_attention_heads,
            "num_query_groups": meta.arch.num_query_groups,
            "expanded_layers": copies,
        }
        differ = [
            f"--{name.replace('_', '-')}={_show(getattr(self, name))} but the checkpoint has "
            f"{_show(value)}"
            for name, value in found.items()
            if getattr(self, name) is not None and getattr(self, name) != value
        ]
        if differ:
            raise CheckpointError(
                f"checkpoint {load!r} does not match the flags: {'; '.join(differ)}"
            )


def _show(value: int | list[int]) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


@dataclass
class LoggingConfig:
    """Progress output."""

    log_interval: int = arg(10, "Log loss, lr, grad norm and throughput every this many steps.")
    tensorboard_dir: str | None = arg(None, "Write TensorBoard scalars here (rank 0).")

    def __post_init__(self) -> None:
        require_positive(self, "log_interval")


@dataclass
class AdeptConfig:
    """ADEPT Stage 2: what trains and how unit learning rates are decoupled."""

    mode: str = arg("adept", f"What trains: {', '.join(MODES)}.")
    probe_data: str | None = probe_data_flag(None)
    importance: str | None = importance_flag()
    importance_interval: int = arg(500, "Recompute unit importance every this many steps.")
    adept_lr_floor: float = arg(
        0.0, "Lower bound of a unit's lr multiplier (at most 1 with --unit-lr-rule affine-optimal)."
    )
    unit_importance: str = arg(
        "abs-gradient",
        "Unit importance estimator: abs-gradient (mean |θ·∂L/∂θ| of the probe-corpus gradient) "
        "or authors (the authors' code: mean over probe micro-batches of |θ|·|∂L_b/∂θ|).",
        choices=ESTIMATORS,
    )
    unit_lr_rule: str = arg(
        "linear",
        "Importance -> lr multiplier: linear (the paper's 2(1 - I), I min-max normalised) or "
        "affine-optimal (App. F.3: 1 - c(I - size-weighted mean I), size-weighted mean 1).",
        choices=UNIT_LR_RULES,
    )
    copy_importance: str = arg(
        "source",
        "Importance of a copy that is still function-preserving (zero o_proj and down_proj, so "
        "all its units score 0): source (the same units of the layer it was copied from, "
        "measured on the expanded model) or own (its own scores).",
        choices=COPY_IMPORTANCE,
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown --mode {self.mode!r}; choose one of {', '.join(MODES)}")
        require_positive(self, "importance_interval")
        if not 0.0 <= self.adept_lr_floor <= 2.0:
            raise ConfigError(f"--adept-lr-floor={self.adept_lr_floor} must be in [0, 2]")
        if self.unit_lr_rule == "affine-optimal" and self.adept_lr_floor > 1.0:
            raise ConfigError(
                f"--adept-lr-floor={self.adept_lr_floor} must be <= 1 with --unit-lr-rule "
                "affine-optimal (its size-weighted mean multiplier is 1)"
            )
        choices = {
            "unit_importance": ESTIMATORS,
            "unit_lr_rule": UNIT_LR_RULES,
            "copy_importance": COPY_IMPORTANCE,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; choose one of "
                    f"{', '.join(allowed)}"
                )


@dataclass
class RunConfig:
    """Every flag group of ``pretrain_adept.py``, in ``--help`` order."""

    checkpoint: CheckpointConfig
    training: TrainingConfig
    batch: BatchConfig
    optimizer: OptimizerSettings
    precision: PrecisionConfig
    parallel: ParallelConfig
    data: DataConfig
    adept: AdeptConfig
    tokenizer: TokenizerConfig
    logging: LoggingConfig
    faults: FaultToleranceConfig
    expected: ExpectedModelConfig

    @classmethod
    def groups(cls) -> tuple[type, ...]:
        """The flag dataclasses, one per field (``RunConfig(*parsed)`` rebuilds the config)."""
        hints = typing.get_type_hints(cls)
        return tuple(hints[f.name] for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration, group by group (saved beside the checkpoints)."""
        return dataclasses.asdict(self)

    def validate_batch(self, data_parallel_size: int) -> None:
        """The global batch must split into whole micro-batches on every data-parallel rank."""
        micro, total = self.batch.micro_batch_size, self.training.global_batch_size
        if total % (micro * data_parallel_size):
            raise ConfigError(
                f"--global-batch-size={total} is not divisible by --micro-batch-size x "
                f"data-parallel size = {micro} x {data_parallel_size}"
            )
