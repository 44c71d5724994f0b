"""Same weights, same logits: TP=2, PP=2 (even and uneven), TP=2xPP=2 versus TP=1."""

import json

import pytest
from torchrun_harness import run_torchrun


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen3"])
def test_logits_match_tp1_at_every_layout(preset, tmp_path):
    result_path = tmp_path / "result.json"
    run_torchrun("layout_parity.py", 4, [preset, str(tmp_path), str(result_path)])
    result = json.loads(result_path.read_text())
    assert result["reference_abs_mean"] > 0.1  # logits large enough for the check to bite
    for layout in ("tp2", "pp2", "pp2_uneven_1_3", "tp2_pp2"):
        assert result[layout] <= 1e-5, (layout, result[layout])
    assert result["pp2_layers_on_stage0"] == 2
    assert result["pp2_uneven_1_3_layers_on_stage0"] == 1
