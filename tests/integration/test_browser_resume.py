"""A logged-in page gets its session back by itself when the server restarts
under it (issue 12): Chromium keeps the resume token in its HttpOnly
``presence_resume`` cookie, and the page's script calls ``/api/resume``
with it; no password is typed again.  Every wait has a deadline."""
from __future__ import annotations

import pytest

from browser_support import (  # noqa: F401  (fixtures)
    LIVE_TIMEOUT, BrowserPages, _chromium_launcher, chromium, log_in, me, row, wait_live,
)
from presence_harness import User, free_port, login, register, unique_name

pytestmark = pytest.mark.requires_program("chromium")


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_home_page_resumes_its_session_after_a_server_restart(server_factory, chromium,
                                                                  heartbeats, stop):
    from playwright.sync_api import expect
    data = server_factory.new_data_dir()
    http = f"tcp:{free_port()}:interface=127.0.0.1"
    s1 = server_factory.start(data_dir=data, http=http)
    api = s1.api()
    alice = register(api, unique_name("alice"))
    bob = register(api, unique_name("bob"))
    pages = BrowserPages(chromium, s1.base)
    try:
        page = pages.new()
        log_in(page, alice.name, alice.password)
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["presence_resume"]["httpOnly"] is True
        assert cookies["presence_resume"]["path"] == "/api/resume"
        assert page.evaluate("document.cookie").find("presence_resume") < 0
        wait_live(page)
        first = cookies["presence_session"]["value"]
        s1.kill() if stop == "sigkill" else s1.stop()
        s2 = server_factory.start(data_dir=data, http=http)
        wait_live(page, timeout=30_000)
        assert me(page) == alice.name
        now = {c["name"]: c["value"] for c in page.context.cookies()}
        assert now["presence_session"] != first       # a new session, from the token
        assert "resumed a session" in s2.output(since_start=True)
        # and it is live: bob shows up in alice's address book row
        api2 = s2.api()
        back = User(alice.name, alice.password, now["presence_session"])
        assert api2.post("/api/contacts", form={**back.auth, "contact": bob.name}).status == 204
        expect(row(page, bob.name)).to_have_attribute("data-presence", "offline",
                                                      timeout=10_000)
        heartbeats.open(login(api2, bob), server=s2)
        expect(row(page, bob.name)).to_have_attribute("data-presence", "online",
                                                      timeout=LIVE_TIMEOUT)
    finally:
        pages.close()
    assert not pages.errors, pages.errors
