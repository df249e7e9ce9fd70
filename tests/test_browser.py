"""End to end in a real browser: `streamlit run app.py` on a free localhost port, driven by headless chromium through
the main flow on the embedded default model (pick tasks, profile, move the sparsity, prune, evaluate).

Needs /usr/bin/chromium (apt-get install chromium) and Playwright for Python (pip install playwright; the system
chromium is used, never `playwright install`). Uses the real SmolLM2-135M: run it alone, under the torch lock:

    flock /tmp/diet-torch.lock .venv/bin/pytest -q -m browser tests/test_browser.py

Screenshots go to the test's temp folder; with DIET_UPDATE_SCREENSHOTS=1 also to assets/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
BAD_TEXT = ("Traceback", "Error")  # an uncaught exception or an error box anywhere on the page fails the test


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; the system chromium is used)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """The app on a fresh localhost port, with a private cache (the converted model linked in)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    models = Path.home() / ".cache" / "diet" / "models"
    if models.is_dir():
        (cache / "models").symlink_to(models)
    port = _free_port()
    log = open(tmp_path / "streamlit.log", "w")
    env = {**os.environ, "DIET_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "localhost", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text()[-2000:])
    yield url, cache
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _clean(page) -> None:
    text = page.locator("body").inner_text()
    for bad in BAD_TEXT:
        assert bad not in text, f"{bad!r} on the page:\n{text[:3000]}"


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


def _metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label)
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def _nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()


def _wait_idle(page, timeout: float = 180_000) -> None:
    """Until the script run has finished (Streamlit shows a status widget while running)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def _pick(page, box, option: str, tries: int = 3) -> None:
    """Choose `option` in a multiselect, checking that its chip appeared.

    Why retry: on a cold machine (a fresh venv compiles every module on first import) a rerun can still be in
    flight when the next keystrokes arrive, and the browser then drops the choice."""
    for _ in range(tries):
        box.locator("input").click()
        box.locator("input").fill(option)
        page.keyboard.press("Enter")
        _wait_idle(page)
        if option in box.inner_text().split("\n"):  # the chosen options, one per line (the list is elsewhere)
            return
        page.keyboard.press("Escape")
        _wait_idle(page)
    raise AssertionError(f"could not choose {option!r}; the box shows: {box.inner_text()[:500]!r}")


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_main_flow_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, cache = server
    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a fresh --user-data-dir, as Playwright wants it passed
            str(tmp_path / "user-data"), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1440, "height": 1000})
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(url)
        page.get_by_role("heading", name="DIET Explorer").wait_for()
        _clean(page)

        # 1. model and tasks: the embedded default loads offline; profile two offline tasks on 8 samples
        _nav(page, "Model and tasks")
        page.get_by_text("is loaded").wait_for()
        box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Offline task suite")
        for task in ("arithmetic", "capitals", "sentiment"):
            _pick(page, box, task)
        page.keyboard.press("Escape")
        samples = page.locator('[data-testid="stNumberInput"]').filter(has_text="Calibration samples").locator("input")
        samples.fill("8")
        samples.press("Enter")
        _wait_idle(page)
        button = page.get_by_role("button", name=re.compile(r"^Profile 3 task\(s\)"))
        try:
            button.wait_for(timeout=180_000)
        except Exception as exc:  # say what the page shows instead, for the CI log
            raise AssertionError(f"no 'Profile 3 task(s)' button; the page shows:\n"
                                 f"{page.locator('body').inner_text()[:3000]}") from exc
        _clean(page)
        button.click()
        page.get_by_text("Statistics in this session").wait_for(timeout=300_000)
        page.get_by_text("cached ✓").first.wait_for(state="attached")  # the table draws on a canvas
        _clean(page)
        _shot(page, "1_model_and_tasks.png", shots, full=True)

        # 2. masks: instant; move the sparsity from 20% to 30% with the keyboard
        _nav(page, "Masks")
        page.locator('[data-testid="stMetricLabel"]').filter(has_text="MLP channels kept").wait_for()
        assert _metric(page, "Removed: share of MLP channels") == "20.0%"  # our default
        before = _metric(page, "MLP channels kept")
        slider = page.locator('[data-testid="stSlider"]').filter(has_text="Sparsity").get_by_role("slider")
        slider.focus()
        for _ in range(10):
            page.keyboard.press("ArrowRight")
        _wait_idle(page)
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stMetricValue\"]')]"
                               ".some(e => e.innerText.trim() === '30.0%')")
        after = _metric(page, "MLP channels kept")
        per_layer = lambda s: round((1 - s) * 1536) * 30  # noqa: E731  (SmolLM2-135M: 30 layers × 1536 channels)
        assert (before, after) == (f"{per_layer(0.2):,}", f"{per_layer(0.3):,}")
        page.locator(".js-plotly-plot").nth(1).wait_for()  # plotly redraws after the rerun: wait, don't race it
        assert page.locator(".js-plotly-plot").count() >= 2
        _clean(page)
        _shot(page, "2_masks.png", shots, full=True)
        page.get_by_role("tab", name="Overlap between tasks").click()
        page.get_by_text("Read against").first.wait_for()
        _clean(page)
        _shot(page, "3_overlap.png", shots, full=True)

        # 3. prune and evaluate: a small preview, dense vs pruned side by side
        _nav(page, "Prune and evaluate")
        limit = page.locator('[data-testid="stNumberInput"]').filter(has_text="Items per task").locator("input")
        limit.fill("10")
        limit.press("Enter")
        _wait_idle(page)
        page.get_by_role("button", name=re.compile(r"^Prune and evaluate, dense vs pruned")).click()
        page.get_by_text("Forward speed (measured)").wait_for(timeout=600_000)
        page.get_by_text("Preview:").first.wait_for()
        assert page.locator(".js-plotly-plot").count() >= 1
        _clean(page)
        _shot(page, "4_prune_and_evaluate.png", shots, full=True)
        browser.close()
    assert list((cache / "artifacts" / "stats").glob("*.json"))  # the statistics were cached on disk
    assert list((cache / "artifacts" / "eval").glob("*.json"))  # and the evaluation results
