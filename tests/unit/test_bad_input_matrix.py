"""Bad input to every tool and to pretrain_adept.py: one clear line, nothing left behind.

Each case names its tool, its arguments (``{placeholders}`` are files prepared once per
module) and what the one-line error must contain: at least the bad value. Every case also
asserts exit code 2, no traceback, and that none of its outputs (nor a temporary sibling)
exists afterwards. Cases run the tool's ``__main__`` in this process (all fail before any
process group exists); ``test_real_processes`` repeats a few as real subprocesses.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_fixtures import write_jsonl
from hf_fixtures import run_tool_inprocess, save_hf, siblings_clean
from test_convert_errors import assert_one_line_error
from torchrun_harness import REPO, run_command
from train_fixtures import PRETRAIN, VOCAB

from megatron_adept.checkpoint.manifest import write_manifest
from megatron_adept.checkpoint.metadata import CheckpointMeta, LayerMap
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config

TOOLS = REPO / "tools"


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    script: str
    args: tuple[str, ...]
    fragments: tuple[str, ...]
    outputs: tuple[str, ...] = ("{out}",)


def case(id, category, script, args, fragments, outputs=("{out}",)) -> Case:
    return Case(id, category, script, tuple(args.split()), tuple(fragments), tuple(outputs))


TRAIN = "--load {expanded} --data-path {data} --probe-data {probe} --seq-length 16 --save {out}"
CASES = [
    # wrong paths
    case(
        "convert-missing-hf",
        "path",
        "convert_hf",
        "--hf-dir {missing} --out {out}",
        ["{missing}", "does not exist"],
    ),
    case(
        "expand-missing-load",
        "path",
        "expand_ckpt",
        "--load {missing} --out {out} --layers 1",
        ["{missing}"],
    ),
    case(
        "preprocess-missing-input",
        "path",
        "preprocess_data",
        "--input {missing} --output-prefix {out} --tokenizer {tok}",
        ["{missing}"],
        ("{out}.bin", "{out}.idx"),
    ),
    case(
        "eval-loss-missing-data",
        "path",
        "eval_loss",
        "--load {plain} --data {missing} --out {out}",
        ["{missing}"],
    ),
    case(
        "probe-not-a-checkpoint",
        "path",
        "probe_importance",
        "--load {hf} --probe-data {probe} --out {out}",
        ["{hf}", "adept_meta.json"],
    ),
    case(
        "train-missing-load",
        "path",
        "pretrain_adept",
        TRAIN.replace("{expanded}", "{missing}") + " --train-iters 1",
        ["{missing}"],
    ),
    # wrong types
    case(
        "expand-k-not-int",
        "type",
        "expand_ckpt",
        "--load {plain} --out {out} --importance {importance} --k abc",
        ["'abc'", "--k"],
    ),
    case(
        "train-gbs-not-int",
        "type",
        "pretrain_adept",
        TRAIN + " --train-iters 1 --global-batch-size four",
        ["'four'"],
    ),
    case(
        "probe-method-unknown",
        "type",
        "probe_importance",
        "--load {plain} --probe-data {probe} --out {out} --method magic",
        ["'magic'"],
    ),
    case(
        "init-preset-unknown",
        "type",
        "init_model",
        "--preset huge-llama --tokenizer {tok} --out {out}",
        ["'huge-llama'"],
    ),
    case(
        "merge-weight-not-float",
        "type",
        "merge_expansions",
        "--base {plain} --inputs {expanded} --weights half --out {out}",
        ["'half'"],
    ),
    # out-of-range values
    case(
        "expand-layer-out-of-range",
        "range",
        "expand_ckpt",
        "--load {plain} --out {out} --layers 1,9",
        ["9"],
    ),
    case(
        "tokenizer-vocab-negative",
        "range",
        "train_tokenizer",
        "--input {good} --output {out} --vocab-size -5",
        ["--vocab-size", "-5"],
    ),
    case(
        "preprocess-workers-zero",
        "range",
        "preprocess_data",
        "--input {good} --output-prefix {out} --tokenizer {tok} --workers 0",
        ["--workers", "0"],
        ("{out}.bin", "{out}.idx"),
    ),
    case(
        "eval-mc-negative-shots",
        "range",
        "eval_mc",
        "--load {plain} --data {mc} --shots -1 --out {out}",
        ["--shots", "-1"],
    ),
    case(
        "eval-loss-seq-zero",
        "range",
        "eval_loss",
        "--load {plain} --data {good} --seq-length 0 --out {out}",
        ["--seq-length", "0"],
    ),
    case(
        "train-tp-not-dividing-heads",
        "range",
        "pretrain_adept",
        TRAIN + " --train-iters 1 --tensor-model-parallel-size 3",
        ["3"],
    ),
    case(
        "train-exit-interval-zero",
        "range",
        "pretrain_adept",
        TRAIN + " --train-iters 1 --exit-interval 0",
        ["--exit-interval=0"],
    ),
    case(
        "train-keep-last-zero",
        "range",
        "pretrain_adept",
        TRAIN + " --train-iters 1 --keep-last 0",
        ["--keep-last=0"],
    ),
    # mismatched checkpoints
    case(
        "merge-input-not-from-base",
        "mismatch",
        "merge_expansions",
        "--base {plain} --inputs {expanded} {other_vocab} --out {out}",
        ["{other_vocab}"],
    ),
    case(
        "token-shift-different-vocab",
        "mismatch",
        "token_shift",
        "--base {plain} --adapted {other_vocab} --data {good} --out {out}",
        ["{other_vocab}"],
    ),
    case(
        "train-expanded-layers-differ",
        "mismatch",
        "pretrain_adept",
        TRAIN + " --train-iters 1 --expanded-layers 0",
        ["--expanded-layers=0", "1,3"],
    ),
    case(
        "train-adept-on-unexpanded",
        "mismatch",
        "pretrain_adept",
        TRAIN.replace("{expanded}", "{plain}") + " --train-iters 1",
        ["--mode adept"],
    ),
    # malformed JSONL
    case(
        "preprocess-malformed-jsonl",
        "jsonl",
        "preprocess_data",
        "--input {malformed} --output-prefix {out} --tokenizer {tok}",
        ["{malformed}:2"],
        ("{out}.bin", "{out}.idx"),
    ),
    case(
        "probe-malformed-jsonl",
        "jsonl",
        "probe_importance",
        "--load {plain} --probe-data {malformed} --out {out}",
        ["{malformed}:2"],
    ),
    case(
        "eval-mc-answer-out-of-range",
        "jsonl",
        "eval_mc",
        "--load {plain} --data {bad_mc} --out {out}",
        ["{bad_mc}:1", "5"],
    ),
    case(
        "train-malformed-probe",
        "jsonl",
        "pretrain_adept",
        TRAIN.replace("{probe}", "{malformed}") + " --train-iters 1",
        ["{malformed}:2"],
    ),
    # empty corpora
    case(
        "preprocess-empty-corpus",
        "empty",
        "preprocess_data",
        "--input {empty} --output-prefix {out} --tokenizer {tok}",
        ["{empty}"],
        ("{out}.bin", "{out}.idx"),
    ),
    case(
        "tokenizer-empty-corpus",
        "empty",
        "train_tokenizer",
        "--input {empty} --output {out} --vocab-size 100",
        ["{empty}"],
    ),
    case(
        "eval-loss-empty-corpus",
        "empty",
        "eval_loss",
        "--load {plain} --data {empty} --out {out}",
        ["{empty}"],
    ),
    # unwritable output (its parent is a regular file: refused even for root)
    case(
        "convert-unwritable-out",
        "unwritable",
        "convert_hf",
        "--hf-dir {hf} --out {blocked}",
        ["{blocked_parent}"],
        ("{blocked}",),
    ),
    case(
        "expand-unwritable-out",
        "unwritable",
        "expand_ckpt",
        "--load {plain} --out {blocked} --layers 1",
        ["{blocked_parent}"],
        ("{blocked}",),
    ),
    case(
        "tokenizer-unwritable-out",
        "unwritable",
        "train_tokenizer",
        "--input {good} --output {blocked} --vocab-size 100",
        ["{blocked_parent}"],
        ("{blocked}",),
    ),
    case(
        "train-unwritable-save",
        "unwritable",
        "pretrain_adept",
        TRAIN.replace("{out}", "{blocked}") + " --train-iters 1",
        ["{blocked_parent}"],
        ("{blocked}",),
    ),
]


@pytest.fixture(scope="module")
def files(train_inputs, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_inputs")
    save_hf("tiny-llama", root / "hf")
    good = write_jsonl(root / "good.jsonl", [{"text": "the kernel thread and its cache"}] * 3)
    malformed = root / "malformed.jsonl"
    malformed.write_text('{"text": "fine"}\n{"text": "cut off\n')
    (root / "empty.jsonl").write_text("")
    mc = write_jsonl(root / "mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0}])
    bad_mc = write_jsonl(
        root / "bad_mc.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 5}]
    )
    (root / "importance.json").write_text(json.dumps({"layer_scores": [0.3, 0.1, 0.2, 0.4]}))
    (root / "a_file").write_text("not a directory")
    other = ModelArch.from_hf_config(preset_config("tiny-llama", vocab_size=VOCAB // 2))
    (root / "other_vocab").mkdir()
    CheckpointMeta(other, LayerMap.identity(other.num_layers)).save(root / "other_vocab")
    write_manifest(root / "other_vocab")
    return {
        "missing": str(root / "does_not_exist"),
        "hf": str(root / "hf"),
        "good": str(good),
        "malformed": str(malformed),
        "empty": str(root / "empty.jsonl"),
        "mc": str(mc),
        "bad_mc": str(bad_mc),
        "importance": str(root / "importance.json"),
        "blocked_parent": str(root / "a_file"),
        "blocked": str(root / "a_file" / "out"),
        "tok": str(train_inputs.root / "tok"),
        "plain": str(train_inputs.plain),
        "expanded": str(train_inputs.expanded),
        "other_vocab": str(root / "other_vocab"),
        "data": str(train_inputs.data),
        "probe": str(train_inputs.probe),
    }


def fill(text: str, values: dict[str, str]) -> str:
    return text.format(**values)


def nothing_left(output: str) -> bool:
    """No output and no temporary sibling (a parent that is a file has no children)."""
    path = Path(output)
    return siblings_clean(path) if path.parent.is_dir() else not path.exists()


def script_path(name: str) -> str:
    return str(PRETRAIN if name == "pretrain_adept" else TOOLS / f"{name}.py")


def test_matrix_covers_every_tool_and_category():
    tools = {p.stem for p in TOOLS.glob("*.py")} | {"pretrain_adept"}
    assert {c.script for c in CASES} == tools
    assert {c.category for c in CASES} == {
        "path",
        "type",
        "range",
        "mismatch",
        "jsonl",
        "empty",
        "unwritable",
    }
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input(bad, files, tmp_path, monkeypatch, capsys):
    values = {**files, "out": str(tmp_path / "out")}
    args = [fill(a, values) for a in bad.args]
    result = run_tool_inprocess(script_path(bad.script), args, monkeypatch, capsys)
    assert_one_line_error(result, *(fill(f, values) for f in bad.fragments))
    for output in bad.outputs:
        assert nothing_left(fill(output, values)), output


def test_real_processes(files, tmp_path):
    """The same guarantees from a fresh interpreter, as users and scripts see them."""
    chosen = {"expand-k-not-int", "preprocess-malformed-jsonl", "train-keep-last-zero"}
    for bad in (c for c in CASES if c.id in chosen):
        values = {**files, "out": str(tmp_path / bad.id)}
        args = [fill(a, values) for a in bad.args]
        result = run_command([sys.executable, script_path(bad.script), *args], check=False)
        assert_one_line_error(result, *(fill(f, values) for f in bad.fragments))
        for output in bad.outputs:
            assert nothing_left(fill(output, values)), output
