"""Bad converter input: one-line errors, nothing left behind."""

import json
import shutil

import pytest
from hf_fixtures import CONVERT, save_hf, tool
from safetensors.torch import load_file, save_file

from megatron_adept.checkpoint.mcore_io import check_checkpoint_layout
from megatron_adept.config.parallel import ParallelConfig
from megatron_adept.errors import ConfigError


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


def convert(src, out, *extra):
    return tool(CONVERT, "--hf-dir", str(src), "--out", str(out), *extra, check=False)


def siblings_clean(out):
    return not out.exists() and not [
        p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")
    ]


@pytest.mark.parametrize(
    "case, edit_config, edit_tensors, fragments",
    [
        (
            "unsupported",
            lambda c: c.update(model_type="gpt2"),
            None,
            ["gpt2", "llama, mistral, qwen2, qwen3"],
        ),
        (
            "missing",
            None,
            lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
            ["missing", "layers.1.mlp.up_proj"],
        ),
        (
            "extra",
            None,
            lambda t: t.update(extra_weight=t["model.norm.weight"].clone()),
            ["unexpected", "extra_weight"],
        ),
        (
            "shape",
            lambda c: c.update(intermediate_size=96),
            None,
            ["gate_proj.weight has shape (128, 64)", "(96, 64)"],
        ),
    ],
)
def test_bad_checkpoints(hf_dir, tmp_path, case, edit_config, edit_tensors, fragments):
    src = variant(hf_dir, tmp_path, edit_config, edit_tensors)
    out = tmp_path / "out"
    assert_one_line_error(convert(src, out), *fragments)
    assert siblings_clean(out)


def test_missing_dir_and_config(tmp_path):
    assert_one_line_error(convert(tmp_path / "nope", tmp_path / "out"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(convert(tmp_path / "empty", tmp_path / "out"), "no config.json")
    assert siblings_clean(tmp_path / "out")


def test_existing_output_needs_overwrite(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert_one_line_error(convert(hf_dir, out), "exists and is not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "x"
    assert convert(hf_dir, out, "--overwrite").returncode == 0
    assert not (out / "keep.txt").exists() and (out / "adept_meta.json").is_file()


def test_tp_not_dividing_heads_at_load(hf_dir, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    assert convert(hf_dir, out).returncode == 0
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(
        ConfigError,
        match="num_attention_heads=4 is not divisible by --tensor-model-parallel-size=8",
    ):
        check_checkpoint_layout(out, ParallelConfig(tensor_model_parallel_size=8))
