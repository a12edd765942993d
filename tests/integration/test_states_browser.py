"""Presence states in a real browser (spec section 12, issue 14's proof).

Headless Chromium against the real ``twistd -n presence``, started with
``--away-after 2`` (the test switch that shortens the pages' idle time from
five minutes): alice's home page stops getting input and a watcher's page
sees her ``away`` with no reload; her next input turns her back online.
Busy set with the home page's form shows with its status text (as text), and
the watcher's options stay active.  Every wait is a condition with a deadline.
"""
from __future__ import annotations

import pytest

from browser_support import (  # noqa: F401  (fixtures)
    LIVE_TIMEOUT, _chromium_launcher, browser_pages, chromium, log_in, row, screenshot,
    wait_live,
)
from presence_harness import register, unique_name

pytestmark = pytest.mark.requires_program("chromium")

AWAY_AFTER = 2
#: the idle time, the script's check interval (a quarter of it) and the
#: spec's bound for a row to change
AWAY_BOUND = int((AWAY_AFTER * 1.25) * 1000) + LIVE_TIMEOUT


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "away_after": AWAY_AFTER}


def watched_alice(api, browser_pages):
    """alice, her row on a guest's page of her (offline at first), and her
    live home page once she logged in."""
    from playwright.sync_api import expect
    alice = register(api, unique_name("alice"))
    watcher = browser_pages.new()
    watcher.goto(f"/{alice.name}")
    wait_live(watcher)
    alice_row = row(watcher, alice.name)
    expect(alice_row).to_have_attribute("data-presence", "offline")
    home = browser_pages.new()
    log_in(home, alice.name, alice.password)
    wait_live(home)
    return alice, alice_row, home


def test_an_idle_page_turns_its_user_away_for_a_watcher_and_input_brings_her_back(
        api, browser_pages):
    from playwright.sync_api import expect
    alice, alice_row, home = watched_alice(api, browser_pages)
    # no input on alice's page: after --away-after seconds she is away
    expect(alice_row).to_have_attribute("data-presence", "away", timeout=AWAY_BOUND)
    expect(alice_row.locator(".state")).to_have_text("away")
    expect(alice_row.locator("[data-action=chat]")).to_be_enabled()
    expect(alice_row.locator("[data-action=call]")).to_have_attribute(
        "href", f"sip:{alice.name}@localhost")

    # she moves the mouse: online again, at once
    home.mouse.move(200, 200)
    home.mouse.move(220, 240)
    expect(alice_row).to_have_attribute("data-presence", "online", timeout=LIVE_TIMEOUT)
    # and idle again: away again
    expect(alice_row).to_have_attribute("data-presence", "away", timeout=AWAY_BOUND)
    home.keyboard.press("Shift")
    expect(alice_row).to_have_attribute("data-presence", "online", timeout=LIVE_TIMEOUT)


def test_busy_with_a_status_text_from_the_home_page(api, browser_pages, tmp_path):
    from playwright.sync_api import expect
    alice, alice_row, home = watched_alice(api, browser_pages)
    hostile = '<img src=x onerror="document.title=1">in a <b>meeting</b>'
    home.select_option("#f-state", "busy")
    home.fill("#f-status", hostile)
    home.locator("#state-form button[type=submit]").click()
    expect(alice_row).to_have_attribute("data-presence", "busy", timeout=LIVE_TIMEOUT)
    expect(alice_row.locator(".status-text")).to_have_text(hostile)
    assert alice_row.locator("img, .status-text b").count() == 0
    screenshot(alice_row.page, "call-busy.png", tmp_path)
    expect(alice_row.locator("[data-action=chat]")).to_be_enabled()

    # busy is a choice: idle time and input leave it as it is
    home.mouse.move(100, 100)
    expect(home.locator("#live")).to_have_attribute("data-my-state", "busy")
    # a watcher page opened now gets the state in its first rows
    late = browser_pages.new()
    late.goto(f"/{alice.name}")
    expect(row(late, alice.name)).to_have_attribute("data-presence", "busy")
    expect(row(late, alice.name).locator(".status-text")).to_have_text(hostile)

    # back to available: idle detection works again
    home.select_option("#f-state", "available")
    home.fill("#f-status", "")
    home.locator("#state-form button[type=submit]").click()
    expect(alice_row).to_have_attribute("data-presence", "online", timeout=LIVE_TIMEOUT)
    expect(alice_row.locator(".status-text")).to_have_text("")
    expect(alice_row).to_have_attribute("data-presence", "away", timeout=AWAY_BOUND)


def test_a_hidden_page_reports_away(api, browser_pages):
    from playwright.sync_api import expect
    alice, alice_row, home = watched_alice(api, browser_pages)
    home.mouse.move(10, 10)
    expect(alice_row).to_have_attribute("data-presence", "online", timeout=LIVE_TIMEOUT)
    # the tab is hidden (headless Chromium never hides one: the page is told so)
    home.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        Object.defineProperty(document, 'visibilityState',
                              {configurable: true, get: () => 'hidden'});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    expect(alice_row).to_have_attribute("data-presence", "away", timeout=LIVE_TIMEOUT)
