"""Build megatron-core ``GPTModel`` stages from a :class:`ModelArch`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    set_tensor_model_parallel_attributes,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import ConfigError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.rotary import install_fused_rope
from megatron_adept.models.sdpa_attention import with_sdpa_core_attention
from megatron_adept.models.swiglu_mlp import with_swiglu_mlp
from megatron_adept.parallel.layout import pipeline_layer_counts


def padded_vocab_size(vocab_size: int, parallel: ParallelConfig) -> int:
    """Vocabulary padded to a multiple of ``make_vocab_size_divisible_by x TP``.

    Checkpoints store the padded rows with ``allow_shape_mismatch``, so a checkpoint written at
    one TP loads at another: megatron-core reads the overlapping rows and zero-fills the rest.
    """
    multiple = parallel.make_vocab_size_divisible_by * parallel.tensor_model_parallel_size
    return int(math.ceil(vocab_size / multiple) * multiple)


def transformer_engine_available() -> bool:
    """TE is used only on GPU and only when it imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def build_transformer_config(
    arch: ModelArch,
    parallel: ParallelConfig,
    params_dtype: torch.dtype = torch.float32,
    recompute_activations: bool = False,
    init_weights: bool = True,
    on_cpu: bool = False,
) -> TransformerConfig:
    """Translate the HF-level description into megatron-core's config for this layout."""
    counts = pipeline_layer_counts(arch.num_layers, parallel)
    pp = parallel.pipeline_model_parallel_size
    on_gpu = torch.cuda.is_available() and not on_cpu
    uneven = pp > 1 and len(set(counts)) > 1
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.family.qkv_bias,
        qk_layernorm=arch.family.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=pp,
        num_layers_in_first_pipeline_stage=counts[0] if uneven else None,
        num_layers_in_last_pipeline_stage=counts[-1] if uneven else None,
        sequence_parallel=False,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not on_gpu,
        perform_initialization=init_weights,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=install_fused_rope(),
        recompute_granularity="full" if recompute_activations else None,
        recompute_method="uniform" if recompute_activations else None,
        recompute_num_layers=1 if recompute_activations else None,
    )


def layer_spec(arch: ModelArch, on_cpu: bool = False, transformer_impl: str = "auto") -> ModuleSpec:
    """Transformer Engine's layer spec or megatron's local spec with SDPA core attention and
    the offset-free SwiGLU MLP.

    ``transformer_impl`` (``--transformer-impl``) picks one; ``auto`` takes TE on a GPU that
    has it. Both name their tensors alike in checkpoints (``sharded_state_dict_keys_map``), so
    a checkpoint written with one loads with the other; forcing either lets a GPU node with TE
    check exactly that.
    """
    te_usable = not on_cpu and transformer_engine_available()
    if transformer_impl == "transformer_engine" and not te_usable:
        raise ConfigError(
            "--transformer-impl transformer_engine needs Transformer Engine importable on a "
            "GPU; use --transformer-impl local or auto"
        )
    if transformer_impl == "transformer_engine" or (transformer_impl == "auto" and te_usable):
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.family.qk_layernorm)
    local = get_gpt_layer_local_spec(qk_layernorm=arch.family.qk_layernorm, normalization="RMSNorm")
    return with_swiglu_mlp(with_sdpa_core_attention(local))


def build_model(
    arch: ModelArch,
    parallel: ParallelConfig,
    params_dtype: torch.dtype = torch.float32,
    recompute_activations: bool = False,
    init_weights: bool = True,
    on_cpu: bool = False,
) -> GPTModel:
    """This rank's pipeline stage of ``arch`` (model-parallel groups must exist).

    Args:
        arch: the architecture.
        parallel: the layout the process groups were created with.
        params_dtype: parameter dtype (fp32, or bf16/fp16 for mixed precision).
        recompute_activations: full activation recomputation, one layer at a time.
        init_weights: skip random initialisation when a checkpoint will overwrite it.
        on_cpu: keep the model in host memory with the local spec even on a GPU node
            (offline tools hold a whole model, which rarely fits one GPU).
    """
    config = build_transformer_config(
        arch, parallel, params_dtype, recompute_activations, init_weights, on_cpu
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(arch, on_cpu, parallel.transformer_impl),
        vocab_size=padded_vocab_size(arch.vocab_size, parallel),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(arch.rope_theta)
        if float(arch.rope_theta).is_integer()
        else arch.rope_theta,
        rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or 8.0,
    )
    if not init_weights:
        _mark_tensor_parallel_weights(model)
    if model.post_process and model.vocab_size > arch.vocab_size:
        model.output_layer.register_forward_hook(_padded_vocab_mask(arch.vocab_size))
    if not config.use_cpu_initialization:
        model.cuda(torch.cuda.current_device())
    return model


def _padded_vocab_mask(vocab_size: int):
    """Forward hook on the output layer: padded vocabulary rows never win the softmax.

    Padding rows would otherwise add exp(0) terms to every token's normaliser and shift the
    loss away from the unpadded model's (Hugging Face's) value.
    """

    def hook(module, inputs, output):
        logits, bias = output
        shard = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * shard
        padded = torch.arange(start, start + shard, device=logits.device) >= vocab_size
        if padded.any():
            logits = logits.masked_fill(padded, -1.0e4)
        return logits, bias

    return hook


def _mark_tensor_parallel_weights(model: torch.nn.Module) -> None:
    """Tag sharded weights as tensor-parallel when random initialisation was skipped.

    megatron-core 0.16.1 sets ``tensor_model_parallel``/``partition_dim`` on linear and
    embedding weights only inside its init functions. Without the tags, gradient-norm and
    clipping code treats every shard as a TP duplicate and counts it on TP rank 0 only.
    """
    partition_dims = {ColumnParallelLinear: 0, VocabParallelEmbedding: 0, RowParallelLinear: 1}
    for module in model.modules():
        for kind, dim in partition_dims.items():
            weight = getattr(module, "weight", None)
            if isinstance(module, kind) and weight is not None:
                if not getattr(weight, "tensor_model_parallel", False):
                    set_tensor_model_parallel_attributes(weight, True, dim, 1)
