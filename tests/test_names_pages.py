"""Pages by name and the greeting (spec section 10), in memory: the real
pages over StubTreq, as tests/test_pages.py drives them."""

from __future__ import annotations

import treq

from helpers import Reply, logged_errors, result_of  # noqa: F401  (a fixture)
from presence.pages import greeting
from test_pages import DOMAIN, HOSTILE, Page, PagesWorld, html_headers_ok, no_markup_from

import pytest
from twisted.web.template import flattenString


@pytest.fixture
def world(logged_errors):
    w = PagesWorld()
    yield w
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def by_host(world, host: str, path: str = "/", visitor=None) -> Reply:
    v = visitor or world.visitor()
    d = v.stub.request("GET", f"http://{host}{path}", allow_redirects=False)
    v.stub.flush()
    response = result_of(d)
    return Reply(response.code, response.headers, result_of(treq.content(response)))


def settings_post(v, action: str, **data: str) -> Reply:
    return v.post("/settings/" + action, **data)


def test_a_name_host_serves_its_page_at_the_root_with_the_greeting_while_offline(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    reply = settings_post(v, "greeting", greeting="Out **climbing** until six.\n\n"
                          "Leave a message, or see [my photos](https://example.org/p).")
    assert reply.status == 303
    v.post("/logout")
    page = by_host(world, f"alice.{DOMAIN}:8080")
    assert page.status == 200
    html_headers_ok(page)
    doc = Page(page.body)
    assert doc.one("li", **{"data-user": "alice"})["data-presence"] == "offline"
    section = doc.one("section", id="greeting")
    assert "Out climbing until six." in section.text
    assert [e.text for e in doc.find("strong")][-1] == "climbing"
    link = doc.one("a", href="https://example.org/p")
    assert link["rel"] == "nofollow noopener noreferrer"
    assert doc.one("form", id="message-form")
    # the visit counts as a hit while she is offline
    again = world.login("alice")
    assert again.get("/api/welcome").json["hits_while_offline"] == 1


def test_an_alias_host_serves_the_users_page_and_paths_under_it_still_work(world):
    alice = world.user("alice")
    assert alice.post("/api/aliases", alias="ally").status == 201
    page = by_host(world, f"ally.{DOMAIN}")
    assert page.status == 200
    assert Page(page.body).one("li", **{"data-user": "alice"})
    moved = by_host(world, f"ally.{DOMAIN}", "/people/alice")
    assert (moved.status, moved.header("location")) == (301, "/call?name=alice")


def test_hosts_that_are_no_name_are_the_landing_or_a_404_page(world):
    for host in (DOMAIN, f"www.{DOMAIN}", "other.example", f"a.b.{DOMAIN}"):
        assert by_host(world, host).status == 200, host
    missing = by_host(world, f"nobody.{DOMAIN}")
    assert missing.status == 404


def test_the_greeting_is_escaped_bounded_and_only_the_safe_subset(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    hostile = HOSTILE + " [x](javascript:alert(1)) <img src=x onerror=alert(1)>"
    assert settings_post(v, "greeting", greeting=hostile).status == 303
    v.post("/logout")
    page = by_host(world, f"alice.{DOMAIN}")
    no_markup_from(page.body)
    assert b"<img" not in page.body and b'href="javascript' not in page.body
    assert "[x](javascript:alert(1))" in Page(page.body).one("section", id="greeting").text
    v.login("alice")
    long = settings_post(v, "greeting", greeting="x" * 1001)
    assert long.status == 413 and b"1000 characters" in long.body


def test_the_greeting_through_the_json_api(world):
    alice = world.user("alice")
    reply = alice.post("/api/greeting", greeting="  Back on Monday.\r\n")
    assert reply.status == 200 and reply.json == {"greeting": "Back on Monday."}
    assert world.browser().get("/api/greeting/alice").json == {
        "name": "alice", "greeting": "Back on Monday."}
    assert alice.post("/api/greeting", greeting="\x00").status == 400
    assert alice.post("/api/greeting", greeting="y" * 1001).status == 413
    assert world.browser().get("/api/greeting/nobody").status == 404
    guest = world.guest()
    assert guest.post("/api/greeting", greeting="hi").status == 403


def test_the_settings_page_makes_an_update_token_shown_once(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    doc = Page(v.get("/settings").body)
    assert f"alice.{DOMAIN}" in doc.one("section", id="dyndns").text
    made = settings_post(v, "update-token")
    assert made.status == 200
    token = Page(made.body).one("code", id="update-token").text
    assert len(token) == 32
    assert not Page(v.get("/settings").body).find("code", id="update-token")
    assert b"You have an update token." in v.get("/settings").body
    assert settings_post(v, "update-token-remove").status == 303
    assert b"You have no update token" in v.get("/settings").body


def test_greeting_markup_is_a_tree_of_escaped_tags():
    out = result_of(flattenString(None, greeting.render(
        "a *b* `c<d>` **e**\nf\n\n[g](mailto:g@example.org) [h](ftp://x)")))
    assert out == (b"<p>a <em>b</em> <code>c&lt;d&gt;</code> <strong>e</strong><br />f</p>"
                   b'<p><a href="mailto:g@example.org" rel="nofollow noopener noreferrer">'
                   b"g</a> [h](ftp://x)</p>")
