"""Flags of ``pretrain_adept.py`` (Megatron-LM spelling) and their cross-group checks."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.config.cli import arg
from megatron_adept.errors import CheckpointError, ConfigError
from megatron_adept.importance.unit_importance import UNIT_IMPORTANCE
from megatron_adept.optimizer.unit_lr import UNIT_LR_RULES
from megatron_adept.training.modes import MODES

COPY_IMPORTANCE = ("source", "own")
"""Values of ``--copy-importance``."""


@dataclass
class TrainingConfig:
    """Batch, length and schedule of the run."""

    train_iters: int = arg(help="Optimizer steps to train for (in total, across resumes).")
    micro_batch_size: int = arg(1, "Sequences per micro-batch on one data-parallel rank.")
    global_batch_size: int = arg(8, "Sequences per optimizer step over all data-parallel ranks.")
    seq_length: int = arg(4096, "Tokens per training sequence.")
    lr_decay_style: str = arg(
        "cosine", "Learning-rate decay after warmup.", choices=("cosine", "linear", "constant")
    )
    lr_warmup_fraction: float = arg(0.03, "Fraction of --train-iters spent warming up.")
    seed: int = arg(1234, "Random seed (weights of new tensors, data order, dropout).")
    recompute_activations: bool = arg(False, "Recompute each layer's activations in backward.")

    def __post_init__(self) -> None:
        for name in ("micro_batch_size", "global_batch_size", "seq_length", "train_iters"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be > 0")
        if not 0.0 <= self.lr_warmup_fraction < 1.0:
            raise ConfigError(f"--lr-warmup-fraction={self.lr_warmup_fraction} must be in [0, 1)")

    @property
    def warmup_iters(self) -> int:
        return int(self.lr_warmup_fraction * self.train_iters)


@dataclass
class CheckpointConfig:
    """Where training starts from and where it saves."""

    load: str = arg(
        help="A converted/expanded checkpoint (starts fresh) or a training --save directory "
        "(resumes from its latest iteration)."
    )
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
        for name in ("save_interval", "keep_last"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be > 0")


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
        if self.exit_duration_in_mins is not None and self.exit_duration_in_mins <= 0:
            raise ConfigError(f"--exit-duration-in-mins={self.exit_duration_in_mins} must be > 0")
        for name in ("exit_interval", "max_skipped_steps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be > 0")


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
        if self.log_interval <= 0:
            raise ConfigError(f"--log-interval={self.log_interval} must be > 0")


@dataclass
class AdeptConfig:
    """ADEPT Stage 2: what trains and how unit learning rates are decoupled."""

    mode: str = arg("adept", f"What trains: {', '.join(MODES)}.")
    probe_data: str | None = arg(
        None, "General-competence probe corpus (JSONL, as Stage 1) for unit importance."
    )
    importance: str | None = arg(
        None, "Stage-1 importance.json whose 'selected' layers train in --mode no-stage1."
    )
    importance_interval: int = arg(500, "Recompute unit importance every this many steps.")
    adept_lr_floor: float = arg(
        0.0, "Lower bound of a unit's lr multiplier (at most 1 with --unit-lr-rule affine-optimal)."
    )
    unit_importance: str = arg(
        "abs-gradient",
        "Unit importance estimator: abs-gradient (mean |θ·∂L/∂θ| of the probe-corpus gradient) "
        "or authors (the authors' code: mean over probe micro-batches of |θ|·|∂L_b/∂θ|).",
        choices=tuple(UNIT_IMPORTANCE),
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
    tokenizer: str | None = arg(
        None, "Tokenizer for the probe corpus (default: the one stored beside --load)."
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown --mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.importance_interval <= 0:
            raise ConfigError(f"--importance-interval={self.importance_interval} must be > 0")
        if not 0.0 <= self.adept_lr_floor <= 2.0:
            raise ConfigError(f"--adept-lr-floor={self.adept_lr_floor} must be in [0, 2]")
        if self.unit_lr_rule == "affine-optimal" and self.adept_lr_floor > 1.0:
            raise ConfigError(
                f"--adept-lr-floor={self.adept_lr_floor} must be <= 1 with --unit-lr-rule "
                "affine-optimal (its size-weighted mean multiplier is 1)"
            )
        choices = {
            "unit_importance": tuple(UNIT_IMPORTANCE),
            "unit_lr_rule": UNIT_LR_RULES,
            "copy_importance": COPY_IMPORTANCE,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; choose one of "
                    f"{', '.join(allowed)}"
                )


def validate_batch(training: TrainingConfig, data_parallel_size: int) -> None:
    """The global batch must split into whole micro-batches on every data-parallel rank."""
    per_step = training.micro_batch_size * data_parallel_size
    if training.global_batch_size % per_step:
        raise ConfigError(
            f"--global-batch-size={training.global_batch_size} is not divisible by "
            f"--micro-batch-size x data-parallel size = {training.micro_batch_size} x "
            f"{data_parallel_size}"
        )
