"""The pages in a real browser (spec section 6, issue 3's proof).

Headless Chromium (Playwright over Debian's ``chromium``) against the real
``twistd -n presence`` started by the integration harness.  One browser
context is one person.  Every wait is a condition with a deadline; the
presence changes are held to the spec's two seconds (``LIVE_TIMEOUT``).

Screenshots: ``PRESENCE_SCREENSHOTS=docs/screenshots pytest
tests/integration/test_browser.py -k screenshots`` keeps them in docs/.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from browser_support import (  # noqa: F401  (fixtures)
    LIVE_TIMEOUT, _chromium_launcher, browser_pages, chromium, log_in, log_out, me, row,
    screenshot, wait_live,
)
from presence_harness import expect as expect_status, login, new_user, register, unique_name

pytestmark = pytest.mark.requires_program("chromium")


def _expect():
    from playwright.sync_api import expect
    return expect


def test_guest_sees_alice_come_online_chats_and_sees_her_leave(api, browser_pages):
    expect = _expect()
    alice = register(api, unique_name("alice"), phone="+49 30 1234")

    # a guest opens /alice and lands on alice's page
    guest = browser_pages.new()
    guest.goto(f"/{alice.name}")
    assert guest.url.endswith(f"/call?name={alice.name}")
    alice_row = row(guest, alice.name)
    expect(alice_row).to_have_attribute("data-presence", "offline")
    wait_live(guest)
    guest_name = me(guest)
    assert guest_name.startswith("guest.")
    expect(alice_row.locator("[data-action=chat]")).to_be_disabled()
    expect(alice_row.locator("[data-action=call]")).to_have_attribute("aria-disabled", "true")
    expect(alice_row.locator("[data-action=tel]")).to_have_attribute("href", "tel:+49301234")

    # alice logs in elsewhere: the guest's row turns online without a reload
    alice_page = browser_pages.new()
    with guest.expect_request(lambda r: r.url.endswith("/ack") and r.method == "POST",
                              timeout=12_000):
        log_in(alice_page, alice.name, alice.password)
        wait_live(alice_page)
        expect(alice_row).to_have_attribute("data-presence", "online", timeout=LIVE_TIMEOUT)
        expect(alice_row.locator(".state")).to_have_text("online")
        expect(alice_row.locator("[data-action=chat]")).to_be_enabled()
        expect(alice_row.locator("[data-action=call]")).to_have_attribute(
            "href", f"sip:{alice.name}@localhost")
        # (and within 10 s the page acknowledges the frames it got: POST /ack)

    # the guest chats with alice (hostile text stays text) and alice answers
    alice_row.locator("[data-action=chat]").click()
    guest_box = guest.locator(f'.chatbox[data-peer="{alice.name}"]')
    hostile = '<script>document.title="owned"</script><b>hi</b> & "quotes"'
    guest_box.locator("input").fill(hostile)
    guest_box.locator("input").press("Enter")
    alice_box = alice_page.locator(f'.chatbox[data-peer="{guest_name}"]')
    expect(alice_box.locator("li.theirs .text")).to_have_text(hostile)
    assert alice_page.locator(".chatbox script, .chatbox li.theirs b + span b").count() == 0
    assert alice_page.title() != "owned"
    alice_box.locator("input").fill("Hello, who is this?")
    alice_box.locator("button[type=submit]").click()
    expect(guest_box.locator("li.theirs .text")).to_have_text("Hello, who is this?")
    expect(guest_box.locator("li.mine.sent")).to_have_count(1)

    # alice logs out: the row turns offline, chat and call go inactive
    log_out(alice_page)
    expect(alice_row).to_have_attribute("data-presence", "offline", timeout=LIVE_TIMEOUT)
    expect(alice_row.locator("[data-action=chat]")).to_be_disabled()
    assert alice_row.locator("[data-action=call]").get_attribute("href") is None
    # what the guest writes now goes to alice's message box
    guest_box.locator("input").fill("are you there?")
    guest_box.locator("input").press("Enter")
    expect(guest_box.locator("li.mine.stored")).to_have_count(1)


def test_a_visitor_leaves_a_message_and_alice_sees_it_with_the_hits(api, browser_pages):
    expect = _expect()
    alice = register(api, unique_name("alice"))
    visitor = browser_pages.new()
    visitor.goto(f"/people/{alice.name}")  # hit 1
    wait_live(visitor)
    visitor.reload()  # hit 2
    wait_live(visitor)
    visitor.locator(f'li.row[data-user="{alice.name}"] [data-action=message]').click()
    text = "Call me back: <i>555-0100</i>"
    visitor.fill("#f-text", text)
    visitor.locator("#message-form button[type=submit]").click()
    expect(visitor.locator("#message-form .result")).to_have_text(
        f"Your message is in {alice.name}'s message box.")
    expect(visitor.locator("#f-text")).to_have_value("")

    home = browser_pages.new()
    log_in(home, alice.name, alice.password)
    expect(home.locator("#hits")).to_have_text("2")
    expect(home.locator("#unread")).to_have_text("1")
    message = home.locator("#messages li.message.unread")
    expect(message).to_have_count(1)
    expect(message.locator(".text")).to_have_text(text)
    wait_live(home)

    # a message left while alice is on her home page appears there by itself
    visitor.fill("#f-text", "one more")
    visitor.locator("#message-form button[type=submit]").click()
    expect(home.locator("#messages li.message.unread")).to_have_count(2)
    expect(home.locator("#unread")).to_have_text("2")
    expect(home.locator("#messages li.message").first.locator(".text")).to_have_text("one more")

    # mark read
    home.locator("#messages li.message.unread").first.locator("button").click()
    expect(home.locator("#messages li.message.unread")).to_have_count(1)
    expect(home.locator("#unread")).to_have_text("1")


def test_a_protected_group_refuses_a_wrong_password(api, browser_pages, heartbeats):
    expect = _expect()
    owner = new_user(api, "own")
    member = new_user(api, "mem")
    group = unique_name("club")
    expect_status(api.post("/api/groups", form={**owner.auth, "name": group,
                                                "password": "club-secret"}), 201)
    expect_status(api.post(f"/api/groups/{group}/join",
                           form={**member.auth, "password": "club-secret"}), 204)

    visitor = browser_pages.new()
    visitor.goto(f"/{group}")
    assert visitor.url.endswith(f"/call?name={group}")
    expect(visitor.locator("h1")).to_have_text(group)
    content = visitor.content()
    assert owner.name not in content and member.name not in content
    assert visitor.locator("li.row").count() == 0

    visitor.fill("#f-password", "not the password")
    visitor.locator("form[action='/call'] button[type=submit]").click()
    expect(visitor.locator(".notice.error")).to_contain_text("Wrong password")
    content = visitor.content()
    assert owner.name not in content and member.name not in content
    assert visitor.locator("li.row").count() == 0

    visitor.fill("#f-password", "club-secret")
    visitor.locator("form[action='/call'] button[type=submit]").click()
    visitor.wait_for_url(f"**/call?name={group}")
    expect(visitor.locator("li.row")).to_have_count(2)
    wait_live(visitor)
    # the page is live for the protected group too
    heartbeats(owner)  # the owner comes online
    expect(row(visitor, owner.name)).to_have_attribute("data-presence", "online",
                                                       timeout=LIVE_TIMEOUT)


def test_a_group_page_refetches_its_members_on_refresh(api, browser_pages):
    expect = _expect()
    owner = new_user(api, "own")
    group = unique_name("team")
    expect_status(api.post("/api/groups", form={**owner.auth, "name": group}), 201)
    visitor = browser_pages.new()
    visitor.goto(f"/call?name={group}")
    wait_live(visitor)
    expect(visitor.locator("li.row")).to_have_count(1)
    newcomer = new_user(api, "new")
    expect_status(api.post(f"/api/groups/{group}/join", form=newcomer.auth), 204)
    expect(row(visitor, newcomer.name)).to_have_count(1, timeout=LIVE_TIMEOUT)
    expect(visitor.locator("li.row")).to_have_count(2)
    expect_status(api.post(f"/api/groups/{group}/leave", form=newcomer.auth), 204)
    expect(row(visitor, newcomer.name)).to_have_count(0, timeout=LIVE_TIMEOUT)


def test_an_ended_guest_session_is_replaced_by_a_new_one(api, browser_pages, heartbeats):
    expect = _expect()
    alice = register(api, unique_name("alice"))
    guest = browser_pages.new()
    guest.goto(f"/call?name={alice.name}")
    wait_live(guest)
    first = me(guest)
    cookie = {c["name"]: c["value"] for c in guest.context.cookies()}["presence_session"]
    # the session ends under the page (as expiry does): msg bye, then 403
    expect_status(api.post("/api/logout", form={"me": first, "id": cookie}), 204)
    guest.wait_for_function(
        "(first) => document.getElementById('live').getAttribute('data-me') !== first"
        " && document.getElementById('live').getAttribute('data-me') !== ''", arg=first)
    wait_live(guest)
    second = me(guest)
    assert second != first and second.startswith("guest.")
    # and the new session works: alice comes online, the row follows
    login(api, alice)
    heartbeats(alice)  # alice comes online
    expect(row(guest, alice.name)).to_have_attribute("data-presence", "online",
                                                     timeout=LIVE_TIMEOUT)


def test_settings_pages_in_the_browser(api, browser_pages, heartbeats):
    expect = _expect()
    alice = register(api, unique_name("alice"))
    bob = register(api, unique_name("bob"))
    page = browser_pages.new()
    log_in(page, alice.name, alice.password, "/settings")
    page.fill("#f-phone", "+1 555 0100")
    page.fill("#f-wireless", "+15550100")
    page.locator("form[action='/settings/profile'] button").click()
    expect(page.locator(".notice")).to_have_text("Profile saved.")
    page.fill("#f-alias", unique_name("ally"))
    page.locator("form[action='/settings/alias'] button").click()
    expect(page.locator(".notice")).to_have_text("Alias added.")
    page.fill("#f-contact", bob.name)
    page.locator("form[action='/settings/contact-add'] button").click()
    expect(page.locator("#contacts")).to_contain_text(bob.name)
    page.goto("/home")
    wait_live(page)
    expect(row(page, bob.name)).to_have_attribute("data-presence", "offline")
    login(api, bob)
    heartbeats(bob)  # bob comes online
    expect(row(page, bob.name)).to_have_attribute("data-presence", "online",
                                                  timeout=LIVE_TIMEOUT)
    visitor = browser_pages.new()
    visitor.goto(f"/{alice.name}")
    expect(row(visitor, alice.name).locator("[data-action=tel]")).to_have_attribute(
        "href", "tel:+15550100")
    expect(row(visitor, alice.name).locator("[data-action=text]")).to_have_count(1)


def test_screenshots(api, browser_pages, heartbeats, tmp_path: Path):
    """The communications page of a group and a home page, at desktop and
    phone width (kept in docs/screenshots with PRESENCE_SCREENSHOTS)."""
    expect = _expect()
    alice = register(api, unique_name("alice"), phone="+49 30 1234567",
                     wireless="+491701234567")
    bob = login(api, register(api, unique_name("bob")))
    carol = register(api, unique_name("carol"), phone="+1 555 0100")
    group = unique_name("team")
    expect_status(api.post("/api/groups", form={**bob.auth, "name": group}), 201)
    for user in (alice, carol):
        u = login(api, user)
        expect_status(api.post(f"/api/groups/{group}/join", form=u.auth), 204)
        expect_status(api.post("/api/logout", form=u.auth), 204)
    heartbeats(bob)  # bob holds a heartbeat: he is online

    visitor = browser_pages.new()
    visitor.goto(f"/{alice.name}")  # a hit on alice's page while she is away
    wait_live(visitor)
    visitor.fill("#f-text", "Hi Alice, I tried to reach you about Friday. Call me back?")
    visitor.locator("#message-form button[type=submit]").click()
    expect(visitor.locator("#message-form .result")).to_contain_text("message box")
    visitor.goto(f"/call?name={group}")
    wait_live(visitor)
    expect(row(visitor, bob.name)).to_have_attribute("data-presence", "online")
    row(visitor, bob.name).locator("[data-action=chat]").click()
    box = visitor.locator(f'.chatbox[data-peer="{bob.name}"]')
    box.locator("input").fill("Hello Bob!")
    box.locator("input").press("Enter")
    expect(box.locator("li.mine.sent")).to_have_count(1)
    screenshot(visitor, "call.png", tmp_path)

    home = browser_pages.new()
    log_in(home, alice.name, alice.password, "/settings")
    home.fill("#f-contact", bob.name)
    home.locator("form[action='/settings/contact-add'] button").click()
    home.fill("#f-contact", carol.name)
    home.locator("form[action='/settings/contact-add'] button").click()
    expect(home.locator("#contacts")).to_contain_text(carol.name)
    home.goto("/home")
    wait_live(home)
    expect(home.locator("#hits")).to_have_text("1")
    expect(row(home, bob.name)).to_have_attribute("data-presence", "online")
    screenshot(home, "home.png", tmp_path)

    phone = browser_pages.new(width=390, height=844, is_mobile=True, device_scale_factor=2)
    phone.goto(f"/call?name={group}")
    wait_live(phone)
    # nothing is wider than the phone's screen
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(phone, "call-phone.png", tmp_path)


def test_two_pages_of_one_browser_take_turns_with_the_session(api, browser_pages, heartbeats):
    """One browser holds one session (its cookie); the page opened last holds
    the heartbeat, an older page pauses and resumes when asked."""
    expect = _expect()
    alice = register(api, unique_name("alice"))
    bob = register(api, unique_name("bob"))
    first = browser_pages.new()
    first.goto(f"/{alice.name}")
    wait_live(first)
    guest = me(first)
    second = browser_pages.tab(first.context)
    second.goto(f"/{bob.name}")
    wait_live(second)
    assert me(second) == guest  # the same guest session
    expect(first.locator("#status")).to_have_attribute("data-state", "paused")
    # the live page hears its user come online
    login(api, bob)
    heartbeats(bob)
    expect(row(second, bob.name)).to_have_attribute("data-presence", "online",
                                                    timeout=LIVE_TIMEOUT)
    # resuming the first page takes the session back (and pauses the second)
    first.locator("#status button").click()
    wait_live(first)
    expect(second.locator("#status")).to_have_attribute("data-state", "paused")
    login(api, alice)
    heartbeats(alice)
    expect(row(first, alice.name)).to_have_attribute("data-presence", "online",
                                                     timeout=LIVE_TIMEOUT)


def test_text_a_handset_calls_the_wireless_endpoint(api, browser_pages):
    """The option shows only when a handset number is stored, and calls
    ``POST /api/wireless/text``; the page says what became of it."""
    expect = _expect()
    alice = register(api, unique_name("alice"), wireless="+491701234567")
    bob = register(api, unique_name("bob"))
    visitor = browser_pages.new()
    visitor.goto(f"/{bob.name}")
    wait_live(visitor)
    expect(row(visitor, bob.name).locator("[data-action=text]")).to_have_count(0)
    visitor.goto(f"/{alice.name}")
    wait_live(visitor)
    with visitor.expect_response(lambda r: r.url.endswith("/api/wireless/text")) as answer:
        row(visitor, alice.name).locator("[data-action=text]").click()
    # 202 once the wireless front-end is mounted; 404 without it
    assert answer.value.status in (202, 404), answer.value.status
    expect(visitor.locator("#notice")).to_contain_text("handset")
