"""The app's Gemma flow in a real browser: pick the second embedded model (Gemma-3-270m), see its licence, profile
one task on a few texts, see its masks. One short flow; the full six-page flow on the default model is
tests/test_browser.py. Same requirements and lock:

    flock /tmp/diet-torch.lock .venv/bin/pytest -q -m browser tests/test_browser_gemma.py
"""

from __future__ import annotations

import re

import pytest

from tests.appdriver import app_server, choose_offline_tasks, clean, launch, missing, nav, private_cache, set_number

pytestmark = [pytest.mark.browser, pytest.mark.skipif(missing() is not None, reason=str(missing()))]


def test_gemma_flow_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    cache = private_cache(tmp_path / "cache")
    with app_server(cache, tmp_path / "streamlit.log") as url, sync_playwright() as p:
        browser = launch(p, tmp_path / "user-data")
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(180_000)
        page.goto(url)
        page.get_by_role("heading", name="DIET Explorer").wait_for()
        nav(page, "Model and tasks")
        page.get_by_text("is loaded").wait_for()
        assert "Gemma Terms of Use" in page.get_by_text("Embedded, offline").inner_text()  # offered with licence

        box = page.locator('[data-testid="stTextInput"]').filter(has_text="Model").locator("input")
        box.fill("gemma3-270m")
        page.get_by_role("button", name="Load model").click()
        loaded = page.get_by_text(re.compile(r"gemma3-270m is loaded: gemma3 family, 18 layers × 2048 MLP channels"))
        loaded.wait_for()
        page.get_by_role("button", name=re.compile(r"^Gemma Terms of Use \(GEMMA_TERMS\.html\)")).wait_for()
        clean(page)

        choose_offline_tasks(page, ("capitals",))
        set_number(page, "Calibration samples", 4)
        page.get_by_role("button", name=re.compile(r"^Profile 1 task\(s\)")).click()
        page.get_by_text("Statistics in this session").wait_for(timeout=300_000)
        assert "capitals (4 texts)" in page.get_by_text("Statistics in this session").inner_text()

        nav(page, "Masks")
        kept = page.locator('[data-testid="stMetric"]').filter(has_text="MLP channels kept")
        kept.wait_for()
        assert kept.locator('[data-testid="stMetricValue"]').inner_text().strip() == f"{round(0.8 * 2048) * 18:,}"
        assert page.locator(".js-plotly-plot").count() >= 1
        clean(page)
        browser.close()
    assert list((cache / "artifacts" / "stats").glob("*.json"))  # Gemma's statistics were cached on disk
