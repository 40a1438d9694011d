"""The run inspector in a real headless browser (Debian's chromium, driven by Selenium through
its chromium-driver): `agentq api` as a process with API keys on, a real worker and the local
Triton (scripted model). Log in, list runs, read a finished run's steps and a failed run's
error and traceback, watch a running run's tokens arrive, replay a dead-lettered run.

With AGENTQ_SCREENSHOTS=<folder> the pages are saved there as PNGs (docs/images for the docs).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from app.config import Settings
from app.local.processes import free_port, wait_until
from app.memory.api_keys import ApiKeyStore
from app.tasks import dead_letters as dlq
from tests.fixtures.api import api_process
from tests.fixtures.services import service_missing

pytestmark = pytest.mark.e2e

WINDOW = (1200, 800)
WAIT_S = 60


def _screenshots() -> Path | None:
    folder = os.environ.get("AGENTQ_SCREENSHOTS")
    return Path(folder) if folder else None


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless chromium through chromedriver; quit (browser and driver stopped) after."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        service_missing("chromium and chromedriver not installed (apt-get install chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        service_missing("selenium not installed (the dev dependencies have it)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the test machines run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(str(driver)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def api_key(settings: Settings) -> str:
    """A key with every scope (as `agentq api key new` makes it)."""
    keys = ApiKeyStore.from_url(settings.database_url, migrate=True)
    try:
        return keys.create(("submit", "read", "operate"), None, "inspector test")[1]
    finally:
        keys.close()


@pytest.fixture
def api_url(settings: Settings, api_key: str, tmp_path: Path) -> Iterator[str]:
    """`agentq api` (keys on) on a free port, stopped by PID (SIGTERM) after the test."""
    with api_process(settings, tmp_path / "api.log", AGENTQ_API__AUTH="keys") as url:
        yield url


@pytest.fixture
def browser(chrome: Any, api_url: str, api_key: str) -> Any:
    """The browser logged in to this test's API (the login page, as a user fills it in)."""
    chrome.delete_all_cookies()
    chrome.get(f"{api_url}/inspector/login")
    chrome.find_element("id", "key").send_keys(api_key)
    chrome.find_element("id", "login").click()
    until(chrome, lambda b: b.current_url == f"{api_url}/inspector")
    return chrome


def until(browser: Any, condition: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
    """What ``condition(browser)`` returns once it is true (Selenium's explicit wait)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)


def text_of(browser: Any, element_id: str) -> str:
    """The element's text on the page shown now ("" when it has none). A live page reloads
    itself when its run ends: an element found just before the reload is read again."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        found = browser.find_elements("id", element_id)
        try:
            return str(found[0].text) if found else ""
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"#{element_id} kept being replaced while it was read")


