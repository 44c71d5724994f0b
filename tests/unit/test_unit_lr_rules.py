"""The lr rules (linear, affine-optimal), copies scored from their source, and adept_state.json,
against hand-computed values."""

import itertools
import json
import random

import pytest

from megatron_adept.errors import ConfigError
from megatron_adept.optimizer.unit_lr import (
    AdeptState,
    UnitLr,
    affine_optimal_multipliers,
    unit_multipliers,
)
from megatron_adept.training.config import AdeptConfig
from megatron_adept.training.unit_refresh import multipliers_with_sources

Q, K, V = (0, "q_proj"), (0, "k_proj"), (0, "v_proj")
IMPORTANCE = {Q: 1.0, K: 2.0, V: 4.0}
SIZES = {Q: 1, K: 1, V: 2}


def by_key(units: list[UnitLr]) -> dict:
    return {(u.layer, u.unit): u for u in units}


def weighted_mean(units: list[UnitLr], sizes: dict) -> float:
    return sum(u.multiplier * sizes[(u.layer, u.unit)] for u in units) / sum(sizes.values())


def test_linear_rule_is_two_times_one_minus_min_max_normalised():
    got = by_key(unit_multipliers("linear", IMPORTANCE, SIZES))
    assert [got[k].normalized for k in (Q, K, V)] == pytest.approx([0.0, 1 / 3, 1.0], abs=1e-12)
    assert [got[k].multiplier for k in (Q, K, V)] == pytest.approx([2.0, 4 / 3, 0.0], abs=1e-12)
    floored = by_key(unit_multipliers("linear", IMPORTANCE, SIZES, floor=0.5))
    assert floored[V].multiplier == 0.5 and floored[Q].multiplier == pytest.approx(2.0)


def test_affine_optimal_by_hand():
    # weighted mean I = (1 + 2 + 2*4) / 4 = 2.75; deviations -1.75, -0.75, 1.25; c = 1/1.75
    got = by_key(affine_optimal_multipliers(IMPORTANCE, SIZES))
    assert [got[k].normalized for k in (Q, K, V)] == pytest.approx([-1.0, -3 / 7, 5 / 7], abs=1e-12)
    assert [got[k].multiplier for k in (Q, K, V)] == pytest.approx([2.0, 10 / 7, 2 / 7], abs=1e-12)
    assert weighted_mean(list(got.values()), SIZES) == pytest.approx(1.0, abs=1e-12)


def test_affine_optimal_floor_shifts_every_unit_to_keep_the_mean():
    # v clamps to 0.5; q and k move by the same shift d: (2 + d) + (10/7 + d) + 2*0.5 = 4
    got = by_key(affine_optimal_multipliers(IMPORTANCE, SIZES, floor=0.5))
    want = [25 / 14, 17 / 14, 0.5]  # d = -3/14
    assert [got[k].multiplier for k in (Q, K, V)] == pytest.approx(want, abs=1e-9)
    assert abs(weighted_mean(list(got.values()), SIZES) - 1.0) <= 1e-6


