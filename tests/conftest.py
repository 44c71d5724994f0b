import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_fixtures import ConversionSuite  # noqa: E402
from train_fixtures import make_train_inputs  # noqa: E402


@pytest.fixture(scope="session")
def train_inputs(tmp_path_factory):
    """Tokenizer, training set, probe corpus and tiny checkpoints, built once per session."""
    return make_train_inputs(tmp_path_factory.mktemp("train_inputs"))


@pytest.fixture(scope="session")
def conversion_suite(tmp_path_factory):
    """HF models, their conversions, expansions and exports, and megatron logits, built once."""
    return ConversionSuite(tmp_path_factory.mktemp("conversion"))
