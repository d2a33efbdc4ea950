"""One real journey in headless Chromium: sign in, start an offline run, watch the six steps
advance without reloading, play the video, find it in the gallery.

UPDATE_SCREENSHOTS=1 also writes the README's screenshots into docs/ (with a slower offline
provider, so the run is caught mid-way).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

STEPS = ("validate", "generate_image", "upload_image", "generate_video", "upload_video", "finalize")
STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "skipped")


def sign_in(page, url: str) -> None:
    page.goto(url)
    page.get_by_label("Email").fill(ADMIN_EMAIL)
    page.get_by_role("textbox", name="Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Image prompt").wait_for(timeout=30_000)


def fill_prompts(page) -> None:
    page.get_by_label("Image prompt").fill("A red fox standing in fresh snow by a pine forest")
    page.get_by_label("Video prompt").fill("Slow dolly in, snow falling, the fox looks up")
    page.get_by_label("Image prompt").click()  # leaving the field commits its value
    page.wait_for_timeout(400)


def step_statuses(page) -> dict[str, str]:
    """What each step card shows right now ({} before the watch page is there)."""
    shown = {}
    for step in STEPS:
        card = page.locator(f".st-key-watch_step_{step}")
        if card.count():
            text = card.first.inner_text()
            shown[step] = next((s for s in STATUSES if s in text.split()), "?")
    return shown


def test_sign_in_start_watch_live_play_and_find_it_in_the_gallery(page, app_server, tmp_path):
    sign_in(page, app_server.url)
    fill_prompts(page)

    page.get_by_role("button", name="Start", exact=True).click()
    clicked = time.monotonic()
    first_change = None
    seen: set[tuple[str, str]] = set()
    deadline = clicked + 120
    while time.monotonic() < deadline:
        shown = step_statuses(page)
        seen.update(shown.items())
        if first_change is None and shown.get("validate") in ("processing", "completed"):
            first_change = time.monotonic() - clicked
        if shown and all(status == "completed" for status in shown.values()) and len(shown) == 6:
            break
        assert "failed" not in shown.values(), shown
        page.wait_for_timeout(100)
    finished = time.monotonic() - clicked
    assert first_change is not None, "the first step never changed on the page"
    # The page advanced on its own (no reload): the video step was seen in flight.
    assert ("generate_video", "processing") in seen, seen
    assert len(shown) == 6 and set(shown.values()) == {"completed"}, shown

    video = page.locator("video").first
    video.wait_for(timeout=30_000)
    page.wait_for_function(
        "() => { const v = document.querySelector('video'); return v && v.readyState >= 1; }",
        timeout=30_000,
    )
    duration = video.evaluate("v => v.duration")
    assert duration == pytest.approx(8, abs=0.3)
    page.screenshot(path=str(tmp_path / "watch-completed.png"))

    page.get_by_role("link", name="Gallery").click()
    cards = page.locator("[class*='st-key-gallery_card_']")
    cards.first.locator("video").wait_for(timeout=30_000)
    assert cards.count() == 1
    page.screenshot(path=str(tmp_path / "gallery.png"))

    timings = {
        "click_to_first_step_change_s": round(first_change, 3),
        "click_to_done_s": round(finished, 3),
    }
    print(f"\ne2e timings: {json.dumps(timings)}")
    (tmp_path / "timings.json").write_text(json.dumps(timings))


def test_a_link_to_someone_elses_or_a_missing_run_shows_a_message(page, app_server):
    sign_in(page, app_server.url)
    page.goto(f"{app_server.url}/watch?id=0123456789abcdef0123456789abcdef")
    page.get_by_label("Email").fill(ADMIN_EMAIL)  # a new tab signs in again, then lands there
    page.get_by_role("textbox", name="Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("There is no run").wait_for(timeout=30_000)
    assert page.get_by_text("Traceback").count() == 0
