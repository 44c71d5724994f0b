"""pretrain_adept.py refuses bad input before any training, with one line naming the value."""

import sys

import pytest
from data_fixtures import write_jsonl
from test_convert_errors import assert_one_line_error
from torchrun_harness import run_command
from train_fixtures import PRETRAIN, pretrain_args


def run(args):
    return run_command([sys.executable, PRETRAIN, *args], check=False, timeout=120)


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--mode", "sideways"], ["unknown --mode 'sideways'", "adept"]),
        (["--global-batch-size", "6", "--micro-batch-size", "4"], ["--global-batch-size=6", "4"]),
        (["--importance-interval", "0"], ["--importance-interval=0"]),
        (["--mode", "no-stage1"], ["no-stage1", "--importance"]),
        (["--data-path", "/nonexistent/prefix"], ["/nonexistent/prefix"]),
        (["--fp16"], ["--fp16 is not supported for training", "use --bf16"]),
    ],
)
def test_bad_flags(train_inputs, tmp_path, extra, fragments):
    result = run(
        pretrain_args(train_inputs, "--train-iters", "1", "--save", str(tmp_path / "run"), *extra)
    )
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_empty_probe_corpus(train_inputs, tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    args = pretrain_args(train_inputs, "--train-iters", "1", "--save", str(tmp_path / "run"))
    args[args.index("--probe-data") + 1] = str(empty)
    assert_one_line_error(run(args), "empty.jsonl", "empty")
    assert not (tmp_path / "run").exists()
