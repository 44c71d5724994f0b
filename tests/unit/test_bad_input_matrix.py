"""Bad input to every tool and to pretrain_adept.py: one clear line, nothing left behind.

Each case names its tool, its arguments (``{placeholders}`` are files prepared once per
module, plus ``{out}`` and ``{here}`` in the case's own empty scratch directory) and what the
one-line error must contain: at least the bad value. Every case also asserts exit code 2, no
traceback, and that nothing was written (the scratch directory stays empty; nothing appears
under the unwritable parent). Cases run the tool's ``__main__`` in this process (all fail
before any process group exists, and one that gets as far as creating one fails the test
instead); ``test_real_processes`` repeats a few as real subprocesses.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from data_fixtures import write_jsonl
from hf_fixtures import run_tool_inprocess, save_hf
from test_convert_errors import assert_one_line_error
from torchrun_harness import REPO, run_command
from train_fixtures import PRETRAIN, VOCAB

from megatron_adept.checkpoint.manifest import write_manifest
from megatron_adept.checkpoint.metadata import CheckpointMeta
from megatron_adept.parallel import runtime

TOOLS = REPO / "tools"
CATEGORIES = {"path", "type", "range", "mismatch", "jsonl", "empty", "unwritable"}


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    script: str
    args: tuple[str, ...]
    fragments: tuple[str, ...]


def case(id: str, category: str, script: str, args: str, fragments: list[str]) -> Case:
    return Case(id, category, script, tuple(args.split()), tuple(fragments))


TRAIN = (
    "--load {expanded} --data-path {data} --probe-data {probe} --seq-length 16 --save {out}"
    " --train-iters 1"
)
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
    ),
    case(
        "eval-loss-missing-data",
        "path",
        "eval_loss",
        "--load {plain} --data {missing} --out {out}",
        ["{missing}"],
    ),
    case(
        "eval-loss-data-is-a-directory",
        "path",
        "eval_loss",
        "--load {plain} --data {here} --out {out}",
        ["'{here}' is a directory"],
    ),
    case("eval-loss-no-data", "path", "eval_loss", "--load {plain} --out {out}", ["--data"]),
    case(
        "token-shift-plot-is-a-directory",
        "path",
        "token_shift",
        "--base {plain} --adapted {expanded} --data {good} --plot {here} --out {out}",
        ["--plot '{here}' is a directory"],
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
        TRAIN.replace("{expanded}", "{missing}"),
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
        TRAIN + " --global-batch-size four",
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
        ["--workers=0"],
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
        "convert-shard-size-infinite",
        "range",
        "convert_hf",
        "--to-hf --load {plain} --max-shard-size-gb inf --out {out}",
        ["--max-shard-size-gb=inf"],
    ),
    case(
        "merge-weight-nan",
        "range",
        "merge_expansions",
        "--base {plain} --inputs {expanded} {other_vocab} --weights nan 1 --out {out}",
        ["--weights [nan, 1.0]"],
    ),
    case(
        "train-tp-not-dividing-heads",
        "range",
        "pretrain_adept",
        TRAIN + " --tensor-model-parallel-size 3",
        ["3"],
    ),
    case(
        "train-exit-interval-zero",
        "range",
        "pretrain_adept",
        TRAIN + " --exit-interval 0",
        ["--exit-interval=0"],
    ),
    case(
        "train-keep-last-zero",
        "range",
        "pretrain_adept",
        TRAIN + " --keep-last 0",
        ["--keep-last=0"],
    ),
    case("train-lr-nan", "range", "pretrain_adept", TRAIN + " --lr nan", ["--lr=nan"]),
    # mismatched checkpoints
    case(
        "merge-inputs-from-another-base",
        "mismatch",
        "merge_expansions",
        "--base {plain} --inputs {expanded} {other_vocab} --out {out}",
        ["{other_vocab}", "vocab_size 160 vs 320"],
    ),
    case(
        "eval-mc-compare-other-vocabulary",
        "mismatch",
        "eval_mc",
        "--load {plain} --data {mc} --shots 0 --compare {other_vocab} --out {out}",
        ["different vocabularies", f"has {VOCAB} tokens", "{other_vocab}' has 160"],
    ),
    case(
        "token-shift-other-vocabulary",
        "mismatch",
        "token_shift",
        "--base {plain} --adapted {other_vocab} --data {good} --out {out}",
        ["different vocabularies", f"has {VOCAB} tokens", "{other_vocab}' has 160"],
    ),
    case(
        "train-expanded-layers-differ",
        "mismatch",
        "pretrain_adept",
        TRAIN + " --expanded-layers 0",
        ["--expanded-layers=0", "1,3"],
    ),
    case(
        "train-adept-on-unexpanded",
        "mismatch",
        "pretrain_adept",
        TRAIN.replace("{expanded}", "{plain}"),
        ["--mode adept", "expand"],
    ),
    case(
        "train-tokenizer-exceeds-vocabulary",
        "mismatch",
        "pretrain_adept",
        TRAIN.replace("{expanded}", "{other_vocab}") + " --tokenizer {tok}",
        ["{tok}", "160"],
    ),
    # malformed JSONL
    case(
        "preprocess-malformed-jsonl",
        "jsonl",
        "preprocess_data",
        "--input {malformed} --output-prefix {out} --tokenizer {tok}",
        ["{malformed}:2"],
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
        ["{bad_mc}:1: answer index 5 is out of range for 2 choices"],
    ),
    case(
        "eval-mc-one-choice",
        "jsonl",
        "eval_mc",
        "--load {plain} --data {one_choice} --shots 0 --out {out}",
        ["{one_choice}:2: 1 choice(s); a question needs at least 2"],
    ),
    case(
        "train-malformed-probe",
        "jsonl",
        "pretrain_adept",
        TRAIN.replace("{probe}", "{malformed}"),
        ["{malformed}:2"],
    ),
    # empty corpora
    case(
        "preprocess-empty-corpus",
        "empty",
        "preprocess_data",
        "--input {empty} --output-prefix {out} --tokenizer {tok}",
        ["{empty}"],
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
    case(
        "eval-mc-empty-file",
        "empty",
        "eval_mc",
        "--load {plain} --data {empty} --out {out}",
        ["{empty}' holds no items"],
    ),
    # unwritable output (see unwritable_dir)
    case(
        "convert-unwritable-out",
        "unwritable",
        "convert_hf",
        "--hf-dir {hf} --out {blocked}",
        ["{blocked_parent}"],
    ),
    case(
        "expand-unwritable-out",
        "unwritable",
        "expand_ckpt",
        "--load {plain} --out {blocked} --layers 1",
        ["{blocked_parent}"],
    ),
    case(
        "tokenizer-unwritable-out",
        "unwritable",
        "train_tokenizer",
        "--input {good} --output {blocked} --vocab-size 100",
        ["{blocked_parent}"],
    ),
    case(
        "eval-loss-unwritable-out",
        "unwritable",
        "eval_loss",
        "--load {plain} --data {good} --out {blocked}",
        ["{blocked_parent}"],
    ),
    case(
        "train-unwritable-save",
        "unwritable",
        "pretrain_adept",
        TRAIN.replace("{out}", "{blocked}"),
        ["{blocked_parent}"],
    ),
]


def unwritable_dir(root: Path) -> Path:
    """A directory no output can go into: read-only, or, for root (whom permissions do not
    stop), a regular file standing where the directory should be."""
    path = root / "unwritable"
    if os.geteuid() == 0:
        path.write_text("a file, not a directory")
    else:
        path.mkdir()
        path.chmod(0o500)
    return path


@pytest.fixture(scope="module")
def files(train_inputs, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_inputs")
    save_hf("tiny-llama", root / "hf")
    good = write_jsonl(root / "good.jsonl", [{"text": "the kernel thread and its cache"}] * 3)
    malformed = root / "malformed.jsonl"
    malformed.write_text('{"text": "fine"}\n{"text": "cut off\n')
    (root / "empty.jsonl").write_text("")
    item = {"question": "q", "choices": ["a", "b"], "answer": 0}
    mc = write_jsonl(root / "mc.jsonl", [item])
    bad_mc = write_jsonl(root / "bad_mc.jsonl", [{**item, "answer": 5}])
    one_choice = write_jsonl(root / "one_choice.jsonl", [item, {**item, "choices": ["only"]}])
    (root / "importance.json").write_text('{"layer_scores": [0.3, 0.1, 0.2, 0.4]}')
    # the expanded checkpoint's metadata with half its vocabulary: another model's expansion
    expanded = CheckpointMeta.load(train_inputs.expanded)
    other = dataclasses.replace(expanded.arch, vocab_size=VOCAB // 2)
    (root / "other_vocab").mkdir()
    CheckpointMeta(other, expanded.layer_map).save(root / "other_vocab")
    write_manifest(root / "other_vocab")
    blocked_parent = unwritable_dir(root)
    return {
        "missing": str(root / "does_not_exist"),
        "hf": str(root / "hf"),
        "good": str(good),
        "malformed": str(malformed),
        "empty": str(root / "empty.jsonl"),
        "mc": str(mc),
        "bad_mc": str(bad_mc),
        "one_choice": str(one_choice),
        "importance": str(root / "importance.json"),
        "blocked_parent": str(blocked_parent),
        "blocked": str(blocked_parent / "out"),
        "tok": str(train_inputs.root / "tok"),
        "plain": str(train_inputs.plain),
        "expanded": str(train_inputs.expanded),
        "other_vocab": str(root / "other_vocab"),
        "data": str(train_inputs.data),
        "probe": str(train_inputs.probe),
    }


def script_path(name: str) -> str:
    return str(PRETRAIN if name == "pretrain_adept" else TOOLS / f"{name}.py")


def filled(bad: Case, files: dict[str, str], scratch: Path) -> tuple[list[str], list[str]]:
    """(arguments, fragments) of ``bad`` with its outputs in the empty directory ``scratch``."""
    values = {**files, "out": str(scratch / "out"), "here": str(scratch)}
    return [a.format(**values) for a in bad.args], [f.format(**values) for f in bad.fragments]


def assert_nothing_written(scratch: Path, files: dict[str, str]) -> None:
    """No output, partial output or temporary sibling anywhere a case could write."""
    assert not list(scratch.iterdir())
    assert not Path(files["blocked"]).exists()


def test_matrix_covers_every_tool_and_category():
    tools = {p.stem for p in TOOLS.glob("*.py")} | {"pretrain_adept"}
    assert {c.script for c in CASES} == tools
    assert {c.category for c in CASES} == CATEGORIES
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def refuse_to_start(*args: object, **kwargs: object) -> None:
    raise AssertionError("the bad input got past validation: a process group was being created")


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input(bad, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "initialize", refuse_to_start)
    args, fragments = filled(bad, files, tmp_path)
    result = run_tool_inprocess(script_path(bad.script), args, monkeypatch, capsys)
    assert_one_line_error(result, *fragments)
    assert_nothing_written(tmp_path, files)


REAL = (
    "expand-k-not-int",
    "preprocess-malformed-jsonl",
    "eval-mc-compare-other-vocabulary",
    "train-keep-last-zero",
)
"""A flag type, a data, a checkpoint and a training error, each from a fresh interpreter."""


def test_real_processes(files, tmp_path):
    """The same guarantees as users and scripts see them (two processes at a time)."""
    cases = [c for c in CASES if c.id in REAL]
    runs = []
    for bad in cases:
        (tmp_path / bad.id).mkdir()
        args, fragments = filled(bad, files, tmp_path / bad.id)
        runs.append(([sys.executable, script_path(bad.script), *args], fragments))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda run: run_command(run[0], check=False), runs))
    for bad, (_, fragments), result in zip(cases, runs, results, strict=True):
        assert "Traceback" not in result.stdout, bad.id
        assert_one_line_error(result, *fragments)
        assert_nothing_written(tmp_path / bad.id, files)
