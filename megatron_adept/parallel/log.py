"""One rank-aware logger for the whole project.

Messages go through the standard ``logging`` module; by default only global rank 0 prints,
prefixed with a timestamp, so logs of an 8-process run read like a single-process one.
"""

from __future__ import annotations

import logging
import sys

import torch.distributed as dist


class _RankFilter(logging.Filter):
    def __init__(self, all_ranks: bool) -> None:
        super().__init__()
        self.all_ranks = all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        record.rank = rank
        return self.all_ranks or rank == 0


def setup_logging(level: int = logging.INFO, all_ranks: bool = False) -> None:
    """Configure the ``megatron_adept`` logger once per process (called by entry points)."""
    root = logging.getLogger("megatron_adept")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_RankFilter(all_ranks))
    handler.setFormatter(
        logging.Formatter("[%(asctime)s rank %(rank)s] %(message)s", datefmt="%H:%M:%S")
    )
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(
        name if name.startswith("megatron_adept") else f"megatron_adept.{name}"
    )
