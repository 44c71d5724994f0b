"""tools/preprocess_data.py on bad input: one line naming file and line, no partial output."""

import gzip
import sys

import pytest
from data_fixtures import sentencepiece_tokenizer, write_jsonl
from test_convert_errors import assert_one_line_error
from torchrun_harness import REPO, run_command

TOOL = str(REPO / "tools" / "preprocess_data.py")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return sentencepiece_tokenizer(tmp_path_factory.mktemp("tok") / "sp")


def run(tmp_path, source, tokenizer, *extra, prefix=None):
    prefix = prefix or str(tmp_path / "out" / "data")
    (tmp_path / "out").mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        TOOL,
        "--input",
        str(source),
        "--output-prefix",
        prefix,
        "--tokenizer",
        str(tokenizer),
        *extra,
    ]
    return run_command(cmd, check=False)


def no_output(tmp_path):
    return not list((tmp_path / "out").iterdir())


def test_malformed_json_names_file_and_line(tmp_path, tokenizer):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "fine"}\n{"text": "broken\n')
    assert_one_line_error(run(tmp_path, source, tokenizer), "bad.jsonl:2", "malformed JSON")
    assert no_output(tmp_path)


def test_missing_key_names_file_and_line(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / "keys.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}])
    assert_one_line_error(run(tmp_path, source, tokenizer), "keys.jsonl:3", "missing key 'text'")
    assert no_output(tmp_path)


def test_empty_input(tmp_path, tokenizer):
    source = tmp_path / "empty.jsonl.gz"
    with gzip.open(source, "wt") as handle:
        handle.write("\n")
    assert_one_line_error(run(tmp_path, source, tokenizer), "holds no documents")
    assert no_output(tmp_path)


def test_tokenizer_path_that_is_neither(tmp_path):
    source = write_jsonl(tmp_path / "ok.jsonl", [{"text": "a"}])
    (tmp_path / "not_a_tokenizer").mkdir()
    result = run(tmp_path, source, tmp_path / "not_a_tokenizer")
    assert_one_line_error(result, "not_a_tokenizer", "neither a sentencepiece model file")
    assert no_output(tmp_path)


def test_window_not_larger_than_stride(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / "ok.jsonl", [{"text": "a"}])
    result = run(tmp_path, source, tokenizer, "--window", "8", "--stride", "8")
    assert_one_line_error(result, "--window=8 must be larger than --stride=8")
    assert no_output(tmp_path)


def test_output_prefix_directory_missing(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / "ok.jsonl", [{"text": "a"}])
    result = run(tmp_path, source, tokenizer, prefix=str(tmp_path / "nowhere" / "data"))
    assert_one_line_error(result, "nowhere", "does not exist")
    assert not (tmp_path / "nowhere").exists()
