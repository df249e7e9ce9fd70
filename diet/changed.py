"""The items pruning changed: per task, which questions the dense model got right and the pruned one wrong, and
the reverse, with each model's answer and per-choice scores.

Why from the stored per-item log-likelihoods (`TaskResult.logliks`) and not a new pass: they are exactly what the
accuracy was computed from, so the table and the accuracy can never disagree — per task, (dense-only right) −
(pruned-only right) = (dense correct) − (pruned correct). Scores are normalised as the task's metric is ("acc":
log-likelihoods, "acc_norm": divided by the choice's length in characters), and the answer is their argmax, first
index on ties, as the metric takes it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diet.errors import DietError
from diet.evaluate import TaskResult, choice_scores

BROKEN, FIXED = "dense only", "pruned only"  # the two directions: which model answered right
SWINGS_SHOWN = 5  # the report lists this many largest swings per task


@dataclass(frozen=True)
class ChangedItem:
    """One item the two models answered differently (one right, one wrong)."""

    task: str  # the task's name
    index: int  # the item's position in the task's evaluation list
    direction: str  # BROKEN (dense right, pruned wrong) or FIXED (pruned right, dense wrong)
    question: str  # the item's context as the model read it
    choices: tuple[str, ...]  # the choices (per-choice contexts for partial-scoring items)
    gold: int  # the right choice
    dense_choice: int  # the dense model's answer
    pruned_choice: int  # the pruned model's answer
    dense_scores: tuple[float, ...]  # per choice, normalised as the metric is
    pruned_scores: tuple[float, ...]  # the same for the pruned model
    metric: str  # "acc" or "acc_norm": how the scores were normalised

    @property
    def swing(self) -> float:
        """Change of the gold answer's margin over the best other choice, pruned − dense (< 0: pruning hurt)."""
        return _margin(self.pruned_scores, self.gold) - _margin(self.dense_scores, self.gold)


@dataclass(frozen=True)
class TaskChanges:
    """One task's changed items and the counts they must agree with."""

    task: str
    metric: str  # the task's metric, which decided right and wrong
    n: int  # items compared
    dense_correct: int  # items the dense model answered right
    pruned_correct: int  # items the pruned model answered right
    items: tuple[ChangedItem, ...]  # the changed ones, BROKEN first, each by item order

    @property
    def broken(self) -> int:
        return sum(1 for i in self.items if i.direction == BROKEN)

    @property
    def fixed(self) -> int:
        return sum(1 for i in self.items if i.direction == FIXED)

    def largest_swings(self, k: int = SWINGS_SHOWN) -> list[ChangedItem]:
        return sorted(self.items, key=lambda i: -abs(i.swing))[:k]


def _margin(scores: Sequence[float], gold: int) -> float:
    others = [s for j, s in enumerate(scores) if j != gold]
    return float(scores[gold] - max(others)) if others else 0.0


def _choices_of(item) -> tuple[str, ...]:
    return tuple(item.contexts) if item.contexts is not None else tuple(item.choices)


def task_changes(task, dense: TaskResult, pruned: TaskResult) -> TaskChanges:
    """The changed items of one task from the two models' results on the same items."""
    if dense.task != pruned.task or dense.n != pruned.n:
        raise DietError(f"cannot compare {dense.task!r} ({dense.n} items) with {pruned.task!r} ({pruned.n} items)")
    if len(dense.logliks) != dense.n or len(pruned.logliks) != pruned.n:
        raise DietError(f"the results of {dense.task!r} carry no per-item log-likelihoods: evaluate again")
    items = task.evaluation[: dense.n]
    metric = dense.metric
    rows, right = [], [0, 0]
    for k, (item, a, b) in enumerate(zip(items, dense.logliks, pruned.logliks, strict=True)):
        sa, sb = choice_scores(item, a, metric), choice_scores(item, b, metric)
        ca, cb = int(np.argmax(sa)), int(np.argmax(sb))
        right[0] += ca == item.gold
        right[1] += cb == item.gold
        if (ca == item.gold) != (cb == item.gold):
            rows.append(ChangedItem(task.name, k, BROKEN if ca == item.gold else FIXED, item.context,
                                    _choices_of(item), item.gold, ca, cb, tuple(map(float, sa)),
                                    tuple(map(float, sb)), metric))
    rows.sort(key=lambda r: (r.direction != BROKEN, r.index))
    return TaskChanges(task.name, metric, dense.n, right[0], right[1], tuple(rows))


def changed_items(tasks: Sequence, dense: Sequence[TaskResult], pruned: Sequence[TaskResult]) -> list[TaskChanges]:
    """`task_changes` for every task, matched by name (`tasks` gives the item texts)."""
    by_name = {t.name: t for t in tasks}
    pairs = {r.task: r for r in pruned}
    out = []
    for d in dense:
        if d.task not in by_name or d.task not in pairs:
            raise DietError(f"task {d.task!r} is missing from one side of the comparison")
        out.append(task_changes(by_name[d.task], d, pairs[d.task]))
    return out


CSV_COLUMNS = ("task", "item", "direction", "metric", "question", "choices", "gold", "dense_answer",
               "pruned_answer", "dense_scores", "pruned_scores", "swing")


def rows(changes: Sequence[TaskChanges]) -> list[dict]:
    """One flat dict per changed item: the table the page shows and the CSV holds."""
    out = []
    for tc in changes:
        for i in tc.items:
            out.append({"task": i.task, "item": i.index, "direction": i.direction, "metric": i.metric,
                        "question": i.question, "choices": " | ".join(i.choices), "gold": i.choices[i.gold]
                        if i.gold < len(i.choices) else str(i.gold),
                        "dense_answer": _answer(i, i.dense_choice), "pruned_answer": _answer(i, i.pruned_choice),
                        "dense_scores": " ".join(f"{s:.4f}" for s in i.dense_scores),
                        "pruned_scores": " ".join(f"{s:.4f}" for s in i.pruned_scores),
                        "swing": round(i.swing, 4)})
    return out


def _answer(item: ChangedItem, choice: int) -> str:
    return item.choices[choice] if choice < len(item.choices) else str(choice)


def csv_text(changes: Sequence[TaskChanges]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows(changes))
    return buf.getvalue()


def write_csv(path: str | Path, changes: Sequence[TaskChanges]) -> None:
    from diet.cache import atomic_write_bytes

    atomic_write_bytes(Path(path), csv_text(changes).encode())


def summary_lines(changes: Sequence[TaskChanges]) -> list[str]:
    """One line per task: counts in words, the consistency the counts obey made visible."""
    return [f"{tc.task}: {tc.broken} item(s) dense right / pruned wrong, {tc.fixed} the reverse "
            f"(correct {tc.dense_correct} → {tc.pruned_correct} of {tc.n}, {tc.metric})" for tc in changes]
