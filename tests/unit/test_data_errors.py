"""tools/preprocess_data.py on bad input: one line naming file and line, no partial output.

Each case runs the tool's ``__main__`` in this process (its import of megatron-core takes
seconds per subprocess); one case runs it as a real process with worker processes, to check
the exit code and that no traceback reaches the terminal.
"""

import runpy
import sys

import pytest
from data_fixtures import sentencepiece_tokenizer, write_jsonl
from torchrun_harness import REPO, run_command

TOOL = str(REPO / "tools" / "preprocess_data.py")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return sentencepiece_tokenizer(tmp_path_factory.mktemp("tok") / "sp")


def tool_args(tmp_path, source, tokenizer, *extra, prefix=None):
    (tmp_path / "out").mkdir(exist_ok=True)
    prefix = prefix or str(tmp_path / "out" / "data")
    return ["--input", str(source), "--output-prefix", prefix, "--tokenizer", str(tokenizer)] + [
        *extra
    ]


def run_tool(monkeypatch, capsys, args):
    """Run the tool's ``__main__`` with ``args``; returns (exit code, stderr lines)."""
    monkeypatch.setattr(sys, "argv", [TOOL, *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(TOOL, run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(code, lines, *fragments):
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def nothing_written(tmp_path):
    return not list((tmp_path / "out").iterdir())


def test_malformed_json_in_a_worker_process(tmp_path, tokenizer):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "fine"}\n' * 100 + '{"text": "broken\n' + '{"text": "x"}\n' * 100)
    args = tool_args(tmp_path, source, tokenizer, "--workers", "2")
    result = run_command([sys.executable, TOOL, *args], check=False)
    assert "Traceback" not in result.stderr
    assert_one_line_error(
        result.returncode, result.stderr.strip().splitlines(), "bad.jsonl:101", "malformed JSON"
    )
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    "lines, extra, fragments",
    [
        ('{"text": "a"}\n[1, 2]\n', [], ["bad.jsonl:2", "expected a JSON object"]),
        ('{"text": "a"}\n\n{"body": "c"}\n', [], ["bad.jsonl:3", "missing key 'text'"]),
        ('{"text": 7}\n', [], ["bad.jsonl:1", "key 'text' is int"]),
        ('{"q": "a", "cot": "b"}\n', ["--format", "sft", "--prompt-key", "q"], ["missing key"]),
        ("\n \n", [], ["bad.jsonl", "holds no documents"]),
        ('{"text": "a"}\n', ["--window", "8", "--stride", "8"], ["--window=8", "--stride=8"]),
        ('{"text": "a"}\n', ["--window", "8"], ["--window and --stride go together"]),
    ],
)
def test_bad_input(tmp_path, tokenizer, monkeypatch, capsys, lines, extra, fragments):
    source = tmp_path / "bad.jsonl"
    source.write_text(lines)
    code, err = run_tool(monkeypatch, capsys, tool_args(tmp_path, source, tokenizer, *extra))
    assert_one_line_error(code, err, *fragments)
    assert nothing_written(tmp_path)


def test_tokenizer_path_that_is_neither(tmp_path, monkeypatch, capsys):
    source = write_jsonl(tmp_path / "ok.jsonl", [{"text": "a"}])
    (tmp_path / "not_a_tokenizer").mkdir()
    args = tool_args(tmp_path, source, tmp_path / "not_a_tokenizer")
    code, err = run_tool(monkeypatch, capsys, args)
    assert_one_line_error(code, err, "not_a_tokenizer", "neither a sentencepiece model file")
    assert nothing_written(tmp_path)


def test_missing_input_and_output_directory(tmp_path, tokenizer, monkeypatch, capsys):
    args = tool_args(tmp_path, tmp_path / "absent.jsonl", tokenizer)
    assert_one_line_error(*run_tool(monkeypatch, capsys, args), "absent.jsonl", "does not exist")
    source = write_jsonl(tmp_path / "ok.jsonl", [{"text": "a"}])
    args = tool_args(tmp_path, source, tokenizer, prefix=str(tmp_path / "nowhere" / "data"))
    assert_one_line_error(*run_tool(monkeypatch, capsys, args), "nowhere", "does not exist")
    assert not (tmp_path / "nowhere").exists()
