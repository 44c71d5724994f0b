"""The bundled demo corpora (examples/data): schema, disjoint splits, size and licences."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"
TEXT_FILES = {
    "general_train": (1000, 3000),
    "general_probe": (300, 500),
    "general_eval": (250, 350),
    "domain_train": (1000, 3000),
    "domain_eval": (250, 350),
}
"""Document files -> allowed record count range."""
MC_FILES = ("general_mc", "domain_mc")
QUESTION = "Which term matches this definition? "
MAX_TOTAL_BYTES = 5_000_000


@cache
def records(stem: str) -> list[dict]:
    lines = (DATA / f"{stem}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@cache
def entry_lines(stem: str) -> frozenset[str]:
    return frozenset(line for r in records(stem) for line in r["text"].split("\n"))


def headwords(line: str) -> list[str]:
    return line.split(": ", 1)[0].split(", ")


def test_the_directory_holds_exactly_the_listed_files():
    assert sorted(p.stem for p in DATA.glob("*.jsonl")) == sorted([*TEXT_FILES, *MC_FILES])


@pytest.mark.parametrize("stem", TEXT_FILES)
def test_document_files_hold_text_entries(stem):
    low, high = TEXT_FILES[stem]
    assert low <= len(records(stem)) <= high
    for record in records(stem):
        assert set(record) == {"text"}
        assert isinstance(record["text"], str)
        assert len(record["text"]) <= 1000
        for line in record["text"].split("\n"):
            assert line == line.strip() and "  " not in line, line
            head, sep, definition = line.partition(": ")
            assert sep and definition and all(headwords(line)), line


@pytest.mark.parametrize("stem", ["general_train", "domain_train"])
def test_training_files_are_sized_for_cpu_pretraining(stem):
    size = (DATA / f"{stem}.jsonl").stat().st_size
    assert 800_000 <= size <= 1_500_000


@pytest.mark.parametrize("stem", MC_FILES)
def test_multiple_choice_items(stem):
    items = records(stem)
    assert 200 <= len(items) <= 250
    for item in items:
        assert set(item) == {"question", "choices", "answer", "subject"}
        assert item["question"].startswith(QUESTION)
        assert len(item["question"]) > len(QUESTION) + 10
        choices = item["choices"]
        assert len(choices) == 4 and all(isinstance(c, str) and c for c in choices)
        assert len({c.lower() for c in choices}) == 4, choices
        assert type(item["answer"]) is int and 0 <= item["answer"] < 4
        assert isinstance(item["subject"], str) and item["subject"]
    positions = Counter(item["answer"] for item in items)
    assert max(positions.values()) - min(positions.values()) <= 1, positions
    subjects = Counter(item["subject"] for item in items)
    assert min(subjects.values()) >= 20, subjects
    assert len({item["question"] for item in items}) == len(items)


@pytest.mark.parametrize(
    "train, heldout",
    [
        ("general_train", "general_probe"),
        ("general_train", "general_eval"),
        ("general_probe", "general_eval"),
        ("domain_train", "domain_eval"),
    ],
)
def test_held_out_entries_never_occur_in_another_split(train, heldout):
    assert not entry_lines(train) & entry_lines(heldout)


@pytest.mark.parametrize("prefix", ["general", "domain"])
def test_no_choice_heads_a_training_entry(prefix):
    trained = {w.lower() for line in entry_lines(f"{prefix}_train") for w in headwords(line)}
    choices = {c.lower() for item in records(f"{prefix}_mc") for c in item["choices"]}
    assert not choices & trained, sorted(choices & trained)[:10]


def test_total_size_fits_the_repository_budget():
    total = sum(p.stat().st_size for p in DATA.glob("*.jsonl"))
    assert total <= MAX_TOTAL_BYTES


def test_licenses_name_every_file_and_source_package():
    licenses = (DATA / "LICENSES.md").read_text(encoding="utf-8")
    for stem in [*TEXT_FILES, *MC_FILES]:
        assert f"`{stem}.jsonl`" in licenses
    for package in ("wordnet-base", "dict-foldoc"):
        assert f"`{package}`" in licenses
    assert (DATA / "GFDL-1.3.txt").is_file()
