"""Tokenizer loading, round trips, saving, the checkpoint rule and deterministic training."""

import pytest
from data_fixtures import TRICKY_TEXTS, hf_tokenizer, random_texts, sentencepiece_tokenizer

from megatron_adept.checkpoint.metadata import TOKENIZER_DIR, CheckpointMeta, LayerMap
from megatron_adept.data.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    resolve_tokenizer,
)
from megatron_adept.errors import AdeptError, DataError
from megatron_adept.models.archs import ModelArch
from megatron_adept.models.presets import preset_config


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"sentencepiece": sentencepiece_tokenizer(root / "sp"), "hf": hf_tokenizer(root / "hf")}


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_decode_inverts_encode(tokenizers, kind):
    tokenizer = load_tokenizer(tokenizers[kind])
    for text in TRICKY_TEXTS + random_texts(20, seed=9):
        ids = tokenizer.encode(text)
        assert tokenizer.eos_id not in ids  # encode adds no special tokens
        assert tokenizer.decode(ids) == text
        assert max(ids) < tokenizer.vocab_size


def test_kinds_and_special_ids(tokenizers):
    sp_dir = tokenizers["sentencepiece"]
    by_dir, by_file = load_tokenizer(sp_dir), load_tokenizer(sp_dir / "tokenizer.model")
    assert isinstance(by_dir, SentencePieceTokenizer) and isinstance(
        by_file, SentencePieceTokenizer
    )
    assert (by_dir.eos_id, by_dir.bos_id, by_dir.vocab_size) == (2, 1, 320)
    hf = load_tokenizer(tokenizers["hf"])
    assert isinstance(hf, HFTokenizer)
    assert (hf.eos_id, hf.bos_id, hf.vocab_size) == (0, None, 300)  # <eos> was added first


@pytest.mark.parametrize("kind", ["sentencepiece", "hf"])
def test_save_gives_an_identical_tokenizer(tokenizers, tmp_path, kind):
    original = load_tokenizer(tokenizers[kind])
    original.save(tmp_path / "copy")
    copy = load_tokenizer(tmp_path / "copy")
    assert (copy.eos_id, copy.bos_id, copy.vocab_size) == (
        original.eos_id,
        original.bos_id,
        original.vocab_size,
    )
    for text in TRICKY_TEXTS:
        assert copy.encode(text) == original.encode(text)


def test_path_that_is_neither_kind(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="'.*empty' is neither a sentencepiece model file"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(DataError, match="missing' is neither"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.model' is not a sentencepiece model"):
        load_tokenizer(tmp_path / "junk.model")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{broken")
    with pytest.raises(DataError, match="cannot load tokenizer from '.*broken': Expecting"):
        load_tokenizer(tmp_path / "broken")


def _checkpoint(path, tokenizer=None):
    arch = ModelArch.from_hf_config(preset_config("tiny-llama"))
    path.mkdir()
    meta = CheckpointMeta(arch, LayerMap.identity(arch.num_layers))
    if tokenizer is not None:
        tokenizer.save(path / TOKENIZER_DIR)
        meta.tokenizer = TOKENIZER_DIR
    meta.save(path)
    return path


def test_checkpoint_tokenizer_unless_flag_says_otherwise(tokenizers, tmp_path):
    hf, sp = tokenizers["hf"], tokenizers["sentencepiece"]
    with_tok = _checkpoint(tmp_path / "with", load_tokenizer(hf))
    assert isinstance(resolve_tokenizer(None, with_tok), HFTokenizer)
    assert isinstance(resolve_tokenizer(str(sp), with_tok), SentencePieceTokenizer)
    without = _checkpoint(tmp_path / "without")
    with pytest.raises(DataError, match="stores no tokenizer; pass --tokenizer"):
        resolve_tokenizer(None, without)
    with pytest.raises(DataError, match="--tokenizer is required"):
        resolve_tokenizer(None, None)


def test_training_is_deterministic_and_covers_unseen_text(tmp_path):
    first = sentencepiece_tokenizer(tmp_path / "a", vocab_size=300)
    second = sentencepiece_tokenizer(tmp_path / "b", vocab_size=300)
    assert (first / "tokenizer.model").read_bytes() == (second / "tokenizer.model").read_bytes()
    with pytest.raises(AdeptError, match="exists and is not empty"):
        sentencepiece_tokenizer(tmp_path / "a")
    with pytest.raises(DataError, match="sentencepiece training failed .*--vocab-size"):
        sentencepiece_tokenizer(tmp_path / "c", vocab_size=100)
    assert not (tmp_path / "c").exists()