def submit(api_url: str, key: str, body: dict[str, Any]) -> str:
    """A run submitted over HTTP; its id."""
    response = httpx.post(
        f"{api_url}/v1/runs", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def finished(api_url: str, key: str, run_id: str) -> dict[str, Any]:
    """The run as GET /v1/runs/{id} reads once it has ended."""
    read: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal read
        read = httpx.get(
            f"{api_url}/v1/runs/{run_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ).json()
        return read.get("status") in ("succeeded", "failed")

    assert wait_until(ended, WAIT_S), f"run {run_id} did not end: {read}"
    return read


def screenshot(browser: Any, name: str) -> None:
    folder = _screenshots()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(folder / f"{name}.png"))


def test_the_login_refuses_a_wrong_key_and_keeps_the_right_one_in_a_strict_cookie(
    chrome: Any, api_url: str, api_key: str
) -> None:
    chrome.delete_all_cookies()
    chrome.get(f"{api_url}/inspector")
    assert chrome.current_url == f"{api_url}/inspector/login"  # no key: to the login page
    chrome.find_element("id", "key").send_keys("aq_nosuchkey_0123456789abcdef")
    chrome.find_element("id", "login").click()
    assert "unknown API key" in until(chrome, lambda b: text_of(b, "refused"))
    assert chrome.get_cookie("agentq_key") is None
    chrome.find_element("id", "key").send_keys(api_key)
    chrome.find_element("id", "login").click()
    until(chrome, lambda b: b.current_url == f"{api_url}/inspector")
    cookie = chrome.get_cookie("agentq_key")
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert chrome.execute_script("return document.cookie") == ""  # not readable by scripts


def test_the_run_list_links_a_finished_runs_steps_with_its_tool_call(
    browser: Any, api_url: str, api_key: str, start_worker: Any, settings: Settings
) -> None:
    start_worker(["research"])
    run_id = submit(
        api_url,
        api_key,
        {"agent": "research", "input": 'add [tool:calculator {"expression": "20+22"}]'},
    )
    read = finished(api_url, api_key, run_id)
    assert read["status"] == "succeeded"
    replicas = {step["replica"] for step in read["steps"]}
    assert replicas == set(settings.triton.urls)

    waiting = submit(api_url, api_key, {"agent": "coder", "input": "no coder worker runs"})

    browser.get(f"{api_url}/inspector")
    rows = browser.find_elements("css selector", "#runs tbody tr")
    assert [r.get_attribute("data-run") for r in rows] == [waiting, run_id]  # newest first
    assert "queued" in rows[0].text and "succeeded" in rows[1].text
    row = rows[1]
    assert row.find_element("css selector", "a").text == run_id  # the whole id, never cut
    coder = browser.find_element("css selector", '#queues tr[data-agent="coder"]')
    ready = coder.find_elements("css selector", "td")[2].text
    assert ready == "1"
    screenshot(browser, "inspector-runs")

    row.find_element("css selector", "a").click()
    until(browser, lambda b: text_of(b, "run-id") == run_id)
    tool_step = browser.find_element("id", "step-0")
    assert "Step 0 · tool" in tool_step.text
    call = tool_step.find_element("css selector", "tr.call")
    assert "calculator" in call.text
    assert json.loads(call.find_element("css selector", "pre.args").text) == {"expression": "20+22"}
    assert call.find_element("css selector", "pre.result").text == "42"
    assert f"replica {settings.triton.urls[0]}" in tool_step.text
    assert "worker " in tool_step.text and "tokens in" in tool_step.text
    assert "Answer: 42" in text_of(browser, "answer")
    screenshot(browser, "inspector-run")


def test_a_failed_run_shows_its_error_and_traceback(
    browser: Any, api_url: str, api_key: str, start_worker: Any
) -> None:
    start_worker(["research"])
    run_id = submit(api_url, api_key, {"agent": "research", "input": "[error:overloaded model]"})
    read = finished(api_url, api_key, run_id)
    assert read["status"] == "failed" and read["traceback"]
    browser.get(f"{api_url}/inspector/runs/{run_id}")
    assert text_of(browser, "run-status") == "failed"
    assert "overloaded model" in text_of(browser, "error")
    assert text_of(browser, "error-type") == "model_error"
    trace = text_of(browser, "traceback")
    assert trace.startswith("Traceback (most recent call last):") and "overloaded model" in trace
    screenshot(browser, "inspector-failed-run")


def test_a_running_runs_tokens_arrive_live(
    browser: Any, api_url: str, api_key: str, start_worker: Any, settings: Settings
) -> None:
    start_worker(["research"])
    body = {"agent": "research", "input": "[words:40] [pace:150] count slowly", "stream": True}
    run_id = submit(api_url, api_key, body)
    browser.get(f"{api_url}/inspector/runs/{run_id}")
    assert text_of(browser, "run-status") in ("queued", "running")
    # Tokens show while the run is still going: the page has not been reloaded yet.
    seen = until(browser, lambda b: "w3" in text_of(b, "tokens") and text_of(b, "tokens"))
    assert seen.startswith("w1 w2 w3") and "w40" not in seen
    assert text_of(browser, "run-status") in ("queued", "running")
    # At the end the page reloads with the run's answer and step.
    until(browser, lambda b: text_of(b, "run-status") == "succeeded")
    assert text_of(browser, "answer").endswith("w40")
    assert f"replica {settings.triton.urls[0]}" in browser.find_element("id", "step-0").text


def test_a_dead_lettered_run_is_replayed_from_its_page(
    browser: Any, api_url: str, api_key: str, start_worker: Any, redis_client: Any
) -> None:
    # Retries exhausted on a worker that reaches no model server: the run is dead-lettered.
    env = {
        "AGENTQ_TRITON__URLS": json.dumps([f"127.0.0.1:{free_port()}"]),
        "AGENTQ_WORKER__INFERENCE_RETRIES": "1",
        "AGENTQ_WORKER__RETRY_BACKOFF_MAX_S": "0.2",
    }
    broken = start_worker(["research"], env=env)
    body = {"agent": "research", "input": 'later [tool:calculator {"expression": "6*7"}]'}
    run_id = submit(api_url, api_key, body)
    read = finished(api_url, api_key, run_id)
    assert read["error_type"] == "dead_lettered" and "NoReplicaAvailableError" in read["traceback"]
    broken.stop()
    start_worker(["research"])  # the model server is back

    browser.get(f"{api_url}/inspector")
    assert browser.find_element("css selector", f'#dead-letters tr[data-run="{run_id}"]')
    browser.get(f"{api_url}/inspector/runs/{run_id}")
    assert "NoReplicaAvailableError" in text_of(browser, "traceback")
    screenshot(browser, "inspector-dead-letter")
    browser.find_element("id", "replay").click()
    assert "Replayed" in until(browser, lambda b: text_of(b, "notice"))
    assert dlq.get(redis_client, run_id) is None
    read = finished(api_url, api_key, run_id)
    assert (read["status"], read["answer"], read["traceback"]) == ("succeeded", "Answer: 42", None)
    browser.refresh()
    assert text_of(browser, "run-status") == "succeeded"
