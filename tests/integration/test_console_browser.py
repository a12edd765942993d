"""The operator console in Chromium, on the real server's ``--admin``
endpoint: the token opens it, the held count changes live when a client
connects, ending a session drops that client's heartbeat and a watcher sees
the user go offline, and a notice reaches a held heartbeat."""
from __future__ import annotations

import pytest

from browser_support import (  # noqa: F401  (fixtures)
    LIVE_TIMEOUT, BrowserPages, _chromium_launcher, browser_pages, chromium, log_in,
    pages_at, screenshot, wait_live,
)
from presence_harness import HeartbeatReader, expect as expect_status, new_user, register

pytestmark = pytest.mark.requires_program("chromium")

#: the event stream sends the gauges every second
GAUGE_TIMEOUT = 5_000


@pytest.fixture
def console_pages(chromium, server):
    yield from pages_at(chromium, server.admin_base)


def open_console(pages: BrowserPages, server, name: str = "ops-browser"):
    from playwright.sync_api import expect
    page = pages.new()
    page.goto("/")
    page.fill("#token", server.admin_token())
    page.fill("#name", name)
    page.click("#enter")
    expect(page.locator("#stream")).to_have_text("live", timeout=GAUGE_TIMEOUT)
    return page


def test_a_wrong_token_keeps_the_console_closed(console_pages, server):
    from playwright.sync_api import expect
    page = console_pages.new()
    page.goto("/")
    page.fill("#token", "certainly-not-the-token")
    page.click("#enter")
    expect(page.locator("#error")).to_have_text("That is not the operator token.")
    assert page.locator("#stream").count() == 0


def test_the_console_shows_held_heartbeats_live_ends_a_session_and_sends_a_notice(
        console_pages, browser_pages, server, api, tmp_path):
    from playwright.sync_api import expect
    page = open_console(console_pages, server)
    held = page.locator("#g-held")
    expect(held).not_to_have_text("–", timeout=GAUGE_TIMEOUT)
    before = int(held.inner_text())

    # a client connects: the count goes up without a reload
    watcher, bob = new_user(api, "watcher"), new_user(api, "bob")
    expect_status(api.post("/api/active", form={**watcher.auth, "group": bob.name}), 204)
    watching = HeartbeatReader.open(server.host, server.port, watcher.name, watcher.session)
    expect(held).to_have_text(str(before + 1), timeout=GAUGE_TIMEOUT)
    bob_hb = HeartbeatReader.open(server.host, server.port, bob.name, bob.session)
    expect(held).to_have_text(str(before + 2), timeout=GAUGE_TIMEOUT)
    watching.wait_for(f"msg update online {bob.name}")

    # find bob, end his session: his heartbeat ends, the watcher sees him go
    page.fill("#q", bob.name)
    page.click("#find")
    expect(page.locator("#user-facts")).to_contain_text(f"{bob.name}: available")
    page.click("#end-0")
    expect(page.locator("#user-status")).to_have_text(f"ended a session of {bob.name}")
    bob_hb.wait_for("msg bye admin")
    watching.wait_for(f"msg update offline {bob.name}")
    expect(held).to_have_text(str(before + 1), timeout=GAUGE_TIMEOUT)
    expect(page.locator("#user-facts")).to_contain_text(f"{bob.name}: offline")

    # a notice to everyone online reaches the watcher's held heartbeat, and
    # a user's page shows it
    carol = register(api)
    carol_page = browser_pages.new()
    log_in(carol_page, carol.name, carol.password)
    wait_live(carol_page)
    page.fill("#notice-text", "the server restarts at 03:00")
    page.click("#send-notice")
    expect(page.locator("#notice-status")).to_contain_text("sent to")
    frame = watching.wait_for("msg notice")
    assert frame.payload == "the server restarts at 03:00"
    expect(carol_page.locator("#notice")).to_have_text(
        "Notice from the operator: the server restarts at 03:00", timeout=LIVE_TIMEOUT)
    page.fill("#q", carol.name)
    page.click("#find")
    expect(page.locator("#user-facts")).to_contain_text(f"{carol.name}: available")
    screenshot(page, "console.png", tmp_path)   # docs/screenshots/console.png
    assert f"admin ops-browser@127.0.0.1 ended a session of {bob.name}" in server.output()
    watching.close()
    bob_hb.close()
