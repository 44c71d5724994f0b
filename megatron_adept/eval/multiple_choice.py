"""Multiple-choice accuracy by perplexity (ADEPT App. B.9, Eq. 8-10).

Items are JSONL lines ``{"question": str, "choices": [str, ...], "answer": int}`` with an
optional ``"subject"``. ``answer`` is the 0-based index of the correct choice.

Few-shot exemplars: the first ``shots`` items of every subject, in file order, are that
subject's exemplars (its dev split) and are not scored; items without a subject form one group
of their own. A benchmark is therefore given as its dev items followed by its test items, e.g.
MMLU's five dev questions of each subject before that subject's test questions.

Prompt of an item (exemplars in file order; the header only when the item has a subject, with
``_`` read as a space)::

    The following are multiple choice questions about {subject}.\\n\\n
    Question: {exemplar question}\\nAnswer: {exemplar's correct choice}\\n\\n   (x shots)
    Question: {question}\\nAnswer:

and each choice is scored as the continuation ``" {choice}"``. Prompt and continuation are
tokenized separately and concatenated, so the continuation's tokens are exactly the choice's.
A choice's score is the mean negative log-likelihood of its tokens given the prompt;
PPL = exp(mean NLL) and the prediction is the choice of lowest PPL (the first on ties). A
sequence longer than the model's ``max_position_embeddings`` loses its oldest prompt tokens.

Batching: all choices of a question are rows of the same micro-batch, ``questions_per_batch``
questions per micro-batch; questions are sorted by length first so that little is padded, and
padding never counts. Data-parallel ranks score every dp-th micro-batch and the results are
gathered on every rank.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state

from megatron_adept.data.corpus import CorpusItem, corpus_batches
from megatron_adept.data.jsonl import read_jsonl, require_str
from megatron_adept.data.tokenizer import Tokenizer
from megatron_adept.errors import DataError
from megatron_adept.models.pipeline import (
    MicroBatch,
    data_parallel_share,
    forward_results,
    masked_loss_sum,
)
from megatron_adept.parallel.collectives import all_gather_objects
from megatron_adept.parallel.log import get_logger

logger = get_logger(__name__)

MICRO_BATCHES_PER_RUN = 16
"""Most micro-batches per pipeline-schedule run: enough to keep the pipeline busy, few enough for
regular progress logs. All micro-batches of a run are padded to the run's largest."""
MAX_PADDED_LENGTH_RATIO = 1.25
"""A run ends before a micro-batch longer than this times the run's first (shortest) one, so
padding adds at most a quarter to any micro-batch. Without it one long question padded a
whole run: on MMLU (mean 55 tokens a choice sequence, longest 408) 16 micro-batches computed
7x the tokens they score."""

NO_SUBJECT = "(none)"
"""Subject name reported for items without a ``"subject"``."""


