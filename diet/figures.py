"""Figures as files for slides and papers: PNG and SVG through Plotly's kaleido, one or a zip of many.

Why kaleido: it renders the very plotly.js figure the page shows (same layout, fonts, colours), in a headless
Chromium it drives (`choreographer` finds it on PATH — Debian's /usr/bin/chromium — or at BROWSER_PATH). Where no
browser is found, `NO_BROWSER` says so in one line and the caller keeps the HTML figure. One browser session
renders every figure of a zip: starting Chromium costs seconds, each figure after it a fraction of one.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Sequence

from diet.errors import DietError

FORMATS = ("png", "svg")
WIDTH, HEIGHT = 1200, 500  # pixels of an image whose figure sets no size (its own width/height win)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
NO_BROWSER = ("no Chromium/Chrome found for PNG/SVG figures (install chromium or set BROWSER_PATH): "
              "the figures stay interactive HTML")
_LOCK = threading.Lock()  # one browser session at a time: a small machine has no cores for two


def browser_path() -> str | None:
    """The browser kaleido will drive: BROWSER_PATH, else the first of BROWSERS on PATH; None when there is none."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.path.isfile(env) else None
    return next((p for p in (shutil.which(b) for b in BROWSERS) if p), None)


def size_of(fig) -> tuple[int, int]:
    """(width, height) the image gets: the figure's own layout size where it sets one, else WIDTH × HEIGHT."""
    return int(fig.layout.width or WIDTH), int(fig.layout.height or HEIGHT)


def file_stem(title: str) -> str:
    """A file name from a figure's title: lower case, words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "figure"


async def _render(figs: Sequence[tuple[str, object]], formats: Sequence[str]) -> dict[str, bytes]:
    import kaleido

    out = {}
    async with kaleido.Kaleido(n=1) as k:
        for name, fig in figs:
            width, height = size_of(fig)
            for fmt in formats:
                data = await k.calc_fig(fig, opts={"format": fmt, "width": width, "height": height, "scale": 1})
                out[f"{name}.{fmt}"] = data if isinstance(data, bytes) else data.encode()
    return out


def render(figs: Sequence[tuple[str, object]], formats: Sequence[str] = FORMATS) -> dict[str, bytes]:
    """{"name.fmt": bytes} for every (name, figure) in every format, in one browser session."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise DietError(f"figure format {bad[0]!r} is not one of {', '.join(FORMATS)}")
    if browser_path() is None:
        raise DietError(NO_BROWSER)
    with _LOCK:
        try:
            return asyncio.run(_render(list(figs), list(formats)))
        except DietError:
            raise
        except Exception as e:  # the browser failed to start or to render: one line, the HTML stays
            raise DietError(f"rendering figures with {browser_path()} failed ({type(e).__name__}: {e}); "
                            "the figures stay interactive HTML") from None


def image(fig, fmt: str) -> bytes:
    """One figure as PNG or SVG bytes."""
    return render([("figure", fig)], [fmt])[f"figure.{fmt}"]


def zip_of(figs: Sequence[tuple[str, object]], formats: Sequence[str] = FORMATS) -> bytes:
    """Every figure as PNG and SVG in one zip, named after the figures' titles (the HTML report keeps them
    interactive)."""
    names: dict[str, int] = {}
    unique = []
    for title, fig in figs:
        stem = file_stem(title)
        names[stem] = names.get(stem, 0) + 1
        unique.append((stem if names[stem] == 1 else f"{stem}-{names[stem]}", fig))
    files = render(unique, formats)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()
