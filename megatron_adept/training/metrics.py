"""Progress of a training run: periodic step logs, multiplier tables, TensorBoard scalars,
and ``train_metrics.json`` in every checkpoint (every step so far, read back on resume), which
scripts read instead of parsing logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_adept.models.units import UNIT_NAMES
from megatron_adept.optimizer.unit_lr import AdeptState, UnitLr
from megatron_adept.parallel.collectives import all_reduce_numbers
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)


def count_trainable_params(model: torch.nn.Module) -> int:
    """Trainable parameters of the whole model (all stages, tensor-parallel shards once)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    local = 0.0
    for param in model.parameters():
        if param.requires_grad:
            sharded = getattr(param, "tensor_model_parallel", False)
            local += param.numel() if sharded else param.numel() / tp
    (total,) = all_reduce_numbers([local], group=parallel_state.get_model_parallel_group())
    return round(total)


def multiplier_table(units: list[UnitLr]) -> str:
    """One row per layer, one column per unit, cells ``multiplier``."""
    present = [u for u in UNIT_NAMES if any(x.unit == u for x in units)]
    by_layer: dict[int, dict[str, float]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, {})[unit.unit] = unit.multiplier
    widths = [max(7, len(u)) for u in present]
    lines = ["layer " + " ".join(f"{u:>{w}}" for u, w in zip(present, widths, strict=True))]
    for layer in sorted(by_layer):
        cells = [by_layer[layer].get(u) for u in present]
        lines.append(
            f"{layer:>5} "
            + " ".join(
                f"{'-':>{w}}" if c is None else f"{c:>{w}.4f}"
                for c, w in zip(cells, widths, strict=True)
            )
        )
    return "\n".join(lines)


METRICS_FILE = "train_metrics.json"


class TrainingMetrics:
    """Logs every ``log_interval`` steps on rank 0; mirrors scalars to TensorBoard if asked.

    Args:
        log_interval: steps between log lines.
        tensorboard_dir: where rank 0 writes TensorBoard scalars (None: nowhere).
        trainable_params: the whole model's, reported with every log line.
        resumed_from: a checkpoint whose recorded steps this run continues.
    """

    def __init__(
        self,
        log_interval: int,
        tensorboard_dir: str | None,
        trainable_params: int,
        resumed_from: Path | None = None,
    ) -> None:
        self.log_interval = log_interval
        self.trainable_params = trainable_params
        self.steps: list[dict[str, Any]] = []
        self.refreshes: list[dict[str, Any]] = []
        if resumed_from is not None and (resumed_from / METRICS_FILE).is_file():
            recorded = json.loads((resumed_from / METRICS_FILE).read_text())
            self.steps, self.refreshes = recorded["steps"], recorded["refreshes"]
        self._writer = None
        self._tokens = 0
        self._seconds = 0.0
        if tensorboard_dir is not None and dist.get_rank() == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(tensorboard_dir)

    def step(
        self,
        iteration: int,
        loss: float,
        lr: float,
        grad_norm: float | None,
        tokens: int,
        seconds: float,
    ) -> None:
        """Record one optimizer step (``tokens`` over the whole global batch)."""
        self.steps.append(
            {
                "iteration": iteration,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "seconds": seconds,
            }
        )
        self._tokens += tokens
        self._seconds += seconds
        if self._writer is not None:
            self._writer.add_scalar("train/loss", loss, iteration)
            self._writer.add_scalar("train/lr", lr, iteration)
            if grad_norm is not None:
                self._writer.add_scalar("train/grad_norm", grad_norm, iteration)
        if iteration % self.log_interval:
            return
        throughput = self._tokens / max(self._seconds, 1e-9)
        if self._writer is not None:
            self._writer.add_scalar("train/tokens_per_second", throughput, iteration)
        norm = "n/a" if grad_norm is None else f"{grad_norm:.4e}"
        logger.info(
            f"iteration {iteration} | loss {loss:.6f} | lr {lr:.4e} | grad norm {norm} | "
            f"tokens/s {throughput:.1f} | trainable params {self.trainable_params:,}"
        )
        self._tokens, self._seconds = 0, 0.0

    def refresh(self, state: AdeptState, seconds: float) -> None:
        iteration = state.iteration
        self.refreshes.append({"iteration": iteration, "seconds": seconds})
        pairs = ", ".join(f"{copy} <- {source}" for copy, source in state.source_scored)
        copies = f"copies scored from their source layer: {pairs or 'none'}"
        logger.info(
            f"unit lr multipliers at iteration {iteration} (importance refresh took "
            f"{seconds:.2f}s; --unit-importance {state.unit_importance}, --unit-lr-rule "
            f"{state.unit_lr_rule}, --copy-importance {state.copy_importance}, {copies}; every "
            f"other unit on its own scores):\n{multiplier_table(list(state.units))}"
        )
        if self._writer is not None:
            for unit in state.units:
                self._writer.add_scalar(
                    f"multiplier/layer{unit.layer:03d}.{unit.unit}", unit.multiplier, iteration
                )

    def to_dict(self) -> dict[str, Any]:
        """Contents of ``train_metrics.json``."""
        return {
            "trainable_params": self.trainable_params,
            "steps": self.steps,
            "refreshes": self.refreshes,
        }

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
