"""Invitations by e-mail against the real server (spec section 11,
docs/invites.md), and the pages as a newcomer finds them.

The smarthost is aiosmtpd's SMTP server (from PyPI, not written here),
started in the test on a free loopback port; the server sends to it with
``--smtp``.  Browsers are headless Chromium (tests/integration/browser_support.py).
Every wait is a condition with a deadline.

Screenshot of the mail: ``PRESENCE_SCREENSHOTS=docs/screenshots pytest
tests/integration/test_invites.py -k home_page`` keeps ``invite-mail.png``.
"""
from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from browser_support import (  # noqa: F401  (fixtures)
    LIVE_TIMEOUT, BrowserPages, _chromium_launcher, chromium, log_in, me, row, screenshot,
    wait_live,
)
from presence_harness import expect, free_port, login, new_user, register, unique_name


class Sink:
    """aiosmtpd's SMTP server on a loopback port, keeping what it receives."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller
        self.port = port
        self.messages: List[Any] = []
        self.envelopes: List[Any] = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with sink.lock:
                    sink.envelopes.append(envelope)
                    sink.messages.append(email.message_from_bytes(
                        envelope.original_content or envelope.content,
                        policy=email.policy.default))
                return "250 Message accepted for delivery"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)

    def start(self) -> "Sink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def wait(self, count: int, timeout: float = 15.0) -> List[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"{count} mails expected, {len(self.messages)} arrived")

    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(free_port()).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def smtp_server(server_factory: Any, sink: Sink) -> Any:
    return server_factory.start(smtp=sink.endpoint(), smtp_retry=0.5)


def parts(msg: Any) -> tuple:
    return (msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content())


def link(msg: Any, what: str = "/i/") -> str:
    text = parts(msg)[0]
    found = re.findall(r"http://\S+" + re.escape(what) + r"[A-Za-z0-9_-]{20,}", text)
    assert found, text
    return found[0]


def token_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def test_an_invitation_through_the_api_arrives_with_both_parts_and_a_live_badge(
        smtp_server, sink, heartbeats):
    api = smtp_server.api()
    alice = new_user(api, "alice")
    r = api.post("/api/invite", form={**alice.auth, "email": "bob@example.org",
                                      "note": "Join me <b>here</b> & now"})
    expect(r, 201, "invite")
    assert r.json()["queued"] is False
    # injection attempts: 400, nothing sent
    for data in ({"email": "bob@example.org\r\nBcc: eve@evil.test"},
                 {"email": "bob@example.org", "note": "hi\r\nBcc: eve@evil.test"},
                 {"email": "bob@example.org\nBcc: eve@evil.test"},
                 {"email": "not-an-address"}):
        expect(api.post("/api/invite", form={**alice.auth, **data}), 400, repr(data))
    (msg,) = sink.wait(1)
    assert sink.envelopes[0].rcpt_tos == ["bob@example.org"]
    assert msg["To"] == "bob@example.org" and msg["Bcc"] is None
    assert msg["From"].addresses[0].addr_spec == "presence@localhost"
    assert alice.name in msg["Subject"]
    text, html = parts(msg)
    assert alice.name in text and alice.name in html
    assert "Join me <b>here</b> & now" in text
    assert "Join me &lt;b&gt;here&lt;/b&gt; &amp; now" in html
    page = link(msg)
    unsubscribe = msg["List-Unsubscribe"].strip().strip("<>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/i/u/" in unsubscribe and unsubscribe in text
    assert page in html and "/badge/" in html
    token = token_of(page)
    assert len(token) >= 32
    # the badge, live: offline, then available while alice holds a heartbeat
    svg = api.get(f"/badge/{token}.svg")
    expect(svg, 200, "badge")
    assert svg.headers["Content-Type"] == "image/svg+xml"
    assert "no-store" in svg.headers["Cache-Control"]
    assert "offline" in svg.text
    hb = heartbeats.open(alice, server=smtp_server)
    assert "online" in api.get(f"/badge/{token}.svg").text
    # away, then busy, with a status text: each opening shows the state now
    expect(api.post("/api/status", form={**alice.auth, "state": "away",
                                         "text": "at lunch <b>"}), 200, "away")
    away = api.get(f"/badge/{token}.svg").text
    assert "away" in away and "at lunch &lt;b&gt;" in away and "<b>" not in away
    expect(api.post("/api/status", form={**alice.auth, "state": "busy"}), 200, "busy")
    assert "busy" in api.get(f"/badge/{token}.svg").text
    expect(api.post("/api/status", form={**alice.auth, "state": "available"}), 200, "back")
    assert "online" in api.get(f"/badge/{token}.svg").text
    png = api.get(f"/badge/{token}.png")
    assert png.headers["Content-Type"] == "image/png" and png.body[:4] == b"\x89PNG"
    hb.close()
    deadline = time.monotonic() + 10
    while "offline" not in api.get(f"/badge/{token}.svg").text:
        assert time.monotonic() < deadline, "the badge never showed offline again"
        time.sleep(0.2)
    listed = api.get("/api/invites", query=alice.auth).json()["invites"]
    assert listed[0]["email"] == "bob@example.org" and listed[0]["mail"] == "sent"
    assert listed[0]["opens"] >= 4
    # the mail reader's one-click unsubscribe (RFC 8058): no more invitations
    path = unsubscribe.split(str(smtp_server.port), 1)[1]
    expect(api.post(path, body=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}),
           200, "one-click unsubscribe")
    again = api.post("/api/invite", form={**alice.auth, "email": "bob@example.org"})
    expect(again, 403, "invite an address that unsubscribed")
    assert len(sink.messages) == 1
    # the log shows no token
    assert token not in smtp_server.output()
    assert token_of(unsubscribe) not in smtp_server.output()


def test_the_smarthost_down_then_up_the_mail_arrives_once(server_factory):
    port = free_port()
    server = server_factory.start(smtp=f"tcp:host=127.0.0.1:port={port}", smtp_retry=0.5)
    api = server.api()
    alice = new_user(api, "alice")
    r = api.post("/api/invite", form={**alice.auth, "email": "bob@example.org"})
    expect(r, 202, "invite while the smarthost is down")
    assert r.json()["queued"] is True
    outbox = server.data_dir / "outbox"
    assert (outbox / f"{r.json()['id']}.eml").exists()
    sink = Sink(port).start()
    try:
        (msg,) = sink.wait(1, timeout=20)
        assert msg["To"] == "bob@example.org"
        deadline = time.monotonic() + 10
        while api.get("/api/invites", query=alice.auth).json()["invites"][0]["mail"] != "sent":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # a bounded observation: retries would come every 0.5-4 s
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert len(sink.messages) == 1
            time.sleep(0.25)
        assert not (outbox / f"{r.json()['id']}.eml").exists()
        assert (outbox / "sent" / f"{r.json()['id']}.eml").exists()
        # and a restart does not send it again
        server.stop()
        server.start()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert len(sink.messages) == 1
            time.sleep(0.25)
    finally:
        sink.stop()


def test_without_smtp_the_mail_is_an_eml_file_in_the_outbox(server_factory):
    server = server_factory.start()
    api = server.api()
    alice = new_user(api, "alice")
    r = api.post("/api/invite", form={**alice.auth, "email": "bob@example.org"})
    expect(r, 201, "invite")
    eml = server.data_dir / "outbox" / f"{r.json()['id']}.eml"
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert msg["To"] == "bob@example.org" and alice.name in parts(msg)[0]


def card_shot(locator: Any, name: str, tmp_path: Path) -> None:
    """A screenshot of one element, kept like browser_support.screenshot's."""
    import os
    path = tmp_path / name
    locator.screenshot(path=str(path))
    assert path.stat().st_size > 1000
    keep = os.environ.get("PRESENCE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / name).write_bytes(path.read_bytes())


def _expect():
    from playwright.sync_api import expect as pw_expect
    return pw_expect


@pytest.mark.requires_program("chromium")
def test_the_home_page_invites_and_the_link_opens_a_guest_chat_then_a_registration(
        smtp_server, sink, chromium, heartbeats, tmp_path):
    pw = _expect()
    pages = BrowserPages(chromium, smtp_server.base)
    try:
        _home_page_flow(pw, pages, smtp_server, sink, heartbeats, tmp_path)
    finally:
        pages.close()
    assert not pages.errors, pages.errors


def _home_page_flow(pw, pages, server, sink, heartbeats, tmp_path) -> None:
    api = server.api()
    alice = register(api, unique_name("alice"))
    home = pages.new()
    log_in(home, alice.name, alice.password)
    form = home.locator("#invite-form")
    form.locator("#f-email").fill("bob@example.org")
    form.locator("#f-note").fill("Come and chat with me <3")
    form.locator("button[type=submit]").click()
    home.wait_for_url("**/home?invited=sent*")
    pw(home.locator("#invite .notice")).to_have_text("Invitation sent.")
    pw(home.locator("#invites li.invite .to")).to_have_text("bob@example.org")
    pw(home.locator("#invites li.invite .inv")).to_have_text("sent")
    card_shot(home.locator("#invite"), "home-invite.png", tmp_path)
    (msg,) = sink.wait(1)
    text, html = parts(msg)
    assert alice.name in text and "Come and chat with me <3" in text
    assert "Come and chat with me &lt;3" in html
    # the mail as a mail reader shows it (its badge fetched live from the server)
    reader = pages.new(width=720, height=560)
    reader.set_content(html)
    reader.wait_for_function("() => [...document.images].every(i => i.complete"
                             " && i.naturalWidth > 0)")
    screenshot(reader, "invite-mail.png", tmp_path, full_page=False)
    home.close()  # alice's browser goes; she is on her phone (her heartbeat below)

    # alice holds a heartbeat (another device); bob opens the link as a guest
    alice_api = login(api, alice)
    hb = heartbeats.open(alice_api, server=server)
    guest = pages.new()
    guest.goto(link(msg))
    wait_live(guest)
    guest_name = me(guest)
    assert guest_name.startswith("guest.")
    pw(row(guest, alice.name)).to_have_attribute("data-presence", "online")
    hb.wait_for(f"msg initChat {guest_name}", timeout=5)
    box = guest.locator(f'.chatbox[data-peer="{alice.name}"]')
    pw(box).to_be_visible()
    box.locator("input").fill("Hi Alice, it is Bob")
    box.locator("input").press("Enter")
    chat = hb.wait_for(lambda f: f.kind == "chat" and f.words[2] == guest_name, timeout=5)
    assert chat.payload == "Hi Alice, it is Bob"
    expect(api.post("/chat", form={**alice_api.auth, "to": guest_name,
                                   "msg": "Hello Bob!"}), 202, "answer")
    pw(box.locator("li.theirs .text")).to_have_text("Hello Bob!")
    screenshot(guest, "invite-guest.png", tmp_path)

    # bob registers from the page: each is in the other's address book
    join = guest.locator("#invite-register")
    join.locator("#f-username").fill("Bob" + unique_name("x")[-6:])
    bob_name = join.locator("#f-username").input_value().lower()
    join.locator("#f-password").fill("bob-secret-1")
    join.locator("#f-password2").fill("bob-secret-1")
    join.locator("button[type=submit]").click()
    guest.wait_for_url("**/home")
    pw(guest.locator("h1")).to_have_text(f"Welcome, {bob_name}")
    pw(guest.locator("#away")).to_have_text("this is your first visit")
    pw(row(guest, alice.name)).to_have_attribute("data-presence", "online")
    book = api.get("/api/contacts", query=alice_api.auth).json()
    assert [m["name"] for m in book["members"]] == [bob_name]
    listed = api.get("/api/invites", query=alice_api.auth).json()["invites"]
    assert listed[0]["accepted_by"] == bob_name and listed[0]["clicked"]
    # no token of the mail is in the server's log (access log included)
    assert token_of(link(msg)) not in server.output()
    assert token_of(msg["List-Unsubscribe"].strip().strip("<>")) not in server.output()


# -- the pages as a newcomer found them -------------------------------------------------

@pytest.mark.requires_program("chromium")
def test_a_newcomer_registers_as_carol_stays_present_on_settings_and_sees_a_tidy_footer(
        server_factory, chromium, tmp_path):
    pw = _expect()
    server = server_factory.start(linger=1, poll=0.5)
    pages = BrowserPages(chromium, server.base)
    try:
        api = server.api()
        page = pages.new()
        page.goto("/register")
        name = "Carol" + unique_name("")[-6:]
        page.fill("#f-username", name)
        page.fill("#f-password", "carol-secret-1")
        page.fill("#f-password2", "carol-secret-1")
        page.locator("form[action='/register'] button[type=submit]").click()
        page.wait_for_url("**/home")     # the browser did not refuse the capital
        carol = name.lower()
        pw(page.locator("h1")).to_have_text(f"Welcome, {carol}")
        pw(page.locator("#away")).to_have_text("this is your first visit")
        assert "under a minute" not in page.locator("dl.figures").inner_text()
        wait_live(page)

        def online() -> bool:
            return api.get(f"/api/presence/{carol}").json()["online"]
        assert online()
        page.goto("/settings")
        pw(page.locator("html")).to_have_attribute("data-present", "live")
        # longer than linger + two sweeps: still online on a page without the live script
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert online(), "carol went offline on /settings"
            time.sleep(0.25)
        page.goto("/logout")
        # a narrow page: the footer's text starts where the content's does
        for width in (1000, 360):
            page.set_viewport_size({"width": width, "height": 700})
            page.goto("/settings")
            main = page.locator("main").bounding_box()
            padding = page.evaluate("() => parseFloat(getComputedStyle("
                                    "document.querySelector('main')).paddingLeft)")
            foot = page.locator("footer.foot").bounding_box()
            foot_padding = page.evaluate("() => parseFloat(getComputedStyle("
                                         "document.querySelector('footer.foot')).paddingLeft)")
            assert abs((main["x"] + padding) - (foot["x"] + foot_padding)) < 1.5, (
                width, main, foot)
            assert abs(main["width"] - foot["width"]) < 1.5, (width, main, foot)
    finally:
        pages.close()
    assert not pages.errors, pages.errors
