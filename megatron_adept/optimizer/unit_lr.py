"""ADEPT's decoupled learning rates: lr_U = 2 (1 - I_U) lr(t) for every trainable unit.

Importance is min-max normalised over *all* trainable units of the model at once, not per
layer or per kind of unit. A global scale is what makes the rule a reallocation of one budget
(App. F.3 derives the optimum as affine in importance around a shared average): a unit that
matters more than every other unit anywhere gets lr 0, the least important one 2 lr, and the
factor 2 keeps the average near lr. The authors' code normalises globally as well. When every
unit has the same importance (max == min) there is nothing to reallocate and every multiplier is
1. ``--adept-lr-floor`` optionally keeps the most important unit trainable (the paper's formula
is floor 0).

The multipliers scale whatever the schedule says at step t (warmup, cosine), so refreshing them
never resets or compounds the schedule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_adept.errors import CheckpointError
from megatron_adept.models.units import UnitKey, unit_order

ADEPT_STATE_FILE = "adept_state.json"


@dataclass(frozen=True)
class UnitLr:
    """One trainable unit's importance and learning-rate multiplier."""

    layer: int
    unit: str
    importance: float | None
    """I_U: mean |θ·∂L/∂θ| over the unit's elements on the probe corpus (None: not probed)."""
    normalized: float | None
    """I_U min-max normalised over every trainable unit of the model."""
    multiplier: float
    """max(floor, 2 (1 - normalized)): the unit's lr is this times the scheduled lr."""


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


def uniform_multipliers(keys: list[UnitKey]) -> list[UnitLr]:
    """Every unit at the scheduled lr (modes without decoupled tuning); importance unknown."""
    return [
        UnitLr(k[0], k[1], float("nan"), float("nan"), 1.0) for k in sorted(keys, key=unit_order)
    ]


@dataclass(frozen=True)
class AdeptState:
    """Contents of ``adept_state.json``: the multipliers in force at ``iteration``."""

    iteration: int
    units: tuple[UnitLr, ...]

    def multipliers(self) -> dict[UnitKey, float]:
        return {(u.layer, u.unit): u.multiplier for u in self.units}

    def save(self, directory: str | Path) -> None:
        data = {"iteration": self.iteration, "units": [asdict(u) for u in self.units]}
        (Path(directory) / ADEPT_STATE_FILE).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> AdeptState:
        path = Path(directory) / ADEPT_STATE_FILE
        try:
            data = json.loads(path.read_text())
            return cls(int(data["iteration"]), tuple(UnitLr(**u) for u in data["units"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from None
