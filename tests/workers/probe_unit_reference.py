"""Unit importance in one process against a hand computation from ``loss.backward()``.

argv: OUT_JSON
For tiny-qwen2 (q/k/v biases) and tiny-qwen3 (q/k norms), for both estimators (abs-gradient
and the authors' per-batch |θ|·|∂L_b/∂θ|): the reference slices the fused
megatron tensors by reshaping (``linear_qkv`` as [groups, q + k + v rows, ...], ``linear_fc1``
as two halves), independently of ``models/units.py``. Also records whether the call left
``.grad``, the RNG, the training mode and ``requires_grad`` flags as they were.
"""

import sys

import torch
from common import arch_for, randomize, switch_layout, write_result

from megatron_adept.importance.unit_importance import UNIT_IMPORTANCE
from megatron_adept.models.builder import build_model
from megatron_adept.models.pipeline import MicroBatch, position_ids_like
from megatron_adept.parallel import runtime

SENTINEL = 3.0


def probe_batches(vocab: int) -> list[MicroBatch]:
    gen = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, vocab, (2, 13), generator=gen)
        mask = (torch.rand(2, 12, generator=gen) > 0.3).float()
        batches.append(MicroBatch(ids[:, :-1].clone(), ids[:, 1:].clone(), mask))
    return batches


def layer_units(model: torch.nn.Module, values) -> dict[str, torch.Tensor]:
    """{"layer/unit": flat values} from ``values(param)`` of every layer parameter."""
    config = model.config
    groups, head = config.num_query_groups, config.kv_channels
    q_rows = config.num_attention_heads // groups * head
    out = {}
    for index, layer in enumerate(model.decoder.layers):
        pieces: dict[str, list[torch.Tensor]] = {}
        for name, param in layer.named_parameters():
            value = values(param)
            if "linear_qkv" in name:
                blocks = value.reshape(groups, q_rows + 2 * head, -1)
                parts = {
                    "q_proj": blocks[:, :q_rows],
                    "k_proj": blocks[:, q_rows : q_rows + head],
                    "v_proj": blocks[:, q_rows + head :],
                }
            elif "linear_fc1" in name:
                parts = dict(zip(("gate_proj", "up_proj"), value.chunk(2), strict=True))
            else:
                unit = {
                    "self_attention.linear_proj.weight": "o_proj",
                    "mlp.linear_fc2.weight": "down_proj",
                    "input_layernorm.weight": "input_layernorm",
                    "pre_mlp_layernorm.weight": "post_attention_layernorm",
                    "self_attention.q_layernorm.weight": "q_norm",
                    "self_attention.k_layernorm.weight": "k_norm",
                }[name]
                parts = {unit: value}
            for unit, part in parts.items():
                pieces.setdefault(unit, []).append(part.reshape(-1))
        out.update({f"{index}/{unit}": torch.cat(p) for unit, p in pieces.items()})
    return out


def backward(model: torch.nn.Module, batches: list[MicroBatch], total) -> None:
    model.zero_grad()
    for batch in batches:
        losses = model(batch.tokens, position_ids_like(batch.tokens), None, labels=batch.labels)
        ((losses * batch.loss_mask).sum() / total).backward()


def reference(model: torch.nn.Module, batches: list[MicroBatch]) -> dict[str, float]:
    """mean |θ·∂L/∂θ| per unit from an ordinary backward of the probe loss."""
    backward(model, batches, sum(b.loss_mask.sum() for b in batches))
    taylor = layer_units(model, lambda p: p.detach() * p.grad)
    model.zero_grad()
    return {key: value.abs().mean().item() for key, value in taylor.items()}


def authors_reference(model: torch.nn.Module, batches: list[MicroBatch]) -> dict[str, float]:
    """The authors' estimator by hand: mean over batches b of mean |θ|·|∂L_b/∂θ|, L_b the mean
    loss of batch b over its counted tokens."""
    out: dict[str, float] = {}
    for batch in batches:
        backward(model, [batch], batch.loss_mask.sum())
        for key, value in layer_units(model, lambda p: p.detach().abs() * p.grad.abs()).items():
            out[key] = out.get(key, 0.0) + value.double().mean().item() / len(batches)
    model.zero_grad()
    return out


def observed(
    model: torch.nn.Module,
    batches: list[MicroBatch],
    only_trainable: bool,
    estimator: str = "abs-gradient",
) -> dict:
    """Call an estimator in train mode with sentinel gradients; report what changed."""
    for param in model.parameters():
        param.grad = torch.full_like(param, SENTINEL)
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    rng = torch.get_rng_state()
    units = UNIT_IMPORTANCE[estimator](model, batches, only_trainable=only_trainable)
    result = {
        "means": {f"{layer}/{unit}": value for (layer, unit), value in units.mean().items()},
        "counts": {f"{layer}/{unit}": stat.count for (layer, unit), stat in units.units.items()},
        "grads_kept": all(bool((p.grad == SENTINEL).all()) for p in model.parameters()),
        "rng_kept": torch.equal(rng, torch.get_rng_state()),
        "still_training": model.training,
        "flags_kept": flags == [p.requires_grad for p in model.parameters()],
    }
    model.zero_grad()
    return result


def main() -> None:
    parallel = switch_layout(1, 1)
    results = {}
    for preset in ("tiny-qwen2", "tiny-qwen3"):
        arch = arch_for(preset)
        model = build_model(arch, parallel)
        randomize(model, seed=4)
        batches = probe_batches(arch.vocab_size)
        results[preset] = {"reference": reference(model, batches)}
        results[preset]["all"] = observed(model, batches, only_trainable=False)
        results[preset]["authors_reference"] = authors_reference(model, batches)
        results[preset]["authors"] = observed(model, batches, False, "authors")
        model.decoder.layers[0].requires_grad_(False)  # frozen, as Stage 2 freezes originals
        model.embedding.requires_grad_(False)
        results[preset]["frozen_scored"] = observed(model, batches, only_trainable=False)
        results[preset]["trainable"] = observed(model, batches, only_trainable=True)
        results[preset]["authors_trainable"] = observed(model, batches, True, "authors")
        results[preset]["numel"] = {
            f"{index}/{name}": param.numel()
            for index, layer in enumerate(model.decoder.layers)
            for name, param in layer.named_parameters()
        }
    write_result(sys.argv[1], results)
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
