"""The quickstart refuses outputs it cannot use before any work, and reuses its base model."""

import os
import sys
from pathlib import Path

import pytest
from torchrun_harness import REPO, run_command

from megatron_adept.workflow import demo, stages


def test_output_inside_a_file_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_command(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), str(blocker / "out")],
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: output {blocker / 'out'} is inside {blocker}, which is not a directory"
    )
    assert list(tmp_path.iterdir()) == [blocker]


def test_too_little_disk_is_refused(tmp_path):
    with pytest.raises(stages.WorkflowError, match=r"GiB free under .* needs"):
        stages.check_output(tmp_path / "new" / "out", 2**62)
    assert not (tmp_path / "new").exists()


def test_cached_base_model_is_reused(tmp_path, monkeypatch):
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.model").write_bytes(b"pieces")
    pipe = stages.Stages()
    out, cache = tmp_path / "out", tmp_path / "cache"

    def no_stage(stage, cmd):
        raise AssertionError(f"ran stage {stage!r}")

    monkeypatch.setattr(pipe, "run", no_stage)
    with pytest.raises(AssertionError, match="ran stage 'init base model'"):
        demo.base_model(pipe, out, cache, tokenizer, tmp_path / "data" / "general")

    entry = demo.base_cache_entry(cache, tokenizer)
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    assert demo.base_model(pipe, out, cache, tokenizer, tmp_path / "data" / "general") == entry
    assert pipe.times == {"pretrain base (cached)": 0.0}

    (tokenizer / "tokenizer.model").write_bytes(b"other pieces")  # another tokenizer: retrain
    assert demo.base_cache_entry(cache, tokenizer) != entry
    with pytest.raises(AssertionError, match="ran stage 'init base model'"):
        demo.base_model(pipe, out, cache, tokenizer, tmp_path / "data" / "general")


def test_stage_reports_its_own_peak_memory_and_failure(tmp_path):
    """Peak RSS is the stage's own (neither the driver's nor an earlier stage's) and a failure
    names the log."""
    log = tmp_path / "log.txt"
    pipe = stages.Stages(log=log)
    grab = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096])"
    pipe.run("big", [sys.executable, "-c", grab, 300])
    pipe.run("small", [sys.executable, "-c", grab, 10])
    assert 300 < pipe.peak_rss_mib["big"] < 400
    assert pipe.peak_rss_mib["small"] < 100
    with pytest.raises(stages.WorkflowError, match=rf"'fails' failed \(exit code 3\); see {log}"):
        pipe.run("fails", [sys.executable, "-c", "print('why'); raise SystemExit(3)"])
    assert "=== fails ===\nwhy\n--- fails: " in log.read_text()


def test_unwritable_output_directory_is_refused(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # permissions do not stop root: let os.access answer as for a user
        real_access = os.access
        monkeypatch.setattr(
            stages.os, "access", lambda p, m: Path(p) != locked and real_access(p, m)
        )
    with pytest.raises(stages.WorkflowError, match=f"^output directory {locked} is not"):
        stages.check_output(locked / "new" / "out", 0)
    assert list(locked.iterdir()) == []
