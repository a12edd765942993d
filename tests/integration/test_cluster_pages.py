"""The pages across boxes of a cluster, in headless Chromium (issue 12).

Two real nodes share one real ``redis-server``.  Each person's page is
served by one node while their session is held by the other: the page's
heartbeat goes to the serving node, which answers ``307`` to the box that
holds the session; that box allows the redirected ``EventSource``
exactly for the origins of the cluster's boxes (docs/cluster.md, "Pages
across boxes").  Chat and everything else the page sends go to the node
that served it, which carries them out on the session's box.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser_support import (  # noqa: E402,F401  (fixtures)
    DEFAULT_TIMEOUT, LIVE_TIMEOUT, _chromium_launcher, chromium, row, wait_live,
)
from cluster_support import (  # noqa: E402,F401  (fixtures)
    box_of, boxes, start_cluster, wait_until, redis, two_nodes,
)
from presence_harness import expect as expect_status, login, register, unique_name  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.requires_program("chromium")]


class People:
    """Browser contexts (one a person), each on the node it was opened on."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.contexts = []
        self.errors = []

    def page(self, node):
        context = self.browser.new_context(base_url=node.base)
        context.set_default_timeout(DEFAULT_TIMEOUT)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def people(chromium):
    p = People(chromium)
    try:
        yield p
    finally:
        p.close()
    assert not p.errors, f"script errors on the pages: {p.errors}"


def log_in(page, user) -> None:
    page.goto("/login?next=/home")
    page.fill("#f-username", user.name)
    page.fill("#f-password", user.password)
    page.locator("form[action='/login'] button[type=submit]").click()
    page.wait_for_url("**/home")


def test_two_people_on_other_boxes_than_their_pages_see_each_other_live_and_chat(
        two_nodes, people):
    from playwright.sync_api import expect
    a, b = two_nodes
    alice = register(a.api(), unique_name("alice"))
    bob = register(a.api(), unique_name("bob"))
    for owner, contact in ((alice, bob), (bob, alice)):
        login(a.api(), owner)
        expect_status(a.api().post("/api/contacts", form={**owner.auth, "contact": contact.name}),
                      204)
        expect_status(a.api().post("/api/logout", form=owner.auth), 204)
    wait_until(lambda: sorted(boxes(a.api()).values()) == [0, 0], 10, "no sessions left")
    # placement (the emptiest box, the answering node on a tie) puts each
    # page's session on the other node: a filler on b, alice's page on b
    # (placed on a), a filler on a, bob's page on a (placed on b)
    fillers = [register(a.api(), unique_name("fill")) for _ in range(2)]
    login(b.api(), fillers[0])
    wait_until(lambda: boxes(a.api())[box_of(b)] == 1, 10, "a counts b's session")
    alice_page = people.page(b)
    log_in(alice_page, alice)
    wait_until(lambda: boxes(b.api())[box_of(a)] == 1, 10, "b counts alice's session on a")
    login(a.api(), fillers[1])
    wait_until(lambda: boxes(a.api()) == {box_of(a): 2, box_of(b): 1}, 10, "a has two")
    bob_page = people.page(a)
    log_in(bob_page, bob)
    wait_until(lambda: boxes(a.api()) == {box_of(a): 2, box_of(b): 2}, 10, "b has two")

    wait_live(alice_page)
    wait_live(bob_page)
    # each one's row of the other is online (each session on the other box)
    expect(row(alice_page, bob.name)).to_have_attribute("data-presence", "online",
                                                        timeout=LIVE_TIMEOUT)
    expect(row(bob_page, alice.name)).to_have_attribute("data-presence", "online",
                                                        timeout=LIVE_TIMEOUT)

    # chat both ways
    row(alice_page, bob.name).locator("[data-action=chat]").click()
    alice_box = alice_page.locator(f'.chatbox[data-peer="{bob.name}"]')
    alice_box.locator("input").fill("hello from a page on b")
    alice_box.locator("input").press("Enter")
    bob_box = bob_page.locator(f'.chatbox[data-peer="{alice.name}"]')
    expect(bob_box.locator("li.theirs .text")).to_have_text("hello from a page on b")
    bob_box.locator("input").fill("and back from a page on a")
    bob_box.locator("input").press("Enter")
    expect(alice_box.locator("li.theirs .text")).to_have_text("and back from a page on a")
    expect(alice_box.locator("li.mine.sent")).to_have_count(1)

    # bob leaves: alice's row turns offline live
    bob_page.locator("header nav form[action='/logout'] button").click()
    bob_page.wait_for_url("**/")
    expect(row(alice_page, bob.name)).to_have_attribute("data-presence", "offline",
                                                        timeout=LIVE_TIMEOUT)
    # and back, on a page of the other node this time
    bob_again = people.page(b)
    log_in(bob_again, bob)
    wait_live(bob_again)
    expect(row(alice_page, bob.name)).to_have_attribute("data-presence", "online",
                                                        timeout=LIVE_TIMEOUT)
