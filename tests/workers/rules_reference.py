"""Independent single-process reference for ``--unit-importance authors --unit-lr-rule
affine-optimal`` at step 0.

argv: CKPT RUN_SAVE PROBE_JSONL FLOOR RESULT_JSON

By hand at TP=1: one ``loss.backward()`` per probe micro-batch (one item, as the run's
--micro-batch-size 1), L_b the batch's mean loss over its counted tokens; I_U = mean over
batches of mean |θ|·|∂L_b/∂θ| over the unit's elements (units cut out of the fused tensors
independently of models/units.py); w_U the unit's element count; then App. F.3's affine rule
with c = 1 / max|I - Ī| and the floor restored by an active-set iteration (a method other than
the library's bisection). Compared with the run's ``adept_state.json``.
"""

import json
import sys
from pathlib import Path

import torch
from common import write_result
from train_reference import SEQ, layer_tensors

from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.data.corpus import corpus_batches, load_corpus
from megatron_adept.data.tokenizer import resolve_tokenizer
from megatron_adept.models.pipeline import position_ids_like
from megatron_adept.parallel import runtime


def authors_importance(ckpt: str, probe: str) -> tuple[dict, dict]:
    model, meta = load_model(ckpt, ParallelConfig())
    model.requires_grad_(True)
    copies = meta.layer_map.copy_indices
    batches = corpus_batches(load_corpus(probe, resolve_tokenizer(None, ckpt)), SEQ, 1)
    theta = layer_tensors(model, copies, meta.arch, grads=False)
    scores = {key: 0.0 for key in theta}
    for batch in batches:
        model.zero_grad()
        per_token = model(batch.tokens, position_ids_like(batch.tokens), None, labels=batch.labels)
        ((per_token * batch.loss_mask).sum() / batch.loss_mask.sum()).backward()
        grad = layer_tensors(model, copies, meta.arch, grads=True)
        for key in theta:
            magnitude = (theta[key].abs() * grad[key].abs()).double().mean().item()
            scores[key] += magnitude / len(batches)
    return scores, {key: value.numel() for key, value in theta.items()}


def affine_rule(scores: dict, sizes: dict, floor: float) -> dict:
    total = sum(sizes.values())
    mean = sum(sizes[k] * scores[k] for k in scores) / total
    spread = max(abs(v - mean) for v in scores.values())
    base = {k: 1 - (v - mean) / spread for k, v in scores.items()}
    clamped: set = set()
    while True:  # units below the floor sit on it; the others share one shift
        free = [k for k in base if k not in clamped]
        shift = (total - floor * sum(sizes[k] for k in clamped)) / sum(sizes[k] for k in free)
        shift -= sum(sizes[k] * base[k] for k in free) / sum(sizes[k] for k in free)
        below = {k for k in free if base[k] + shift < floor}
        if not below:
            return {k: floor if k in clamped else base[k] + shift for k in base}
        clamped |= below


def main() -> None:
    ckpt, run, probe, floor, result_path = sys.argv[1:6]
    runtime.initialize(ParallelConfig(), seed=1234)
    scores, sizes = authors_importance(ckpt, probe)
    want = affine_rule(scores, sizes, float(floor))
    data = json.loads((Path(run) / "adept_state.json").read_text())
    got = {(u["layer"], u["unit"]): u for u in data["units"]}
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    total = sum(sizes.values())
    write_result(
        result_path,
        {
            "options": [data["unit_importance"], data["unit_lr_rule"], data["copy_importance"]],
            "units": len(want),
            "importance_rel_diff": max(
                abs(got[k]["importance"] - scores[k]) / scores[k] for k in scores
            ),
            "multiplier_diff": max(abs(got[k]["multiplier"] - want[k]) for k in want),
            "weighted_mean": sum(sizes[k] * got[k]["multiplier"] for k in got) / total,
            "at_floor": sum(abs(want[k] - float(floor)) < 1e-12 for k in want),
            "multiplier_range": [min(want.values()), max(want.values())],
        },
    )
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