@dataclass(frozen=True)
class Item:
    """One multiple-choice question."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str
    line: int
    """Line of the JSONL file, for messages and results."""


def _parse_item(raw: dict[str, Any], where: str, line: int) -> Item:
    question = require_str(raw, "question", where)
    choices = raw.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of strings")
    if len(choices) < 2:
        raise DataError(f"{where}: {len(choices)} choice(s); a question needs at least 2")
    answer = raw.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise DataError(f"{where}: 'answer' must be the integer index of the correct choice")
    if not 0 <= answer < len(choices):
        raise DataError(
            f"{where}: answer index {answer} is out of range for {len(choices)} choices"
        )
    subject = raw.get("subject", NO_SUBJECT)
    if not isinstance(subject, str) or not subject:
        raise DataError(f"{where}: 'subject' must be a non-empty string")
    return Item(question, tuple(choices), answer, subject, line)


def load_items(path: str | Path) -> list[Item]:
    """Read and validate every item of a multiple-choice JSONL file."""
    items = [_parse_item(raw, f"{path}:{line}", line) for line, raw in read_jsonl(path)]
    if not items:
        raise DataError(f"multiple-choice file {str(path)!r} holds no items")
    return items


def split_few_shot(items: list[Item], shots: int) -> tuple[list[Item], dict[str, list[Item]]]:
    """(items to score, exemplars by subject): the first ``shots`` items of each subject."""
    exemplars: dict[str, list[Item]] = defaultdict(list)
    scored = []
    for item in items:
        chosen = exemplars[item.subject]
        (chosen if len(chosen) < shots else scored).append(item)
    left = Counter(item.subject for item in scored)
    for subject, chosen in exemplars.items():
        if not left[subject]:
            raise DataError(
                f"subject {subject!r} has only {len(chosen)} item(s): --shots={shots} takes the "
                "first items of each subject as exemplars, leaving none to score"
            )
    return scored, dict(exemplars)


def _question_block(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def build_prompt(item: Item, exemplars: list[Item]) -> str:
    """The few-shot prompt of ``item``; the choice follows as ``" {choice}"``."""
    header = ""
    if item.subject != NO_SUBJECT:
        topic = item.subject.replace("_", " ")
        header = f"The following are multiple choice questions about {topic}.\n\n"
    shots = "".join(
        f"{_question_block(ex.question)} {ex.choices[ex.answer]}\n\n" for ex in exemplars
    )
    return header + shots + _question_block(item.question)


def encode_choices(
    item: Item,
    exemplars: list[Item],
    tokenizer: Tokenizer,
    max_length: int,
    prefix: Sequence[int] = (),
) -> list[CorpusItem]:
    """One token sequence per choice, ``prefix`` (BOS), prompt, then choice, at most
    ``max_length`` tokens; a prompt too long loses its oldest tokens, never the prefix.

    ``CorpusItem.context`` is the number of prompt tokens: the targets after it are the choice.
    """
    prefix = list(prefix)
    prompt = tokenizer.encode(build_prompt(item, exemplars))
    if not prompt:
        raise DataError(f"line {item.line}: the prompt tokenizes to nothing")
    sequences = []
    for number, choice in enumerate(item.choices):
        ids = tokenizer.encode(" " + choice)
        if not ids:
            raise DataError(f"line {item.line}: choice {number} tokenizes to nothing")
        if len(prefix) + len(ids) >= max_length:
            raise DataError(
                f"line {item.line}: choice {number} has {len(ids)} tokens, too many for the "
                f"model's {max_length - 1} positions"
            )
        context = prefix + prompt[max(len(prefix) + len(prompt) + len(ids) - max_length, 0) :]
        sequences.append(CorpusItem(tuple(context + ids), len(context)))
    return sequences


@dataclass(frozen=True)
class QuestionBatch:
    """Questions whose choices share one micro-batch: one row per choice, in order."""

    questions: tuple[int, ...]
    """Indices into the scored items."""
    rows: tuple[CorpusItem, ...]
    choice_counts: tuple[int, ...]

    @property
    def seq_length(self) -> int:
        return max(len(row.ids) for row in self.rows) - 1

    def split(self, row_values: list[float]) -> dict[int, list[float]]:
        """Per-row values regrouped by question."""
        grouped, row = {}, 0
        for question, count in zip(self.questions, self.choice_counts, strict=True):
            grouped[question] = row_values[row : row + count]
            row += count
        return grouped


@dataclass(frozen=True)
class PreparedItems:
    """Scored items, tokenized and grouped into micro-batches (the same for every model)."""

    items: list[Item]
    batches: list[QuestionBatch]


def prepare_items(
    items: list[Item],
    shots: int,
    tokenizer: Tokenizer,
    max_length: int,
    questions_per_batch: int,
    prefix: Sequence[int] = (),
) -> PreparedItems:
    """Split off the exemplars, tokenize every choice, and group questions (shortest first)."""
    scored, exemplars = split_few_shot(items, shots)
    encoded = [
        encode_choices(it, exemplars[it.subject], tokenizer, max_length, prefix) for it in scored
    ]
    order = sorted(range(len(encoded)), key=lambda q: (max(len(s.ids) for s in encoded[q]), q))
    batches = []
    for start in range(0, len(order), questions_per_batch):
        questions = tuple(order[start : start + questions_per_batch])
        batches.append(
            QuestionBatch(
                questions,
                tuple(seq for q in questions for seq in encoded[q]),
                tuple(len(encoded[q]) for q in questions),
            )
        )
    return PreparedItems(scored, batches)


def schedule_runs(batches: list[QuestionBatch]) -> list[list[QuestionBatch]]:
    """Consecutive micro-batches (shortest first) grouped into pipeline-schedule runs of at
    most :data:`MICRO_BATCHES_PER_RUN`, each ending before a micro-batch longer than
    :data:`MAX_PADDED_LENGTH_RATIO` times its first."""
    runs: list[list[QuestionBatch]] = []
    for batch in batches:
        run = runs[-1] if runs else None
        if (
            run is None
            or len(run) == MICRO_BATCHES_PER_RUN
            or batch.seq_length > MAX_PADDED_LENGTH_RATIO * run[0].seq_length
        ):
            runs.append([batch])
        else:
            run.append(batch)
    return runs


def padded_micro_batches(batches: list[QuestionBatch]) -> list[MicroBatch]:
    """Micro-batches of one schedule run, all padded to the run's most rows and tokens."""
    rows = max(len(batch.rows) for batch in batches)
    seq_length = max(batch.seq_length for batch in batches)
    return [corpus_batches(list(batch.rows), seq_length, rows)[0] for batch in batches]


