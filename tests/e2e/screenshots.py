"""Refresh the README's screenshots in docs/ with headless Debian Chromium: `make screenshots`.

Not a test: it checks nothing, it only photographs each page of a freshly started offline app.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, start_server
from tests.e2e.test_browser import fill_prompts, sign_in

DOCS = ROOT / "docs"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        server = start_server(Path(tmp) / "data", latency_s=2.0)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1100})
            _shoot_every_page(context.new_page(), server.url, DOCS)
            context.close()
        finally:
            server.stop()
            browser.close()
    print(f"screenshots written to {DOCS}")


def _shot(page, folder: Path, name: str, height: int = 1100) -> None:
    page.set_viewport_size({"width": 1440, "height": height})
    page.wait_for_timeout(1200)  # let progress bars, charts and videos settle
    page.screenshot(path=str(folder / f"{name}.png"))
    page.set_viewport_size({"width": 1440, "height": 1100})


def _videos_ready(page, count: int) -> None:
    page.wait_for_function(
        """n => { const v = [...document.querySelectorAll('video')];
                  return v.length >= n && v.every(x => x.readyState >= 2); }""",
        arg=count,
        timeout=60_000,
    )


def _shoot_every_page(page, url: str, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    page.goto(url)
    page.get_by_label("Email").wait_for(timeout=30_000)
    _shot(page, folder, "login", 800)
    sign_in(page, url)
    fill_prompts(page)
    page.get_by_text("Video prompt builder").click()
    page.get_by_label("Subject and action").fill("the fox lifts its head and trots forward")
    page.get_by_text("Prompts that will be sent").click()
    page.get_by_label("Image prompt").click()
    _shot(page, folder, "create", 1900)
    page.get_by_role("button", name="Start", exact=True).click()
    page.locator(".st-key-watch_step_generate_video").wait_for(timeout=30_000)
    page.get_by_text(
        re.compile("In the video provider's queue|The provider is generating the video")
    ).first.wait_for(timeout=90_000)
    _shot(page, folder, "watch-running", 1300)
    page.locator("video").first.wait_for(timeout=120_000)
    _videos_ready(page, 1)
    _shot(page, folder, "watch-completed", 1900)

    # A small batch, so the history and the gallery have something to show.
    page.get_by_role("link", name="Create").click()
    page.get_by_label("Runs").fill("3")
    page.get_by_label("Runs").press("Enter")
    page.get_by_text("Variations").wait_for(timeout=30_000)
    page.get_by_label("Variations").click()
    page.get_by_role("option", name="Vary the lighting").click()
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Start 3 runs").click()
    page.get_by_text("Showing the runs of one batch").wait_for(timeout=30_000)
    page.get_by_role("button", name="Show all runs").click()
    page.wait_for_function(
        "() => document.querySelectorAll('[class*=st-key-history_row_]').length >= 4",
        timeout=60_000,
    )
    page.wait_for_function(
        """() => [...document.querySelectorAll('[class*=st-key-history_row_]')]
                   .every(row => row.innerText.includes('completed'))""",
        timeout=120_000,
    )
    page.wait_for_timeout(2500)
    _shot(page, folder, "history", 1100)
    page.get_by_role("link", name="Gallery").click()
    page.locator("[class*='st-key-gallery_card_']").nth(3).wait_for(timeout=30_000)
    _videos_ready(page, 4)
    _shot(page, folder, "gallery", 1300)


if __name__ == "__main__":
    main()
