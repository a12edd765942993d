"""``POST /api/status`` and the states in ``/api/presence`` and
``/api/contacts`` (spec section 12), in memory: the real resource tree on a
Clock through ``StubTreq`` (see ``helpers.World``)."""

from __future__ import annotations

import pytest

from helpers import logged_errors, world  # noqa: F401  (fixtures)


def pair(world):
    """alice with bob in her address book, both holding heartbeats."""
    alice, bob = world.user("alice"), world.user("bob")
    assert alice.post("/api/contacts", contact="bob").status == 204
    return alice, alice.heartbeat(), bob, bob.heartbeat()


def test_status_reaches_a_watcher_and_the_presence_api(world):
    alice, alice_hb, bob, _ = pair(world)
    reply = bob.post("/api/status", state="away", text="  back at <3> & soon ")
    assert reply.status == 200
    assert reply.json["state"] == "away" and reply.json["text"] == "back at <3> & soon"
    events = alice_hb.events()
    assert [e.text for e in events if e.head.startswith("msg update")][-1] == \
        "msg update away bob\nback at <3> & soon"
    presence = world.browser().get("/api/presence/bob").json
    assert (presence["online"], presence["state"], presence["text"]) == (
        True, "away", "back at <3> & soon")
    book = alice.get("/api/contacts").json["members"]
    assert book == [{"name": "bob", "online": True, "state": "away",
                     "text": "back at <3> & soon"}]


def test_status_with_a_json_body_and_back_to_available(world):
    alice, alice_hb, bob, _ = pair(world)
    body = {"me": "bob", "id": bob.session, "state": "busy", "text": "in a call"}
    assert bob.browser.post_json("/api/status", body).status == 200
    assert bob.post("/api/status", state="available").status == 200
    heads = alice_hb.heads()
    assert heads[-2:] == ["msg update busy bob", "msg update online bob"]
    assert world.browser().get("/api/presence/bob").json["text"] == ""


def test_the_same_state_again_sends_nothing(world):
    alice, alice_hb, bob, _ = pair(world)
    bob.post("/api/status", state="away")
    before = len(alice_hb.events())
    assert bob.post("/api/status", state="away").status == 200
    assert len(alice_hb.events()) == before


@pytest.mark.parametrize("data, words", [
    ({}, "state must be"),
    ({"state": "online"}, "state must be"),
    ({"state": "Away"}, "state must be"),
    ({"state": "away", "text": "x" * 141}, "at most 140"),
    ({"state": "away", "text": "two\nlines"}, "one line"),
    ({"state": "away", "text": "bell\x07"}, "one line"),
])
def test_bad_status_is_400_with_a_readable_error(world, data, words):
    alice, alice_hb, bob, _ = pair(world)
    before = len(alice_hb.events())
    reply = bob.post("/api/status", **data)
    assert reply.status == 400
    assert words in reply.error
    assert len(alice_hb.events()) == before
    assert world.browser().get("/api/presence/bob").json["state"] == "available"


def test_a_text_of_140_characters_is_taken(world):
    _, _, bob, _ = pair(world)
    assert bob.post("/api/status", state="busy", text="é" * 140).status == 200


def test_status_needs_a_session(world):
    world.user("bob")
    reply = world.browser().post("/api/status", me="bob", id="not-a-session", state="away")
    assert reply.status == 403 and reply.error


def test_status_changes_are_rate_limited(world):
    _, _, bob, _ = pair(world)
    codes = [bob.post("/api/status", state=("away", "available")[i % 2]).status
             for i in range(40)]
    assert codes.count(429) > 0 and codes[:20] == [200] * 20
    world.advance(60)
    assert bob.post("/api/status", state="busy").status == 200


def test_offline_user_shows_offline_whatever_they_had_set(world):
    _, _, bob, bob_hb = pair(world)
    bob.post("/api/status", state="busy", text="meeting")
    assert bob.post("/api/logout").status == 204
    presence = world.browser().get("/api/presence/bob").json
    assert (presence["online"], presence["state"], presence["text"]) == (False, "offline", "")


def test_surrounding_blanks_do_not_count_against_the_bound(world):
    _, _, bob, _ = pair(world)
    reply = bob.post("/api/status", state="away", text="  " + "x" * 140 + "  ")
    assert reply.status == 200 and reply.json["text"] == "x" * 140