def _mean_row_nll(batch: MicroBatch, loss: torch.Tensor) -> torch.Tensor:
    """The mean NLL ``[b]`` over the counted targets of every row."""
    total, count = masked_loss_sum(loss, batch, dim=1, dtype=torch.float64)
    return (total / count.clamp(min=1)).cpu()


@dataclass
class Evaluation:
    """Per-choice mean NLLs of every scored item, and what follows from them."""

    items: list[Item]
    nll: list[list[float]]

    @property
    def predictions(self) -> list[int]:
        return [min(range(len(scores)), key=scores.__getitem__) for scores in self.nll]

    @property
    def accuracy(self) -> float:
        return _accuracy(self.items, self.predictions)

    def subject_accuracy(self) -> dict[str, dict[str, float]]:
        by_subject: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(self.items):
            by_subject[item.subject].append(index)
        predictions = self.predictions
        return {
            subject: {
                "accuracy": _accuracy(
                    [self.items[i] for i in indices], [predictions[i] for i in indices]
                ),
                "items": len(indices),
            }
            for subject, indices in sorted(by_subject.items())
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "num_items": len(self.items),
            "subjects": self.subject_accuracy(),
            "items": [
                {
                    "line": item.line,
                    "subject": item.subject,
                    "answer": item.answer,
                    "pred": pred,
                    "nll": scores,
                    "ppl": [math.exp(score) for score in scores],
                }
                for item, pred, scores in zip(self.items, self.predictions, self.nll, strict=True)
            ],
        }


def _accuracy(items: list[Item], predictions: list[int]) -> float:
    correct = sum(item.answer == pred for item, pred in zip(items, predictions, strict=True))
    return correct / len(items)


@torch.no_grad()
def evaluate_multiple_choice(model: torch.nn.Module, prepared: PreparedItems) -> Evaluation:
    """Score every choice of every prepared item; collective, the result is on every rank."""
    model.eval()
    mine = data_parallel_share(prepared.batches)
    keeps_results = (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
    )
    scores: dict[int, list[float]] = {}
    total = sum(len(batch.questions) for batch in mine)
    done, start = 0, time.monotonic()
    for run in schedule_runs(mine):
        means = forward_results(model, padded_micro_batches(run), _mean_row_nll)
        if keeps_results:
            for batch, row_means in zip(run, means, strict=True):
                scores.update(batch.split(row_means.tolist()))
        done += sum(len(batch.questions) for batch in run)
        logger.info(
            "scored %d/%d questions per data-parallel rank (%.1f questions/s)",
            done,
            total,
            done / max(time.monotonic() - start, 1e-9),
        )
    merged = {q: nll for part in all_gather_objects(scores) for q, nll in part.items()}
    return Evaluation(prepared.items, [merged[q] for q in range(len(prepared.items))])


def comparison_table(evaluations: dict[str, Evaluation]) -> str:
    """Accuracy (%) per subject and overall, one column per checkpoint."""
    names = list(evaluations)
    first = evaluations[names[0]]
    subjects = {name: ev.subject_accuracy() for name, ev in evaluations.items()}
    rows = [(s, int(v["items"])) for s, v in subjects[names[0]].items()]
    label_width = max(len("subject"), *(len(s) for s, _ in rows), len("overall"))
    widths = [max(len(name), 7) for name in names]
    header = f"{'subject':<{label_width}}  {'items':>6}  " + "  ".join(
        f"{name:>{w}}" for name, w in zip(names, widths, strict=True)
    )
    lines = [header, "-" * len(header)]

    def line(label: str, count: int, values: list[float]) -> str:
        cells = "  ".join(f"{100 * v:>{w}.2f}" for v, w in zip(values, widths, strict=True))
        return f"{label:<{label_width}}  {count:>6}  {cells}"

    if len(rows) > 1:
        for subject, count in rows:
            lines.append(line(subject, count, [subjects[n][subject]["accuracy"] for n in names]))
        lines.append("-" * len(header))
    lines.append(line("overall", len(first.items), [evaluations[n].accuracy for n in names]))
    return "\n".join(lines)
