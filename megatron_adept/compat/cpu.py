"""Run megatron-core's model, schedules, DDP, optimizers and checkpointing on CPU.

megatron-core 0.16.1 assumes CUDA in a handful of call sites. On a machine without CUDA this
module redirects exactly those, and nothing else, so that the same megatron-core code runs over
the ``gloo`` backend in tests and on laptops. It is the only place the project adapts
megatron-core to CPU.

What :func:`activate` changes, and why:

* ``torch.cuda.current_device()`` returns ``"cpu"``: megatron-core passes it as ``device=`` to
  tensor factories and ``.to()`` (rotary embeddings, TP mappings, p2p, grad buffers).
* ``torch.cuda.synchronize()`` is a no-op: called by p2p communication and checkpoint saving.
* ``torch.cuda.get_rng_state``/``set_rng_state``/``manual_seed`` and megatron's
  ``_get_cuda_rng_state``/``_set_cuda_rng_state`` act on the CPU default generator, so the
  model-parallel RNG tracker forks the generator that CPU kernels (dropout, init) actually use.
* A :class:`torch.overrides.TorchFunctionMode` rewrites ``device="cuda"`` (literal device
  strings in the causal mask and schedules) to CPU, turns ``Tensor.cuda()`` into a no-op, and
  answers ``Tensor.type()`` with the CUDA type string for CPU tensors, because megatron's
  optimizers classify parameters by ``'torch.cuda.FloatTensor'`` and friends.

Nothing happens on import. :func:`activate` is called once by
:func:`megatron_adept.parallel.runtime.initialize` and does nothing when CUDA is available;
:func:`deactivate` undoes every change (used by tests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CpuDeviceMode(TorchFunctionMode):
    """Maps CUDA placement requests made inside megatron-core to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            tensor = args[0]
            if tensor.device.type == "cpu" and tensor.dtype in _CUDA_TYPE_NAMES:
                return _CUDA_TYPE_NAMES[tensor.dtype]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


@dataclass
class _Patches:
    """Saved originals of everything :func:`activate` replaced."""

    originals: list[tuple[Any, str, Any]] = field(default_factory=list)
    mode: _CpuDeviceMode | None = None

    def replace(self, owner: Any, name: str, value: Callable) -> None:
        self.originals.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)


_active: _Patches | None = None


def is_active() -> bool:
    """Whether the CPU compatibility layer is currently in effect."""
    return _active is not None


def activate() -> bool:
    """Apply the CPU redirections if CUDA is unavailable. Idempotent.

    Returns:
        True if the layer is active after the call (always False on a CUDA machine).
    """
    global _active
    if torch.cuda.is_available():
        return False
    if _active is not None:
        return True
    from megatron.core.tensor_parallel import random as mcore_random

    patches = _Patches()
    patches.replace(torch.cuda, "current_device", lambda: "cpu")
    patches.replace(torch.cuda, "synchronize", lambda device=None: None)
    patches.replace(torch.cuda, "get_rng_state", lambda device="cuda": torch.get_rng_state())
    patches.replace(
        torch.cuda, "set_rng_state", lambda state, device="cuda": torch.set_rng_state(state)
    )
    patches.replace(torch.cuda, "manual_seed", lambda seed: torch.manual_seed(seed))
    patches.replace(mcore_random, "_get_cuda_rng_state", lambda *a, **k: torch.get_rng_state())
    patches.replace(
        mcore_random, "_set_cuda_rng_state", lambda state, *a, **k: torch.set_rng_state(state)
    )
    patches.mode = _CpuDeviceMode()
    patches.mode.__enter__()
    _active = patches
    logger.info(
        "CUDA unavailable: megatron-core CUDA call sites redirected to CPU (%s)",
        ", ".join(f"{getattr(o, '__name__', o)}.{n}" for o, n, _ in patches.originals),
    )
    return True


def deactivate() -> None:
    """Undo :func:`activate`, restoring every replaced attribute and leaving the mode."""
    global _active
    if _active is None:
        return
    if _active.mode is not None:
        _active.mode.__exit__(None, None, None)
    for owner, name, original in reversed(_active.originals):
        setattr(owner, name, original)
    _active = None
