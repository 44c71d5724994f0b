"""ADEPT Stage 2: continual pretraining of an expanded checkpoint with decoupled unit lrs.

Launch with torchrun (one process per GPU, or per CPU rank with gloo)::

    torchrun --nproc-per-node 8 pretrain_adept.py --load expanded/ --save run/ \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 \\
        --micro-batch-size 1 --global-batch-size 512 --seq-length 4096 --train-iters 3000 \\
        --lr 3e-5 --lr-decay-style cosine --lr-warmup-fraction 0.03 --bf16 \\
        --use-distributed-optimizer --data-path 0.7 domain_text 0.3 general_text \\
        --mode adept --probe-data probe.jsonl
"""

from __future__ import annotations

from megatron_adept.checkpoint.mcore_io import check_checkpoint_layout
from megatron_adept.config.cli import build_parser, extract, run_cli
from megatron_adept.config.parallel import ParallelConfig, PrecisionConfig
from megatron_adept.data.datasets import DataConfig
from megatron_adept.errors import DataError
from megatron_adept.optimizer.build import OptimizerSettings
from megatron_adept.parallel import runtime
from megatron_adept.parallel.log import setup_logging
from megatron_adept.training.checkpointing import check_resume, check_save_dir, resolve_load
from megatron_adept.training.config import (
    AdeptConfig,
    CheckpointConfig,
    ExpectedModelConfig,
    FaultToleranceConfig,
    LoggingConfig,
    TrainingConfig,
    validate_batch,
)
from megatron_adept.training.loop import RunConfig, Trainer

GROUPS = (
    CheckpointConfig,
    TrainingConfig,
    OptimizerSettings,
    PrecisionConfig,
    ParallelConfig,
    DataConfig,
    AdeptConfig,
    LoggingConfig,
    FaultToleranceConfig,
    ExpectedModelConfig,
)


def parse() -> RunConfig:
    args = build_parser(__doc__, *GROUPS).parse_args()
    return RunConfig(
        training=extract(args, TrainingConfig),
        checkpoint=extract(args, CheckpointConfig),
        logging=extract(args, LoggingConfig),
        adept=extract(args, AdeptConfig),
        optimizer=extract(args, OptimizerSettings),
        data=extract(args, DataConfig),
        parallel=extract(args, ParallelConfig),
        precision=extract(args, PrecisionConfig),
        faults=extract(args, FaultToleranceConfig),
        expected=extract(args, ExpectedModelConfig),
    )


def validate(config: RunConfig) -> Trainer:
    """Every check that needs no process group: checkpoint, layout, batch, mode, data, probe."""
    ckpt = config.checkpoint
    weights_dir, _ = resolve_load(ckpt.load)
    meta = check_checkpoint_layout(weights_dir, config.parallel)
    config.expected.check(meta, str(weights_dir))
    check_resume(ckpt.load, ckpt.save, config.adept.mode)
    if ckpt.save is not None:
        check_save_dir(ckpt.save)
    world = runtime.world_size_from_env()
    validate_batch(config.training, world // config.parallel.model_parallel_size)
    if not config.data.data_path:
        raise DataError("--data-path is required")
    return Trainer(config)


def main() -> None:
    setup_logging()
    config = parse()
    trainer = validate(config)
    runtime.initialize(config.parallel, config.training.seed)
    try:
        trainer.setup()
        trainer.train()
        trainer.close()
    finally:
        runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
