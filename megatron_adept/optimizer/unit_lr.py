"""ADEPT's decoupled learning rates: lr_U = m_U lr(t) for every trainable unit U.

Two rules turn importance into multipliers (``--unit-lr-rule``):

* ``linear``, the paper's m_U = 2 (1 - I_U): importance is min-max normalised over *all*
  trainable units of the model at once, not per layer or per kind of unit. A global scale is
  what makes the rule a reallocation of one budget: a unit that matters more than every other
  unit anywhere gets lr 0, the least important one 2 lr, and the factor 2 keeps the average
  near lr. The authors' code normalises globally as well. When every unit has the same
  importance (max == min) there is nothing to reallocate and every multiplier is 1.
* ``affine-optimal``, App. F.3's optimum under a fixed size-weighted average lr:
  m_U = 1 - c (I_U - Ī), Ī = Σ_j w_j I_j / Σ_j w_j with w_j the unit's element count; its
  size-weighted mean is exactly 1 (see :func:`affine_optimal_multipliers` for c and clamping).

``--adept-lr-floor`` optionally keeps the most important units trainable (the paper's formula
is floor 0).

The multipliers scale whatever the schedule says at step t (warmup, cosine), so refreshing them
never resets or compounds the schedule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_adept.errors import CheckpointError, ConfigError
from megatron_adept.models.units import UnitKey, unit_order
from megatron_adept.optimizer.config import UNIT_LR_RULES

ADEPT_STATE_FILE = "adept_state.json"


@dataclass(frozen=True)
class UnitLr:
    """One trainable unit's importance and learning-rate multiplier."""

    layer: int
    unit: str
    importance: float | None
    """I_U on the probe corpus, from the estimator of ``--unit-importance`` (None: not probed)."""
    normalized: float | None
    """I_U on the rule's scale: min-max normalised over every trainable unit (``linear``), or
    c (I_U - Ī), the unit's scaled distance from the size-weighted mean (``affine-optimal``)."""
    multiplier: float
    """The unit's lr is this times the scheduled lr: max(floor, 2 (1 - normalized)) (``linear``),
    or clamp(1 - normalized + shift, floor, 2) (``affine-optimal``)."""


def decoupled_multipliers(importance: Mapping[UnitKey, float], floor: float = 0.0) -> list[UnitLr]:
    """The 2(1-I) rule over ``importance`` (every trainable unit), sorted by layer and unit."""
    if not importance:
        return []
    low, high = min(importance.values()), max(importance.values())
    units = []
    for key in sorted(importance, key=unit_order):
        value = importance[key]
        normalized = 0.0 if high == low else (value - low) / (high - low)
        multiplier = 1.0 if high == low else max(floor, 2.0 * (1.0 - normalized))
        units.append(UnitLr(key[0], key[1], value, normalized, multiplier))
    return units


