"""When a run stops before ``--train-iters``: preemption signals, a time budget, an interval.

Slurm announces preemption and the end of a job's time slot with a signal (``SIGTERM``, or
``SIGUSR1`` via ``--signal=USR1@120``). The handler only records the signal; after each
step every rank contributes its flags to one all-reduce, so all ranks agree to stop after
the same step even when the signal reached only some of them, and the run then saves and
exits cleanly.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

import torch
import torch.distributed as dist

from megatron_adept.parallel.collectives import all_reduce_numbers

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ExitConditions:
    """Collective stop decision after each step.

    Args:
        duration_mins: stop once this many minutes passed since ``start`` (on any rank).
        interval: stop when the iteration is a multiple of this.
        start: ``time.monotonic()`` at job start.
    """

    def __init__(self, duration_mins: float | None, interval: int | None, start: float) -> None:
        self.duration_mins = duration_mins
        self.interval = interval
        self.start = start
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Record STOP_SIGNALS instead of dying on them."""
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def check(self, iteration: int) -> str | None:
        """Collective: why the run stops after ``iteration`` (None: it goes on)."""
        elapsed = (time.monotonic() - self.start) / 60
        received, out_of_time = all_reduce_numbers(
            [
                -1 if self.received is None else self.received,
                self.duration_mins is not None and elapsed >= self.duration_mins,
            ],
            op=dist.ReduceOp.MAX,
            dtype=torch.int64,
        )
        if received >= 0:
            return f"received {signal.Signals(received).name}"
        if out_of_time:
            return f"--exit-duration-in-mins={self.duration_mins} reached"
        if self.interval is not None and iteration % self.interval == 0:
            return f"--exit-interval={self.interval} reached"
        return None
