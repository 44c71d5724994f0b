import pytest
from train_fixtures import make_train_inputs


@pytest.fixture(scope="session")
def train_inputs(tmp_path_factory):
    """Tokenizer, training set, probe corpus and tiny checkpoints, built once per session."""
    return make_train_inputs(tmp_path_factory.mktemp("train_inputs"))
