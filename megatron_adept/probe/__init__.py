"""Stage 1 of ADEPT: which decoder layers matter least for general competence.

:func:`probe_layers` scores every layer (masking by default, or one of the paper's gradient
alternatives) and every unit, and picks the k least important layers for expansion.
"""

from megatron_adept.probe.runner import METHODS, ProbeConfig, probe_layers
from megatron_adept.probe.scores import LayerScores

__all__ = ["METHODS", "LayerScores", "ProbeConfig", "probe_layers"]
