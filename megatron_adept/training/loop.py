"""The Stage-2 trainer: set up, step, refresh unit importance, log, save, stop early."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psutil
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_adept.checkpoint.mcore_io import load_model_weights
from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.checkpoint.resolve import resolve_load
from megatron_adept.data.config import blend_bos, parse_blend
from megatron_adept.data.corpus import check_vocabulary, corpus_batches, load_corpus
from megatron_adept.data.datasets import (
    build_train_valid_test_datasets,
    global_batches,
)
from megatron_adept.data.tokenizer import resolve_tokenizer, text_prefix
from megatron_adept.errors import DataError, TrainingError
from megatron_adept.models.builder import build_model
from megatron_adept.models.pipeline import MicroBatch, backward_unstopped, stop_backward_below
from megatron_adept.models.units import UnitKey, model_units
from megatron_adept.optimizer.build import build_optimizer, wrap_ddp
from megatron_adept.optimizer.unit_lr import AdeptState, uniform_multipliers
from megatron_adept.optimizer.update_scaling import UnitUpdateScaling
from megatron_adept.parallel.collectives import all_gather_objects
from megatron_adept.parallel.log import get_logger
from megatron_adept.training.checkpointing import (
    TrainingState,
    load_training_state,
    remove_old_checkpoints,
    save_checkpoint,
)
from megatron_adept.training.config import RUN_CONFIG_FILE, RunConfig
from megatron_adept.training.exit_conditions import ExitConditions
from megatron_adept.training.metrics import (
    METRICS_FILE,
    TrainingMetrics,
    count_trainable_params,
)
from megatron_adept.training.modes import TrainPlan, apply_plan, plan_for_mode
from megatron_adept.training.step import StepResult, train_step
from megatron_adept.training.unit_refresh import refresh_unit_lrs

logger = get_logger(__name__)


def load_probe_batches(config: RunConfig, weights_dir: Path, vocab_size: int) -> list[MicroBatch]:
    """The probe corpus as fixed micro-batches (raises on a missing, empty or foreign corpus)."""
    if config.adept.probe_data is None:
        raise DataError(f"--mode {config.adept.mode} needs --probe-data (the general corpus)")
    tokenizer = resolve_tokenizer(config.tokenizer.tokenizer, weights_dir)
    prefix = text_prefix(tokenizer, config.tokenizer.add_bos)
    data_bos = blend_bos(parse_blend(config.data.data_path)[0])
    if data_bos is not None and data_bos != bool(prefix):
        raise DataError(
            f"the training data was preprocessed {'with' if data_bos else 'without'} BOS, but "
            f"the probe corpus would be encoded {'with' if prefix else 'without'} it; use the "
            "same tokenizer and --add-bos setting for both"
        )
    items = load_corpus(config.adept.probe_data, tokenizer, prefix)
    source = config.tokenizer.tokenizer or f"stored in {weights_dir}"
    check_vocabulary(items, vocab_size, source)
    return corpus_batches(items, config.batch.seq_length, config.batch.micro_batch_size)


def _die_like_a_lost_node() -> None:
    """Fault injection: SIGKILL this process and its helpers (megatron's writer processes)."""
    me = psutil.Process()
    for child in me.children(recursive=True):
        child.kill()
    me.kill()


class Trainer:
    """One Stage-2 run on this rank: model stage, optimizer, schedule, data and unit lrs."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.weights_dir, self.resume_iteration = resolve_load(config.checkpoint.load)
        self.meta = CheckpointMeta.load(self.weights_dir)
        self.plan: TrainPlan = plan_for_mode(
            config.adept.mode, self.meta.layer_map, config.adept.importance
        )
        self.probe_batches = (
            load_probe_batches(config, self.weights_dir, self.meta.arch.vocab_size)
            if self.plan.decoupled
            else []
        )
        self.iteration = 0
        self.consumed_samples = 0
        self.adept_state = AdeptState(0, ())
        self.consecutive_skips = 0
        self.skipped_steps = 0
        faults = config.faults
        self.exit = ExitConditions(
            faults.exit_duration_in_mins, faults.exit_interval, time.monotonic()
        )
        self.exit.install()

    def setup(self) -> None:
        """Collective: build and load the model, optimizer, schedule, data and unit lrs."""
        config, training = self.config, self.config.training
        self.model = build_model(
            self.meta.arch,
            config.parallel,
            config.precision.params_dtype,
            training.recompute_activations,
            init_weights=False,
        )
        load_model_weights(self.model, self.weights_dir)
        apply_plan(self.model, self.plan)
        self._hooks = stop_backward_below(self.model, self.plan.lowest_layer)
        self.ddp = wrap_ddp(self.model, config.optimizer.use_distributed_optimizer)
        self.optimizer = build_optimizer(self.ddp, config.optimizer)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0,
            max_lr=config.optimizer.lr,
            min_lr=config.optimizer.min_lr,
            lr_warmup_steps=training.warmup_iters,
            lr_decay_steps=training.train_iters,
            lr_decay_style=training.lr_decay_style,
            start_wd=config.optimizer.weight_decay,
            end_wd=config.optimizer.weight_decay,
            wd_incr_steps=training.train_iters,
            wd_incr_style="constant",
        )
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.units = [u for u in model_units(self.model, tp) if u.param.requires_grad]
        self.unit_keys = self._global_unit_keys()
        self.scaling = UnitUpdateScaling(self.optimizer, self.units)
        if self.resume_iteration is not None:
            state, self.adept_state = load_training_state(
                self.weights_dir, self.model, self.optimizer, self.scheduler
            )
            self.iteration, self.consumed_samples = state.iteration, state.consumed_samples
            self.scaling.set_multipliers(self.adept_state.multipliers())
            logger.info(f"resumed from {self.weights_dir} at iteration {self.iteration}")
        else:
            self.adept_state = AdeptState(0, tuple(uniform_multipliers(self.unit_keys)))
        self.batches = self._data_iterator()
        self.metrics = TrainingMetrics(
            config.logging.log_interval,
            config.logging.tensorboard_dir,
            count_trainable_params(self.model),
            self.weights_dir if self.resume_iteration is not None else None,
        )

    def _global_unit_keys(self) -> list[UnitKey]:
        local = sorted({(u.layer, u.unit) for u in self.units})
        return sorted({tuple(key) for part in all_gather_objects(local) for key in part})

    def _data_iterator(self) -> Iterator[list[MicroBatch]]:
        training = self.config.training
        train, _, _ = build_train_valid_test_datasets(
            self.config.data,
            self.config.batch.seq_length,
            (training.train_iters * training.global_batch_size, 0, 0),
            training.seed,
            self._eos_id(),
        )
        return global_batches(
            train,
            training.global_batch_size,
            self.config.batch.micro_batch_size,
            parallel_state.get_data_parallel_rank(),
            parallel_state.get_data_parallel_world_size(),
            self.consumed_samples,
        )

    def _eos_id(self) -> int:
        """EOS of the tokenizer beside the checkpoint (or --tokenizer), else the arch's."""
        if self.config.tokenizer.tokenizer is not None or self.meta.tokenizer is not None:
            return resolve_tokenizer(self.config.tokenizer.tokenizer, self.weights_dir).eos_id
        eos = self.meta.arch.eos_token_id
        return eos[0] if isinstance(eos, list) else (eos or 0)

    def refresh_importance(self) -> None:
        """Recompute I_U on the probe corpus and install the new multipliers.

        The estimators never write DDP's gradient buffers or the CPU RNG; the model-parallel
        RNG tracker is restored here, so the refresh shifts no randomness.
        """
        start = time.perf_counter()
        tracker = tensor_parallel.get_cuda_rng_tracker()
        tracker_states = tracker.get_states()
        self.adept_state = refresh_unit_lrs(
            self.model,
            self.probe_batches,
            self.meta.layer_map,
            self.unit_keys,
            self.config.adept,
            self.iteration,
            partial(backward_unstopped, self.model, self.plan.lowest_layer, self._hooks),
        )
        tracker.set_states(tracker_states)
        self.scaling.set_multipliers(self.adept_state.multipliers())
        self.metrics.refresh(self.adept_state, time.perf_counter() - start)
        save = self.config.checkpoint.save
        if self.iteration == 0 and save is not None and dist.get_rank() == 0:
            Path(save).mkdir(parents=True, exist_ok=True)
            self.adept_state.save(save)

    def train_step(self) -> StepResult:
        """One step; a skipped (non-finite) step consumes its batch but changes no state."""
        start = time.perf_counter()
        poison = self.iteration + 1 in (self.config.faults.inject_nan_at or ())
        result = train_step(self.ddp, self.optimizer, next(self.batches), poison)
        lr = self.current_lr()
        self.iteration += 1
        self.consumed_samples += self.config.training.global_batch_size
        if result.skipped:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            logger.warning(
                f"iteration {self.iteration} skipped: loss {result.loss}, grad norm "
                f"{result.grad_norm} ({self.consecutive_skips} in a row, "
                f"{self.skipped_steps} in this run)"
            )
        else:
            self.scheduler.step(1)
            self.consecutive_skips = 0
        training = self.config.training
        self.metrics.step(
            self.iteration,
            result.loss,
            lr,
            result.grad_norm,
            training.global_batch_size * self.config.batch.seq_length,
            time.perf_counter() - start,
        )
        return result

    def current_lr(self) -> float:
        """The scheduled lr of this step (a unit's lr is this times its multiplier)."""
        return self.scheduler.get_lr(self.optimizer.param_groups[0])

    def save(self) -> None:
        """Collective: checkpoint into ``--save``, then apply ``--keep-last``."""
        ckpt = self.config.checkpoint
        kill = self.iteration == self.config.faults.kill_during_save_at
        save_checkpoint(
            ckpt.save,
            self.model,
            self.optimizer,
            self.meta,
            TrainingState(
                self.iteration,
                self.consumed_samples,
                self.scheduler.state_dict(),
                self.config.adept.mode,
            ),
            self.adept_state,
            self.meta.tokenizer_path(self.weights_dir),
            {RUN_CONFIG_FILE: self.config.to_dict(), METRICS_FILE: self.metrics.to_dict()},
            before_publish=_die_like_a_lost_node if kill else None,
        )
        logger.info(f"saved iteration {self.iteration} to {ckpt.save}")
        if ckpt.keep_last is not None and dist.get_rank() == 0:
            resumed_from = self.weights_dir if self.resume_iteration is not None else None
            for old in remove_old_checkpoints(
                ckpt.save, ckpt.keep_last, self.iteration, resumed_from
            ):
                logger.info(f"removed {old} (--keep-last {ckpt.keep_last})")

    def train(self) -> list[StepResult]:
        """Run until ``--train-iters`` or an early exit; returns the step results of this call.

        Raises:
            TrainingError: ``--max-skipped-steps`` consecutive non-finite steps (after
                saving the last good state).
        """
        training, ckpt = self.config.training, self.config.checkpoint
        results = []
        while self.iteration < training.train_iters:
            if self.plan.decoupled and self.iteration % self.config.adept.importance_interval == 0:
                self.refresh_importance()
            try:
                results.append(self.train_step())
            except StopIteration:
                raise DataError(
                    f"the training data ran out after {self.consumed_samples} samples"
                ) from None
            due = ckpt.save_interval is not None and self.iteration % ckpt.save_interval == 0
            done = self.iteration == training.train_iters
            if ckpt.save is not None and (due or done):
                self.save()
            if self.consecutive_skips >= self.config.faults.max_skipped_steps:
                self._stop_after_faults(saved=ckpt.save is not None and (due or done))
            reason = None if done else self.exit.check(self.iteration)
            if reason is not None:
                self._stop_early(reason, saved=ckpt.save is not None and due)
                break
        return results

    def _stop_early(self, reason: str, saved: bool) -> None:
        save = self.config.checkpoint.save
        if save is not None and not saved:
            self.save()
        where = f"checkpoint in {save}" if save is not None else "nothing saved (no --save)"
        logger.info(f"exiting at iteration {self.iteration}: {reason}; {where}")

    def _stop_after_faults(self, saved: bool) -> None:
        save = self.config.checkpoint.save
        if save is not None and not saved:
            self.save()
        where = f"; the last good state is saved in {save}" if save is not None else ""
        raise TrainingError(
            f"{self.consecutive_skips} consecutive steps had a NaN/Inf loss or gradient norm "
            f"(--max-skipped-steps={self.config.faults.max_skipped_steps}) at iteration "
            f"{self.iteration}{where}"
        )

    def close(self) -> None:
        self.exit.uninstall()
        self.metrics.close()
        self.scaling.remove()
        for handle in self._hooks:
            handle.remove()
