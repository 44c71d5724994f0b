"""Architecture descriptions: one registry keyed by Hugging Face ``model_type``.

A :class:`ModelArch` is the parallelism-free description of a decoder-only model, read from a
Hugging Face ``config.json`` and written back by the converter. Supporting a new family means
adding one :class:`ArchFamily` entry here and, if it has new tensors, rows in
``checkpoint/hf_mapping.py``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_adept.errors import ConfigError


@dataclass(frozen=True)
class ArchFamily:
    """What distinguishes one HF model family from another, as far as megatron-core cares."""

    hf_architecture: str
    """The ``architectures[0]`` class name written to an exported ``config.json``."""
    qkv_bias: bool
    """Bias on the q/k/v projections (Qwen2)."""
    qk_layernorm: bool
    """RMSNorm on queries and keys per head (Qwen3)."""


FAMILIES: dict[str, ArchFamily] = {
    "llama": ArchFamily("LlamaForCausalLM", qkv_bias=False, qk_layernorm=False),
    "mistral": ArchFamily("MistralForCausalLM", qkv_bias=False, qk_layernorm=False),
    "qwen2": ArchFamily("Qwen2ForCausalLM", qkv_bias=True, qk_layernorm=False),
    "qwen3": ArchFamily("Qwen3ForCausalLM", qkv_bias=False, qk_layernorm=True),
}

# Llama 3.1-style frequency scaling, the only kind megatron-core's RoPE implements.
_LLAMA3_ROPE_FIXED = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass(frozen=True)
class ModelArch:
    """A decoder-only transformer in Hugging Face terms (0-based layers, unpadded vocab)."""

    model_type: str
    """HF ``model_type``: one of :data:`FAMILIES`."""
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    """Number of key/value heads (GQA groups)."""
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    norm_eps: float
    tie_word_embeddings: bool
    rope_scaling_factor: float | None = None
    """Llama 3.1-style RoPE scaling factor, or None for plain RoPE."""
    dtype: str = "float32"
    """Parameter dtype of the source weights (``float32``, ``bfloat16`` or ``float16``)."""
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        if self.model_type not in FAMILIES:
            raise ConfigError(
                f"unsupported architecture model_type={self.model_type!r}; "
                f"supported: {', '.join(sorted(FAMILIES))}"
            )
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_query_groups}"
            )
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"unsupported dtype {self.dtype!r}")

    @property
    def family(self) -> ArchFamily:
        return FAMILIES[self.model_type]

    def with_layers(self, num_layers: int) -> ModelArch:
        """The same architecture with a different depth (used by layer expansion)."""
        return dataclasses.replace(self, num_layers=num_layers)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelArch:
        return cls(**data)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArch:
        """Read an HF ``config.json`` dictionary (transformers 4.x or 5.x layout)."""
        model_type = config.get("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(
                f"unsupported architecture model_type={model_type!r} "
                f"(architectures={config.get('architectures')}); "
                f"supported: {', '.join(sorted(FAMILIES))}"
            )
        if config.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"unsupported hidden_act={config['hidden_act']!r}; expected 'silu'")
        if config.get("mlp_bias") or (config.get("attention_bias") and model_type != "qwen2"):
            raise ConfigError(f"{model_type}: linear biases other than q/k/v are not supported")
        if config.get("use_sliding_window"):
            raise ConfigError(f"{model_type}: sliding-window attention is not supported")
        rope = dict(config.get("rope_parameters") or {})
        legacy_scaling = config.get("rope_scaling") or {}
        rope.update({k: v for k, v in legacy_scaling.items() if k not in rope})
        rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling_factor = None
        if rope_type == "llama3":
            for key, expected in _LLAMA3_ROPE_FIXED.items():
                if float(rope.get(key, expected)) != float(expected):
                    raise ConfigError(
                        f"rope_scaling {key}={rope.get(key)} unsupported (megatron-core "
                        f"implements {key}={expected})"
                    )
            scaling_factor = float(rope["factor"])
        elif rope_type != "default":
            raise ConfigError(f"unsupported rope_type={rope_type!r}; supported: default, llama3")
        required = (
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "vocab_size",
        )
        missing = [key for key in required if key not in config]
        if missing:
            raise ConfigError(f"{model_type} config lacks {', '.join(missing)}")
        heads = config["num_attention_heads"]
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
        return cls(
            model_type=model_type,
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            ffn_hidden_size=config["intermediate_size"],
            num_attention_heads=heads,
            num_query_groups=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab_size=config["vocab_size"],
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            rope_theta=float(rope_theta),
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_scaling_factor=scaling_factor,
            dtype=str(dtype).replace("torch.", ""),
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=config.get("eos_token_id"),
        )

    @classmethod
    def from_hf_dir(cls, hf_dir: str | Path) -> ModelArch:
        path = Path(hf_dir) / "config.json"
        if not Path(hf_dir).is_dir():
            raise ConfigError(f"Hugging Face directory {str(hf_dir)!r} does not exist")
        if not path.is_file():
            raise ConfigError(f"no config.json in {str(hf_dir)!r}")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from None
        return cls.from_hf_config(config)

    def to_hf_config(self) -> dict[str, Any]:
        """The ``config.json`` transformers needs to rebuild this model with no custom code."""
        rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_scaling_factor is not None:
            rope = {**rope, "rope_type": "llama3", "factor": self.rope_scaling_factor}
            rope.update(_LLAMA3_ROPE_FIXED)
        config: dict[str, Any] = {
            "architectures": [self.family.hf_architecture],
            "model_type": self.model_type,
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.ffn_hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_query_groups,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": self.family.qkv_bias,
            "dtype": self.dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        if self.rope_scaling_factor is not None:
            config["rope_scaling"] = rope
        return config
