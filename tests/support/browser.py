"""Debian's Chromium, headless, driven by Selenium through Debian's chromedriver.

Selenium is given the driver's path and the browser's binary, so it never starts
Selenium Manager (which would download a driver or a browser). ``Dashboard`` drives
the orchestrator's page the way a user does: sign in, submit, watch, open the
trace, cancel; ``shot`` writes a screenshot under build/screenshots/.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"


def browser_available() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    for path in (CHROMEDRIVER, CHROMIUM):
        if shutil.which(path) is None:
            return (
                f"{path} is missing: run make bootstrap (apt-get install chromium chromium-driver)"
            )
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[webdriver.Chrome]:
    missing = browser_available()
    if missing is not None:
        pytest.fail(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI; the page is ours, not the web's
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-proxy-server",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


class Dashboard:
    """The page at ``base_url`` (the API's address), driven through ``driver``."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, token: str) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.token = token

    # -- waiting and finding -------------------------------------------------------------
    def wait(self, check: Callable[[webdriver.Chrome], Any], what: str, timeout: float = 60) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(
            check, message=f"waited {timeout} s for {what}"
        )

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        found = self.texts(css)
        return found[0] if found else ""

    def attrs(self, css: str, name: str) -> list[str]:
        """An attribute of every element matching ``css``, read in one step (the page
        re-renders its live lists, so elements found earlier can be gone)."""
        values: list[str] = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]) ?? '')",
            css,
            name,
        )
        return values

    def texts(self, css: str) -> list[str]:
        """The visible text of every element matching ``css``, read in one step."""
        values: list[str] = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", css
        )
        return values

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    # -- what a user does --------------------------------------------------------------
    def open(self, fragment: str = "") -> None:
        self.driver.get(f"{self.base_url}/{fragment}")

    def sign_in(self, token: str | None = None) -> None:
        self.open()
        self.wait(lambda d: self.all("#token"), "the sign-in form")
        field = self.find("#token")
        field.clear()
        field.send_keys(token or self.token)
        self.find("#sign-in-button").click()

    def signed_in(self) -> None:
        self.sign_in()
        self.wait(lambda d: self.all("#task-rows"), "the task list after signing in")

    def submit(self, text: str, **limits: float) -> str:
        """Submit from the form; returns the new task's id (the page opens it)."""
        self.open("ui/#/tasks")
        self.wait(lambda d: self.all("#task-text"), "the submit form")
        self.find("#task-text").send_keys(text)
        for name, value in limits.items():
            field = self.find(f"#task-{name}")
            field.clear()
            field.send_keys(str(value))
        self.find("#task-submit").click()
        self.wait(lambda d: "#/tasks/" in d.current_url, "the new task's page")
        return str(self.driver.current_url.rsplit("#/tasks/", 1)[1])

    def task_status(self) -> str:
        return self.text("#task-status")

    def wait_status(self, *statuses: str, timeout: float = 180) -> str:
        self.wait(lambda d: self.task_status() in statuses, f"task status in {statuses}", timeout)
        return self.task_status()

    def filter_status(self, status: str) -> None:
        Select(self.find("#status-filter")).select_by_value(status)
