"""The operator console in a real browser: Debian's headless Chromium, driven by Selenium,
against a real daemon and Valkey. Saves screenshots of the main pages in the test's
temporary directory (and in ``$CONSOLE_SCREENSHOTS`` when set, as docs/ uses them).

``make test`` installs ``chromium`` and ``chromium-driver`` when it runs as root; without
them this test fails with one line saying what is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from tests.servers import Daemon, ValkeyProcess

Start = Callable[..., Daemon]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "browser-admin-key"
WAIT = 10.0


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"the browser test needs {' and '.join(missing)}: as root run "
            "`apt-get install -y chromium chromium-driver` (make test does it)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=ignored).until(
        condition, f"timed out after {WAIT} s waiting for {what}"
    )


def _text(driver: WebDriver, css: str) -> str:
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""
    except StaleElementReferenceException:  # htmx swapped the page meanwhile
        return ""


def _seconds(text: str) -> int:
    parts: dict[str, int] = {unit: int(n) for n, unit in re.findall(r"(\d+)([hms])", text)}
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


class Shots:
    def __init__(self, driver: WebDriver, directory: Path) -> None:
        self.driver, self.directory = driver, directory
        self.extra = os.environ.get("CONSOLE_SCREENSHOTS")

    def take(self, name: str) -> None:
        path = self.directory / f"console-{name}.png"
        assert self.driver.save_screenshot(str(path)), name
        if self.extra:
            shutil.copy(path, Path(self.extra) / path.name)


async def test_console_in_a_browser(
    redis: Any, valkey: ValkeyProcess, daemons: Start, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    d = daemons(api_keys=f"{digest}:admin", redis_url=valkey.url_as("lifecycled"))
    bearer = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=bearer) as http:
        sids = []
        for account, inactivity in (("acme", 90), ("acme", 600), ("globex", 1800)):
            body = {"account_id": account, "inactivity_timeout_seconds": inactivity}
            async with http.post(f"{d.api}/v1/sessions", json=body) as resp:
                sids.append((await resp.json())["session_id"])
    await redis.xadd(
        "lifecycle:{0}:dead",
        {"type": "created", "session_id": "ses_from_dead", "account_id": "initech",
         "error": "unknown plan 'team'"},
    )  # fmt: skip
    shots = Shots(browser, tmp_path)
    ui = f"{d.api}/ui"

    # A wrong key is refused; the admin key logs in.
    browser.get(ui + "/")
    _wait(browser, lambda b: b.current_url.endswith("/ui/login"), "the login form")
    browser.find_element(By.ID, "key").send_keys("wrong-key")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(browser, lambda b: "not valid" in _text(b, "#login-failure"), "the refusal")
    shots.take("login")
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(browser, lambda b: _text(b, "h1") == "Overview", "the overview")
    assert _text(browser, "#live") == "3"
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, ".charts[data-drawn]"), "charts")
    shots.take("overview")

    # Find a session by id and watch its countdown decrease.
    browser.find_element(By.LINK_TEXT, "Sessions").click()
    _wait(browser, lambda b: _text(b, "h1") == "Sessions", "the sessions page")
    _wait(browser, lambda b: all(s in b.page_source for s in sids), "every session listed")
    shots.take("sessions")
    search = browser.find_element(By.ID, "q")
    search.send_keys(sids[0])
    search.submit()
    _wait(browser, lambda b: sids[0] in _text(b, "h1"), "the session's page")
    first = _seconds(_text(browser, "#remaining .countdown"))
    assert 80 <= first <= 90, first
    _wait(
        browser,
        lambda b: 0 < _seconds(_text(b, "#remaining .countdown")) < first,
        "the countdown to decrease",
    )
    shots.take("session")

    # A POST without the CSRF token is refused and changes nothing.
    browser.execute_script("document.querySelector('#terminate').form.csrf.remove()")
    browser.find_element(By.ID, "terminate").click()
    _wait(browser, lambda b: "CSRF token is missing" in b.page_source, "the CSRF refusal")
    browser.back()
    browser.refresh()
    _wait(browser, lambda b: _text(b, "h1 .badge") == "ready", "the session still ready")

    # Terminate it and see it terminated.
    browser.find_element(By.ID, "terminate").click()
    _wait(browser, lambda b: _text(b, "h1 .badge") == "terminated", "the session terminated")
    assert _text(browser, ".flash.ok") == "Terminated."
    assert _text(browser, '[data-field="termination_reason"]') == "requested"

    # Replay a dead letter and see the session it creates.
    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    _wait(browser, lambda b: "unknown plan" in b.page_source, "the dead letter")
    shots.take("dead-letters")
    browser.find_element(By.CSS_SELECTOR, "button.replay").click()
    _wait(browser, lambda b: b.find_elements(By.ID, "replayed-session"), "the replay")
    assert "No dead letters." in browser.page_source
    browser.find_element(By.ID, "replayed-session").click()

    def replayed(b: WebDriver) -> bool:
        if "ses_from_dead" in _text(b, "h1"):
            return True
        b.get(ui + "/sessions/ses_from_dead")  # the daemon applies the entry within moments
        return False

    _wait(browser, replayed, "the replayed session's page")
    assert _text(browser, '[data-field="account_id"]') == "initech"

    # A phone's width, in the dark.
    browser.set_window_size(390, 844)
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    browser.get(ui + "/sessions")
    _wait(browser, lambda b: _text(b, "h1") == "Sessions", "the sessions page")
    shots.take("sessions-phone-dark")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 400
    # No script failed and nothing was blocked by the console's Content-Security-Policy
    # (the refusals the test provoked are logged as failed loads: 401, 403, 404).
    refusals = re.compile(r"status of (401|403|404)")
    problems = [
        entry["message"] for entry in browser.get_log("browser")  # type: ignore[no-untyped-call]
        if entry["level"] == "SEVERE" and not refusals.search(entry["message"])
    ]  # fmt: skip
    assert not problems, problems
