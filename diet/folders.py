"""Output folders that appear whole or not at all: every export (DIET, DISP, GGUF, vLLM) writes through here.

Why a temporary folder renamed into place: an interrupted export must leave nothing that looks finished. Why refuse
a non-empty folder: overwriting someone's checkpoint by accident is the worst kind of data loss. Why refuse
pickles: a model folder from this tool must be safe to load (safetensors only).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diet.errors import DietError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def default_export_folder(model_name: str, tag: str, sparsity: float) -> Path:
    """~/diet-exports/<model>-<tag>-s<percent>: a readable, file-system-safe default name per mask."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model_name).name)
    return Path.home() / "diet-exports" / f"{name}-{tag}-s{round(sparsity * 100)}"


def check_out_dir(out: str | Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless `overwrite` (checked before any expensive work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DietError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DietError(f"{out} is not empty; choose another folder or pass --overwrite")


def save_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer's files, without the truncation and padding its last call left on a fast tokenizer's backend
    (profiling truncates to max_length; tokenizer.json would record that): the same files whatever ran before, so
    the CLI and the app write the same folder. Transformers sets that state again on the next call that asks."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(folder)


def refuse_pickles(folder: Path) -> None:
    pickles = [p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise DietError(f"refusing to write pickled files {pickles}: only safetensors are exported")


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the block: one that arrives meanwhile is delivered (raised) when it ends. Why: the
    staging folder is created and named in two steps, and an interrupt between them would leave a folder nobody
    knows to remove. Where the platform cannot hold signals this is a plain block."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a private temporary folder beside `out` to fill; when the block ends normally, refuse pickles, give the
    files ordinary permissions (0755/0644) and rename the folder to `out` (an old `out` is moved aside first and
    deleted last). On any error, or Ctrl-C, the temporary folder is removed and `out` is untouched."""
    out = Path(out)
    check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        with signals_held():  # a Ctrl-C/SIGTERM landing between mkdir and the assignment would orphan the folder
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        yield tmp
        refuse_pickles(tmp)
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
