"""The web app in a real browser: Debian's headless Chromium, driven by Selenium through Debian's chromedriver.

Chromium's fake media flags make a Hindi WAV from espeak-ng the microphone. What the
page shows is compared with what the client library gets from the same server for
the same audio: the app sends back the WAV it sent to Triton (the browser records
Opus and resamples, and the fake microphone loops the file, so that WAV is the
audio to compare with).

One browser session serves every test of this module (they run in file order);
the README's screenshot is written by the upload test (to the build folder, and to
``docs/web.png`` when ``S2I_WEB_SCREENSHOT_TO_DOCS=1``).
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import BUILD_DIR, MAX_NEW_TOKENS, ROOT
from tests.web.conftest import serve_app, web_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SEED, STEPS = 5, 4
RECORD_S = 3.0  # longer than the clip, so the fake microphone's loop is part of the recording
WAIT_S = 240.0  # upper bound for one image on a loaded 2-core machine; the test usually waits seconds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_microphone(hindi_clips, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("microphone") / "hindi.wav"
    path.write_bytes(hindi_clips[0].wav_bytes)
    return path


@pytest.fixture(scope="module")
def browser(fake_microphone):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "run `make setup` (apt: chromium chromium-driver)"

    def no_downloads(*args, **kwargs):
        raise AssertionError("Selenium Manager ran (it may download a driver); the system chromedriver must be used")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--window-size=1100,1300",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_microphone}",
    ):
        options.add_argument(argument)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SeleniumManager, "binary_paths", no_downloads)
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    # A loaded shared machine can take minutes to answer a command; fail on the waits below, not here.
    driver.command_executor._client_config.timeout = WAIT_S
    versions = driver.capabilities
    print(f"browser {versions.get('browserVersion')}, chromedriver {versions['chrome']['chromedriverVersion']}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def web_app(triton_server, tmp_path_factory):
    config = web_config(triton_server.grpc_url, tmp_path_factory.mktemp("web"), max_steps=8)
    with serve_app(config) as base:
        yield base


def wait_for(driver, condition: str, timeout_s: float = WAIT_S):
    """Wait until the JavaScript expression ``condition`` is truthy; fail with the page's status and error."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return {condition};")
        )
    except Exception as e:
        status = driver.execute_script("return document.getElementById('status').textContent")
        error = driver.execute_script("return document.getElementById('error').textContent")
        raise AssertionError(f"waited for {condition}: status {status!r}, error {error!r}") from e


