"""ADEPT Stage 2: continual pretraining of an expanded checkpoint with decoupled unit lrs.

Launch with torchrun (one process per GPU, or per CPU rank with gloo)::

    torchrun --nproc-per-node 8 pretrain_adept.py --load expanded/ --save run/ \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 \\
        --micro-batch-size 1 --global-batch-size 512 --seq-length 4096 --train-iters 3000 \\
        --lr 3e-5 --lr-decay-style cosine --lr-warmup-fraction 0.03 --bf16 \\
        --use-distributed-optimizer --data-path 0.7 domain_text 0.3 general_text \\
        --mode adept --probe-data probe.jsonl

--load is a converted or expanded checkpoint (a fresh start) or a training --save directory
(a resume from its latest checkpoint). Every checkpoint holds the resolved configuration
(run_config.json) and every step's loss, lr, grad norm and time (train_metrics.json).
"""

from __future__ import annotations

from megatron_adept.checkpoint.resolve import open_checkpoint
from megatron_adept.config.cli import Command, run_cli
from megatron_adept.errors import DataError
from megatron_adept.parallel.launcher import exit_with_launcher
from megatron_adept.parallel.layout import world_size_from_env
from megatron_adept.training.config import RunConfig
from megatron_adept.training.save_dir import check_resume, check_save_dir
from megatron_adept.training.save_lock import check_save_unlocked, hold_save_dir

COMMAND = Command(__doc__, RunConfig.groups())


def validate(config: RunConfig) -> None:
    """Every check that needs neither torch nor a process group: checkpoint, layout, batch,
    save directory (writable, not held by a live run), resume, data."""
    config.precision.refuse_fp16_gradients("training")
    ckpt = config.checkpoint
    checkpoint = open_checkpoint(ckpt.load, config.parallel)
    config.expected.check(checkpoint.meta, str(checkpoint.path))
    if ckpt.save is not None:
        check_save_unlocked(ckpt.save)
    check_resume(ckpt.load, ckpt.save, config.adept.mode)
    if ckpt.save is not None:
        check_save_dir(ckpt.save)
    config.validate_batch(world_size_from_env() // config.parallel.model_parallel_size)
    if not config.data.data_path:
        raise DataError("--data-path is required")


def main() -> None:
    with exit_with_launcher():
        config = RunConfig(*COMMAND.parse())
        validate(config)
        train(config)


def train(config: RunConfig) -> None:
    """Hold ``--save`` (rank 0), set up the process groups, train, tear down."""
    from megatron_adept.parallel import runtime
    from megatron_adept.parallel.log import setup_logging
    from megatron_adept.training.loop import Trainer

    setup_logging()
    trainer = Trainer(config)  # its input checks come first: a refused run leaves no --save
    with hold_save_dir(config.checkpoint.save):
        runtime.initialize(config.parallel, config.training.seed)
        try:
            trainer.setup()
            trainer.train()
            trainer.close()
        finally:
            runtime.teardown()


if __name__ == "__main__":
    run_cli(main)
