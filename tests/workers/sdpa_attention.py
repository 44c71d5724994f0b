"""SDPA core attention against megatron-core's local ``DotProductAttention``, and the
offset-free SwiGLU MLP against megatron-core's ``MLP`` (2 ranks).

Module level: the same query/key/value shards through both attention modules at TP=1 and TP=2,
with GQA, causal and unmasked, and a one-token query; the same weights and input through both
MLPs (bit for bit). Model level: a ``GPTModel`` built with the plain local spec and megatron's
unfused RoPE and one built by ``build_model`` (SDPA, SwiGLUMLP, models.rotary), the same
weights, one forward and backward at TP=2, including a key/value-head count below the
tensor-parallel size.

argv: RESULT_JSON
"""

import dataclasses
import sys
from unittest import mock

import torch
import torch.distributed as dist
from common import arch_for, randomize, sample_tokens, switch_layout, write_result
from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP

from megatron_adept.errors import ConfigError
from megatron_adept.models import builder
from megatron_adept.models.builder import build_model, build_transformer_config
from megatron_adept.models.pipeline import position_ids_like
from megatron_adept.models.sdpa_attention import SDPAttention
from megatron_adept.models.swiglu_mlp import SwiGLUMLP
from megatron_adept.parallel import runtime


def _max_over_ranks(value: float) -> float:
    tensor = torch.tensor(value)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def module_case(config, mask_type, sq, sk, seed) -> dict:
    """Max relative differences of output and q/k/v gradients on this rank's heads."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    heads, groups = config.num_attention_heads // tp, config.num_query_groups // tp
    d, b = config.kv_channels, 3
    gen = torch.Generator().manual_seed(seed + parallel_state.get_tensor_model_parallel_rank())
    inputs = [
        torch.randn(s, b, n, d, generator=gen) for s, n in ((sq, heads), (sk, groups), (sk, groups))
    ]
    grad_out = torch.randn(sq, b, heads * d, generator=gen)
    results = []
    for module in (
        DotProductAttention(config, 1, mask_type, "self"),
        SDPAttention(config, 1, mask_type, "self"),
    ):
        q, k, v = (t.clone().requires_grad_(True) for t in inputs)
        out = module(q, k, v, None)
        out.backward(grad_out)
        results.append([out, q.grad, k.grad, v.grad])
    (ref, ours) = results
    diffs = {
        name: _max_over_ranks(_rel(a, r))
        for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True)
    }
    diffs["ref_out_abs_max"] = ref[0].abs().max().item()
    return diffs


def mlp_case(config, seed) -> dict:
    """Whether SwiGLUMLP's output and every gradient equal megatron's MLP's bit for bit."""
    mlp_spec = get_gpt_layer_local_spec(normalization="RMSNorm").submodules.mlp.submodules
    reference, ours = MLP(config, mlp_spec), SwiGLUMLP(config, mlp_spec)
    randomize(reference, seed=seed)
    ours.load_state_dict(reference.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 3, config.hidden_size, generator=gen)
    grad_out = torch.randn(24, 3, config.hidden_size, generator=gen)
    tensors = []
    for module in (reference, ours):
        inp = x.clone().requires_grad_(True)
        out, bias = module(inp)
        out.backward(grad_out)
        tensors.append([out, inp.grad, *(p.grad for p in module.parameters())])
    equal = all(torch.equal(a, b) for a, b in zip(*tensors, strict=True))
    return {
        "plain": ours.plain_swiglu,
        "equal": _max_over_ranks(0.0 if equal else 1.0) == 0.0,
        "bias": bias is None,
        "tensors": len(tensors[0]),
    }


def _saved_storages(run) -> dict[int, int]:
    """{storage pointer: bytes} of what autograd saves for backward while ``run()`` runs."""
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return saved