def text_of(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def data_url_bytes(url: str) -> bytes:
    header, payload = url.split(",", 1)
    assert header.endswith(";base64"), header
    return base64.b64decode(payload)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def open_page(driver, base: str) -> None:
    driver.get(base)
    wait_for(driver, "document.getElementById('status').textContent.startsWith('Ready')", 30)


def set_options(driver) -> None:
    driver.find_element("css selector", "#options-panel summary").click()
    for field, value in (("seed", SEED), ("steps", STEPS)):
        element = driver.find_element("id", field)
        element.clear()
        element.send_keys(str(value))


def wait_for_image(driver) -> None:
    wait_for(driver, "document.getElementById('image').dataset.final === 'true'")


def assert_page_equals_client_result(driver, client) -> None:
    """The page's texts, chart and final pixels equal the client library's result for the WAV the app sent."""
    heard = data_url_bytes(driver.find_element("id", "heard").get_attribute("src"))
    expected = client.speech_to_image(heard, seed=SEED, num_inference_steps=STEPS, max_new_tokens=MAX_NEW_TOKENS)
    assert text_of(driver, "translation") == (expected.text or "(nothing recognised)")
    assert driver.find_element("id", "emotion").get_attribute("data-emotion") == expected.emotion
    assert text_of(driver, "prompt") == expected.prompt
    chart = driver.find_element("id", "emotion-chart").get_attribute("aria-label")
    for label, probability in expected.emotion_scores.items():
        assert f"{label} {100 * probability:.0f}%" in chart
    assert len(driver.find_elements("css selector", "#emotion-chart rect")) == 8
    assert int(driver.find_element("id", "image").get_attribute("data-previews")) >= 1
    shown = data_url_bytes(driver.find_element("id", "image").get_attribute("src"))
    np.testing.assert_array_equal(pixels(shown), pixels(expected.png))
    download = driver.find_element("id", "download")
    assert download.is_displayed() and download.get_attribute("download") == f"speech2image-{SEED}.png"
    assert data_url_bytes(download.get_attribute("href")) == shown


def test_browser_shows_the_servers_translation_emotion_previews_and_image_when_speech_is_recorded(
    browser, web_app, client
):
    open_page(browser, web_app)
    set_options(browser)
    record = browser.find_element("id", "record")
    record.click()
    wait_for(browser, "document.getElementById('record').getAttribute('aria-pressed') === 'true'", 30)
    time.sleep(RECORD_S)
    record.click()
    wait_for_image(browser)
    assert "webm" in text_of(browser, "heard-info")  # Chromium records WebM/Opus; the app converted it
    assert_page_equals_client_result(browser, client)
    print(f"record: {text_of(browser, 'timing')}")


def test_browser_shows_the_result_and_keeps_a_gallery_when_a_file_is_uploaded(browser, web_app, client, hindi_clips):
    upload = BUILD_DIR / "web" / "upload.ogg"
    upload.parent.mkdir(parents=True, exist_ok=True)
    command = ["ffmpeg", "-loglevel", "error", "-y", "-f", "wav", "-i", "pipe:0", "-c:a", "libopus", str(upload)]
    subprocess.run(command, input=hindi_clips[1].wav_bytes, check=True)
    browser.find_element("id", "upload").send_keys(str(upload))
    wait_for(browser, "document.getElementById('heard-info').textContent.includes('ogg')")
    wait_for_image(browser)
    assert_page_equals_client_result(browser, client)
    assert len(browser.find_elements("css selector", "#gallery img")) == 2
    print(f"upload: {text_of(browser, 'timing')}")
    save_screenshot(browser)


def save_screenshot(driver) -> None:
    """The README's picture: options folded, tall enough for the result and the gallery."""
    driver.execute_script("document.getElementById('options-panel').open = false; window.scrollTo(0, 0);")
    driver.set_window_size(1100, 1450)
    try:
        screenshot = BUILD_DIR / "web" / "web.png"
        driver.save_screenshot(str(screenshot))
        if os.environ.get("S2I_WEB_SCREENSHOT_TO_DOCS") == "1":
            driver.save_screenshot(str(ROOT / "docs" / "web.png"))
        assert Image.open(screenshot).size[0] >= 1000
    finally:
        driver.set_window_size(1100, 1300)


def test_browser_shows_a_message_for_a_bad_file_and_still_works_after_it(browser, web_app, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("these are notes, not audio\n" * 20)
    browser.find_element("id", "upload").send_keys(str(bad))
    wait_for(browser, "!document.getElementById('error').hidden")
    assert "not audio the app can read" in text_of(browser, "error")
    browser.find_element("id", "sample").click()
    wait_for_image(browser)
    assert browser.find_element("id", "error").get_attribute("hidden") is not None
    assert browser.find_element("id", "job-ref").get_attribute("hidden") is not None
    assert text_of(browser, "status").startswith("Done")


def test_browser_page_fits_a_phone_and_labels_every_control(browser, web_app):
    browser.set_window_size(390, 844)
    try:
        open_page(browser, web_app)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        unlabelled = browser.execute_script(
            "return [...document.querySelectorAll('input, select')].filter(e => e.labels.length === 0).map(e => e.id)"
        )
        assert unlabelled == []
        nameless = browser.execute_script(
            "return [...document.querySelectorAll('button')]"
            ".filter(b => !(b.textContent.trim() || b.getAttribute('aria-label'))).length"
        )
        assert nameless == 0
    finally:
        browser.set_window_size(1100, 1300)


def test_browser_says_the_server_is_down_when_triton_is_unreachable(browser, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serve_app(web_config(f"127.0.0.1:{port}", tmp_path)) as base:
        open_page(browser, base)
        browser.find_element("id", "sample").click()
        wait_for(browser, "!document.getElementById('error').hidden", 60)
        assert text_of(browser, "error") == "The image server is not reachable right now; try again in a minute."
        assert text_of(browser, "status") == "Nothing was made."
        # The job's x-request-id, shown so a person can quote it (32 hex: the app made it).
        reference = text_of(browser, "job-ref")
        assert re.fullmatch(r"Job reference \(for a support request\): [0-9a-f]{32}", reference), reference
