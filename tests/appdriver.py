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


def wait_text(page, text: str, timeout: float = 600_000, every_ms: int = 50) -> None:
    """Until `text` is in the page, checked inside the page every `every_ms` (a search of the DOM's text, no layout).

    Why not `locator.wait_for` for a timed wait: Playwright re-checks a locator every 500 ms once the first second
    has passed, so a stopwatch stopped by it ran up to half a second late."""
    page.wait_for_function("t => document.body.textContent.includes(t)", arg=text, polling=every_ms,
                           timeout=timeout)


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