def saved_case(config, seed) -> dict:
    """What our MLP and core attention keep for backward, against hand-computed bytes.

    The MLP (weights frozen, as in a frozen layer) keeps only the fc1 output; the attention,
    given its value as a view into a fused QKV projection's output, keeps the value's own
    bytes, not that output's.
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    mlp_spec = get_gpt_layer_local_spec(normalization="RMSNorm").submodules.mlp.submodules
    mlp = SwiGLUMLP(config, mlp_spec)
    mlp.requires_grad_(False)
    s, b, width = 24, 3, 4  # float32
    x = torch.randn(s, b, config.hidden_size, requires_grad=True)
    mlp_saved = _saved_storages(lambda: mlp(x))
    params = {p.untyped_storage().data_ptr() for p in mlp.parameters()}
    mlp_bytes = sum(n for ptr, n in mlp_saved.items() if ptr not in params)
    fc1_out = s * b * 2 * config.ffn_hidden_size // tp * width

    heads, groups = config.num_attention_heads // tp, config.num_query_groups // tp
    d = config.kv_channels
    gen = torch.Generator().manual_seed(seed)
    fused = torch.randn(s, b, groups, (heads // groups + 2) * d, generator=gen)
    fused.requires_grad_(True)
    query = fused[..., : heads // groups * d].reshape(s, b, heads, d) * 1.0
    key = fused[..., heads // groups * d : -d] * 1.0
    value = fused[..., -d:]
    attention = SDPAttention(config, 1, AttnMaskType.causal, "self")
    attention_saved = _saved_storages(lambda: attention(query, key, value, None))
    return {
        "mlp_saved_bytes": _max_over_ranks(mlp_bytes),
        "mlp_fc1_out_bytes": fc1_out,
        "attention_keeps_fused": fused.untyped_storage().data_ptr() in attention_saved,
    }


def model_case(arch, parallel, tokens) -> dict:
    """Loss and every parameter gradient, plain local spec vs build_model's SDPA spec."""
    plain = get_gpt_layer_local_spec(qk_layernorm=arch.family.qk_layernorm, normalization="RMSNorm")
    with (
        mock.patch.object(builder, "layer_spec", lambda *_: plain),
        mock.patch.object(builder, "install_fused_rope", lambda: False),
    ):
        reference = build_model(arch, parallel)
    assert not reference.config.apply_rope_fusion
    randomize(reference, seed=5)
    ours = build_model(arch, parallel)
    assert ours.config.apply_rope_fusion  # megatron's fused-RoPE path, on models.rotary
    assert isinstance(ours.decoder.layers[0].self_attention.core_attention, SDPAttention)
    assert (
        isinstance(ours.decoder.layers[0].mlp, SwiGLUMLP)
        and ours.decoder.layers[0].mlp.plain_swiglu
    )
    ours.load_state_dict(reference.state_dict(), strict=True)
    same_keys = sorted(reference.sharded_state_dict()) == sorted(ours.sharded_state_dict())
    losses, grads = [], []
    for model in (reference, ours):
        loss = model(tokens, position_ids_like(tokens), None, labels=tokens)
        loss.sum().backward()
        losses.append(loss)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    result = {
        "same_keys": _max_over_ranks(0.0 if same_keys else 1.0) == 0.0,
        "loss": _max_over_ranks(_rel(losses[1], losses[0])),
        "grads": _max_over_ranks(max(_rel(grads[1][n], g) for n, g in grads[0].items())),
        "params": len(grads[0]),
    }
    return result


def refusals(config) -> dict:
    """Which unsupported settings raise ConfigError."""
    cases = {
        "dropout": lambda: SDPAttention(config, 1, AttnMaskType.causal, "self", 0.1),
        "padding_mask_type": lambda: SDPAttention(config, 1, AttnMaskType.padding, "self"),
        "explicit_mask": lambda: SDPAttention(config, 1, AttnMaskType.causal, "self")(
            *(torch.zeros(4, 1, 2, config.kv_channels),) * 3, torch.zeros(1, 1, 4, 4).bool()
        ),
        "context_parallel": lambda: SDPAttention(
            dataclasses.replace(config, context_parallel_size=2), 1, AttnMaskType.causal, "self"
        ),
    }
    refused = {}
    for name, make in cases.items():
        try:
            make()
            refused[name] = False
        except ConfigError:
            refused[name] = True
    return refused


def main() -> None:
    result_path = sys.argv[1]
    result = {}
    arch = arch_for("tiny-llama")  # 4 query heads, 2 key/value heads
    for tp in (1, 2):
        parallel = switch_layout(tp, 1)
        config = build_transformer_config(arch, parallel)
        # One query against 24 keys is a decoding step: causal masks nothing there.
        for mask_type, sq in (
            (AttnMaskType.causal, 24),
            (AttnMaskType.no_mask, 24),
            (AttnMaskType.causal, 1),
        ):
            case = module_case(config, mask_type, sq, 24, seed=7)
            result[f"module_tp{tp}_{mask_type.name}_sq{sq}"] = case
        result[f"mlp_tp{tp}"] = mlp_case(config, seed=11)
        result[f"saved_tp{tp}"] = saved_case(config, seed=13)
    result["refused"] = refusals(config)
    tokens = sample_tokens(2, 24, arch.vocab_size)
    for preset, groups in (("tiny-llama", None), ("tiny-qwen3", None), ("tiny-llama", 1)):
        case = arch_for(preset)
        if groups is not None:
            case = dataclasses.replace(case, num_query_groups=groups)
        name = f"model_tp2_{preset}_kv{case.num_query_groups}"
        result[name] = model_case(case, parallel, tokens)
    write_result(result_path, result)
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
