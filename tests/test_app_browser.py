"""The page in a real browser: Debian's headless Chromium driven by Playwright loads the app,
types a query, runs it and sees result images; then visits every tab.

Skipped when Chromium is not installed, unless ``MEET_REQUIRE_BROWSER=1`` (CI sets it, and
``.ci/run`` installs Debian's ``chromium``). Screenshots go to ``MEET_SCREENSHOTS`` when set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("MEET_REQUIRE_BROWSER") != "1":
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

IMAGES_LOADED = """sel => {
    const images = [...document.querySelectorAll(sel)];
    return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def page(app_server):
    assert CHROMIUM, "MEET_REQUIRE_BROWSER=1 but no chromium on PATH"
    url, _ = app_server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load", timeout=60_000)
        yield page
        browser.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("MEET_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def test_typing_a_query_shows_result_images(page):
    page.locator("#header").wait_for(timeout=30_000)
    assert "Device: CPU" in page.locator("#header").inner_text()
    page.locator("#text-query textarea").fill("a red circle")
    page.locator("#text-search").click()
    page.locator("#text-summary").get_by_text("Ground truth").wait_for(timeout=30_000)
    page.wait_for_function(IMAGES_LOADED, arg="#text-results img", timeout=30_000)
    assert page.locator("#text-results img").count() == 10
    assert page.locator("#text-results").inner_text().count("✓") >= 8  # ground-truth ticks
    page.locator("#text-funnel .js-plotly-plot").wait_for(timeout=30_000)
    _shot(page, "1-search-text")


def test_an_empty_query_gets_a_message_and_the_page_keeps_working(page):
    page.locator("#text-query textarea").fill("   ")
    page.locator("#text-search").click()
    page.get_by_text("the query is empty").first.wait_for(timeout=30_000)
    _shot(page, "1b-empty-query")
    page.locator("#text-query textarea").fill("a small blue star")
    page.locator("#text-search").click()
    page.locator("#text-summary").get_by_text("a small blue star").wait_for(timeout=30_000)


def test_image_query_from_the_gallery(page):
    _tab(page, "Image → captions")
    page.locator("#image-picker img").nth(3).click()
    page.locator("#image-summary").get_by_text("Ground truth").wait_for(timeout=30_000)
    assert page.locator("#image-results").inner_text().count("✓") >= 5
    page.locator("#image-funnel .js-plotly-plot").wait_for(timeout=30_000)
    _shot(page, "2-search-image")


@pytest.mark.parametrize("subtab,marker", [("Codebook usage", "Dead codewords"),
                                           ("Bit balance", "Effective number of bits"),
                                           ("Filtered negatives", "Over every query"),
                                           ("Reweighting", "Best-ranked relevant item")])
def test_redundancy_views_render(page, subtab, marker):
    _tab(page, "Redundancy")
    _tab(page, subtab)
    page.get_by_text(marker).first.wait_for(timeout=60_000)
    page.wait_for_timeout(500)  # let plotly finish drawing for the screenshot
    _shot(page, f"3-redundancy-{subtab.split()[0].lower()}")


def test_efficiency_measures_on_demand(page):
    _tab(page, "Efficiency")
    page.locator("#efficiency-queries input").fill("64")
    page.get_by_role("button", name="Measure").click()
    page.get_by_text("Measured now on this server").wait_for(timeout=60_000)
    assert "cascade" in page.locator("#efficiency-table").inner_text()
    _shot(page, "4-efficiency")
