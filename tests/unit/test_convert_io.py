"""The name table against transformers' models, the layout functions by hand, and the
streaming safetensors reader/writer against the safetensors library."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_adept.checkpoint import hf_mapping
from megatron_adept.checkpoint.hf_io import (
    INDEX_FILE,
    SINGLE_FILE,
    SafetensorsReader,
    SafetensorsWriter,
    TensorSpec,
)
from megatron_adept.errors import CheckpointError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import build_hf_model, preset_config


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral"])
def test_table_names_every_transformers_tensor(preset):
    arch = ModelArch.from_hf_config(preset_config(preset))
    state = build_hf_model(preset).state_dict()
    if arch.tie_word_embeddings:
        state.pop("lm_head.weight")
    expected = hf_mapping.expected_hf_shapes(arch)
    assert expected == {name: tuple(t.shape) for name, t in state.items()}
    order = hf_mapping.streaming_order(arch)
    assert [layer for _, layer in order][0] is None and order[-1][1] is None
    layers = [layer for _, layer in order if layer is not None]
    assert layers == sorted(layers)  # layer by layer, never back


def test_qkv_interleave_by_hand():
    """4 heads in 2 groups, head_dim 1: rows [q0 q1 k0 v0 | q2 q3 k1 v1]."""
    arch = ModelArch.from_hf_config(
        preset_config("tiny-llama", num_attention_heads=4, num_key_value_heads=2, head_dim=1)
    )
    q = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    k = torch.tensor([[10.0], [11.0]])
    v = torch.tensor([[20.0], [21.0]])
    fused = hf_mapping.interleave_qkv(arch, q, k, v)
    assert fused.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    bias = hf_mapping.interleave_qkv(arch, q.flatten(), k.flatten(), v.flatten())
    assert bias.tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    for got, want in zip(hf_mapping.split_qkv(arch, fused), (q, k, v), strict=True):
        assert torch.equal(got, want)


def test_gate_up_concat_and_split():
    arch = ModelArch.from_hf_config(preset_config("tiny-llama"))
    gate, up = torch.randn(3, 2), torch.randn(3, 2)
    fused = hf_mapping.concat_gate_up(arch, gate, up)
    assert torch.equal(fused[:3], gate) and torch.equal(fused[3:], up)
    assert all(
        torch.equal(a, b)
        for a, b in zip(hf_mapping.split_gate_up(arch, fused), (gate, up), strict=True)
    )


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(7, 5, generator=gen),
        "b": torch.randn(300, generator=gen).to(torch.bfloat16),
        "c": torch.randn(3, 4, 2, generator=gen).to(torch.float16),
        "d": torch.randn(64, 64, generator=gen),
    }


def _write(out, tensors, max_shard_bytes):
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    with SafetensorsWriter(out, specs, max_shard_bytes) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)


def test_writer_shards_and_index_load_with_safetensors(tmp_path):
    tensors = _tensors()
    _write(tmp_path, tensors, max_shard_bytes=500)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    loaded = {}
    for file in files:
        loaded.update(load_file(tmp_path / file))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    assert index["metadata"]["total_size"] == sum(t.numel() * t.itemsize for t in tensors.values())


def test_writer_single_file_and_misuse(tmp_path):
    tensors = _tensors()
    _write(tmp_path, tensors, max_shard_bytes=2**30)
    assert [p.name for p in tmp_path.iterdir()] == [SINGLE_FILE]
    assert all(torch.equal(load_file(tmp_path / SINGLE_FILE)[n], t) for n, t in tensors.items())
    specs = [TensorSpec("x", (2,), torch.float32), TensorSpec("y", (2,), torch.float32)]
    writer = SafetensorsWriter(tmp_path, specs, 2**30)
    with pytest.raises(ValueError, match="out of order"):
        writer.write("y", torch.zeros(2))
    writer = SafetensorsWriter(tmp_path, specs, 2**30)
    with pytest.raises(ValueError, match="declared"):
        writer.write("x", torch.zeros(3))
    writer.write("x", torch.zeros(2))
    with pytest.raises(ValueError, match="tensor y was declared but never written"):
        writer.close()


def test_reader_matches_safetensors_and_reads_index(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "one.safetensors", metadata={"format": "pt"})
    reader = SafetensorsReader(tmp_path)
    assert reader.names() == set(tensors)
    for name, tensor in tensors.items():
        assert reader.info(name).shape == tuple(tensor.shape)
        got = reader.get(name)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), name
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    _write(sharded, tensors, max_shard_bytes=1000)
    (sharded / "stray.safetensors").write_bytes(b"not listed in the index, never opened")
    reader = SafetensorsReader(sharded)
    assert all(torch.equal(reader.get(n), t) for n, t in tensors.items())


def test_reader_rejects_broken_files(tmp_path):
    save_file(_tensors(), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="is truncated: tensor"):
        SafetensorsReader(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        SafetensorsReader(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors weights"):
        SafetensorsReader(tmp_path)
