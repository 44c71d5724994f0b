"""Process-group lifecycle from torchrun's environment: NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from megatron_adept.compat import cpu as cpu_compat
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import ConfigError
from megatron_adept.parallel.layout import world_size_from_env


@dataclass(frozen=True)
class Runtime:
    """Where this process sits in the 3D layout."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch; the model-parallel tracker is seeded in ``initialize``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def initialize(parallel: ParallelConfig, seed: int = 1234, on_cpu: bool = False) -> Runtime:
    """Create the default process group and megatron-core's model-parallel groups.

    Works under torchrun (reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*``) and as a
    plain single process (a private loopback rendezvous is made up). Uses NCCL on the local
    GPU when there is one, else (or with ``on_cpu``) gloo on the CPU; on a machine without
    CUDA the compatibility layer is activated first.
    """
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
        )
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and not on_cpu:
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        cpu_compat.activate()
        device, backend = torch.device("cpu"), "gloo"
    timeout = timedelta(minutes=parallel.distributed_timeout_minutes)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        distributed_timeout_minutes=parallel.distributed_timeout_minutes,
    )
    set_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return Runtime(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel.tensor_model_parallel_size,
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        pp_size=parallel.pipeline_model_parallel_size,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
    )


@contextmanager
def single_process(seed: int = 1234) -> Iterator[None]:
    """The process group of an offline tool (conversion, expansion, merging): one process, on
    the CPU whatever the node, since a whole model at TP=1 rarely fits one GPU.

    Refuses torchrun. Tears the group down on the way out, unless the caller (a test worker,
    a notebook) already runs one, which is then used as it is.
    """
    if world_size_from_env() != 1:
        raise ConfigError("this tool runs in a single process; launch it with python, not torchrun")
    if dist.is_initialized():
        yield
        return
    initialize(ParallelConfig(), seed, on_cpu=True)
    try:
        yield
    finally:
        teardown()


def teardown() -> None:
    """Destroy megatron's groups and the default group (safe to call twice)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
