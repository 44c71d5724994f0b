"""Independent single-process reference for ``--copy-importance source`` on a real expansion.

argv: FPI_CKPT RUN_SAVE PROBE_JSONL RESULT_JSON

FPI_CKPT is a function-preserving expansion written by tools/expand_ckpt.py (zero linear_proj
and linear_fc2 in every copy); RUN_SAVE a TP=1 run of it with --importance-interval 1 and
--save-interval 1 for 2 iterations. By hand at TP=1, from ``loss.backward()`` with every
parameter trainable: I_U = mean |θ·g| of every unit of every layer; at step 0 each copy unit
takes the value of the same unit of its source layer (read from adept_meta.json's layer map),
then min-max over the copies' units and 2(1 - I). At iteration 1 the copies' own scores, on the
weights the run saved after step 1. Both are compared with the run's adept_state.json files.
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


def importance(ckpt, probe: str, layers: list[int]) -> dict[tuple[int, str], float]:
    """mean |θ·∂L/∂θ| per unit of ``layers``, L the mean loss over the probe's counted tokens."""
    model, meta = load_model(ckpt, ParallelConfig())
    model.requires_grad_(True)
    batches = corpus_batches(load_corpus(probe, resolve_tokenizer(None, ckpt)), SEQ, 1)
    total = sum(b.loss_mask.sum() for b in batches)
    model.zero_grad()
    for batch in batches:
        per_token = model(batch.tokens, position_ids_like(batch.tokens), None, labels=batch.labels)
        ((per_token * batch.loss_mask).sum() / total).backward()
    theta = layer_tensors(model, layers, meta.arch, grads=False)
    grad = layer_tensors(model, layers, meta.arch, grads=True)
    return {key: (theta[key] * grad[key]).abs().mean().item() for key in theta}


def linear_rule(scores: dict) -> dict:
    low, high = min(scores.values()), max(scores.values())
    return {key: 2 * (1 - (value - low) / (high - low)) for key, value in scores.items()}


def state(path: Path) -> tuple[dict, dict]:
    data = json.loads(path.read_text())
    return data, {(u["layer"], u["unit"]): u["multiplier"] for u in data["units"]}


def max_diff(got: dict, want: dict) -> float:
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    return max(abs(got[key] - want[key]) for key in want)


def main() -> None:
    fpi, run, probe, result_path = sys.argv[1:5]
    runtime.initialize(ParallelConfig(), seed=1234)
    layer_map = json.loads((Path(fpi) / "adept_meta.json").read_text())["layer_map"]
    copies = [i for i, entry in enumerate(layer_map) if entry["kind"] == "copy"]
    position = {e["source"]: i for i, e in enumerate(layer_map) if e["kind"] == "original"}
    source = {copy: position[layer_map[copy]["source"]] for copy in copies}

    scores = importance(fpi, probe, sorted(copies + list(source.values())))
    own_at_start = {key: value for key, value in scores.items() if key[0] in copies}
    from_source = {(layer, unit): scores[(source[layer], unit)] for layer, unit in own_at_start}
    want0 = linear_rule(from_source)
    data0, got0 = state(Path(run) / "adept_state.json")

    after_step = Path(run) / "iter_0000001"
    want1 = linear_rule(importance(after_step, probe, copies))
    data1, got1 = state(Path(run) / "iter_0000002" / "adept_state.json")
    moved, _ = load_model(after_step, ParallelConfig())
    params = dict(moved.named_parameters())
    write_result(
        result_path,
        {
            "copies": copies,
            "sources": [source[c] for c in copies],
            "own_at_start_max": max(own_at_start.values()),
            "step0_diff": max_diff(got0, want0),
            "step0_multipliers": sorted(want0.values()),
            "step0_source_scored": data0.get("source_scored"),
            "step0_iteration": data0["iteration"],
            "options": [
                data0.get(k) for k in ("unit_importance", "unit_lr_rule", "copy_importance")
            ],
            "step1_diff": max_diff(got1, want1),
            "step1_multipliers": sorted(want1.values()),
            "step1_source_scored": data1.get("source_scored"),
            "step1_iteration": data1["iteration"],
            "projections_after_step": min(
                params[f"decoder.layers.{c}.{name}"].abs().max().item()
                for c in copies
                for name in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
            ),
        },
    )
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
