"""Rebuild the demo corpora in examples/data from two Debian packages.

  python examples/data/build_demo_data.py                  # downloads with apt-get download
  python examples/data/build_demo_data.py --wordnet WN_DIR --foldoc FOLDOC_DIR

General text is WordNet 3.0 (package wordnet-base), domain text is FOLDOC, the Free On-line
Dictionary of Computing (package dict-foldoc). Without --wordnet/--foldoc the packages are
fetched with `apt-get download` (no root needed; run `apt-get update` first on a fresh
machine) and unpacked with `dpkg-deb -x` into a temporary directory; with them, each names the
root of an unpacked package (the directory holding usr/share/...). LICENSES.md records the
package versions the committed files were built from; other versions give other files.

Every dictionary entry becomes one line "headword, alias: definition". Entries are shuffled
with --seed, then split without overlap:

  *_mc.jsonl      multiple-choice items "which term matches this definition?"; the four
                  choices are headwords of multiple-choice entries only, so no choice is a
                  headword of any training line
  general_probe   held-out documents for Stage 1 and the importance refresh
  general_eval    held-out documents for evaluation
  domain_eval     held-out documents for evaluation
  *_train.jsonl   pretraining documents: the remaining entries, without any entry that shares
                  a headword with a multiple-choice entry, until the byte budget is reached

Documents join consecutive entries, one per line. The same packages and seed always give the
same files.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from megatron_adept.config.cli import arg, build_parser, extract, run_cli
from megatron_adept.errors import DataError

HERE = Path(__file__).resolve().parent

PACKAGES = {"wordnet-base": "1:3.0-37", "dict-foldoc": "20230119-1"}
"""Debian package -> version the committed files were built from."""

ENTRY_CHARS = 600
"""Longer entries are cut at a sentence end: documents stay short enough for CPU runs."""

DEFINITION_CHARS = 300
"""Longest multiple-choice definition; keeps few-shot prompts within a tiny model's context."""

BLANK = "___"
"""Stands for the headword where a definition mentions it."""


@dataclass
class BuildConfig:
    """Where the source packages are and where the corpora go."""

    wordnet: str | None = arg(
        None, "Unpacked wordnet-base package (default: fetch it with apt-get download)."
    )
    foldoc: str | None = arg(
        None, "Unpacked dict-foldoc package (default: fetch it with apt-get download)."
    )
    out: str = arg(str(HERE), "Directory for the generated JSONL files.")
    seed: int = arg(1234, "Seed of the shuffles behind every split and distractor.")

    def __post_init__(self) -> None:
        for name in ("wordnet", "foldoc"):
            path = getattr(self, name)
            if path is not None and not Path(path, "usr/share").is_dir():
                raise DataError(f"--{name}={path!r} is not an unpacked package (no usr/share)")
        if not Path(self.out).is_dir():
            raise DataError(f"--out={self.out!r} is not a directory")


@dataclass(frozen=True)
class Entry:
    """One dictionary entry, cleaned to a single line of plain text."""

    headwords: tuple[str, ...]
    """Term first, then aliases; none contains ", " or ": " so a line splits back into them."""
    text: str
    subject: str | None = None
    """Multiple-choice subject, or None when the entry may not be a question."""
    definition: str = ""
    """Short definition for a multiple-choice question."""

    @property
    def line(self) -> str:
        return f"{', '.join(self.headwords)}: {self.text}"


@dataclass(frozen=True)
class CorpusPlan:
    """How one source is split."""

    prefix: str
    mc_per_subject: int
    """Multiple-choice items per subject; the first five of a subject are few-shot exemplars."""
    min_definition: int
    """Shortest usable multiple-choice definition, in characters."""
    heldout: dict[str, int] = field(default_factory=dict)
    """Held-out document sets: name -> number of documents."""
    train_bytes: int = 1_200_000


GENERAL = CorpusPlan("general", 55, 25, {"probe": 400, "eval": 300})
DOMAIN = CorpusPlan("domain", 44, 60, {"eval": 300})

TRAIN_DOC_CHARS = (300, 900, 1000)
"""Training documents: target length drawn from [low, high], never above the cap (chars)."""
HELDOUT_DOC_CHARS = (200, 500, 600)

# ---------------------------------------------------------------- text cleaning

URL = r"(?:https?|ftp|news|telnet|gopher|mailto):[^\s(){}<>]+"
EMAIL = r"<?[\w.+-]+@[\w-]+(?:\.[\w-]+)+>?"
CONTACT = r"\b(?:E-?mail(?: address)?|Telephone|Tel|Phone|Fax|Address)\s*:"


