"""Stage 1 of ADEPT: which decoder layers matter least for general competence.

:func:`megatron_adept.probe.runner.probe_layers` scores every layer (masking by default, or one
of the paper's gradient alternatives) and every unit, and picks the k least important layers
for expansion; :mod:`megatron_adept.probe.scores` holds the result, ``importance.json``.
"""
