"""The dashboard at ``/`` in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): a message sent through the page shows coloured tokens, meters and the last-prompt-token
warning that match the API's own readings for the same request."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from personavec.core.models import LoadedModel
from serve_helpers import running_server, smollm2_vectors

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MESSAGE = "What should I do on a rainy afternoon?"
HUMOR_COEF = 3.0


@pytest.fixture(scope="module")
def server(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("vectors")
    smollm2_vectors(smollm2, folder)
    with running_server(smollm2, folder) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are missing; run `make install-dev`")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def api_answer(url: str) -> dict[str, Any]:
    """The same request the page sends, through the API (non-streaming)."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": MESSAGE}],
        "temperature": 0,
        "max_tokens": 64,
        "monitor": ["evil", "humor"],
        "steering": [{"vector": "humor", "coef": HUMOR_COEF}],
    }
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    response.raise_for_status()
    return dict(response.json()["choices"][0])


def test_a_message_sent_through_the_page_shows_the_apis_readings(
    server: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(server + "/")
    wait = WebDriverWait(browser, 120)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#vectors .vector")) == 2)
    assert browser.find_element(By.ID, "model").text == "HuggingFaceTB/SmolLM2-135M-Instruct"
    slider = browser.find_element(By.CSS_SELECTOR, '.vector[data-vector="humor"] .slider')
    browser.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));",
        slider,
        HUMOR_COEF,
    )
    browser.find_element(By.ID, "message").send_keys(MESSAGE)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-finish]"))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")

    expected = api_answer(server)
    persona = expected["persona"]
    spans = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .tok")
    assert "".join(s.get_property("textContent") for s in spans) == expected["message"]["content"]
    assert [int(s.get_attribute("data-id")) for s in spans] == [t["id"] for t in persona["tokens"]]
    for span, token in zip(spans, persona["tokens"], strict=True):
        shown = json.loads(span.get_attribute("data-values"))
        assert shown == pytest.approx(token["values"], abs=1e-3)
    coloured = [s.value_of_css_property("background-color") for s in spans]
    assert sum(c not in ("rgba(0, 0, 0, 0)", "transparent") for c in coloured) > len(spans) // 2
    for name in ("evil", "humor"):
        meter = browser.find_element(By.CSS_SELECTOR, f'.meter[data-vector="{name}"]')
        values = [t["values"][name] for t in persona["tokens"]]
        assert float(meter.get_attribute("data-last")) == pytest.approx(values[-1], abs=1e-3)
        mean = sum(values) / len(values)
        assert float(meter.get_attribute("data-mean")) == pytest.approx(mean, abs=1e-3)
    warning = browser.find_element(By.ID, "warning")
    assert warning.is_displayed()
    assert json.loads(warning.get_attribute("data-values")) == pytest.approx(
        persona["prompt_last"], abs=1e-3
    )
    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert (
        screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    )


def test_the_page_reports_a_server_error(server: str, browser: webdriver.Chrome) -> None:
    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#vectors .vector")) == 2)
    browser.find_element(By.ID, "max-tokens").clear()
    browser.find_element(By.ID, "max-tokens").send_keys("100000")
    browser.find_element(By.ID, "message").send_keys("Hello")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "over this server's limit" in browser.find_element(By.ID, "error").text
