"""End to end in a real browser: `streamlit run app.py` on a free localhost port, driven by headless chromium.

1. the main flow on the embedded default model through all six pages (pick tasks, profile, move the sparsity,
   overlap, prune and evaluate, then the forward speed on demand, export, sweep, DISP), with a screenshot of each;
2. four viewers at once on one server: each picks the same tasks, profiles and evaluates; every statistic and
   every score is computed exactly once (counted by the app's cache), the others wait, say so, and read it.

Needs /usr/bin/chromium (apt-get install chromium) and Playwright for Python (the system chromium is used, never
`playwright install`); see tests/appdriver.py. Uses the real SmolLM2-135M: run it alone, under the torch lock:

    flock /tmp/diet-torch.lock .venv/bin/pytest -q -m browser tests/test_browser.py

Screenshots go to the test's temp folder; with DIET_UPDATE_SCREENSHOTS=1 also to assets/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.appdriver import (
    BACKGROUND_TABS,
    ROOT,
    app_server,
    choose_offline_tasks,
    clean,
    launch,
    missing,
    nav,
    private_cache,
    set_number,
    wait_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing() is not None, reason=str(missing()))]


@pytest.fixture
def server(tmp_path):
    """The app on a fresh localhost port, with a private cache (the converted model linked in)."""
    cache = private_cache(tmp_path / "cache")
    with app_server(cache, tmp_path / "streamlit.log") as url:
        yield url, cache


def _shot(page, name: str, out: Path, full: bool = False) -> None:
    """Screenshot; `full`: the whole page (Streamlit scrolls inside its own container, so grow the window)."""
    page.wait_for_timeout(800)  # let plotly finish drawing
    path = out / name
    size = page.viewport_size
    if full:
        height = page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
        page.set_viewport_size({"width": size["width"], "height": min(max(size["height"], height + 80), 3600)})
        page.wait_for_timeout(800)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    if os.environ.get("DIET_UPDATE_SCREENSHOTS") == "1":
        dest = ROOT / "assets" / "screenshots"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / name)


def _slide_to(page, slider, label: str, target: str, tries: int = 30) -> None:
    """Press ArrowRight on a slider until the metric `label` shows `target`, one step and one rerun at a time (a
    rerun may redraw the slider and take its focus: keys pressed meanwhile would be lost)."""
    for _ in range(tries):
        if _metric(page, label) == target:
            return
        slider.focus()
        page.keyboard.press("ArrowRight")
        wait_idle(page)
    raise AssertionError(f"{label} shows {_metric(page, label)}, not {target}; the page shows:\n"
                         f"{page.locator('body').inner_text()[:3000]}")


def _metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label)
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_main_flow_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, cache = server
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = launch(p, tmp_path / "user-data")
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.get_by_role("heading", name="DIET Explorer").wait_for()
        clean(page)

        # 1. model and tasks: the embedded default loads offline; profile three offline tasks on 8 samples
        nav(page, "Model and tasks")
        page.get_by_text("is loaded").wait_for()
        choose_offline_tasks(page, ("arithmetic", "capitals", "sentiment"))
        set_number(page, "Calibration samples", 8)
        button = page.get_by_role("button", name=re.compile(r"^Profile 3 task\(s\)"))
        try:
            button.wait_for(timeout=180_000)
        except Exception as exc:  # say what the page shows instead, for the CI log
            raise AssertionError(f"no 'Profile 3 task(s)' button; the page shows:\n"
                                 f"{page.locator('body').inner_text()[:3000]}") from exc
        clean(page)
        button.click()
        page.get_by_text("Statistics in this session").wait_for(timeout=300_000)
        page.get_by_text("cached ✓").first.wait_for(state="attached")  # the table draws on a canvas
        assert "**" not in page.get_by_text("Statistics in this session").inner_text()
        assert "arithmetic (8 texts)" in page.get_by_text("Statistics in this session").inner_text()
        clean(page)
        _shot(page, "1_model_and_tasks.png", shots, full=True)

        # 2. masks: instant; move the sparsity from 20% to 30% with the keyboard
        nav(page, "Masks")
        page.locator('[data-testid="stMetricLabel"]').filter(has_text="MLP channels kept").wait_for()
        assert _metric(page, "Removed: share of MLP channels") == "20.0%"  # our default
        before = _metric(page, "MLP channels kept")
        slider = page.locator('[data-testid="stSlider"]').filter(has_text="Sparsity").get_by_role("slider")
        _slide_to(page, slider, "Removed: share of MLP channels", "30.0%")
        after = _metric(page, "MLP channels kept")
        per_layer = lambda s: round((1 - s) * 1536) * 30  # noqa: E731  (SmolLM2-135M: 30 layers × 1536 channels)
        assert (before, after) == (f"{per_layer(0.2):,}", f"{per_layer(0.3):,}")
        page.locator(".js-plotly-plot").nth(1).wait_for()  # plotly redraws after the rerun: wait, don't race it
        assert page.locator(".js-plotly-plot").count() >= 2
        clean(page)
        _shot(page, "2_masks.png", shots, full=True)
        _figure_downloads(page, tmp_path)
        page.get_by_role("tab", name="Overlap between tasks").click()
        page.get_by_text("Read against").first.wait_for()
        clean(page)
        _shot(page, "3_overlap.png", shots, full=True)

        # 3. prune and evaluate: a small preview, dense vs pruned side by side
        nav(page, "Prune and evaluate")
        set_number(page, "Items per task", 10)
        page.get_by_role("button", name=re.compile(r"^Prune and evaluate, dense vs pruned")).click()
        page.get_by_text("Average accuracy (primary metric)").wait_for(timeout=600_000)
        page.get_by_text("Preview:").first.wait_for()
        assert not page.get_by_text("Forward speed (measured)").count()  # timed on demand only
        page.get_by_role("button", name="Measure forward speed").click()
        page.get_by_text("Forward speed (measured)").wait_for(timeout=120_000)
        page.get_by_role("button", name="Measure again").wait_for()
        assert page.locator(".js-plotly-plot").count() >= 1
        clean(page)
        _shot(page, "4_prune_and_evaluate.png", shots, full=True)
        _changed_items(page, tmp_path, shots)
        _try_it(page, shots)

        # 4. export, 5. sweep, 6. DISP structure: each page opens cleanly on the session's statistics
        nav(page, "Export")
        page.get_by_role("button", name=re.compile("Export the pruned model")).wait_for()
        clean(page)
        _shot(page, "5_export.png", shots, full=True)
        nav(page, "Sweep")
        page.get_by_role("heading", name=re.compile("Sweep")).first.wait_for()
        wait_idle(page)
        clean(page)
        _shot(page, "6_sweep.png", shots, full=True)
        nav(page, "DISP structure")
        page.get_by_role("heading", name=re.compile("DISP")).first.wait_for()
        wait_idle(page)
        clean(page)
        _shot(page, "7_disp.png", shots, full=True)
        browser.close()
    assert list((cache / "artifacts" / "stats").glob("*.json"))  # the statistics were cached on disk
    assert list((cache / "artifacts" / "eval").glob("*.json"))  # and the evaluation results


def _figure_downloads(page, tmp_path: Path) -> None:
    """The first Masks figure's PNG and SVG downloads: a PNG (magic bytes) and an SVG that parses, both at the size
    the app set (its file name says it: name-WIDTHxHEIGHT.png)."""
    import struct
    import xml.etree.ElementTree as ET

    got = {}
    for fmt in ("PNG", "SVG"):
        with page.expect_download(timeout=120_000) as info:
            page.get_by_role("button", name=fmt, exact=True).first.click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        got[fmt] = path
    width, height = map(int, re.search(r"-(\d+)x(\d+)\.png$", got["PNG"].name).groups())
    png = got["PNG"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (width, height)
    svg = ET.parse(got["SVG"]).getroot()
    assert svg.tag.endswith("svg") and (svg.get("width"), svg.get("height")) == (str(width), str(height))
    assert got["SVG"].stem == got["PNG"].stem


def _changed_items(page, tmp_path: Path, shots: Path) -> None:
    """The changed-items table shows, and its CSV holds as many rows as the counts above it say."""
    import csv

    heading = page.get_by_text("The items pruning changed", exact=True)
    heading.wait_for()
    heading.scroll_into_view_if_needed()
    summary = page.get_by_text("item(s) dense right / pruned wrong").first.inner_text()
    counts = [int(a) + int(b) for a, b in re.findall(r"(\d+) item\(s\) dense right / pruned wrong, (\d+) the reverse",
                                                        summary)]
    assert len(counts) == 3, summary  # one per evaluated task
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="Download the changed items (CSV)").click()
    path = tmp_path / "changed_items.csv"
    info.value.save_as(path)
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert len(rows) == sum(counts)
    assert set(rows[0]) >= {"task", "direction", "question", "dense_answer", "pruned_answer"} if rows else True
    clean(page)
    heading.evaluate("e => e.scrollIntoView({block: 'start'})")
    _shot(page, "9_changed_items.png", shots)


def _answer_columns(page):
    """The row of the two answer columns (the one holding both the "Dense" and the "Pruned" heading)."""
    return (page.locator('[data-testid="stHorizontalBlock"]').filter(has=page.get_by_text("Dense", exact=True))
            .filter(has=page.get_by_text("Pruned", exact=True)).last)


def _try_it(page, shots: Path) -> None:
    """Try it: dense then pruned answers stream into two columns (partial text visible while 'writing…'), and
    Stop keeps what both wrote."""
    panel = page.get_by_text("Try it: what does the pruned model say?")
    panel.scroll_into_view_if_needed()
    page.get_by_label("Prompt", exact=True).fill("Write a long story about a brave cat who sails around the world.")
    page.get_by_text("more", exact=True).click()
    set_number(page, "Max new tokens", 400)
    page.get_by_role("button", name="Generate, dense vs pruned").click()
    page.get_by_text("writing…").first.wait_for(timeout=120_000)
    columns = _answer_columns(page)
    dense = columns.locator('[data-testid="stColumn"]').first
    partial = dense.locator('[data-testid="stText"]').inner_text()
    assert partial.strip() and partial != "…", "no partial text while the dense answer was being written"
    page.get_by_text("waits for the dense answer").wait_for()  # side by side: the pruned column waits its turn
    pruned = columns.locator('[data-testid="stColumn"]').last
    pruned.get_by_text("writing…").wait_for(timeout=300_000)  # dense done; the pruned answer streams
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stColumn\"] [data-testid=\"stText\"]')]"
                           ".some(e => e.innerText.split(' ').length > 12 && e.closest('[data-testid=\"stColumn\"]')"
                           ".innerText.includes('writing'))", timeout=120_000)
    _shot(page, "8_try_it.png", shots)
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("stopped: the partial answer is kept").wait_for(timeout=60_000)
    wait_idle(page)
    texts = _answer_columns(page).locator('[data-testid="stText"]').all_inner_texts()
    assert len(texts) == 2 and all(t.strip() and t != "…" for t in texts), texts
    assert texts[0].startswith(partial.rstrip("…").strip()[:20])  # the dense answer kept what was streamed
    clean(page)


VIEWERS = 4


def _saw_waiting(page) -> bool:
    """True when the page shows, within a few seconds, that its job waits for another session's."""
    try:
        page.get_by_text("Waiting —").first.wait_for(timeout=8_000)
        return True
    except Exception:  # Playwright's TimeoutError: it never waited long enough to say so
        return False
