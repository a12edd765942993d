"""Headless Chromium for the browser tests of the pages (tests/integration/test_browser.py).

Chromium is Debian's ``chromium`` driven by Playwright (``pip install
playwright``; no browser download: Playwright launches the installed program
with ``executable_path``).  Without the program or without Playwright the
tests skip with the reason, and fail under ``PRESENCE_REQUIRE_ALL=1`` (CI).

* ``chromium`` (function fixture): the launched browser, shared by a test
  module (launched on first use, closed after the module).
* ``browser_pages``: opens pages, each in its own browser context (own
  cookies: one context is one person), with bounded default timeouts; every
  uncaught script error on a page fails the test at teardown.

Every wait is a condition wait with a deadline (Playwright's ``expect`` and
``wait_for_*``), never a fixed sleep.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking"]
#: bound of every Playwright action and wait unless a test says otherwise (ms)
DEFAULT_TIMEOUT = 10_000
#: the spec's bound for a row to change after a presence change (ms)
LIVE_TIMEOUT = 2_000
#: set to a folder (e.g. docs/screenshots) to keep the screenshots there
SCREENSHOTS_ENV = "PRESENCE_SCREENSHOTS"


def playwright_sync_api() -> Any:
    """``playwright.sync_api``, or skip (fail under PRESENCE_REQUIRE_ALL=1)."""
    try:
        from playwright import sync_api
    except ImportError:
        reason = ("the Python package 'playwright' is not installed (pip install -e '.[test]'"
                  " or pip install playwright; no browser download is needed)")
        if os.environ.get("PRESENCE_REQUIRE_ALL", "").strip() == "1":
            pytest.fail(reason + " and PRESENCE_REQUIRE_ALL=1 forbids skipping", pytrace=False)
        pytest.skip(reason)
    return sync_api


class Launcher:
    """Starts Playwright and Chromium once, on first use."""

    def __init__(self, args: Optional[List[str]] = None) -> None:
        self.playwright: Any = None
        self.browser: Any = None
        #: Chromium's command line (a module may add flags: test_calls_browser.py)
        self.args = list(CHROMIUM_ARGS if args is None else args)

    def get(self, executable: str) -> Any:
        if self.browser is None:
            sync_api = playwright_sync_api()
            self.playwright = sync_api.sync_playwright().start()
            try:
                self.browser = self.playwright.chromium.launch(
                    executable_path=executable, args=self.args, timeout=30_000)
            except Exception:
                self.playwright.stop()
                self.playwright = None
                raise
        return self.browser

    def close(self) -> None:
        if self.browser is not None:
            try:
                self.browser.close()
            finally:
                self.browser = None
        if self.playwright is not None:
            self.playwright.stop()
            self.playwright = None


@pytest.fixture(scope="module")
def _chromium_launcher() -> Iterator[Launcher]:
    launcher = Launcher()
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture
def chromium(require_program: Any, _chromium_launcher: Launcher) -> Any:
    path = require_program("chromium")
    playwright_sync_api()
    return _chromium_launcher.get(path)


class BrowserPages:
    """Pages of one test, each in its own context (its own cookies)."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.contexts: List[Any] = []
        self.errors: List[str] = []

    def new(self, width: int = 1000, height: int = 760, **kw: Any) -> Any:
        context = self.browser.new_context(base_url=self.base_url,
                                           viewport={"width": width, "height": height}, **kw)
        context.set_default_timeout(DEFAULT_TIMEOUT)
        self.contexts.append(context)
        return self.tab(context)

    def tab(self, context: Any) -> Any:
        """Another page (tab) in ``context``: the same person, the same cookies."""
        page = context.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))
        return page

    def close(self) -> None:
        for context in self.contexts:
            try:
                context.close()
            except Exception:
                pass


def pages_at(chromium: Any, base_url: str) -> Iterator[BrowserPages]:
    """Pages on ``base_url`` (a fixture's body): closed at teardown, where
    any uncaught script error fails the test."""
    pages = BrowserPages(chromium, base_url)
    try:
        yield pages
    finally:
        pages.close()
    assert not pages.errors, f"script errors on the pages: {pages.errors}"


@pytest.fixture
def browser_pages(chromium: Any, server: Any) -> Iterator[BrowserPages]:
    yield from pages_at(chromium, server.base)


def screenshot(page: Any, name: str, tmp_path: Path, full_page: bool = True) -> Path:
    """Save a screenshot under ``tmp_path`` (and under $PRESENCE_SCREENSHOTS
    when set) and return its path."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 1000, f"screenshot {name} is empty"
    keep = os.environ.get(SCREENSHOTS_ENV)
    if keep:
        folder = Path(keep)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(path.read_bytes())
    return path


# -- what a person does on the pages ---------------------------------------------------

def row(page: Any, user: str) -> Any:
    return page.locator(f'li.row[data-user="{user}"]')


def wait_live(page: Any, timeout: int = DEFAULT_TIMEOUT) -> None:
    """The page holds its heartbeat (its status line says so)."""
    from playwright.sync_api import expect
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=timeout)


def log_in(page: Any, name: str, password: str, next_path: Optional[str] = None) -> None:
    page.goto("/login" + (f"?next={next_path}" if next_path else ""))
    page.fill("#f-username", name)
    page.fill("#f-password", password)
    page.locator("form[action='/login'] button[type=submit]").click()
    page.wait_for_url(f"**{next_path or '/home'}")


def log_out(page: Any) -> None:
    page.locator("header nav form[action='/logout'] button").click()
    page.wait_for_url("**/")


def me(page: Any) -> str:
    """The name the page's script runs as (a guest name for a visitor)."""
    page.wait_for_function(
        "() => document.getElementById('live').getAttribute('data-me') !== ''")
    return page.locator("#live").get_attribute("data-me")
