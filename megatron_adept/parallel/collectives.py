"""Every ``torch.distributed`` collective of the project, on the communication device.

NCCL, the GPU backend, only moves CUDA tensors: a CPU tensor handed to a collective raises
``No backend type associated with device type cpu``, while gloo, the CPU backend our tests
run on, accepts anything. So no module builds a tensor and hands it to a collective itself:
host values (sums, maxima, Python objects) cross ranks through these helpers, which build
their tensors on :func:`comm_device`, and tensors computed elsewhere go through
:func:`all_reduce_` and :func:`broadcast_`, which move them there when they are not. A unit
test scans the package and allows collectives only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

ProcessGroup = Any
"""A ``torch.distributed`` process group (None: the default group)."""


def comm_device() -> torch.device:
    """Where tensors for collectives live: the current GPU under NCCL, else the CPU (gloo)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(
    tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM, group: ProcessGroup = None
) -> torch.Tensor:
    """Reduce ``tensor`` in place over ``group``, wherever it lives; returns it."""
    on_device = tensor.to(comm_device())
    dist.all_reduce(on_device, op=op, group=group)
    if on_device is not tensor:
        tensor.copy_(on_device)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int, group: ProcessGroup = None) -> torch.Tensor:
    """Overwrite ``tensor`` with global rank ``src``'s, wherever it lives; returns it."""
    on_device = tensor.contiguous().to(comm_device())
    dist.broadcast(on_device, src=src, group=group)
    if on_device is not tensor:
        tensor.copy_(on_device)
    return tensor


def all_reduce_numbers(
    values: Sequence[float],
    op: dist.ReduceOp = dist.ReduceOp.SUM,
    group: ProcessGroup = None,
    dtype: torch.dtype = torch.float64,
) -> list[float]:
    """``values`` reduced element-wise over ``group`` (float64 unless ``dtype`` says)."""
    tensor = torch.tensor(list(values), dtype=dtype, device=comm_device())
    dist.all_reduce(tensor, op=op, group=group)
    return tensor.tolist()


def all_gather_objects(value: Any, group: ProcessGroup = None) -> list[Any]:
    """Every rank's picklable ``value``, in rank order of ``group``."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def barrier(group: ProcessGroup = None) -> None:
    """Wait until every rank of ``group`` got here."""
    dist.barrier(group=group)
