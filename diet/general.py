"""General (task-independent) calibration text: what the task-agnostic baselines calibrate on and task fusion
compares each task against.

Sources (`general_task(source)`):
- `wikitext2`: paragraphs of WikiText-2's raw train split (Salesforce/wikitext, wikitext-2-raw-v1), what FLAP and
  Wanda calibrate on;
- `c4`: the first shard of C4's English validation split (allenai/c4), what Wanda's and SparseGPT's code reads;
- `generated`: assets/general/generated.jsonl — text the embedded SmolLM2-135M-Instruct wrote itself from varied
  short prompts (generated once by assets/general/build.py); works offline;
- a path to a UTF-8 text file: one text per paragraph (blank-line separated);
- `auto` (default): WikiText-2 when the Hub answers, else the generated corpus.

Why a Task: profiling, caching and the speed estimate already work on tasks; general text is a task with a
calibration pool and no evaluation items. Its cache key hashes the texts, so each source is its own entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from diet import hub_tasks
from diet.errors import DietError

SOURCES = ("auto", "wikitext2", "c4", "generated")
ASSET = Path(__file__).resolve().parent.parent / "assets" / "general" / "generated.jsonl"
HUB = {  # source -> (dataset path, config, split, data_files)
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "train", None),
    "c4": ("allenai/c4", None, "validation", {"validation": "en/c4-validation.00000-of-00008.json.gz"}),
}
POOL = 2000  # texts kept from a Hub corpus; profiling picks `samples` of them with its seed
MIN_CHARS = 200  # shorter paragraphs (headings, captions) say little about general text


def hub_texts(source: str) -> list[str]:
    """Paragraphs of a Hub corpus (at least MIN_CHARS characters, in corpus order, at most POOL)."""
    path, config, split, files = HUB[source]
    try:
        rows = hub_tasks.load_dataset(path, config, split, files)  # the one place that touches the network
    except ImportError as exc:
        raise DietError(f"general text from {source} needs the `datasets` package (pip install datasets): {exc}") \
            from None
    except Exception as exc:  # no network, offline mode, DNS, HTTP errors
        raise DietError(f"general text from {source} needs the Hugging Face Hub ({type(exc).__name__}); "
                        "use --general generated (offline) or a text file") from exc
    texts = []
    for row in rows:
        text = " ".join(str(row.get("text", "")).split())
        if len(text) >= MIN_CHARS and not text.startswith("="):  # WikiText headings look like " = Title = "
            texts.append(text)
            if len(texts) >= POOL:
                break
    if not texts:
        raise DietError(f"{source}: no paragraph of at least {MIN_CHARS} characters found")
    return texts


def generated_texts(path: Path = ASSET) -> list[str]:
    """The shipped, self-generated corpus (one JSON object per line with a "text" field)."""
    if not path.is_file():
        raise DietError(f"the generated general corpus is missing ({path}); run assets/general/build.py")
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def file_texts(path: str | Path) -> list[str]:
    """A user's text file: one text per paragraph (blank lines separate paragraphs)."""
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DietError(f"cannot read general text file {p}: {exc}") from None
    paragraphs = [" ".join(block.split()) for block in raw.replace("\r\n", "\n").split("\n\n")]
    texts = [t for t in paragraphs if t]
    if not texts:
        raise DietError(f"general text file {p} holds no text")
    return texts


def general_texts(source: str = "auto", say: Callable[[str], None] | None = None) -> tuple[str, list[str]]:
    """(the source actually used, its texts). `auto` falls back to the generated corpus when the Hub fails."""
    if source == "auto":
        try:
            return "wikitext2", hub_texts("wikitext2")
        except DietError as exc:
            if say:
                say(f"WikiText-2 unavailable ({str(exc).split(';')[0]}); using the generated general corpus")
            return "generated", generated_texts()
    if source in HUB:
        return source, hub_texts(source)
    if source == "generated":
        return source, generated_texts()
    if Path(source).is_file():
        return f"file:{Path(source).resolve()}", file_texts(source)
    raise DietError(f"unknown general text source {source!r}: use {', '.join(SOURCES)} or a text file path")


def general_task(source: str = "auto", say: Callable[[str], None] | None = None):
    """General text as a Task (calibration pool only) that api.profile_tasks profiles and caches like any task."""
    from diet.tasks import Task

    used, texts = general_texts(source, say)
    return Task(name="general", description=f"general text ({used})", source=f"general:{used}", metric="acc",
                calibration=tuple(texts), evaluation=())
