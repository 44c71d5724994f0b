"""Bad input to the evaluation tools: one line on stderr, non-zero exit, no output written.

Every check runs before any weight is read, so the checkpoints here are metadata only.
"""

import dataclasses
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
from data_fixtures import sentencepiece_tokenizer, write_jsonl
from eval_fixtures import EVAL_MC, TOKEN_SHIFT, VOCAB, run_tool

from megatron_adept.checkpoint.manifest import write_manifest
from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerMap
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config

GOOD = {"question": "q", "choices": ["a", "b"], "answer": 0}


def metadata_only_checkpoint(path, tokenizer, vocab_size: int):
    arch = dataclasses.replace(
        ModelArch.from_hf_config(preset_config("tiny-llama")), vocab_size=vocab_size
    )
    path.mkdir()
    CheckpointMeta(arch, LayerMap.identity(arch.num_layers), tokenizer=TOKENIZER_DIR).save(path)
    shutil.copytree(tokenizer, path / TOKENIZER_DIR)
    write_manifest(path)
    return str(path)


CASES = {
    "one_choice": (
        EVAL_MC,
        [GOOD, {"question": "q", "choices": ["only"], "answer": 0}],
        [],
        ["mc.jsonl:2: 1 choice(s); a question needs at least 2"],
    ),
    "answer_out_of_range": (
        EVAL_MC,
        [{"question": "q", "choices": ["a", "b", "c"], "answer": 3}],
        [],
        ["mc.jsonl:1: answer index 3 is out of range for 3 choices"],
    ),
    "empty_file": (EVAL_MC, [], [], ["mc.jsonl' holds no items"]),
    "different_vocab": (
        EVAL_MC,
        [GOOD, GOOD],
        ["--compare", "{big}"],
        ["different vocabularies", f"has {VOCAB} tokens", "big' has 384"],
    ),
    "token_shift_different_vocab": (
        TOKEN_SHIFT,
        [{"text": "the memory cache"}],
        [],
        ["different vocabularies", f"has {VOCAB} tokens", "big' has 384"],
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_errors")
    tokenizer = sentencepiece_tokenizer(root / "tokenizer", vocab_size=VOCAB)
    small = metadata_only_checkpoint(root / "small", tokenizer, VOCAB)
    big = metadata_only_checkpoint(root / "big", tokenizer, 384)
    commands = {}
    for name, (tool, items, extra, _) in CASES.items():
        case = root / name
        case.mkdir()
        data = str(write_jsonl(case / "mc.jsonl", items))
        extra = [arg.format(big=big) for arg in extra]
        if tool == EVAL_MC:
            args = ["--load", small, "--data", data, *extra, "--out", str(case / "out.json")]
        else:
            args = ["--base", small, "--adapted", big, "--data", data]
            args += ["--out", str(case / "out.json")]
        commands[name] = (tool, args, case)
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {
            name: pool.submit(run_tool, tool, *args, check=False)
            for name, (tool, args, _) in commands.items()
        }
        return {name: (future.result(), commands[name][2]) for name, future in futures.items()}


@pytest.mark.parametrize("case", CASES)
def test_one_line_error(results, case):
    proc, directory = results[case]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in CASES[case][3]:
        assert fragment in lines[0], lines[0]
    assert not (directory / "out.json").exists()
