"""The console in a real browser: Debian's headless Chromium driven by Selenium (through /usr/bin/chromedriver,
so that Selenium Manager downloads nothing) against a real `plangate serve` on 127.0.0.1. No skip when Chromium
is missing: CI installs it (.ci/run). Screenshots of each page go to build/test-artifacts/console/ (git-ignored).
"""
from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.server.conftest import ADMIN_TOKEN, BASE_ENV, ROOT, TOKEN, GateProcess
from tests.server.console_flow import WEBHOOK, lifecycle, play

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("PLANGATE_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "console"


@pytest.fixture
def served(tmp_path):
    gate = GateProcess({**BASE_ENV, **WEBHOOK, "PLANGATE_DATABASE": str(tmp_path / "console.sqlite3")}, tmp_path)
    yield gate
    gate.stop()


@pytest.fixture
def browser():
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), \
        "the console tests need Debian's chromium and chromium-driver packages (apt-get install chromium " \
        "chromium-driver; .ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height, 600), 4000))
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def assert_on_login(driver) -> None:
    """The browser is on (or being redirected to) the login page. get() can return while a redirect is still
    pending on a loaded machine (CI once read the URL asked for): it is waited for, and a page that never
    redirects still fails, with what it showed."""
    try:
        WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith("/console/login"))
    except TimeoutException:
        raise AssertionError(f"not the login page: {driver.current_url}\n{driver.page_source[:2000]}") from None


def log_in(driver, url: str, token: str, label: str = "Ada") -> None:
    # Once in a while (a loaded machine, right after a logout) Chromium replaces the login page's document
    # between finding its button and clicking it ("Node ... does not belong to the document"): nothing was
    # sent then, and the login is tried again on a fresh page.
    for attempt in range(3):
        driver.get(url + "/console/")
        assert_on_login(driver)
        try:
            driver.find_element(By.NAME, "label").send_keys(label)
            driver.find_element(By.NAME, "token").send_keys(token)
            submit(driver, driver.find_element(By.CSS_SELECTOR, "form button"))
            return
        except WebDriverException as exc:
            if attempt == 2 or not (isinstance(exc, StaleElementReferenceException)
                                    or "does not belong to the document" in str(exc)):
                raise


def submit(driver, element) -> None:
    """Click a button (or submit a field's form) and wait until the next page has loaded."""
    old = driver.find_element(By.TAG_NAME, "html")
    if element.tag_name == "input":
        element.submit()
    else:
        element.click()
    WebDriverWait(driver, 10).until(lambda _: _gone(old))
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _gone(element) -> bool:
    """Has the page that held `element` been replaced? Asked while the browser swaps documents, chromedriver may
    answer "does not belong to the document" instead of a stale element: that is gone too."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def shows(driver, text: str) -> bool:
    """Does the page (once the navigation a click started has finished) show text? Waits up to 10 s for it."""
    try:
        WebDriverWait(driver, 10).until(lambda d: text in d.page_source)
    except TimeoutException:
        return False
    return True


def find(driver, q: str) -> None:
    box = WebDriverWait(driver, 10).until(lambda d: d.find_element(By.NAME, "q"))
    box.send_keys(q)
    submit(driver, box)


async def test_an_operator_finds_a_subject_reads_its_timeline_and_acts(served, browser):
    life = lifecycle()
    async with aiohttp.ClientSession() as session:
        class Target:
            url = served.url
        Target.session = session    # type: ignore[attr-defined]
        await play(Target, life)

    log_in(browser, served.url, ADMIN_TOKEN, "Ada Lovelace")
    assert shows(browser, "Ada Lovelace (admin)")
    shot(browser, "find")
    find(browser, life.customer)
    assert shows(browser, "Timeline")
    assert browser.current_url.endswith(f"/console/subjects/{life.subject}")
    assert browser.find_element(By.ID, "status").text == "paid"
    timeline = browser.find_element(By.ID, "timeline").text
    assert "customer.subscription.created" in timeline and "applied" in timeline
    assert browser.find_elements(By.CSS_SELECTOR, "svg.usage")
    shot(browser, "subject")

    Select(browser.find_element(By.NAME, "what")).select_by_value("to:grace_period")
    browser.find_element(By.NAME, "reason").send_keys("card expired, customer called")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form[action$='/transition'] button"))
    assert shows(browser, "You are about to")
    shot(browser, "confirm")
    submit(browser, browser.find_element(By.ID, "confirm"))
    assert browser.find_element(By.ID, "status").text == "grace_period"
    first = browser.find_element(By.CSS_SELECTOR, "#timeline tr.transition").text
    assert "console:Ada Lovelace" in first and "card expired, customer called" in first

    browser.get(served.url + "/console/plan")
    svg = browser.find_element(By.ID, "plan-diagram")
    assert svg.tag_name == "svg" and svg.size["width"] > 300
    assert len(svg.find_elements(By.CSS_SELECTOR, "g.status")) >= 8
    assert len(svg.find_elements(By.CSS_SELECTOR, "g.transition")) >= 8
    shot(browser, "plan")
    svg.screenshot(str(ARTIFACTS / "plan-diagram.png"))
    browser.get(served.url + "/console/health")
    shot(browser, "health")
    browser.get(served.url + "/console/events?outcome=applied")
    assert "checkout.session.completed" in browser.find_element(By.ID, "events").text
    shot(browser, "webhooks")
    browser.get(served.url + "/console/jobs")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")) == 4
    shot(browser, "jobs")

    # On a phone: the page fits the screen's width (wide tables scroll inside their own box).
    browser.set_window_size(390, 844)
    browser.get(served.url + f"/console/subjects/{life.subject}")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    browser.save_screenshot(str(ARTIFACTS / "subject-phone.png"))
    browser.set_window_size(1280, 1000)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "header form button"))
    assert_on_login(browser)
    browser.get(served.url + "/console/plan")
    assert_on_login(browser)
    logged = "".join(served.output())
    assert "/console/subjects" in logged or "transition" in logged     # the gate did log this session's work
    assert ADMIN_TOKEN not in logged and TOKEN not in logged


def test_a_wrong_token_a_missing_csrf_token_and_a_read_only_token_are_refused(served, browser):
    log_in(browser, served.url, "wrong-token")
    assert shows(browser, "Wrong token.")
    assert "wrong-token" not in browser.page_source
    shot(browser, "login-refused")

    log_in(browser, served.url, TOKEN, "Reader")
    assert shows(browser, "Reader (read-only)")
    find(browser, "alice")
    assert shows(browser, "Read-only console")
    assert not browser.find_elements(By.NAME, "what")
    shot(browser, "read-only")

    browser.get(served.url + "/console/")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "header form button"))
    log_in(browser, served.url, ADMIN_TOKEN)
    find(browser, "alice")
    # The form as a forger would post it: without the page's CSRF token.
    browser.execute_script("document.querySelector(\"form[action$='/transition'] input[name=csrf]\").remove()")
    browser.find_element(By.NAME, "reason").send_keys("forged")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form[action$='/transition'] button"))
    assert shows(browser, "CSRF token is missing or wrong")
    browser.get(served.url + "/console/subjects/alice")
    assert "forged" not in browser.find_element(By.ID, "timeline").text
