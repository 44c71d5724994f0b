"""Flags of ``tools/probe_importance.py`` (light to import: checked before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_adept.config.cli import arg, require_positive
from megatron_adept.config.groups import k_flag, load_flag, out_flag, plot_flag, probe_data_flag

METHODS = ("masking", "cumulative", "rank", "fisher")


@dataclass
class ProbeConfig:
    """What tools/probe_importance.py measures, on which data, and where it writes."""

    load: str = load_flag()
    probe_data: str = probe_data_flag()
    out: str = out_flag()
    method: str = arg("masking", "Layer importance method (ADEPT App. E).", choices=METHODS)
    k: int | None = k_flag()
    plot: str | None = plot_flag()

    def __post_init__(self) -> None:
        require_positive(self, "k")