TASKS = ("arithmetic", "capitals")


def test_four_viewers_compute_each_result_once(tmp_path):
    """4 sessions at once, the same tasks and settings: 2 statistics and 4 scores (2 tasks × dense/pruned) are
    computed in all, whoever clicks first; the others wait (and say so) and read them. Bounded: ≤ 3 minutes."""
    from playwright.sync_api import sync_playwright

    start = time.monotonic()
    cache = private_cache(tmp_path / "cache")
    counter = tmp_path / "computed.txt"
    with app_server(cache, tmp_path / "streamlit.log", {"DIET_COUNT_COMPUTED": str(counter)}) as url, \
            sync_playwright() as p:
        browser = launch(p, tmp_path / "user-data", 1200, 900, BACKGROUND_TABS)
        pages = [browser.pages[0] if browser.pages else browser.new_page()]
        pages += [browser.new_page() for _ in range(VIEWERS - 1)]  # one Streamlit session per tab
        for page in pages:
            page.set_default_timeout(150_000)
            page.goto(url)
        for page in pages:
            page.get_by_role("heading", name="DIET Explorer").wait_for()
            nav(page, "Model and tasks")
        for page in pages:
            page.get_by_text("is loaded").wait_for()
            choose_offline_tasks(page, TASKS)
            # 64 texts: the first job computes for a few seconds, longer than one progress poll (2 s), so the
            # sessions queued behind it show that they wait (24 took ~1.5 s: a job started without delay was
            # sometimes done before the last session's page had said so)
            set_number(page, "Calibration samples", 64)
        buttons = [page.get_by_role("button", name=re.compile(r"^Profile 2 task\(s\)")) for page in pages]
        for b in buttons:
            b.wait_for()
        for b in buttons:  # as close together as one thread can click
            b.click()
        waited = _saw_waiting(pages[-1])  # the last one clicked queues behind the other three
        for page in pages:
            page.get_by_text("Statistics in this session").wait_for()
            clean(page)
        for page in pages:
            nav(page, "Prune and evaluate")
            set_number(page, "Items per task", 6)
        for page in pages:
            page.get_by_role("button", name=re.compile(r"^Prune and evaluate, dense vs pruned")).click()
        waited = _saw_waiting(pages[-1]) or waited
        for page in pages:
            page.get_by_text("Average accuracy (primary metric)").wait_for()
            wait_idle(page)
            clean(page)
        browser.close()
    kinds = (line.split()[0] for line in counter.read_text().splitlines())
    computed = Counter(k for k in kinds if k in ("stats", "eval"))  # the engine also logs its speed entries
    assert computed == {"stats": len(TASKS), "eval": 2 * len(TASKS)}, computed  # each result once, 4 viewers
    assert waited, "no session showed that it was waiting for another one's job"
    assert time.monotonic() - start < 180, f"4 viewers took {time.monotonic() - start:.0f} s (bound: 180 s)"
