"""The demo page in headless Chromium (integration): upload an image and a clip, ask, and the box
comes back drawn on the image canvas. Debian's chromium, driven by Playwright (no browser download).
Then localize: the time window comes back shaded on the waveform. And without files: one click on
an example scene draws both. Screenshots are left in the test's tmp dir."""

from __future__ import annotations

import shutil

import pytest

from meerkat_core import grounding
from tests.serve import bad_media

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STROKE = (255, 23, 68)  # the page's box colour, #ff1744


@pytest.fixture
def page(meerkat_service):
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # The service has a token: the browser signs in to the page with it (HTTP Basic).
            credentials = {"username": "visitor", "password": meerkat_service.token}
            yield browser.new_page(viewport={"width": 1100, "height": 900}, http_credentials=credentials)
        finally:
            browser.close()


def test_upload_ask_and_the_box_and_window_are_drawn(page, meerkat_service, scenes, tmp_path):
    scene = scenes[0]
    image, audio = tmp_path / "scene.jpg", tmp_path / "scene.wav"
    image.write_bytes(scene.image)
    audio.write_bytes(bad_media.wav_from(scene.audio))
    page.goto(f"{meerkat_service.url}/", timeout=60_000)
    page.select_option("#task", "ground")
    page.set_input_files("#image", str(image))
    page.set_input_files("#audio", str(audio))
    page.fill("#token", meerkat_service.token)
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=120_000)

    expected = list(
        grounding.normalised_box_to_pixels(grounding.parse_box(grounding.format_box(scene.box)), 224, 224)
    )
    assert page.get_attribute("#summary", "data-box-pixels") == str(expected).replace(" ", "")
    # The canvas shows the 224-pixel image scaled to fit 480 x 360: the box's left edge is red there.
    scale = min(480 / 224, 360 / 224)
    x, y = round(expected[0] * scale), round((expected[1] + expected[3]) / 2 * scale)
    pixel = page.evaluate(
        f"Array.from(document.getElementById('image-canvas').getContext('2d').getImageData({x}, {y}, 1, 1).data)"
    )
    assert max(abs(a - b) for a, b in zip(pixel[:3], STROKE, strict=True)) < 40, pixel
    page.screenshot(path=str(tmp_path / "demo-ground.png"), full_page=True)

    # The same upload, asked when the object is heard: the window is shaded on the waveform.
    page.select_option("#task", "localize")
    page.fill("#object", scene.object)
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=120_000)
    assert page.get_attribute("#summary", "data-window") == str(scene.window).replace(" ", "")
    start_x = round(scene.window[0] / 10.0 * 480) + 3  # inside the shaded window, 10 s clip
    shaded = page.evaluate(
        f"Array.from(document.getElementById('wave-canvas').getContext('2d').getImageData({start_x}, 5, 1, 1).data)"
    )
    assert shaded[3] > 0, shaded  # painted (transparent outside the window)
    page.screenshot(path=str(tmp_path / "demo-localize.png"), full_page=True)


def test_one_click_on_an_example_draws_the_box_and_the_window(page, meerkat_service, scenes, tmp_path):
    scene = scenes[0]
    page.goto(f"{meerkat_service.url}/", timeout=60_000)
    page.wait_for_selector("button.example", timeout=60_000)
    page.click("button.example >> nth=0")
    page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=180_000)
    expected = list(
        grounding.normalised_box_to_pixels(grounding.parse_box(grounding.format_box(scene.box)), 224, 224)
    )
    scale = min(480 / 224, 360 / 224)
    x, y = round(expected[0] * scale), round((expected[1] + expected[3]) / 2 * scale)
    pixel = page.evaluate(
        f"Array.from(document.getElementById('image-canvas').getContext('2d').getImageData({x}, {y}, 1, 1).data)"
    )
    assert max(abs(a - b) for a, b in zip(pixel[:3], STROKE, strict=True)) < 40, pixel
    assert page.get_attribute("#summary", "data-window") == str(scene.window).replace(" ", "")
    start_x = round(scene.window[0] / 10.0 * 480) + 3
    shaded = page.evaluate(
        f"Array.from(document.getElementById('wave-canvas').getContext('2d').getImageData({start_x}, 5, 1, 1).data)"
    )
    assert shaded[3] > 0, shaded
    page.screenshot(path=str(tmp_path / "demo-example.png"), full_page=True)
