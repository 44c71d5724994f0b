"""One Stage-2 importance refresh: the estimator, the copies' importance and the lr rule.

Collective over the whole world; every rank ends with the same :class:`AdeptState`.

1. With ``--copy-importance source``, find the trainable copies that are still
   function-preserving and their source layers (:mod:`megatron_adept.importance.copies`).
2. Score every trainable unit, and every unit of those source layers, with the
   ``--unit-importance`` estimator on the probe corpus. The source layers are frozen and lie
   below their copies, so the backward pass then reaches the lowest of them, across a pipeline
   stage boundary where a copy begins its stage (the hooks that normally stop backward at the
   lowest trainable layer are lifted for the duration).
3. Give each such copy's units their source's scores and apply ``--unit-lr-rule``.

A copy stops being function-preserving when a step moves either of its zero projections. With
``--adept-lr-floor 0`` the rule gives multiplier 0 to the most important unit; if that is one
projection of a copy scored from its source, the other projection still moves and the next
refresh scores the copy on its own (the frozen projection's half then scores 0, the minimum,
and gets the largest multiplier). Only if *both* projections got 0 (a tie at the top) could
the copy never move and keep its source's scores forever; such a copy is scored on its own
instead, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from megatron_adept.checkpoint.metadata import LayerMap
from megatron_adept.importance.copies import (
    function_preserving,
    source_layers,
    with_source_importance,
)
from megatron_adept.importance.unit_importance import UNIT_IMPORTANCE
from megatron_adept.models.pipeline import MicroBatch
from megatron_adept.models.units import DOWN_PROJ, O_PROJ
from megatron_adept.optimizer.unit_lr import AdeptState, UnitKey, UnitLr, unit_multipliers
from megatron_adept.parallel.log import get_logger
from megatron_adept.training.config import AdeptConfig

logger = get_logger(__name__)


def multipliers_with_sources(
    scores: Mapping[UnitKey, float],
    sizes: Mapping[UnitKey, int],
    keys: Sequence[UnitKey],
    sources: Mapping[int, int],
    rule: str,
    floor: float,
) -> tuple[list[UnitLr], dict[int, int]]:
    """The multipliers of ``rule`` over ``keys``, each copy in ``sources`` (copy -> source
    layer) taking its source's ``scores``, except copies whose projections would both stay 0.

    Returns:
        (the units with their importance and multipliers, the copies scored from their source).
    """
    sources = dict(sources)
    while True:
        units = unit_multipliers(rule, with_source_importance(scores, keys, sources), sizes, floor)
        still = {(u.layer, u.unit) for u in units if u.multiplier == 0.0}
        stuck = [c for c in sources if (c, O_PROJ) in still and (c, DOWN_PROJ) in still]
        if not stuck:
            return units, sources
        for copy in stuck:
            logger.warning(
                f"copy {copy} is function-preserving and its source layer {sources.pop(copy)}'s "
                f"importance gives both its {O_PROJ} and {DOWN_PROJ} multiplier 0, so it could "
                "never move: scoring it on its own"
            )


def refresh_unit_lrs(
    model: torch.nn.Module,
    batches: Sequence[MicroBatch],
    layer_map: LayerMap,
    keys: Sequence[UnitKey],
    adept: AdeptConfig,
    iteration: int,
    backward_to_sources: Callable[[], AbstractContextManager],
) -> AdeptState:
    """Score ``keys`` (every trainable unit) on ``batches`` and compute their multipliers.

    Args:
        model: this rank's pipeline stage.
        batches: the probe corpus, identical on every rank.
        layer_map: the checkpoint's layer map (which layer is a copy of which original).
        keys: every trainable (layer, unit) of the whole model, the same on every rank.
        adept: the estimator, copy-importance and lr-rule choices and the floor.
        iteration: the training iteration the multipliers take effect at.
        backward_to_sources: a context in which backward may run below the lowest trainable
            layer (entered only when some copy is scored from its source).
    """
    layers = sorted({layer for layer, _ in keys})
    sources: dict[int, int] = {}
    if adept.copy_importance == "source":
        copies = [index for index in layer_map.copy_indices if index in layers]
        sources = source_layers(layer_map, function_preserving(model, copies))
    estimate = UNIT_IMPORTANCE[adept.unit_importance]
    with backward_to_sources() if sources else nullcontext():
        scored = estimate(model, batches, layers={*layers, *sources.values()})
    sizes = {key: scored.units[key].count for key in keys}
    units, sources = multipliers_with_sources(
        scored.mean(), sizes, keys, sources, adept.unit_lr_rule, adept.adept_lr_floor
    )
    return AdeptState(
        iteration,
        tuple(units),
        adept.unit_importance,
        adept.unit_lr_rule,
        adept.copy_importance,
        tuple(sorted(sources.items())),
    )
