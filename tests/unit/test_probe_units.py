"""Both unit-importance estimators against hand computations, and the state they must leave
alone (one process).

Tensor-, pipeline- and data-parallel agreement and the DDP ``main_grad`` buffers are checked
in tests/parity/test_probe_vs_hf.py.
"""

import json
import sys

import pytest
from torchrun_harness import WORKERS, run_command

PRESETS = ("tiny-qwen2", "tiny-qwen3")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("units") / "units.json"
    run_command([sys.executable, str(WORKERS / "probe_unit_reference.py"), str(out)])
    return json.loads(out.read_text())


def relative(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-30)


@pytest.mark.parametrize("preset", PRESETS)
def test_means_equal_hand_sliced_backward(results, preset):
    reference, got = results[preset]["reference"], results[preset]["all"]["means"]
    assert sorted(got) == sorted(reference)
    assert min(reference.values()) > 0
    for key, want in reference.items():
        assert relative(got[key], want) <= 1e-5, key


@pytest.mark.parametrize("preset", PRESETS)
def test_counts_cover_every_layer_element_once(results, preset):
    counts, numel = results[preset]["all"]["counts"], results[preset]["numel"]
    for layer in range(4):
        want = sum(n for key, n in numel.items() if key.startswith(f"{layer}/"))
        assert sum(c for key, c in counts.items() if key.startswith(f"{layer}/")) == want


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
    "call", ["all", "frozen_scored", "trainable", "authors", "authors_trainable"]
)
def test_call_leaves_grads_rng_mode_and_flags_alone(results, preset, call):
    report = results[preset][call]
    assert report["grads_kept"] and report["rng_kept"]
    assert report["still_training"] and report["flags_kept"]


@pytest.mark.parametrize("preset", PRESETS)
def test_frozen_layers_are_scored_in_stage1_and_skipped_in_stage2(results, preset):
    reference = results[preset]["reference"]
    frozen = results[preset]["frozen_scored"]["means"]
    trainable = results[preset]["trainable"]["means"]
    assert sorted(frozen) == sorted(reference)
    assert sorted(trainable) == sorted(k for k in reference if not k.startswith("0/"))
    for key, value in trainable.items():
        assert relative(value, reference[key]) <= 1e-5, key


@pytest.mark.parametrize("preset", PRESETS)
def test_authors_estimator_equals_hand_per_batch_magnitudes(results, preset):
    """mean over batches of mean |θ|·|∂L_b/∂θ|; all scored, then layer 0 frozen (Stage 2)."""
    reference = results[preset]["authors_reference"]
    got, trainable = results[preset]["authors"]["means"], results[preset]["authors_trainable"]
    assert sorted(got) == sorted(reference)
    for key, want in reference.items():
        assert relative(got[key], want) <= 1e-5, key
    assert sorted(trainable["means"]) == sorted(k for k in reference if not k.startswith("0/"))
    for key, value in trainable["means"].items():
        assert relative(value, reference[key]) <= 1e-5, key
