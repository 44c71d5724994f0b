"""The CPU compatibility layer is inert on import, effective when activated, and reversible."""

import sys
import textwrap

import pytest
from torchrun_harness import run_command

PROBE = textwrap.dedent(
    """
    import torch
    from torch.overrides import _get_current_function_mode_stack

    def state():
        try:
            torch.cuda.current_device()
            current = "ok"
        except Exception as exc:
            current = type(exc).__name__
        try:
            device = str(torch.zeros(1, device="cuda").device)
        except Exception as exc:
            device = type(exc).__name__
        return (current, device, len(_get_current_function_mode_stack()), torch.ones(2).type())

    before = state()
    import megatron_adept, megatron_adept.compat.cpu as compat
    import megatron_adept.models.builder, megatron_adept.checkpoint.mcore_io
    import megatron_adept.parallel.runtime, megatron_adept.training.step
    after_import = state()
    assert compat.activate() is True
    active = state()
    compat.deactivate()
    print(repr((before, after_import, active, state())))
    """
)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CPU-only behaviour")
def test_import_changes_nothing_and_activation_is_reversible():
    out = run_command([sys.executable, "-c", PROBE]).stdout.strip().splitlines()[-1]
    before, after_import, active, restored = eval(out)
    assert before == after_import == restored
    assert before[0] != "ok" and before[1] != "cpu" and before[2] == 0
    assert before[3] == "torch.FloatTensor"
    assert active == ("ok", "cpu", 1, "torch.cuda.FloatTensor")
