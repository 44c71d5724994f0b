"""Bad converter input: one-line errors naming the problem, nothing left behind.

Each case runs the tool's ``__main__`` in this process (every one fails before any work); one
case runs a real ``python tools/convert_hf.py`` to check the command line end to end.
"""

import json
import shutil

import pytest
from hf_fixtures import CONVERT, run_tool_inprocess, save_hf, siblings_clean, tool
from safetensors.torch import load_file, save_file

from megatron_adept.checkpoint.metadata import CheckpointMeta, LayerMap
from megatron_adept.checkpoint.resolve import open_checkpoint
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import ConfigError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "hf"
    save_hf("tiny-qwen3", path)
    return path


def variant(hf_dir, tmp_path, edit_config=None, edit_tensors=None):
    path = tmp_path / "variant"
    shutil.copytree(hf_dir, path)
    if edit_config:
        config = json.loads((path / "config.json").read_text())
        edit_config(config)
        (path / "config.json").write_text(json.dumps(config))
    if edit_tensors:
        tensors = load_file(path / "model.safetensors")
        edit_tensors(tensors)
        save_file(tensors, path / "model.safetensors")
    return path


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def convert(monkeypatch, capsys):
    def run(*args):
        return run_tool_inprocess(CONVERT, [str(a) for a in args], monkeypatch, capsys)

    return run


def truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-100])


@pytest.mark.parametrize(
    "edit_config, edit_tensors, fragments",
    [
        (
            lambda c: c.update(model_type="gpt2"),
            None,
            ["model_type='gpt2'", "supported: llama, mistral, qwen2, qwen3"],
        ),
        (
            None,
            lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
            ["1 tensor(s) missing", "model.layers.1.mlp.up_proj.weight"],
        ),
        (
            None,
            lambda t: t.update(extra_weight=t["model.norm.weight"].clone()),
            ["1 unexpected tensor(s)", "extra_weight"],
        ),
        (
            lambda c: c.update(intermediate_size=96),
            None,
            ["model.layers.0.mlp.gate_proj.weight has shape (128, 64)", "implies (96, 64)"],
        ),
        (
            lambda c: c.update(num_key_value_heads=4),
            None,
            ["k_proj.weight has shape (32, 64)", "implies (64, 64)"],
        ),
    ],
    ids=["unsupported", "missing", "extra", "shape", "kv-heads"],
)
def test_bad_checkpoints(hf_dir, tmp_path, convert, edit_config, edit_tensors, fragments):
    src = variant(hf_dir, tmp_path, edit_config, edit_tensors)
    out = tmp_path / "out"
    assert_one_line_error(convert("--hf-dir", src, "--out", out), *fragments)
    assert siblings_clean(out)


def test_broken_files(hf_dir, tmp_path, convert):
    out = tmp_path / "out"
    src = variant(hf_dir, tmp_path)
    truncate(src)
    assert_one_line_error(convert("--hf-dir", src, "--out", out), "truncated", "model.safetensors")
    (src / "model.safetensors.index.json").write_text('{"weight_map": {"x": "gone.safetensors"}}')
    assert_one_line_error(convert("--hf-dir", src, "--out", out), "missing shard", "gone")
    (src / "model.safetensors.index.json").write_text("{not json")
    assert_one_line_error(convert("--hf-dir", src, "--out", out), "not a safetensors index")
    (src / "config.json").write_text("{")
    assert_one_line_error(convert("--hf-dir", src, "--out", out), "config.json", "invalid JSON")
    assert siblings_clean(out)


def test_missing_config_and_weights(tmp_path, convert):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    assert_one_line_error(convert("--hf-dir", tmp_path / "empty", "--out", out), "no config.json")
    shutil.copy(CONVERT, tmp_path / "empty" / "unrelated.py")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert_one_line_error(
        convert("--hf-dir", tmp_path / "empty", "--out", out), "num_hidden_layers"
    )
    assert siblings_clean(out)


def test_flag_combinations(hf_dir, tmp_path, convert):
    out = tmp_path / "out"
    assert_one_line_error(convert("--out", out), "--hf-dir DIR")
    assert_one_line_error(convert("--to-hf", "--out", out), "--to-hf needs --load")
    assert_one_line_error(
        convert("--to-hf", "--load", hf_dir, "--hf-dir", hf_dir, "--out", out), "--to-hf needs"
    )
    assert_one_line_error(
        convert("--to-hf", "--load", hf_dir, "--out", out, "--uniform-expand", "2"),
        "expansion options apply only when converting from Hugging Face",
    )
    assert_one_line_error(
        convert("--hf-dir", hf_dir, "--out", out, "--max-shard-size-gb", "0"),
        "--max-shard-size-gb=0.0",
    )
    assert siblings_clean(out)


def test_export_of_something_else(hf_dir, tmp_path, convert):
    out = tmp_path / "out"
    result = convert("--to-hf", "--load", tmp_path / "nope", "--out", out)
    assert_one_line_error(result, "checkpoint directory", "does not exist")
    result = convert("--to-hf", "--load", hf_dir, "--out", out)
    assert_one_line_error(result, "is not a megatron-adept checkpoint (no adept_meta.json)")
    arch = ModelArch.from_hf_config(preset_config("tiny-qwen3"))
    CheckpointMeta(arch, LayerMap.identity(arch.num_layers)).save(tmp_path)
    result = convert("--to-hf", "--load", tmp_path, "--out", out)
    assert_one_line_error(result, str(tmp_path), "no manifest.json", "incomplete")
    assert siblings_clean(out)


def test_existing_output_needs_overwrite(hf_dir, tmp_path, convert):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = convert("--hf-dir", hf_dir, "--out", out)
    assert_one_line_error(result, "exists and is not empty", "--overwrite")
    result = convert("--to-hf", "--load", hf_dir, "--out", out)
    assert_one_line_error(result)
    assert (out / "keep.txt").read_text() == "x"
    # the real command line prints the same single line (tests/parity covers --overwrite)
    result = tool(CONVERT, "--hf-dir", str(hf_dir), "--out", str(out), check=False)
    assert_one_line_error(result, "exists and is not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_tp_not_dividing_heads_at_load(tmp_path, monkeypatch):
    arch = ModelArch.from_hf_config(preset_config("tiny-qwen3"))
    CheckpointMeta(arch, LayerMap.identity(arch.num_layers)).save(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(
        ConfigError,
        match="num_attention_heads=4 is not divisible by --tensor-model-parallel-size=8",
    ):
        open_checkpoint(tmp_path, ParallelConfig(tensor_model_parallel_size=8))
