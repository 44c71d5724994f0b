"""SDPA core attention equals megatron-core's local DotProductAttention, SwiGLUMLP equals
megatron-core's MLP, and a model built with both and our RoPE equals megatron's plain local one
(2 ranks, TP=1 and 2); what the two modules keep for backward matches hand-computed bytes."""

import json

from torchrun_harness import run_torchrun


def test_sdpa_core_attention_matches_local_dot_product_attention(tmp_path):
    result_path = tmp_path / "result.json"
    run_torchrun("sdpa_attention.py", 2, [str(result_path)], timeout=400)
    result = json.loads(result_path.read_text())
    modules = {k: v for k, v in result.items() if k.startswith("module_")}
    assert len(modules) == 6
    for name, diffs in modules.items():
        assert diffs["ref_out_abs_max"] > 0.1, name
        for key in ("out", "dq", "dk", "dv"):
            assert diffs[key] <= 1e-5, (name, key, diffs[key])
    for tp in (1, 2):
        assert result[f"mlp_tp{tp}"] == {"plain": True, "equal": True, "bias": True, "tensors": 4}
        saved = result[f"saved_tp{tp}"]
        assert saved["mlp_saved_bytes"] == saved["mlp_fc1_out_bytes"], saved
        assert not saved["attention_keeps_fused"], saved
    models = {k: v for k, v in result.items() if k.startswith("model_")}
    assert sorted(models) == [
        "model_tp2_tiny-llama_kv1",
        "model_tp2_tiny-llama_kv2",
        "model_tp2_tiny-qwen3_kv2",
    ]
    for name, diffs in models.items():
        assert diffs["same_keys"], name
        assert diffs["params"] > 10, name
        assert diffs["loss"] <= 1e-5 and diffs["grads"] <= 1e-5, (name, diffs)
    assert result["refused"] == {
        "dropout": True,
        "padding_mask_type": True,
        "explicit_mask": True,
        "context_parallel": True,
    }
