"""Flags of the evaluation tools (light to import: checked before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_adept.checkpoint.atomic import check_output_file
from megatron_adept.config.cli import arg, require_positive
from megatron_adept.config.groups import base_flag, eval_data_flag, load_flag, out_flag, plot_flag
from megatron_adept.errors import AdeptError


@dataclass
class HeldoutLossConfig:
    """What tools/eval_loss.py scores and where it writes."""

    load: str = load_flag()
    data: list[str] = eval_data_flag()
    out: str | None = out_flag(None)

    def __post_init__(self) -> None:
        if self.out is not None:
            check_output_file(self.out, "--out")  # before the evaluation, not after it


@dataclass
class MultipleChoiceConfig:
    """What tools/eval_mc.py evaluates and where it writes."""

    load: str = load_flag()
    data: str = eval_data_flag()
    shots: int = arg(
        5,
        "Few-shot exemplars per prompt: the first SHOTS items of each subject (file order) are "
        "its exemplars and are not scored.",
    )
    out: str | None = out_flag(None)
    compare: list[str] | None = arg(
        None, "More checkpoints to evaluate on the same items, printed side by side."
    )
    questions_per_batch: int = arg(
        8, "Questions per forward pass; all choices of a question share the pass."
    )

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise AdeptError(f"--shots={self.shots} must be >= 0")
        require_positive(self, "questions_per_batch")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise AdeptError("--compare names a checkpoint twice (or --load again)")
        if self.out is not None:
            check_output_file(self.out, "--out")

    @property
    def checkpoints(self) -> list[str]:
        return [self.load, *(self.compare or [])]


@dataclass
class TokenShiftConfig:
    """What tools/token_shift.py compares and where it writes."""

    base: str = base_flag()
    adapted: str = arg(help="Checkpoint of the adapted model (e.g. after ADEPT Stage 2).")
    data: str = eval_data_flag()
    out: str | None = out_flag(None)
    plot: str | None = plot_flag()
    top: int = arg(20, "Number of shifted tokens to list.")

    def __post_init__(self) -> None:
        if self.top < 0:
            raise AdeptError(f"--top={self.top} must be >= 0")
        for flag, path in (("--out", self.out), ("--plot", self.plot)):
            if path is not None:
                check_output_file(path, flag)
