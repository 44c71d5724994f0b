"""Checkpoint megatron-core's optimizers where a rank has no Adam state.

With ``torch.optim.Adam`` as the inner optimizer (no Transformer Engine or apex: every CPU
run and any GPU machine without them), megatron-core 0.16.1 keeps Adam's step per parameter
and writes it into the optimizer's *common* state, which rank 0 alone saves. Two situations
that are normal in ADEPT leave a rank without that state:

- **a fresh optimizer being resumed**: the DistributedOptimizer's
  ``sharded_state_dict(is_loading=True)`` calls ``state_dict()``, which asserts that it finds
  exactly one step among the (still empty) per-parameter states;
- **a rank that owns no trainable element**: a pipeline stage holding only frozen layers
  (ADEPT's copies cluster near the top of the model), or a data-parallel shard of the
  distributed optimizer whose range holds no trainable parameter. Its optimizer never gets
  state: with the DistributedOptimizer every save fails on the same assertion, and without
  it rank 0 (the first stage) saves no step at all, so the resume of the other stages fails.

:func:`seed_adam_state` gives each distributed optimizer a state that carries the run's
step (the maximum over all ranks): zero moments for parameters that have none (a fresh
optimizer; the checkpoint overwrites them) and, where there is no parameter at all, one
placeholder entry holding only the step; :func:`drop_placeholders` removes those again.
Training checkpoints record that global step, and :func:`load_optimizer_state` restores it
where rank 0's common state lacks it.

Loading a DistributedOptimizer has two more defects on this path:
``load_parameter_state_from_fully_reshardable`` copies every entry of a parameter's Adam
state from the checkpoint, which holds no per-parameter ``step``, so it raises
``KeyError: 'step'``; and the common-state load gives every parameter the *same* step
tensor, which torch's Adam then increments once per parameter on each step, so the bias
correction drifts from the first step after a resume. :func:`load_optimizer_state` loads
the common state first, then the parameter state with the step entries set aside, and gives
each parameter a step of its own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

from megatron_adept.parallel.collectives import all_reduce_numbers

FULLY_RESHARDABLE = "fully_reshardable"
"""The DistributedOptimizer checkpoint format that loads at any TP/PP/DP layout."""

PLACEHOLDER = "megatron_adept:step"
"""Key of the step-only state entry of an optimizer that holds no parameter."""

_COMMON_STEP = "common_step"
"""Where megatron's non-distributed optimizers keep the step in their common state."""


def _chained(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _torch_adam(opt: MegatronOptimizer) -> torch.optim.Optimizer | None:
    """The inner ``torch.optim`` Adam of ``opt``, the kind whose step is per parameter.

    Transformer Engine's and apex's fused Adams keep their step in the param groups and
    tolerate empty state, so they are left alone (None).
    """
    if getattr(opt, "is_stub_optimizer", False):
        return None
    inner = getattr(opt, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Adam | torch.optim.AdamW) else None


def torch_adams(optimizer: MegatronOptimizer) -> list[torch.optim.Optimizer]:
    """Every inner ``torch.optim`` Adam of ``optimizer`` (chained or not)."""
    return [adam for opt in _chained(optimizer) if (adam := _torch_adam(opt)) is not None]


def _distributed_adams(optimizer: MegatronOptimizer) -> list[torch.optim.Optimizer]:
    return [
        adam
        for opt in _chained(optimizer)
        if isinstance(opt, DistributedOptimizer) and (adam := _torch_adam(opt)) is not None
    ]


def _local_step(adam: torch.optim.Optimizer) -> int:
    steps = {int(state["step"]) for state in adam.state.values() if "step" in state}
    return max(steps, default=0)


def seed_adam_state(optimizer: MegatronOptimizer) -> int:
    """Collective over all ranks: fill empty Adam state with the run's step; returns it."""
    adams = torch_adams(optimizer)
    local = max((_local_step(adam) for adam in adams), default=0)
    step = int(all_reduce_numbers([local], op=dist.ReduceOp.MAX)[0])
    for adam in _distributed_adams(optimizer):
        params = [p for group in adam.param_groups for p in group["params"]]
        if not params:
            adam.state[PLACEHOLDER] = {"step": torch.tensor(float(step))}
        for param in params:
            if not adam.state[param]:
                adam.state[param].update(
                    step=torch.tensor(float(step)),
                    exp_avg=torch.zeros_like(param),
                    exp_avg_sq=torch.zeros_like(param),
                )
    return step


def drop_placeholders(optimizer: MegatronOptimizer) -> None:
    """Remove the step-only entries that :func:`seed_adam_state` added."""
    for adam in _distributed_adams(optimizer):
        adam.state.pop(PLACEHOLDER, None)


def load_optimizer_state(optimizer: MegatronOptimizer, state_dict: dict, step: int) -> None:
    """``optimizer.load_state_dict`` for a state read by ``dist_checkpointing``.

    Args:
        optimizer: the (chained) megatron optimizer, its state seeded by
            :func:`seed_adam_state` before the sharded state dict was built.
        state_dict: what ``dist_checkpointing.load`` returned for it.
        step: the run's Adam step, as recorded when the checkpoint was saved.
    """
    chained = _chained(optimizer)
    parts = [state_dict] if len(chained) == 1 else [v for _, v in sorted(state_dict.items())]
    for opt, part in zip(chained, parts, strict=True):
        adam = _torch_adam(opt)
        if adam is None:
            opt.load_state_dict(part)
        elif not isinstance(opt, DistributedOptimizer):
            part["state"].setdefault(_COMMON_STEP, torch.tensor(float(step)))
            opt.load_state_dict(part)
        else:
            if part["param_state_sharding_type"] != FULLY_RESHARDABLE:
                raise ValueError(
                    f"unexpected optimizer sharding {part['param_state_sharding_type']}"
                )
            opt.load_state_dict({k: v for k, v in part.items() if not k.startswith("param_state")})
            steps = {key: state.pop("step") for key, state in adam.state.items()}
            try:
                opt.load_parameter_state_from_fully_reshardable(part["param_state"])
            finally:
                for key, value in steps.items():
                    adam.state[key]["step"] = value.clone()
    drop_placeholders(optimizer)
