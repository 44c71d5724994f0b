"""Independent single-process reference for one ``--mode adept`` step of pretrain_adept.py.

argv: INIT_CKPT RUN_SAVE DATA_PREFIX PROBE_JSONL LR WEIGHT_DECAY CLIP RESULT_JSON

Everything ADEPT does is re-done by hand at TP=1: the probe loss and its gradient, each unit
cut out of the fused tensors (q/k/v rows of linear_qkv per query group, gate/up halves of
linear_fc1) as its own tensor, I_U = mean |θ·g|, global min-max normalisation, multipliers
2(1-I), and then one plain ``torch.optim.AdamW`` step with one param group per unit at
lr·multiplier, on the same first global batch. The result compares these with the run's
``adept_state.json`` and its saved weights after step 1.
"""

import json
import sys

import torch
from common import write_result

from megatron_adept.checkpoint.mcore_io import load_model
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.data.corpus import corpus_batches, load_corpus
from megatron_adept.data.datasets import (
    DataConfig,
    build_train_valid_test_datasets,
    global_batches,
)
from megatron_adept.data.tokenizer import resolve_tokenizer
from megatron_adept.models.pipeline import position_ids_like
from megatron_adept.parallel import runtime

SEQ, GLOBAL_BATCH, BETAS, EPS = 16, 4, (0.9, 0.95), 1e-3


def split_units(name: str, tensor: torch.Tensor, arch) -> dict[str, torch.Tensor]:
    """One layer parameter -> {unit: its rows}, written independently of models/units.py."""
    if name.endswith("linear_qkv.weight"):
        q = arch.num_attention_heads // arch.num_query_groups * arch.head_dim
        blocks = tensor.view(arch.num_query_groups, q + 2 * arch.head_dim, -1)
        flat = lambda t: t.reshape(-1, tensor.shape[1])  # noqa: E731
        return {
            "q_proj": flat(blocks[:, :q]),
            "k_proj": flat(blocks[:, q : q + arch.head_dim]),
            "v_proj": flat(blocks[:, q + arch.head_dim :]),
        }
    if name.endswith("linear_fc1.weight"):
        gate, up = tensor.chunk(2, dim=0)
        return {"gate_proj": gate, "up_proj": up}
    single = {
        "linear_proj.weight": "o_proj",
        "linear_fc2.weight": "down_proj",
        "input_layernorm.weight": "input_layernorm",
        "pre_mlp_layernorm.weight": "post_attention_layernorm",
    }
    return {unit: tensor for suffix, unit in single.items() if name.endswith(suffix)}


def layer_tensors(model, layers, arch, grads: bool) -> dict[tuple[int, str], torch.Tensor]:
    out = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        if parts[:2] == ["decoder", "layers"] and int(parts[2]) in layers:
            source = param.grad if grads else param.detach()
            for unit, value in split_units(name, source, arch).items():
                out[(int(parts[2]), unit)] = value.clone()
    return out


def main() -> None:
    init, run_save, data_prefix, probe, lr, wd, clip, result_path = sys.argv[1:9]
    lr, wd, clip = float(lr), float(wd), float(clip)
    runtime.initialize(ParallelConfig(), seed=1234)
    model, meta = load_model(init, ParallelConfig())
    arch, layers = meta.arch, meta.layer_map.copy_indices

    # Unit importance on the probe corpus: gradient of the mean loss over counted tokens.
    tokenizer = resolve_tokenizer(None, init)
    items = load_corpus(probe, tokenizer)
    batches = corpus_batches(items, SEQ, 1)
    total = sum(b.loss_mask.sum() for b in batches)
    model.zero_grad()
    for batch in batches:
        per_token = model(batch.tokens, position_ids_like(batch.tokens), None, labels=batch.labels)
        ((per_token * batch.loss_mask).sum() / total).backward()
    theta = layer_tensors(model, layers, arch, grads=False)
    grad = layer_tensors(model, layers, arch, grads=True)
    importance = {k: (theta[k] * grad[k]).abs().mean().item() for k in theta}
    low, high = min(importance.values()), max(importance.values())
    multipliers = {k: 2 * (1 - (v - low) / (high - low)) for k, v in importance.items()}

    # The training gradient of the first global batch (mean of per-micro-batch mean losses).
    train, _, _ = build_train_valid_test_datasets(
        DataConfig(data_path=[data_prefix]), SEQ, (GLOBAL_BATCH, 0, 0), 1234, tokenizer.eos_id
    )
    micro = next(global_batches(train, GLOBAL_BATCH, 1, 0, 1))
    model.zero_grad()
    for batch in micro:
        per_token = model(batch.tokens, position_ids_like(batch.tokens), None, labels=batch.labels)
        ((per_token * batch.loss_mask).sum() / batch.loss_mask.sum() / len(micro)).backward()
    grad = layer_tensors(model, layers, arch, grads=True)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grad.values())).item()
    coeff = min(1.0, clip / (norm + 1e-6))

    params = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    groups = []
    for key, tensor in params.items():
        tensor.grad = grad[key] * coeff
        decay = wd if tensor.dim() > 1 else 0.0
        groups.append({"params": [tensor], "lr": lr * multipliers[key], "weight_decay": decay})
    torch.optim.AdamW(groups, betas=BETAS, eps=EPS).step()

    after, _ = load_model(f"{run_save}/iter_0000001", ParallelConfig())
    got = layer_tensors(after, layers, arch, grads=False)
    update_diff = max((got[k] - params[k].detach()).abs().max().item() for k in params)
    max_update = max((got[k] - theta[k]).abs().max().item() for k in params)
    trained = {f"decoder.layers.{i}." for i in layers}
    before_all = dict(model.named_parameters())
    frozen_diff = max(
        (p.detach() - before_all[n].detach()).abs().max().item()
        for n, p in after.named_parameters()
        if not any(n.startswith(prefix) for prefix in trained)
    )
    states = [json.load(open(f"{run_save}/adept_state.json"))]
    states.append(json.load(open(f"{run_save}/iter_0000001/adept_state.json")))
    multiplier_diff = max(
        abs(u["multiplier"] - multipliers[(u["layer"], u["unit"])])
        for state in states
        for u in state["units"]
    )
    write_result(
        result_path,
        {
            "update_diff": update_diff,
            "max_update": max_update,
            "frozen_diff": frozen_diff,
            "multiplier_diff": multiplier_diff,
            "units": len(multipliers),
            "units_in_state": [len(s["units"]) for s in states],
            "multiplier_range": [min(multipliers.values()), max(multipliers.values())],
            "grad_norm": norm,
        },
    )
    runtime.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
