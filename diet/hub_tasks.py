"""The DIET paper's benchmarks from the Hugging Face Hub, formatted exactly like lm-evaluation-harness 0.4.x.

Why separate from diet/tasks.py: the formatting is pure (row -> MCItem) and tested on local fixture rows in each
dataset's real schema (tests/fixtures/hub/), while downloading needs network and the `datasets` package, imported
only when a Hub task is actually loaded.

Splits follow the harness: calibration comes from the train split (never the evaluation split); evaluation from
the harness' test split where it has one (ARC, OpenBookQA), its validation split otherwise. Train items whose
prompt + gold answer also appear in the evaluation split are dropped from calibration (the Hub data is not
ours to fix). Metrics follow docs/evaluation.md: acc for BoolQ, RTE, WinoGrande; acc_norm for the rest.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from diet.errors import DietError
from diet.taskdata import MCItem, Task, check_disjoint

# ----------------------------------------------------------------------------------------------------------
# formatters: one Hub row (a dict in the dataset's own schema) -> MCItem


def format_boolq(row: dict) -> MCItem:
    """super_glue/boolq: '{passage}\\nQuestion: {question}?\\nAnswer:' with choices no/yes, label 1 = yes."""
    return MCItem(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ("no", "yes"), int(row["label"]))


def format_rte(row: dict) -> MCItem:
    """glue/rte: label 0 = entailment = 'True', 1 = not_entailment = 'False'."""
    context = f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:"
    return MCItem(context, ("True", "False"), int(row["label"]))


def _hellaswag_clean(text: str) -> str:
    """The harness' preprocess: strip WikiHow artefacts such as ' [title]' and '[header]'."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def format_hellaswag(row: dict) -> MCItem:
    """'{activity_label}: {ctx_a} {ctx_b.capitalize()}' (cleaned) with the four cleaned endings."""
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return MCItem(_hellaswag_clean(row["activity_label"] + ": " + ctx),
                  tuple(_hellaswag_clean(e) for e in row["endings"]), int(row["label"]))


def format_winogrande(row: dict) -> MCItem:
    """Partial scoring: each option fills the blank in its own context; both score the same suffix after it."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    suffix = sentence[blank + 1:].strip()
    contexts = (sentence[:blank] + row["option1"], sentence[:blank] + row["option2"])
    return MCItem(sentence, (suffix,), {"1": 0, "2": 1}[str(row["answer"])], contexts=contexts)


def format_arc(row: dict) -> MCItem:
    """ai2_arc: 'Question: {question}\\nAnswer:'; the gold index is the answerKey's position among the labels."""
    labels = list(row["choices"]["label"])
    return MCItem(f"Question: {row['question']}\nAnswer:", tuple(row["choices"]["text"]),
                  labels.index(row["answerKey"]))


def format_openbookqa(row: dict) -> MCItem:
    """openbookqa/main: the bare question_stem is the prompt (no 'Question:' prefix, as in the harness)."""
    labels = list(row["choices"]["label"])
    return MCItem(row["question_stem"], tuple(row["choices"]["text"]), labels.index(row["answerKey"].lstrip()))


