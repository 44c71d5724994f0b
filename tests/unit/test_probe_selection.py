"""Layer selection, the suggested-k rule, rank aggregation and the importance.json contract."""

import json

import pytest

from megatron_adept.checkpoint.atomic import check_output_file
from megatron_adept.config.groups import BatchConfig
from megatron_adept.errors import AdeptError
from megatron_adept.importance.unit_importance import UnitImportance, UnitStat
from megatron_adept.probe.config import ProbeConfig
from megatron_adept.probe.methods import rank_scores
from megatron_adept.probe.scores import LayerScores
from megatron_adept.probe.selection import least_important, suggested_k


def test_least_important_is_sorted_and_breaks_ties_by_index():
    assert least_important([0.5, 0.1, 0.3, 0.1, 0.9], 3) == [1, 2, 3]
    assert least_important([0.2, 0.2, 0.2], 2) == [0, 1]


@pytest.mark.parametrize("k", [0, -1, 6])
def test_least_important_rejects_k_out_of_range(k):
    with pytest.raises(AdeptError, match=f"--k={k} must be between 1 and the number of layers"):
        least_important([0.1] * 5, k)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        # two layers clearly below the rest, in shuffled order
        ([0.9, 0.01, 0.8, 0.85, 0.02, 0.7, 0.75, 0.95, 0.72, 0.81, 0.88, 5.0], 2),
        # the biggest jump overall is the vital top layer; the early jump after 3 wins
        ([0.1, 0.11, 0.12, 0.5, 0.52, 0.55, 0.6, 0.62, 0.65, 0.7, 0.72, 9.0], 3),
        # a jump beyond the first quarter is not a candidate
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 3.0, 3.1], 1),
        ([1.0] * 8, 1),  # flat: nothing stands out
        ([0.3], 1),
        ([0.3, 0.1], 1),
        ([-0.2, -0.19, 0.4, 0.41, 0.42, 0.43, 0.44, 0.45], 2),  # negative scores are fine
    ],
)
def test_suggested_k_is_the_largest_early_jump(scores, expected):
    assert suggested_k(scores) == expected


def _units(values: dict[tuple[int, str], float]) -> UnitImportance:
    return UnitImportance({k: UnitStat(v * 10, 10, v) for k, v in values.items()}, 1.0, 5)


def test_rank_scores_average_ranks_over_unit_kinds():
    units = _units(
        {
            (0, "q_proj"): 3.0,
            (1, "q_proj"): 1.0,
            (2, "q_proj"): 2.0,
            (0, "down_proj"): 5.0,
            (1, "down_proj"): 5.0,  # tied with layer 0: both get rank 1.5
            (2, "down_proj"): 4.0,
        }
    )
    # q_proj ranks 2, 0, 1; down_proj ranks 1.5, 1.5, 0; normalised by L - 1 = 2
    assert rank_scores(units) == pytest.approx([(2 + 1.5) / 4, (0 + 1.5) / 4, (1 + 0) / 4])


def test_unit_importance_per_layer_follows_unit_order():
    units = _units({(1, "k_proj"): 2.0, (1, "q_proj"): 1.0, (0, "o_proj"): 3.0})
    rows = units.per_layer()
    assert rows == [{"o_proj": 3.0}, {"q_proj": 1.0, "k_proj": 2.0}]
    assert list(rows[1]) == ["q_proj", "k_proj"]
    assert units.mean()[(1, "k_proj")] == 2.0


def test_importance_json_has_the_contract_fields(tmp_path):
    scores = LayerScores(
        method="masking",
        base_loss=2.5,
        layer_scores=[0.3, 0.1, 0.2],
        unit_scores=[{"q_proj": 1.0}] * 3,
        suggested_k=1,
        k=2,
        selected=[1, 2],
        counted_tokens=42,
        extras={"masked_losses": [2.8, 2.6, 2.7], "model_type": "llama"},
    )
    path = tmp_path / "importance.json"
    scores.write(path)
    data = json.loads(path.read_text())
    for key in ("method", "base_loss", "layer_scores", "unit_scores", "suggested_k", "selected"):
        assert data[key] == getattr(scores, key)
    assert data["num_layers"] == 3 and data["counted_tokens"] == 42
    assert data["model_type"] == "llama" and data["masked_losses"] == [2.8, 2.6, 2.7]
    assert [p.name for p in tmp_path.iterdir()] == ["importance.json"]


def test_output_paths_are_checked_before_work(tmp_path):
    with pytest.raises(AdeptError, match="directory of --out .* does not exist"):
        check_output_file(tmp_path / "missing" / "importance.json", "--out")
    with pytest.raises(AdeptError, match="--plot .* is a directory"):
        check_output_file(tmp_path, "--plot")
    assert check_output_file(tmp_path / "ok.json", "--out") == tmp_path / "ok.json"


def test_probe_config_rejects_bad_values():
    with pytest.raises(AdeptError, match="--k=0 must be at least 1"):
        ProbeConfig(load="ckpt", probe_data="probe.jsonl", out="i.json", k=0)
    with pytest.raises(AdeptError, match="--seq-length=0 must be at least 1"):
        BatchConfig(seq_length=0)
    with pytest.raises(AdeptError, match="--micro-batch-size=0 must be at least 1"):
        BatchConfig(micro_batch_size=0)