def affine_optimal_multipliers(
    importance: Mapping[UnitKey, float], sizes: Mapping[UnitKey, int], floor: float = 0.0
) -> list[UnitLr]:
    """App. F.3's rule, m_U = 1 - c (I_U - Ī) in [floor, 2], with size-weighted mean exactly 1.

    App. F.3 minimises a quadratic model of the general-competence loss under a fixed
    size-weighted average lr and finds the optimum affine in importance; its slope is a ratio
    of unknown loss-model constants. Here c = 1 / max_U |I_U - Ī|: the steepest affine
    reallocation that stays inside [0, 2] without clamping (the unit farthest from the weighted
    mean gets 0 if above it, 2 if below), unchanged when every I_U is scaled or shifted
    (scale-free, like the linear rule's min-max). Its size-weighted mean is 1 by construction.

    A floor > 0 raises the units below it, which would lift the mean above 1. The mean is then
    restored as the box-constrained version of the same problem prescribes (its KKT
    conditions): every unit moves by one common shift δ < 0 and is clamped again,
    m_U = clamp(1 - c (I_U - Ī) + δ, floor, 2), with δ the root of Σ w_U m_U = Σ w_U, found by
    bisection (the weighted mean is continuous and non-decreasing in δ). When every unit has
    the same importance, every multiplier is 1.

    Args:
        importance: I_U of every trainable unit.
        sizes: w_U, the element count of every unit in ``importance`` (the whole unit across
            tensor-parallel shards, identical on every rank).
        floor: lower bound of every multiplier; at most 1, or no allocation has mean 1.
    """
    if not 0.0 <= floor <= 1.0:
        raise ConfigError(
            f"--adept-lr-floor={floor} must be in [0, 1] for --unit-lr-rule affine-optimal"
        )
    if not importance:
        return []
    keys = sorted(importance, key=unit_order)
    weights = [float(sizes[key]) for key in keys]
    total = sum(weights)
    mean = sum(w * importance[key] for w, key in zip(weights, keys, strict=True)) / total
    spread = max(abs(importance[key] - mean) for key in keys)
    scaled = [0.0 if spread == 0 else (importance[key] - mean) / spread for key in keys]
    base = [1.0 - value for value in scaled]

    def clamped(shift: float) -> list[float]:
        return [min(2.0, max(floor, value + shift)) for value in base]

    def excess(shift: float) -> float:
        return sum(w * m for w, m in zip(weights, clamped(shift), strict=True)) - total

    shift = 0.0
    if excess(0.0) > 0:  # only a floor > 0 can lift the mean; lower everything together
        low, high = floor - max(base), 0.0  # excess(low) = (floor - 1) total <= 0
        for _ in range(200):
            middle = 0.5 * (low + high)
            if excess(middle) > 0:
                high = middle
            else:
                low = middle
        shift = 0.5 * (low + high)
    return [
        UnitLr(key[0], key[1], importance[key], value, multiplier)
        for key, value, multiplier in zip(keys, scaled, clamped(shift), strict=True)
    ]


def unit_multipliers(
    rule: str,
    importance: Mapping[UnitKey, float],
    sizes: Mapping[UnitKey, int],
    floor: float = 0.0,
) -> list[UnitLr]:
    """The multipliers of ``rule`` (one of :data:`UNIT_LR_RULES`), sorted by layer and unit."""
    if rule == "linear":
        return decoupled_multipliers(importance, floor)
    if rule == "affine-optimal":
        return affine_optimal_multipliers(importance, sizes, floor)
    raise ConfigError(f"unknown --unit-lr-rule {rule!r}; choose one of {', '.join(UNIT_LR_RULES)}")


def uniform_multipliers(keys: list[UnitKey]) -> list[UnitLr]:
    """Every unit at the scheduled lr (modes without decoupled tuning); importance unknown."""
    return [
        UnitLr(k[0], k[1], float("nan"), float("nan"), 1.0) for k in sorted(keys, key=unit_order)
    ]


@dataclass(frozen=True)
class AdeptState:
    """Contents of ``adept_state.json``: the multipliers in force at ``iteration``, and how they
    were computed (None where no refresh produced them, e.g. modes without decoupled lrs)."""

    iteration: int
    units: tuple[UnitLr, ...]
    unit_importance: str | None = None
    """The ``--unit-importance`` estimator behind each unit's ``importance``."""
    unit_lr_rule: str | None = None
    """The ``--unit-lr-rule`` that turned importance into multipliers."""
    copy_importance: str | None = None
    """The ``--copy-importance`` choice in force."""
    source_scored: tuple[tuple[int, int], ...] = ()
    """(copy, source) layer pairs: copies that were still function-preserving and took the
    importance of their source layer's units; every other unit was scored on its own."""

    def multipliers(self) -> dict[UnitKey, float]:
        return {(u.layer, u.unit): u.multiplier for u in self.units}

    def save(self, directory: str | Path) -> None:
        data = {
            "iteration": self.iteration,
            "unit_importance": self.unit_importance,
            "unit_lr_rule": self.unit_lr_rule,
            "copy_importance": self.copy_importance,
            "source_scored": [list(pair) for pair in self.source_scored],
            "units": [asdict(u) for u in self.units],
        }
        (Path(directory) / ADEPT_STATE_FILE).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> AdeptState:
        path = Path(directory) / ADEPT_STATE_FILE
        try:
            data = json.loads(path.read_text())
            return cls(
                int(data["iteration"]),
                tuple(UnitLr(**u) for u in data["units"]),
                data.get("unit_importance"),
                data.get("unit_lr_rule"),
                data.get("copy_importance"),
                tuple((int(c), int(s)) for c, s in data.get("source_scored", [])),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from None
