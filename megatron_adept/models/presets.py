"""Named small architectures shared by tests, benchmarks and the quickstart.

Each preset is a Hugging Face ``config.json`` dictionary, so the same name builds a random
``transformers`` model (for parity tests) and a megatron model (via :class:`ModelArch`).
"""

from __future__ import annotations

from typing import Any

from megatron_adept.errors import ConfigError

_TINY = {
    "num_hidden_layers": 4,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        **_TINY,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
    },
    "tiny-qwen2": {
        **_TINY,
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "attention_bias": True,
    },
    "tiny-qwen3": {
        **_TINY,
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "tiny-mistral": {
        **_TINY,
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "sliding_window": None,
    },
    "bench-llama-16": {
        **_TINY,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 16,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "vocab_size": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "smollm2-135m": {
        **_TINY,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
    },
    "llama-8x512": {
        **_TINY,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 8,
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "vocab_size": 4096,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "demo-llama": {
        **_TINY,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 8,
        "hidden_size": 192,
        "intermediate_size": 512,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 2048,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
}


def preset_config(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of preset ``name``'s HF config with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return {**PRESETS[name], **overrides}


def build_hf_model(name: str, seed: int = 0, **overrides: Any):
    """A randomly initialised ``transformers`` model for preset ``name`` (no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = preset_config(name, **overrides)
    hf_config = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    # Random norms make parity tests sensitive to norm placement (HF inits them to 1).
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname:
                param.uniform_(0.5, 1.5)
    return model.eval()
