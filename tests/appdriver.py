"""Drive the real app: `streamlit run app.py` on a free localhost port, headless chromium through Playwright.

Shared by the browser tests (tests/test_browser.py) and the in-app speed benchmark (bench/app_job_speed.py), so both
start the app the same way (as `make run` does, with a private DIET_CACHE) and click through it with the same
waits. Needs /usr/bin/chromium (apt-get install chromium) and the `playwright` package; the system chromium is used,
never `playwright install`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
BAD_TEXT = ("Traceback", "Error")  # an uncaught exception or an error box anywhere on the page


def missing() -> str | None:
    """Why a browser run is impossible here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; the system chromium is used)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_cache(folder: Path) -> Path:
    """An empty DIET cache with the converted embedded model linked in (so no test pays the ~30 s conversion)."""
    folder.mkdir(parents=True, exist_ok=True)
    models = Path.home() / ".cache" / "diet" / "models"
    if models.is_dir() and not (folder / "models").exists():
        (folder / "models").symlink_to(models)
    return folder


@contextmanager
def app_server(cache: Path, log_path: Path, extra_env: dict | None = None):
    """`streamlit run app.py` exactly as `make run` starts it (settings from .streamlit/config.toml), on a free
    localhost port; yields the URL and stops the server on exit."""
    port = free_port()
    env = {**os.environ, "DIET_CACHE": str(cache), "PYTHONPATH": str(ROOT), **(extra_env or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://localhost:{port}"
            deadline = time.time() + 90
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError("streamlit did not start: " + log_path.read_text()[-2000:]) from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


BACKGROUND_TABS = ["--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                   "--disable-backgrounding-occluded-windows"]  # several viewers as tabs: none may be throttled


def launch(p, user_data: Path, width: int = 1440, height: int = 1000, extra: list[str] = ()):
    """A headless chromium with a fresh user-data-dir (Playwright wants it passed this way)."""
    return p.chromium.launch_persistent_context(str(user_data), executable_path=CHROMIUM, args=[*FLAGS, *extra],
                                                headless=True, viewport={"width": width, "height": height})


def clean(page) -> None:
    text = page.locator("body").inner_text()
    for bad in BAD_TEXT:
        assert bad not in text, f"{bad!r} on the page:\n{text[:3000]}"


def nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()


def wait_idle(page, timeout: float = 180_000) -> None:
    """Until the script run has finished (Streamlit shows a status widget while running)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


# Notes in window.__dietSeen the time (ms since the epoch) at which each text is first in the page. A
# MutationObserver looks at the page's text only when the page changed (once per batch of changes), so watching
# costs the browser nothing while the page is still.
_WATCH_JS = """texts => {
  if (window.__dietObs) window.__dietObs.disconnect();
  const seen = window.__dietSeen = {};
  const check = () => {
    const all = document.body.textContent;
    for (const t of texts) if (!(t in seen) && all.includes(t)) seen[t] = Date.now();
    return texts.every(t => t in seen);
  };
  if (check()) return;
  let pending = false;
  const obs = window.__dietObs = new MutationObserver(() => {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; if (check()) obs.disconnect(); }, 0);
  });
  obs.observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


def watch(page, texts: list[str]) -> None:
    """Start noting when each of `texts` first appears (call it before the click that makes them appear).

    Why an observer: a stopwatch needs the moment the result appears. Polling the page's text every 50 ms cost the
    browser a full text walk of a large page 20 times a second, CPU that the app's job on the same small machine
    then lacked; Playwright's own waits re-check only every 500 ms after the first second (up to 0.5 s late)."""
    page.evaluate(_WATCH_JS, list(texts))


def seen(page, texts: list[str], timeout: float = 600_000) -> tuple[str, float]:
    """Wait until one of the watched `texts` has appeared; returns (the first one, when: time.time() seconds, from
    the browser's clock). Only a dictionary lookup is polled, not the page."""
    page.wait_for_function("ts => window.__dietSeen && ts.some(t => t in window.__dietSeen)", arg=list(texts),
                           polling=200, timeout=timeout)
    first = page.evaluate("ts => ts.filter(t => t in window.__dietSeen)"
                          ".map(t => [t, window.__dietSeen[t]]).sort((a, b) => a[1] - b[1])[0]", list(texts))
    return first[0], first[1] / 1000


def pick(page, box, option: str, tries: int = 3) -> None:
    """Choose `option` in a multiselect, checking that its chip appeared.

    Why retry: on a cold machine (a fresh venv compiles every module on first import) a rerun can still be in
    flight when the next keystrokes arrive, and the browser then drops the choice."""
    for _ in range(tries):
        box.locator("input").click()
        box.locator("input").fill(option)
        page.keyboard.press("Enter")
        wait_idle(page)
        if option in box.inner_text().split("\n"):  # the chosen options, one per line (the list is elsewhere)
            return
        page.keyboard.press("Escape")
        wait_idle(page)
    raise AssertionError(f"could not choose {option!r}; the box shows: {box.inner_text()[:500]!r}")


def set_number(page, label: str, value: int) -> None:
    box = page.locator('[data-testid="stNumberInput"]').filter(has_text=label).locator("input")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def choose_offline_tasks(page, tasks) -> None:
    """On the Model and tasks page: pick these offline tasks."""
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Offline task suite")
    for task in tasks:
        pick(page, box, task)
    page.keyboard.press("Escape")
