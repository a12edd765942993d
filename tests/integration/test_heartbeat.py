"""The heartbeat response itself (spec section 3): headers, keep-alive bytes,
release of an older request, poll mode.

Server: --keepalive 1 --poll 1, so an idle stream gets a lone "\\n" within
about keepalive + poll (+ slack) = 2.5 s.
"""
from __future__ import annotations

import time

import pytest

from presence_harness import HeartbeatReader, assert_error_body, chat_ok

KEEPALIVE = 1
POLL = 1

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": KEEPALIVE, "poll": POLL, "linger": 2}


def test_stream_headers_are_sent_at_once(api, make_user, heartbeats):
    bob = make_user("bob")
    t0 = time.monotonic()
    hb = heartbeats(bob, header_timeout=2)
    assert hb.headers_at - t0 < 1.0, "headers not sent at once"
    assert hb.status == 200
    ctype = (hb.header("content-type") or "").lower().replace(" ", "")
    assert ctype == "text/event-stream;charset=utf-8", hb.headers
    assert "no-cache" in (hb.header("cache-control") or "").lower(), hb.headers
    assert hb.header("content-length") is None, hb.headers
    assert not hb.ended


def test_login_heartbeat_url_works(api, make_user, server):
    bob = make_user("bob")
    path = bob.login_body["heartbeat"]
    assert path.startswith("/jchat?"), bob.login_body
    with HeartbeatReader.open(server.host, server.port, None, None, path=path) as hb:
        assert hb.status == 200
        alice = make_user("alice")
        chat_ok(api, alice, bob, "via the login URL")
        f = hb.wait_for(lambda f: f.kind == "chat", timeout=3)
        assert f.payload == "via the login URL"


def test_idle_stream_gets_lone_newline_keepalive(api, make_user, heartbeats):
    bob = make_user("bob")
    hb = heartbeats(bob)
    at = hb.wait_keepalive(timeout=KEEPALIVE + POLL + 0.5)
    assert at is not None, f"no keep-alive within {KEEPALIVE + POLL + 0.5} s: {bytes(hb.body)!r}"
    assert at - hb.headers_at <= KEEPALIVE + POLL + 0.5
    # The body so far is nothing but keep-alive newlines, no frames.
    assert hb.frames == []
    assert set(bytes(hb.body)) == {ord("\n")}, bytes(hb.body)
    # A lone byte: the first keep-alive arrived as a single "\n".
    assert hb.body_log[0][1] == b"\n", hb.body_log[:3]
    # And they keep coming while the stream is idle.
    assert hb.wait_keepalive(timeout=KEEPALIVE + POLL + 0.5) is not None
    # Frames still arrive between keep-alives.
    alice = make_user("alice")
    chat_ok(api, alice, bob, "between keep-alives")
    assert hb.wait_for(lambda f: f.kind == "chat", timeout=3).payload == "between keep-alives"


def test_second_request_releases_the_first(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    first = heartbeats(bob)
    assert first.status == 200
    second = heartbeats(bob)
    assert second.status == 200
    assert first.wait_end(3), "the older heartbeat was not released"
    assert not second.ended
    chat_ok(api, alice, bob, "to the new one")
    f = second.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.payload == "to the new one"
    # A third one releases the second in turn.
    third = heartbeats(bob, ack=f.id)
    assert second.wait_end(3)
    assert not third.ended


def test_second_poll_releases_the_first_poll(api, make_user, heartbeats):
    bob = make_user("bob")
    first = heartbeats(bob, mode="poll", wait=10)
    t0 = time.monotonic()
    heartbeats(bob, mode="poll", wait=10)
    assert first.wait_end(3), "the held poll was not released"
    assert first.ended_at - t0 < 2.0
    assert first.status == 200


def test_poll_returns_at_once_when_a_frame_is_pending(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    # bob comes online with a held poll; the first chat ends it.
    first = heartbeats(bob, mode="poll", wait=5)
    chat_ok(api, alice, bob, "first")
    assert first.wait_end(3)
    [f1] = first.frames
    # A chat while bob has no request held (he is online: within linger).
    body = chat_ok(api, alice, bob, "pending")
    assert body["delivered"] == "online", body
    t0 = time.monotonic()
    hb = heartbeats(bob, mode="poll", wait=5, ack=f1.id)
    assert hb.status == 200
    assert hb.wait_end(3), "poll with a pending frame did not end"
    assert hb.ended_at - t0 < 1.0, f"took {hb.ended_at - t0:.2f} s"
    assert [f.payload for f in hb.frames] == ["pending"], hb.frames


def test_poll_returns_when_a_frame_arrives(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    hb = heartbeats(bob, mode="poll", wait=5)
    assert not hb.wait_end(0.3), "poll ended although nothing was pending"
    t0 = time.monotonic()
    chat_ok(api, alice, bob, "arrives")
    assert hb.wait_end(3)
    assert hb.ended_at - t0 < 1.5
    assert [f.payload for f in hb.frames] == ["arrives"]


def test_poll_with_nothing_ends_after_wait(api, make_user, heartbeats):
    bob = make_user("bob")
    t0 = time.monotonic()
    hb = heartbeats(bob, mode="poll", wait=1)
    assert hb.status == 200
    assert hb.wait_end(4), "empty poll did not end"
    took = hb.ended_at - t0
    assert 0.7 <= took <= 1 + POLL + 1.0, f"empty poll with wait=1 took {took:.2f} s"
    assert hb.frames == []


def test_poll_carries_at_most_100_frames(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    stream = heartbeats(bob)  # online; frames are written but never acknowledged
    for i in range(105):
        chat_ok(api, alice, bob, f"n{i}")
    stream.read_frames(105, timeout=5)
    hb = heartbeats(bob, mode="poll", wait=5)  # releases the stream
    assert hb.wait_end(3)
    assert [f.payload for f in hb.frames] == [f"n{i}" for i in range(100)]
    rest = heartbeats(bob, mode="poll", wait=5, ack=hb.frames[-1].id)
    assert rest.wait_end(3)
    assert [f.payload for f in rest.frames] == [f"n{i}" for i in range(100, 105)]


@pytest.mark.parametrize("params", ["wrong-id", "no-id", "unknown-user", "other-users-id"])
def test_bad_session_heartbeat_is_403_at_once(api, make_user, server, params):
    alice, bob = make_user("alice"), make_user("bob")
    me, sid = {
        "wrong-id": (bob.name, "0" * 32),
        "no-id": (bob.name, None),
        "unknown-user": ("nosuchuser", bob.session),
        "other-users-id": (bob.name, alice.session),
    }[params]
    t0 = time.monotonic()
    hb = HeartbeatReader.open(server.host, server.port, me, sid, header_timeout=2)
    try:
        assert hb.status == 403, (hb.status, hb.headers)
        assert time.monotonic() - t0 < 1.0
        resp = hb.response(2)
    finally:
        hb.close()
    assert_error_body(resp, bob.session, alice.session, sid)