def normalise(text: str) -> str:
    """NFC, no control characters, single spaces."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    return re.sub(r"\s+", " ", text).strip()


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` chars at the last sentence end, else at a word ("...")."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = max(head.rfind(". "), head.rfind("? "), head.rfind("! "))
    if end >= limit // 2:
        return head[: end + 1]
    cut = head.rfind(" ", 0, limit - 3)
    return head[: cut if cut > 0 else limit - 3].rstrip(",;:") + "..."


def mask(definition: str, headwords: tuple[str, ...]) -> str:
    """The definition with every headword spelled out replaced by a blank."""
    for word in sorted(headwords, key=len, reverse=True):
        pattern = rf"(?<![\w-]){re.escape(word)}(?![\w-])"
        definition = re.sub(pattern, BLANK, definition, flags=re.IGNORECASE)
    return definition


def usable_headword(word: str) -> bool:
    return bool(word) and ", " not in word and ": " not in word and not word.endswith(":")


# ---------------------------------------------------------------- WordNet

WORDNET_POS = {
    "noun": "english_nouns",
    "verb": "english_verbs",
    "adj": "english_adjectives",
    "adv": "english_adverbs",
}


def tagged_synsets(wordnet: Path, pos: str) -> set[str]:
    """Offsets of synsets that are a sense-tagged (attested) sense of one of their words.

    index.<pos> lists a word's synsets by frequency; the first ``tagsense_cnt`` occur in the
    tagged corpora. Keeping only those leaves everyday senses and drops most of WordNet's
    taxonomy of rare species and places.
    """
    offsets = set()
    for line in (wordnet / f"index.{pos}").read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):
            continue
        fields = line.split()
        rest = fields[4 + int(fields[3]) :]
        offsets.update(rest[2 : 2 + int(rest[1])])
    return offsets


def read_wordnet(root: Path) -> list[Entry]:
    """Entries "lemma, lemma: gloss" of the attested synsets, in file order."""
    wordnet = root / "usr/share/wordnet"
    entries = []
    for pos, subject in WORDNET_POS.items():
        tagged = tagged_synsets(wordnet, pos)
        for line in (wordnet / f"data.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith("  "):
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            if fields[0] not in tagged:
                continue
            count = int(fields[3], 16)
            lemmas = [re.sub(r"\((a|p|ip)\)$", "", w).replace("_", " ") for w in fields[4:][::2]]
            headwords = tuple(dict.fromkeys(w for w in lemmas[:count] if usable_headword(w)))
            gloss = normalise(gloss)
            if not headwords or not gloss:
                continue
            definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
            entries.append(Entry(headwords, gloss, subject, definition))
    return entries


# ---------------------------------------------------------------- FOLDOC

FOLDOC_SUBJECTS = {
    "language": "programming_languages",
    "networking": "networking",
    "programming": "programming",
    "operating system": "operating_systems",
    "hardware": "hardware",
}
"""FOLDOC category of an entry's first sense -> multiple-choice subject."""

FOLDOC_APPENDIX = "Dictionary.debian"
"""Headword of Debian's own appendix to the dictionary (a different licence): it and every
entry after it are left out."""

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(digits: str) -> int:
    """A dictd index offset or length (base-64 digits, most significant first)."""
    value = 0
    for digit in digits:
        value = value * 64 + B64.index(digit)
    return value


def foldoc_records(root: Path) -> Iterator[str]:
    """Raw text of every upstream entry, in dictionary order (dictd index -> .dict.dz)."""
    dictd = root / "usr/share/dictd"
    with gzip.open(dictd / "foldoc.dict.dz") as handle:
        data = handle.read()
    spans = set()
    for line in (dictd / "foldoc.index").read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")
        if not word.startswith("00-database"):
            spans.add((dictd_number(offset), dictd_number(length)))
    appendix = data.find(f"\n{FOLDOC_APPENDIX}".encode())
    if appendix < 0:
        raise DataError(f"{dictd}: no {FOLDOC_APPENDIX!r} section; is this dict-foldoc?")
    for offset, length in sorted(spans):
        if offset < appendix:
            yield data[offset : offset + length].decode("utf-8")


CATEGORY = re.compile(r"^(\d+\.\s*)?<([^<>]+)>\s*")


def clean_paragraph(paragraph: str) -> str:
    """FOLDOC markup to plain text: links lose braces and URLs, emphasis its underscores.

    Contact details (e-mail, telephone, postal address) close a paragraph; they are cut off.
    """
    text = re.split(CONTACT, normalise(paragraph))[0]
    text = re.sub(rf"\s*\(\s*(?:{URL}|[^\s()]+\.html?)\s*\)", "", text)
    text = re.sub(rf"\s*(?:\bURL:?\s*)?{URL}", "", text)
    text = re.sub(rf"\s*{EMAIL}", "", text)
    text = re.sub(r"\s*\{\s*\}", "", text)
    text = re.sub(r"[{}]", "", text)
    text = re.sub(r"__(.+?)__", r"\1", text)
    text = re.sub(r"\s*\(\s*\)", "", text)
    text = re.sub(r"(?<!\.)\.\.(?=\s|$)", ".", text)
    return normalise(text)


