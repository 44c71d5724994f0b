"""Bad probe input: one-line errors naming the problem, no importance.json left behind.

Every case fails before a process group or a weight exists, so the checkpoint is metadata
only and the tool's ``__main__`` runs in this process; one case runs the real command line.
"""

import pytest
from data_fixtures import sentencepiece_tokenizer, write_jsonl
from hf_fixtures import run_tool_inprocess, siblings_clean, tool
from torchrun_harness import REPO

from megatron_adept.checkpoint.manifest import write_manifest
from megatron_adept.checkpoint.metadata import CheckpointMeta, LayerMap
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config

PROBE = str(REPO / "tools" / "probe_importance.py")
GOOD = [{"text": "the memory cache of the kernel thread"}, {"prompt": "a", "answer": " b c"}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 4-layer checkpoint (metadata only), a 320-piece tokenizer and probe files."""
    root = tmp_path_factory.mktemp("probe_errors")
    arch = ModelArch.from_hf_config(preset_config("tiny-llama", vocab_size=320))
    (root / "ckpt").mkdir()
    CheckpointMeta(arch, LayerMap.identity(arch.num_layers)).save(root / "ckpt")
    write_manifest(root / "ckpt")
    small = ModelArch.from_hf_config(preset_config("tiny-llama", vocab_size=64))
    (root / "small_vocab").mkdir()
    CheckpointMeta(small, LayerMap.identity(small.num_layers)).save(root / "small_vocab")
    write_manifest(root / "small_vocab")
    tokenizer = sentencepiece_tokenizer(root / "tok")
    return root, tokenizer


def probe_args(root, tokenizer, items, *extra, ckpt="ckpt"):
    data = write_jsonl(root / "probe.jsonl", items) if items is not None else root / "nothing"
    out = root / "out" / "importance.json"
    out.parent.mkdir(exist_ok=True)
    args = ["--load", root / ckpt, "--probe-data", data, "--tokenizer", tokenizer, "--out", out]
    return [str(a) for a in [*args, *extra]], out


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


CASES = {
    "empty corpus": ([], [], ["probe.jsonl", "is empty"]),
    "no text or prompt/answer": (
        [*GOOD, {"question": "q", "answer": "a"}],
        [],
        ["probe.jsonl:3", "expected a 'text' key or 'prompt' and 'answer' keys"],
    ),
    "answer tokenizes to nothing": (
        [*GOOD, {"prompt": "the river", "answer": ""}],
        [],
        ["probe.jsonl:3", "the answer tokenizes to nothing"],
    ),
    "k larger than the layers": (GOOD, ["--k", "5"], ["--k=5", "number of layers (4)"]),
    "k not positive": (GOOD, ["--k", "0"], ["--k=0 must be at least 1"]),
    "missing probe data": (None, [], ["nothing", "does not exist"]),
    "fp16": (GOOD, ["--fp16"], ["--fp16 is not supported for the probe", "use --bf16"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_nothing(setup, case, monkeypatch, capsys):
    root, tokenizer = setup
    items, extra, fragments = CASES[case]
    args, out = probe_args(root, tokenizer, items, *extra)
    assert_one_line_error(run_tool_inprocess(PROBE, args, monkeypatch, capsys), *fragments)
    assert siblings_clean(out)


def test_tokenizer_larger_than_the_model_vocabulary(setup, monkeypatch, capsys):
    root, tokenizer = setup
    args, out = probe_args(root, tokenizer, GOOD, ckpt="small_vocab")
    result = run_tool_inprocess(PROBE, args, monkeypatch, capsys)
    assert_one_line_error(result, "vocabulary has 64 entries", "wrong --tokenizer?")
    assert siblings_clean(out)


def test_missing_output_directory(setup, monkeypatch, capsys):
    root, tokenizer = setup
    args, _ = probe_args(root, tokenizer, GOOD)
    args[args.index("--out") + 1] = str(root / "absent" / "importance.json")
    result = run_tool_inprocess(PROBE, args, monkeypatch, capsys)
    assert_one_line_error(result, "directory of --out", "does not exist")
    assert not (root / "absent").exists()


def test_command_line_reports_an_empty_corpus(setup):
    root, tokenizer = setup
    args, out = probe_args(root, tokenizer, [])
    assert_one_line_error(tool(PROBE, *args, check=False), "is empty")
    assert siblings_clean(out)
