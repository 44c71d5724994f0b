"""Merging expansions: copies averaged with the weights, originals from the base, bad pairs refused.

The merged checkpoints are read back with torch's own distributed-checkpoint reader, not with
the project's loader. Mismatched layer maps and architectures are refused from the metadata
alone (tested on metadata objects); an input from another base only once its tensors are read
(tested through the tool).
"""

import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from eval_fixtures import COPIED_LAYERS, MERGE, eval_checkpoints, run_tool
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from megatron_adept.checkpoint.metadata import CheckpointMeta, LayerEntry, LayerMap
from megatron_adept.errors import AdeptError, CheckpointError
from megatron_adept.expansion.config import MergeConfig
from megatron_adept.expansion.merge import check_mergeable
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config

EXPANDED_SOURCES = [0, 1, 1, 2, 3, 3]  # copies of layers 1 and 3 at positions 2 and 5
COPY_POSITIONS = (2, 5)
LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.*)")


def tensors(ckpt, scratch) -> dict[str, torch.Tensor]:
    out = scratch / f"{ckpt.name}.pt"
    if not out.exists():
        dcp_to_torch_save(ckpt, out)
    return {k: v for k, v in torch.load(out).items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = eval_checkpoints(tmp_path_factory)
    work = tmp_path_factory.mktemp("merge")
    jobs = {
        "one_zero": ["adapted_a", "adapted_b", "--weights", "1", "0"],
        "halves": ["adapted_a", "adapted_b", "--weights", "0.5", "0.5"],
        "other_base": ["adapted_a", "other_base"],
    }

    def merge(name, first, second, *extra):
        args = ["--base", str(root / "base"), "--inputs", str(root / first), str(root / second)]
        return run_tool(MERGE, *args, *extra, "--out", str(work / name), check=False)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(merge, name, *args) for name, args in jobs.items()}
        procs = {name: future.result() for name, future in futures.items()}
    return root, work, procs


def test_weights_one_zero_reproduce_the_first_input(merged):
    root, work, procs = merged
    assert procs["one_zero"].returncode == 0, procs["one_zero"].stderr
    got, expected = tensors(work / "one_zero", work), tensors(root / "adapted_a", work)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_halves_average_the_copies_and_keep_the_base_originals(merged):
    root, work, procs = merged
    assert procs["halves"].returncode == 0, procs["halves"].stderr
    got = tensors(work / "halves", work)
    a, b = tensors(root / "adapted_a", work), tensors(root / "adapted_b", work)
    base = tensors(root / "base", work)
    copies = 0
    for name, tensor in got.items():
        match = LAYER.match(name)
        if match and int(match.group(1)) in COPY_POSITIONS:
            assert torch.equal(tensor, (a[name] + b[name]) / 2), name
            assert not torch.equal(tensor, a[name]) and not torch.equal(tensor, b[name]), name
            copies += 1
        elif match:
            source = EXPANDED_SOURCES[int(match.group(1))]
            assert torch.equal(tensor, base[f"decoder.layers.{source}.{match.group(2)}"]), name
        else:
            assert torch.equal(tensor, base[name]), name
    assert copies == 2 * len([n for n in base if n.startswith("decoder.layers.0.")])
    meta = json.loads((work / "halves" / "adept_meta.json").read_text())
    assert (
        meta["layer_map"]
        == json.loads((root / "adapted_a" / "adept_meta.json").read_text())["layer_map"]
    )
    assert meta["source"]["weights"] == [0.5, 0.5]
    assert (work / "halves" / "tokenizer" / "tokenizer.model").is_file()


def test_input_from_another_base_is_refused(merged):
    _, work, procs = merged
    proc = procs["other_base"]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "other_base' was not expanded from base" in lines[0]
    assert "original tensor decoder.layers.0.mlp.linear_fc2.weight differs" in lines[0]
    assert not [p for p in work.iterdir() if "other_base" in p.name]  # no output, no temporary


def meta(layers: list[tuple[str, int]], **arch_changes) -> CheckpointMeta:
    arch = ModelArch.from_hf_config(preset_config("tiny-llama"))
    arch = dataclasses.replace(arch, num_layers=len(layers), **arch_changes)
    return CheckpointMeta(arch, LayerMap(tuple(LayerEntry(k, s) for k, s in layers)))


ORIGINAL = [("original", i) for i in range(4)]
EXPANDED = [("original", 0), ("original", 1), ("copy", 1), ("original", 2), ("original", 3)]
OTHER = [("original", 0), ("copy", 0), ("original", 1), ("original", 2), ("original", 3)]


def test_compatible_metadata_gives_the_shared_layer_map():
    inputs = {"a": meta(EXPANDED), "b": meta(EXPANDED)}
    assert check_mergeable(meta(ORIGINAL), inputs).copy_indices == [2]
    # a base that is itself the (untrained) expansion works too
    assert check_mergeable(meta(EXPANDED), inputs).copy_indices == [2]
    assert len(COPIED_LAYERS) == len(COPY_POSITIONS)


@pytest.mark.parametrize(
    ("base", "a", "b", "message"),
    [
        (meta(ORIGINAL), meta(EXPANDED), meta(OTHER), "'b' and 'a' have different layer maps"),
        (
            meta(ORIGINAL),
            meta(EXPANDED),
            meta(EXPANDED, hidden_size=128),
            "different architectures: hidden_size 128 vs 64",
        ),
        (meta(OTHER), meta(EXPANDED), meta(EXPANDED), "base has layer map with copies at [1]"),
        (
            meta(ORIGINAL, vocab_size=300),
            meta(EXPANDED),
            meta(EXPANDED),
            "'a' was not expanded from the base: different architecture (vocab_size",
        ),
        (meta(ORIGINAL), meta(ORIGINAL), meta(ORIGINAL), "'a' has no copy layers"),
    ],
)
def test_incompatible_metadata_is_refused(base, a, b, message):
    with pytest.raises(CheckpointError) as info:
        check_mergeable(base, {"a": a, "b": b})
    assert message in str(info.value)


def test_weights_are_validated_and_normalised():
    config = MergeConfig(base="b", inputs=["x", "y", "z"], out="o")
    assert config.normalised_weights == pytest.approx([1 / 3] * 3)
    assert MergeConfig("b", ["x", "y"], "o", [3.0, 1.0]).normalised_weights == [0.75, 0.25]
    for inputs, weights, message in [
        (["x"], None, "at least two checkpoints, got 1"),
        (["x", "x"], None, "names a checkpoint twice"),
        (["x", "y"], [1.0], "--weights has 1 value(s) for 2 --inputs"),
        (["x", "y"], [1.0, -0.5], ">= 0, with a positive sum"),
        (["x", "y"], [0.0, 0.0], ">= 0, with a positive sum"),
    ]:
        with pytest.raises(AdeptError, match=re.escape(message)):
            MergeConfig("b", inputs, "o", weights)