def keep_paragraph(paragraph: str) -> bool:
    """Drop dates, source citations and lines that are little more than a link."""
    text = normalise(paragraph)
    if re.fullmatch(r"\(\d{4}-\d{2}-\d{2}\)", text) or re.fullmatch(r"\[.*\]", text):
        return False
    if re.search(URL, text):
        without_links = re.sub(r"\{[^{}]*\}|" + URL, "", text)
        return len(re.findall(r"[A-Za-z]{2,}", without_links)) >= 4
    return bool(re.search(r"[A-Za-z]", text))


def parse_foldoc_record(record: str) -> Entry | None:
    """Headword lines, then indented paragraphs separated by blank lines."""
    head, _, body = record.strip("\n").partition("\n\n")
    names = [normalise(name) for name in head.splitlines()]
    if not usable_headword(names[0]):
        return None
    headwords = tuple(dict.fromkeys(name for name in names if usable_headword(name)))
    categories = []
    paragraphs = []
    for raw in re.split(r"\n\s*\n", body):
        text = normalise(raw)
        match = CATEGORY.match(text)
        if match:
            categories.append(match.group(2).split(",")[0].strip().lower())
            text = (match.group(1) or "") + text[match.end() :]
        if keep_paragraph(text):
            paragraph = clean_paragraph(text)
            if paragraph:
                paragraphs.append(paragraph)
    if not paragraphs or "introduction" in categories:
        return None
    subject = FOLDOC_SUBJECTS.get(categories[0]) if categories else None
    definition = re.sub(r"^\d+\.\s*", "", paragraphs[0])
    return Entry(headwords, " ".join(paragraphs), subject, definition)


def read_foldoc(root: Path) -> list[Entry]:
    return [entry for record in foldoc_records(root) if (entry := parse_foldoc_record(record))]


# ---------------------------------------------------------------- splits


def mc_question(entry: Entry, min_chars: int) -> str | None:
    """The masked definition of a usable multiple-choice entry, else None."""
    term = entry.headwords[0]
    if entry.subject is None or not re.fullmatch(r"[A-Za-z][\w .'+/#-]{1,39}", term):
        return None
    definition = mask(truncate(entry.definition, DEFINITION_CHARS), entry.headwords)
    if len(definition) < min_chars or definition.count(BLANK) > 1 or definition == BLANK:
        return None
    return definition


def multiple_choice(
    entries: list[Entry], plan: CorpusPlan, rng: random.Random
) -> tuple[list[dict], set[Entry]]:
    """Items per subject and their entries.

    Answers are spread evenly over the four positions within each subject, and the subjects'
    leftovers are rotated so that the whole file is balanced too.

    Distractors are the terms of other items of the same subject (never a headword of the
    answer's own entry), so every choice is equally unseen in training.
    """
    chosen: dict[str, list[tuple[Entry, str]]] = {}
    terms: set[str] = set()
    for entry in entries:
        if entry.subject is None:
            continue
        group = chosen.setdefault(entry.subject, [])
        if len(group) == plan.mc_per_subject:
            continue
        question = mc_question(entry, plan.min_definition)
        if question is not None and entry.headwords[0].lower() not in terms:
            group.append((entry, question))
            terms.add(entry.headwords[0].lower())
    items = []
    for rotation, subject in enumerate(sorted(chosen)):
        group = chosen[subject]
        if len(group) < plan.mc_per_subject:
            raise DataError(f"only {len(group)} multiple-choice entries for {subject!r}")
        positions = [(i + rotation) % 4 for i in range(len(group))]
        rng.shuffle(positions)
        for (entry, question), position in zip(group, positions, strict=True):
            own = {w.lower() for w in entry.headwords}
            others = sorted({e.headwords[0] for e, _ in group if e.headwords[0].lower() not in own})
            choices = rng.sample(others, 3)
            choices.insert(position, entry.headwords[0])
            items.append(
                {
                    "question": f"Which term matches this definition? {question}",
                    "choices": choices,
                    "answer": position,
                    "subject": subject,
                }
            )
    return items, {entry for group in chosen.values() for entry, _ in group}


