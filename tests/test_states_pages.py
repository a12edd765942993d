"""The states on the communications and home pages (spec section 12), in
memory (``test_pages.PagesWorld``): row ``data-presence`` values, options
that stay active while away or busy, the status text escaped, the home page's
state form and the idle time the script is given (``--away-after``)."""

from __future__ import annotations

import pytest

from test_pages import HOSTILE, Page, PagesWorld, no_markup_from
from helpers import logged_errors  # noqa: F401  (a fixture)


@pytest.fixture
def world(logged_errors):
    w = PagesWorld()
    yield w
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


@pytest.mark.parametrize("state, word", [("away", "away"), ("busy", "busy"),
                                         ("available", "online")])
def test_a_row_shows_the_state_and_keeps_its_options(world, state, word):
    alice = world.user("alice")
    alice.heartbeat()
    assert alice.post("/api/status", state=state, text=HOSTILE).status == 200
    reply = world.visitor().get("/call?name=alice")
    no_markup_from(reply.body)
    page = Page(reply.body)
    row = page.rows()["alice"]
    assert row["data-presence"] == word
    assert page.one("span", class_="state").text == word
    assert page.one("span", class_="status-text").text == HOSTILE
    options = page.options("alice")
    assert "disabled" not in options["chat"].attrs
    assert options["call"]["href"].startswith("sip:alice@")


def test_an_offline_row_shows_no_text(world):
    alice = world.user("alice")
    alice.post("/api/status", state="busy", text="meeting")
    page = world.visitor().page("/call", name="alice")
    assert page.rows()["alice"]["data-presence"] == "offline"
    assert page.one("span", class_="status-text").text == ""
    assert "disabled" in page.options("alice")["chat"].attrs


def test_the_live_rows_carry_the_states_too(world):
    alice = world.user("alice")
    alice.heartbeat()
    alice.post("/api/status", state="away", text="lunch")
    v = world.visitor()
    v.guest()
    reply = v.post("/call/live", name="alice")
    assert reply.status == 200
    row = Page(reply.body).rows()["alice"]
    assert row["data-presence"] == "away" and "lunch" in row.text


def test_the_home_page_has_the_state_form_and_the_idle_time(world):
    world.pages.idle = 2.5
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    session = v.session()
    world.hub.set_state(session, "busy", "deep work")
    page = v.page("/home")
    form = page.one("form", id="state-form")
    assert (form["method"], form["action"]) == ("post", "/api/status")
    assert page.find("option", selected="")[0]["value"] == "busy"  # (then the group)
    assert page.one("input", id="f-status")["value"] == "deep work"
    assert page.one("input", id="f-status")["maxlength"] == "140"
    live = page.one("main", id="live")
    assert (live["data-idle"], live["data-state"], live["data-text"]) == (
        "2.5", "busy", "deep work")


def test_a_visitor_page_has_the_default_idle_time(world):
    world.register("alice")
    live = world.visitor().page("/call", name="alice").one("main", id="live")
    assert live["data-idle"] == "300"