@pytest.mark.parametrize("floor", [0.0, 0.2, 0.6, 0.95, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_affine_optimal_weighted_mean_is_one(floor, seed):
    gen = random.Random(seed)
    keys = [(layer, unit) for layer in range(4) for unit in ("q_proj", "o_proj", "down_proj")]
    importance = {k: gen.lognormvariate(0, 2) for k in keys}  # heavy tails: the floor bites
    sizes = {k: gen.choice([64, 4096, 16384]) for k in keys}
    units = affine_optimal_multipliers(importance, sizes, floor)
    assert abs(weighted_mean(units, sizes) - 1.0) <= 1e-6
    assert all(floor <= u.multiplier <= 2.0 for u in units)
    if floor == 0.0:
        assert min(u.multiplier for u in units) == pytest.approx(0.0, abs=1e-12) or max(
            u.multiplier for u in units
        ) == pytest.approx(2.0, abs=1e-12)
    # the more important unit never gets the larger lr
    ordered = sorted(units, key=lambda u: importance[(u.layer, u.unit)])
    assert all(a.multiplier >= b.multiplier - 1e-12 for a, b in itertools.pairwise(ordered))


def test_affine_optimal_is_scale_free_and_neutral_without_spread():
    shifted = {k: 1e-7 * v + 3.0 for k, v in IMPORTANCE.items()}
    a = by_key(affine_optimal_multipliers(IMPORTANCE, SIZES, 0.3))
    b = by_key(affine_optimal_multipliers(shifted, SIZES, 0.3))
    assert all(abs(a[k].multiplier - b[k].multiplier) <= 1e-6 for k in a)
    flat = affine_optimal_multipliers({Q: 0.5, K: 0.5}, {Q: 3, K: 9}, 0.4)
    assert [u.multiplier for u in flat] == [1.0, 1.0]


def test_affine_optimal_floor_above_one_is_refused():
    with pytest.raises(ConfigError, match="--adept-lr-floor=1.5 must be in"):
        affine_optimal_multipliers(IMPORTANCE, SIZES, 1.5)
    with pytest.raises(ConfigError, match="--adept-lr-floor=1.2 must be <= 1"):
        AdeptConfig(unit_lr_rule="affine-optimal", adept_lr_floor=1.2)
    AdeptConfig(unit_lr_rule="linear", adept_lr_floor=1.2)  # the linear rule allows up to 2
    for name, value in (
        ("unit_lr_rule", "cubic"),
        ("unit_importance", "fisher"),
        ("copy_importance", "mean"),
    ):
        with pytest.raises(ConfigError, match=f"unknown --{name.replace('_', '-')} '{value}'"):
            AdeptConfig(**{name: value})


def test_defaults_are_source_linear_abs_gradient():
    config = AdeptConfig()
    assert (config.copy_importance, config.unit_lr_rule, config.unit_importance) == (
        "source",
        "linear",
        "abs-gradient",
    )


UNITS = ("q_proj", "o_proj", "down_proj")
COPY_KEYS = [(layer, unit) for layer in (3, 5) for unit in UNITS]
SIZES_6 = {k: 10 for k in COPY_KEYS}


def test_copies_take_their_source_scores():
    scores = {(layer, unit): 0.0 for layer, unit in COPY_KEYS}  # fresh copies score 0
    scores |= {(2, "q_proj"): 1.0, (2, "o_proj"): 3.0, (2, "down_proj"): 2.0}
    scores |= {(4, "q_proj"): 4.0, (4, "o_proj"): 5.0, (4, "down_proj"): 1.0}
    units, used = multipliers_with_sources(scores, SIZES_6, COPY_KEYS, {3: 2, 5: 4}, "linear", 0.0)
    assert used == {3: 2, 5: 4}
    got = {(u.layer, u.unit): round(u.multiplier, 9) for u in units}
    # min 1, max 5: 2 (1 - (I - 1) / 4)
    assert got == {
        (3, "q_proj"): 2.0,
        (3, "o_proj"): 1.0,
        (3, "down_proj"): 1.5,
        (5, "q_proj"): 0.5,
        (5, "o_proj"): 0.0,
        (5, "down_proj"): 2.0,
    }
    own, used = multipliers_with_sources(scores, SIZES_6, COPY_KEYS, {}, "linear", 0.0)
    assert used == {} and {u.multiplier for u in own} == {1.0}  # what "own" gives at step 0


def test_a_copy_whose_projections_would_both_stay_zero_is_scored_on_its_own():
    scores = {(layer, unit): 0.0 for layer, unit in COPY_KEYS}
    scores |= {(2, "q_proj"): 1.0, (2, "o_proj"): 5.0, (2, "down_proj"): 5.0}  # a tie at the top
    scores |= {(4, "q_proj"): 4.0, (4, "o_proj"): 2.0, (4, "down_proj"): 1.0}
    units, used = multipliers_with_sources(scores, SIZES_6, COPY_KEYS, {3: 2, 5: 4}, "linear", 0.0)
    assert used == {5: 4}
    got = {(u.layer, u.unit): round(u.multiplier, 9) for u in units}
    # copy 3 on its own (all 0, the minimum); copy 5 from layer 4: min 0, max 4
    assert got == {
        (3, "q_proj"): 2.0,
        (3, "o_proj"): 2.0,
        (3, "down_proj"): 2.0,
        (5, "q_proj"): 0.0,
        (5, "o_proj"): 1.0,
        (5, "down_proj"): 1.5,
    }


def test_adept_state_records_the_choices_beside_the_multipliers(tmp_path):
    state = AdeptState(
        7, (UnitLr(3, "q_proj", 0.5, 0.1, 1.2),), "authors", "affine-optimal", "source", ((3, 2),)
    )
    state.save(tmp_path)
    data = json.loads((tmp_path / "adept_state.json").read_text())
    assert data["unit_importance"] == "authors" and data["unit_lr_rule"] == "affine-optimal"
    assert data["copy_importance"] == "source" and data["source_scored"] == [[3, 2]]
    assert AdeptState.load(tmp_path) == state
    del data["unit_importance"], data["unit_lr_rule"], data["copy_importance"]
    del data["source_scored"]
    (tmp_path / "adept_state.json").write_text(json.dumps(data))  # written before the options
    assert AdeptState.load(tmp_path) == AdeptState(7, state.units)