def documents(
    lines: Iterator[str], rng: random.Random, chars: tuple[int, int, int]
) -> Iterator[str]:
    """Consecutive lines joined into documents of a random target length, at most a cap."""
    low, high, cap = chars
    current: list[str] = []
    size = 0
    target = rng.randint(low, high)
    for line in lines:
        if current and size + 1 + len(line) > cap:
            yield "\n".join(current)
            current, size, target = [], 0, rng.randint(low, high)
        current.append(line)
        size += len(line) + (len(current) > 1)
        if size >= target:
            yield "\n".join(current)
            current, size, target = [], 0, rng.randint(low, high)
    if current:
        yield "\n".join(current)


def split_corpus(entries: list[Entry], plan: CorpusPlan, seed: int) -> dict[str, list[dict]]:
    """File stem -> records of every file built from one source."""
    rng = random.Random(f"{plan.prefix}:{seed}")
    by_line: dict[str, Entry] = {}
    for entry in entries:
        by_line.setdefault(entry.line, entry)
    unique = list(by_line.values())
    rng.shuffle(unique)
    mc, mc_entries = multiple_choice(unique, plan, rng)
    held_terms = {w.lower() for e in mc_entries for w in e.headwords}
    rest = (truncate(e.line, ENTRY_CHARS) for e in unique if e not in mc_entries)
    files = {f"{plan.prefix}_mc": mc}
    for name, count in plan.heldout.items():
        docs = documents(rest, rng, HELDOUT_DOC_CHARS)
        files[f"{plan.prefix}_{name}"] = [{"text": next(docs)} for _ in range(count)]
    used = {
        line
        for name in plan.heldout
        for doc in files[f"{plan.prefix}_{name}"]
        for line in doc["text"].split("\n")
    }
    train_lines = (
        line
        for e in unique
        if e not in mc_entries and not held_terms & {w.lower() for w in e.headwords}
        if (line := truncate(e.line, ENTRY_CHARS)) not in used
    )
    train, size = [], 0
    for doc in documents(train_lines, rng, TRAIN_DOC_CHARS):
        if size >= plan.train_bytes:
            break
        train.append({"text": doc})
        size += len(json.dumps({"text": doc}, ensure_ascii=False).encode()) + 1
    files[f"{plan.prefix}_train"] = train
    return files


# ---------------------------------------------------------------- packages and output


def package_version(root: Path, package: str) -> str:
    """The Debian version of an unpacked package, from its changelog's first line."""
    changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
    if not changelog.is_file():
        raise DataError(f"{root}: no {changelog.relative_to(root)}; is this {package}?")
    with gzip.open(changelog, "rt", encoding="utf-8") as handle:
        match = re.match(r"\S+ \(([^)]+)\)", handle.readline())
    if match is None:
        raise DataError(f"{changelog}: cannot read the version from the first line")
    return match.group(1)


def fetch(package: str, workdir: Path) -> Path:
    """``apt-get download`` the pinned version and unpack it with ``dpkg-deb -x``."""
    version = PACKAGES[package]
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DataError(f"{tool} not found; pass --wordnet and --foldoc unpacked packages")
    print(f"downloading {package}={version}", flush=True)
    result = subprocess.run(
        ["apt-get", "download", f"{package}={version}"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        detail = (result.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise DataError(
            f"apt-get download {package}={version} failed ({detail}); run apt-get update, "
            "or pass unpacked packages with --wordnet and --foldoc"
        )
    root = workdir / package
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True)
    return root


def write_jsonl(path: Path, records: list[dict]) -> int:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path.stat().st_size


def build(config: BuildConfig) -> None:
    out = Path(config.out)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as scratch:
        work = Path(scratch)
        roots = {
            "wordnet-base": Path(config.wordnet) if config.wordnet else fetch("wordnet-base", work),
            "dict-foldoc": Path(config.foldoc) if config.foldoc else fetch("dict-foldoc", work),
        }
        for package, root in roots.items():
            version = package_version(root, package)
            note = (
                "" if version == PACKAGES[package] else f" (LICENSES.md names {PACKAGES[package]})"
            )
            print(f"{package} {version}{note}", flush=True)
        files = {
            **split_corpus(read_wordnet(roots["wordnet-base"]), GENERAL, config.seed),
            **split_corpus(read_foldoc(roots["dict-foldoc"]), DOMAIN, config.seed),
        }
        staged = work / "out"
        staged.mkdir()
        total = 0
        for stem, records in files.items():
            size = write_jsonl(staged / f"{stem}.jsonl", records)
            total += size
            print(f"{stem}.jsonl: {len(records)} records, {size / 1e6:.2f} MB", flush=True)
        for path in sorted(staged.iterdir()):
            os.replace(path, out / path.name)
    print(f"wrote {len(files)} files to {out} ({total / 1e6:.2f} MB)")


def main() -> None:
    parser = build_parser(__doc__, BuildConfig)
    build(extract(parser.parse_args(), BuildConfig))


if __name__ == "__main__":
    run_cli(main)