def format_piqa(row: dict) -> MCItem:
    """piqa: 'Question: {goal}\\nAnswer:' with the two solutions."""
    return MCItem(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


# ----------------------------------------------------------------------------------------------------------
# the registry: dataset ids as in lm-evaluation-harness (its current Hub mirrors that load without scripts)


@dataclass(frozen=True)
class HubBenchmark:
    name: str
    description: str
    skill: str
    path: str  # Hub dataset id
    config: str | None
    train_split: str  # calibration source
    eval_split: str  # what the harness evaluates on
    metric: str
    format: Callable[[dict], MCItem]
    prompt: str  # the template, for docs and the UI
    n_calibration: int  # published split sizes (shown before downloading anything)
    n_evaluation: int


FORMATS: dict[str, Callable[[dict], MCItem]] = {
    "boolq": format_boolq, "rte": format_rte, "hellaswag": format_hellaswag, "winogrande": format_winogrande,
    "arc": format_arc, "openbookqa": format_openbookqa, "piqa": format_piqa}
REGISTRY_FILE = Path(__file__).resolve().parent.parent / "assets" / "hub" / "benchmarks.json"


def read_registry(path: Path = REGISTRY_FILE) -> dict[str, HubBenchmark]:
    """The benchmarks as data (one JSON object per benchmark, its `format` naming a function above), as
    lm-evaluation-harness keeps its tasks in config files: adding a benchmark is a row, plus a formatter if its rows
    are shaped differently."""
    try:
        rows = json.loads(path.read_text())
        return {r["name"]: HubBenchmark(**{**r, "format": FORMATS[r["format"]]}) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DietError(f"{path}: unreadable benchmark registry ({type(e).__name__}: {e})") from None


HUB_BENCHMARKS: dict[str, HubBenchmark] = read_registry()


# ----------------------------------------------------------------------------------------------------------
# downloading


class HubUnreachable(DietError):
    """The Hub could not be reached for benchmark `name`; the registry (diet/tasks.py) says what works offline."""

    def __init__(self, name: str, exc: BaseException):
        self.name = name
        self.cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        super().__init__(f"{name} needs network access to the Hugging Face Hub (cause: {self.cause})")


def probe_hub(timeout: float = 3.0) -> None:
    """Fail in seconds, not after `datasets`' ~25 s of retries, when the Hub cannot be reached at all.

    Skipped in offline mode (HF_HUB_OFFLINE=1 reads the local datasets cache) and behind a proxy (a direct
    connection says nothing there)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {host}:{port} ({exc})") from exc


def load_dataset(path: str, config: str | None, split: str, data_files: dict | None = None) -> Iterable[dict]:
    """The only place that touches the network, for Hub tasks and Hub general text (`diet.general`) alike; tests
    replace it. Falls back to the Hub's parquet conversion for datasets still published as loading scripts, which
    `datasets` >= 4 no longer runs."""
    probe_hub()
    import datasets  # late: heavy, and only needed for Hub data

    try:
        return datasets.load_dataset(path, config, split=split, data_files=data_files)
    except RuntimeError as exc:
        if "scripts are no longer supported" not in str(exc):
            raise
        return datasets.load_dataset(path, config, split=split, data_files=data_files,
                                     revision="refs/convert/parquet")


def _rows(bench: HubBenchmark, split: str) -> list[dict]:
    try:
        return list(load_dataset(bench.path, bench.config, split))
    except ImportError as exc:
        raise DietError(f"{bench.name} needs the `datasets` package (pip install datasets): {exc}") from None
    except DietError:
        raise
    except Exception as exc:  # connection refused, offline mode, DNS, missing mirror, hub HTTP errors...
        raise HubUnreachable(bench.name, exc) from exc


def _format_all(bench: HubBenchmark, rows: list[dict]) -> list[MCItem]:
    """Format every row; skip unlabeled rows (label -1 or missing key), as the harness cannot score them either."""
    items = []
    for row in rows:
        try:
            item = bench.format(row)
        except (KeyError, ValueError):
            continue
        if 0 <= item.gold < item.n_choices:
            items.append(item)
    if not items:
        raise DietError(f"{bench.name}: no usable rows in {bench.path} ({bench.config}); has the dataset changed?")
    return items


@functools.lru_cache(maxsize=16)
def load_hub_task(name: str) -> Task:
    """Download (or read from the datasets cache) one benchmark and build its Task."""
    bench = HUB_BENCHMARKS[name]
    evaluation = tuple(_format_all(bench, _rows(bench, bench.eval_split)))
    eval_texts = {item.calibration_text() for item in evaluation}
    train_texts = (item.calibration_text() for item in _format_all(bench, _rows(bench, bench.train_split)))
    calibration = tuple(dict.fromkeys(t for t in train_texts if t not in eval_texts))  # drop repeats and leaks
    check_disjoint(name, calibration, evaluation)
    return Task(name, bench.description, f"hub:{name}", bench.metric, calibration, evaluation)
