"""The admin web UI in a real browser: Debian's Chromium, headless, driven by Selenium
through Debian's chromedriver.

A person's path through the UI: log in with the admin password, add a credential with the
add form, see it listed, disable it, delete it — after each step the admin API is asked
what really happened — and start a Builder ID sign-in, whose dialog shows the user code
and the verification link, and which completes once the fake upstream approves it.

Skipped when Chromium, chromedriver or Selenium is missing, unless
``KIRO_FAST_REQUIRE_ALL=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_helpers import Admin, Http
from e2e_harness import Harness

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ADMIN_KEY = "sk-admin-" + "u" * 24
ADMIN_PASSWORD = "browser-password-1"
NEW_TOKEN = "aorBrowser" + "b" * 120
WAIT = 20.0

try:
    from selenium import webdriver
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None


def _missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


MISSING = _missing()
if MISSING and os.environ.get("KIRO_FAST_REQUIRE_ALL") != "1":
    pytest.skip(MISSING, allow_module_level=True)


@pytest.fixture
def harness() -> Iterator[Harness]:
    config = {"adminApiKey": ADMIN_KEY, "adminPassword": ADMIN_PASSWORD}
    with Harness(config=config) as running:
        running.call(lambda: running.fake.accounts.add_social(NEW_TOKEN))
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    assert MISSING is None, MISSING
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
        # The page ran without a script error or a Content-Security-Policy violation.
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        unexpected = [e for e in severe if "/api/admin/" not in e["message"]]
        assert not unexpected, unexpected
    finally:
        driver.quit()


def wait_until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    try:
        return WebDriverWait(
            driver,
            WAIT,
            poll_frequency=0.05,
            # The list is re-rendered after every action: an element may vanish mid-check.
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition)
    except WebDriverException as exc:
        raise AssertionError(f"{what} did not happen: {exc.msg}") from None


def row(driver: Any, cred_id: int) -> Any:
    found = driver.find_elements(By.CSS_SELECTOR, f'#credentials-body tr[data-id="{cred_id}"]')
    return found[0] if found else None


def cell(driver: Any, cred_id: int, selector: str) -> str | None:
    """The text of one cell of a credential's row (``None`` while the row is missing)."""
    found = row(driver, cred_id)
    return None if found is None else str(found.find_element(By.CSS_SELECTOR, selector).text)


def log_in(driver: Any, url: str) -> None:
    driver.get(url + "/admin")
    wait_until(driver, lambda d: d.find_element(By.ID, "login").is_displayed(), "login page")
    driver.find_element(By.ID, "login-tab-password").click()
    driver.find_element(By.ID, "login-username").clear()
    driver.find_element(By.ID, "login-username").send_keys("admin")
    driver.find_element(By.ID, "login-password").send_keys(ADMIN_PASSWORD)
    driver.find_element(By.ID, "login-password-submit").click()
    wait_until(driver, lambda d: row(d, 1) is not None, "the credential list after login")


def test_add_disable_and_delete_a_credential_in_the_browser(harness: Harness, browser: Any) -> None:
    admin = Admin(Http(harness.url), ADMIN_KEY)
    log_in(browser, harness.url)
    assert "password" in browser.find_element(By.ID, "status-line").text

    browser.find_element(By.CSS_SELECTOR, '[data-view="add"]').click()
    browser.find_element(By.ID, "add-refresh").send_keys(NEW_TOKEN)
    browser.find_element(By.ID, "add-priority").clear()
    browser.find_element(By.ID, "add-priority").send_keys("4")
    browser.find_element(By.ID, "add-submit").click()
    wait_until(browser, lambda d: row(d, 2) is not None, "the added credential in the list")
    assert "credential #2 added" in browser.find_element(By.ID, "flash").text
    added = admin.credentials()[2]
    assert added["authMethod"] == "social" and added["priority"] == 4
    assert added["disabled"] is False
    delete = row(browser, 2).find_element(By.CSS_SELECTOR, ".act-delete")
    assert not delete.is_enabled()  # only a disabled credential may be deleted

    row(browser, 2).find_element(By.CSS_SELECTOR, ".act-disable").click()
    wait_until(browser, lambda d: cell(d, 2, ".status") == "disabled", "the disabled badge")
    assert admin.credentials()[2]["disabled"] is True
    assert cell(browser, 2, ".reason") == "Manual"

    row(browser, 2).find_element(By.CSS_SELECTOR, ".act-delete").click()
    wait_until(browser, lambda d: d.switch_to.alert, "the confirmation").accept()
    wait_until(browser, lambda d: row(d, 2) is None, "the row to go")
    assert set(admin.credentials()) == {1}
    assert "deleted" in browser.find_element(By.ID, "flash").text


def test_device_sign_in_dialog_shows_the_code_and_the_link(harness: Harness, browser: Any) -> None:
    admin = Admin(Http(harness.url), ADMIN_KEY)
    log_in(browser, harness.url)
    browser.find_element(By.CSS_SELECTOR, '[data-view="signin"]').click()
    browser.find_element(By.ID, "device-builder").click()
    wait_until(
        browser, lambda d: d.find_element(By.ID, "device-dialog").is_displayed(), "the dialog"
    )
    device = next(iter(harness.fake.accounts.devices.values()))
    assert browser.find_element(By.ID, "device-code").text == device.user_code
    link = browser.find_element(By.ID, "device-link")
    assert link.get_attribute("href").endswith(f"user_code={device.user_code}")
    assert link.text == "https://view.awsapps.com/start/#/device"

    harness.call(lambda: harness.fake.accounts.approve_device(device.user_code))
    wait_until(
        browser,
        lambda d: "added" in d.find_element(By.ID, "device-status").text,
        "the sign-in to complete",
    )
    added = [c for c in admin.credentials().values() if c["id"] != 1]
    assert len(added) == 1 and added[0]["authMethod"] == "idc"


def test_the_printed_link_logs_in_with_its_one_time_key(harness: Harness, browser: Any) -> None:
    browser.get(f"{harness.url}/admin#key={ADMIN_KEY}")
    wait_until(browser, lambda d: row(d, 1) is not None, "the credential list")
    assert "#key" not in browser.current_url  # the key left the address bar
    assert "key" in browser.find_element(By.ID, "status-line").text
