"""The task contract: what a multiple-choice item and a task are. A leaf module (imports nothing of ours but errors).

Why a module of its own: every task source — the offline suite and user files (`diet/tasks.py`), the Hub benchmarks
(`diet/hub_tasks.py`) — builds these objects, and the registry in tasks.py dispatches to the sources; with the
contract here, no source imports the registry back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from diet.errors import DietError

TARGET_DELIMITER = " "  # lm-evaluation-harness puts this between context and continuation


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item. choices carry no leading space; requests() adds the target delimiter.

    WinoGrande-style partial scoring: `contexts` holds one context per option and `choices` is the single
    shared suffix; the model scores the suffix after each option-filled prefix. `context` is then only for display.
    """

    context: str
    choices: tuple[str, ...]
    gold: int
    contexts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Formatters build lists; tuples keep the item hashable and immutable.
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.contexts is not None:
            object.__setattr__(self, "contexts", tuple(self.contexts))

    def requests(self) -> list[tuple[str, str]]:
        """One (context, continuation) pair per choice, in choice order."""
        if self.contexts is not None:
            return [(ctx, TARGET_DELIMITER + self.choices[0]) for ctx in self.contexts]
        return [(self.context, TARGET_DELIMITER + choice) for choice in self.choices]

    def calibration_text(self) -> str:
        """The prompt completed with the gold answer: what profiling feeds the model."""
        if self.contexts is not None:
            return self.contexts[self.gold] + TARGET_DELIMITER + self.choices[0]
        return self.context + TARGET_DELIMITER + self.choices[self.gold]

    @property
    def n_choices(self) -> int:
        return len(self.contexts) if self.contexts is not None else len(self.choices)


@dataclass(frozen=True)
class Task:
    """A named task: a calibration pool of texts and evaluation items, never overlapping."""

    name: str
    description: str
    source: str  # "offline", "hub:<name>" or "file:/abs/path"
    metric: str  # "acc" or "acc_norm": the one averages use
    calibration: tuple[str, ...]
    evaluation: tuple[MCItem, ...]
    held_for_calibration: int = 0  # items of a file without `split` that the automatic split sent to calibration
    eval_repeats: int = 0  # evaluation items that exactly repeat an earlier one (kept, as lm-eval keeps them)

    def split_note(self) -> str:
        """What a reader of an item count must know, or '': items of the file the automatic split kept for
        calibration, and exact repeats in the evaluation pool (each repeat is scored, as lm-eval scores it)."""
        parts = []
        if self.held_for_calibration:
            parts.append(f"{len(self.evaluation)} of {len(self.evaluation) + self.held_for_calibration} items "
                         f"evaluate; {self.held_for_calibration} used for calibration — set `split` to choose")
        if self.eval_repeats:
            parts.append(f"{self.eval_repeats} evaluation item(s) repeat an earlier one exactly (kept, as lm-eval "
                         "keeps them)")
        return "; ".join(parts)

    def fingerprint(self) -> str:
        """sha256 of everything that defines the texts: cache keys change when the data changes."""
        payload = {
            "name": self.name,
            "calibration": list(self.calibration),
            "evaluation": [[it.context, list(it.choices), it.gold, None if it.contexts is None else list(it.contexts)]
                           for it in self.evaluation],
        }
        blob = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TaskInfo:
    """What a task picker shows, known without loading any Hub data."""

    name: str
    description: str
    source: str  # "offline" or "hub"
    metric: str
    n_calibration: int | None
    n_evaluation: int | None
    skill: str = ""


def check_disjoint(name: str, calibration: tuple[str, ...], evaluation: tuple[MCItem, ...]) -> None:
    """Raise if a calibration text is also an evaluation item (same prompt + gold answer)."""
    eval_texts = {item.calibration_text() for item in evaluation}
    leaked = [text for text in calibration if text in eval_texts]
    if leaked:
        raise DietError(f"task {name}: {len(leaked)} calibration text(s) are also evaluation items, "
                        f"e.g. {leaked[0][:80]!r}; calibration and evaluation must be disjoint")
