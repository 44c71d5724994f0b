"""megatron-adept: ADEPT continual pretraining on Megatron-Core.

megatron-core warns on import when Transformer Engine or apex are missing. They are optional
GPU accelerators here (CPU runs and tests never have them), so those specific notices are
silenced, as are two deprecation notices megatron-core 0.16.1 triggers on every run; every
other warning is left alone.
"""

import warnings

for _message in (
    r"Apex is not installed",
    r"Transformer Engine and Apex are not installed",
    r"Transformer Engine is not installed",
    r"full scope is deprecated",
):
    warnings.filterwarnings("ignore", message=_message, category=UserWarning)
warnings.filterwarnings(
    "ignore", message=r"`load_state_dict` is deprecated", category=FutureWarning
)
