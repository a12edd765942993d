"""The heartbeat, ``GET /jchat`` (spec section 3), in memory.

Held requests go through ``treq.testing.StubTreq`` over the real resource
tree; the body is collected as it streams (``Heartbeat`` in helpers) and
``flush()`` moves what the server wrote.  Time is a ``Clock``: keep-alives,
linger and poll-mode ``wait`` are driven by advancing it and running the
sweep (the real ``SweepService`` on the same clock, or ``hub.sweep()``).
"""

from __future__ import annotations

import errno

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from helpers import (  # noqa: F401  (fixtures)
    RawConnection, World, dechunk, logged_errors, parse_stream, result_of, split_response,
    world,
)


@pytest.fixture
def sweeping(world):
    """The real sweep service, on the world's clock."""
    service = world.sweep_service()
    service.startService()
    yield service
    service.stopService()


def chats(hb):
    return [e for e in hb.events() if e.head.startswith("msg chat")]


def watched(world, watcher="bob", user="alice"):
    """``watcher`` has ``user`` in the address book and holds a heartbeat."""
    w = world.user(watcher)
    u = world.user(user)
    assert w.post("/api/contacts", contact=user).status == 204
    hb = w.heartbeat(ack="1")  # past the "msg refresh" of the book change
    assert hb.heads() == []
    return w, u, hb


# -- refused at once -----------------------------------------------------------------

@pytest.mark.parametrize("creds", ["missing", "wrong", "other-me", "logged-out"])
def test_bad_session_is_403_at_once(world, creds):
    alice = world.user("alice")
    world.user("bob")
    params = {
        "missing": {"me": "alice"},
        "wrong": {"me": "alice", "id": "x" * 32},
        "other-me": {"me": "bob", "id": alice.session},
        "logged-out": alice.creds,
    }[creds]
    if creds == "logged-out":
        alice.post("/api/logout")
    reply = world.browser().heartbeat_reply(**params)
    assert reply.status == 403
    assert reply.header("content-type") == "application/json"
    assert reply.error
    assert alice.session not in reply.body.decode()
    assert world.hub.held == 0
    assert world.browser().get("/api/presence/alice").json["online"] is False


@pytest.mark.parametrize("params", [
    {"mode": "push"}, {"ack": "x"}, {"ack": "-1"}, {"ack": "1.5"},
    {"mode": "poll", "wait": "-1"}, {"mode": "poll", "wait": "301"},
    {"mode": "poll", "wait": "soon"},
])
def test_malformed_heartbeat_is_400(world, params):
    alice = world.user("alice")
    reply = alice.browser.heartbeat_reply(**alice.creds, **params)
    assert reply.status == 400
    assert reply.error
    assert world.hub.held == 0


def test_malformed_last_event_id_is_400(world):
    alice = world.user("alice")
    reply = alice.browser.request("GET", "/jchat", params=alice.creds,
                                  headers={"Last-Event-ID": ["seven"]})
    assert reply.status == 400


# -- the held response ---------------------------------------------------------------

def test_headers_at_once_and_held(world):
    alice = world.user("alice")
    hb = alice.heartbeat()
    assert hb.status == 200
    assert hb.header("content-type") == "text/event-stream; charset=utf-8"
    assert hb.header("cache-control") == "no-cache"
    assert hb.header("content-length") is None
    assert not hb.finished
    assert hb.read() == b""
    world.advance(3600 * 5)  # no sweep: nothing happens by itself
    assert not hb.finished
    assert world.hub.held == 1


def test_raw_headers_are_chunked_without_length(world):
    alice = world.user("alice")
    conn = RawConnection(world.site)
    raw = conn.send(f"GET /jchat?me=alice&id={alice.session} HTTP/1.1\r\n"
                    "Host: presence.test\r\n\r\n".encode())
    status, headers, body = split_response(raw)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert "content-length" not in headers
    assert headers["transfer-encoding"] == "chunked"
    assert body == b""
    world.user("bob").post("/chat", to="alice", msg="hi")
    _, _, body = split_response(conn.transport.value())
    events, _ = parse_stream(dechunk(body))
    assert [e.head.split(" ")[:3] for e in events] == [["msg", "chat", "bob"]]
    conn.close()


def test_http10_heartbeat_streams_without_length(world):
    alice = world.user("alice")
    conn = RawConnection(world.site)
    raw = conn.send(f"GET /jchat?me=alice&id={alice.session} HTTP/1.0\r\n\r\n".encode())
    status, headers, _ = split_response(raw)
    assert status == 200
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    world.user("bob").post("/chat", to="alice", msg="plain")
    _, _, body = split_response(conn.transport.value())
    events, _ = parse_stream(body)
    assert events[0].text.endswith("\nplain")
    conn.close()


def test_frames_are_numbered_events(world):
    bob, alice, hb = watched(world)
    alice_hb = alice.heartbeat()
    alice.post("/chat", to="bob", msg="line one\nline two")
    raw = hb.read().decode()
    msgid = chats(hb)[0].head.split(" ")[3]
    assert raw == ("id: 2\ndata: msg update online alice\n\n"
                   f"id: 3\ndata: msg chat alice {msgid}\n"
                   "data: line one\ndata: line two\n\n")
    assert alice_hb.read() == b""  # her own presence is not sent to her


def test_ids_count_from_one_per_session(world):
    alice = world.user("alice")
    bob = world.user("bob")
    other = world.login("bob")
    h1 = bob.heartbeat()
    alice.post("/chat", to="bob", msg="a")
    h2 = other.heartbeat()
    alice.post("/chat", to="bob", msg="b")
    assert h1.ids() == [1, 2]
    assert h2.ids() == [1, 2]
    assert [e.text.split("\n")[1] for e in chats(h2)] == ["a", "b"]


def test_heartbeat_by_session_id_synonym_and_cookie(world):
    world.register("alice")
    browser = world.browser()
    alice = world.login("alice", browser=browser)
    h1 = world.browser().heartbeat(me="alice", sessionId=alice.session)
    assert h1.status == 200 and not h1.finished
    h2 = browser.heartbeat()  # the session cookie set at login
    assert h2.status == 200 and not h2.finished
    assert h1.finished  # the same session: the newer request released the older


def test_heartbeat_makes_the_user_online(world):
    bob, alice, hb = watched(world)
    assert world.browser().get("/api/presence/alice").json["online"] is False
    alice.heartbeat()
    assert world.browser().get("/api/presence/alice").json["online"] is True
    assert hb.heads() == ["msg update online alice"]


# -- keep-alive ------------------------------------------------------------------

def test_keepalive_after_idle_time(world, sweeping):
    alice = world.user("alice")
    hb = alice.heartbeat()
    for _ in range(6):  # 24 s of sweeps every 4 s: not idle long enough
        world.advance(4)
    assert hb.read() == b""
    world.advance(4)  # 28 s
    assert hb.read() == b"\n"
    assert sweeping.sweeps == 7
    for _ in range(6):  # 52 s: 24 s since the keep-alive
        world.advance(4)
    assert hb.read() == b"\n"
    world.advance(4)
    assert hb.read() == b"\n\n"
    assert not hb.finished


def test_frames_postpone_the_keepalive(world, sweeping):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = alice.heartbeat()
    for _ in range(5):  # 20 s
        world.advance(4)
    bob.post("/chat", to="alice", msg="busy")
    for _ in range(6):  # 44 s: 24 s since the frame
        world.advance(4)
    events, keepalives = parse_stream(hb.read())
    assert len(events) == 1 and keepalives == 0
    world.advance(4)
    events, keepalives = parse_stream(hb.read())
    assert keepalives == 1
    assert hb.read().endswith(b"\n\n\n")  # the event's end, then the lone keep-alive


def test_keepalive_option_is_honoured(logged_errors):
    world = World(keepalive=5, poll=1)
    alice = world.user("alice")
    hb = alice.heartbeat()
    world.advance(4.9)
    world.sweep()
    assert hb.keepalives() == 0
    world.advance(0.1)
    world.sweep()
    assert hb.keepalives() == 1
    assert not logged_errors


# -- poll mode ---------------------------------------------------------------------

def test_poll_answers_at_once_with_pending_frames(world):
    alice = world.user("alice")
    bob = world.user("bob")
    for i in range(3):
        alice.post("/chat", to="bob", msg=f"m{i}")  # bob is offline: stored + "msg message"
    hb = bob.heartbeat(mode="poll")
    assert hb.finished
    assert hb.heads() == ["msg message alice"] * 3
    assert hb.ids() == [1, 2, 3]


def test_poll_carries_at_most_100_frames(world):
    alice = world.user("alice")
    bob = world.user("bob")
    stream = bob.heartbeat()
    for i in range(150):
        assert alice.post("/chat", to="bob", msg=f"m{i}").json["delivered"] == "online"
    world.clock.advance(0)  # 100 heartbeat writes in a turn at most (WritePacer)
    assert len(stream.events()) == 150
    first = bob.heartbeat(mode="poll")  # nothing acknowledged yet
    assert stream.finished  # released by the newer request
    assert first.finished
    assert first.ids() == list(range(1, 101))
    second = bob.heartbeat(mode="poll", ack="100")
    assert second.finished
    assert second.ids() == list(range(101, 151))
    assert [e.text.split("\n")[1] for e in second.events()] == [f"m{i}" for i in range(100, 150)]
    third = bob.heartbeat(mode="poll", ack="150")
    assert not third.finished


def test_poll_held_until_a_frame_arrives(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat(mode="poll")
    assert not hb.finished
    world.advance(10)
    assert not hb.finished
    alice.post("/chat", to="bob", msg="now")
    assert hb.finished
    assert [e.text.split("\n")[1] for e in chats(hb)] == ["now"]


def test_poll_ends_after_wait(world):
    bob = world.user("bob")
    hb = bob.heartbeat(mode="poll", wait="5")
    world.advance(4.9)
    assert not hb.finished
    world.advance(0.1)
    assert hb.finished
    assert hb.read() == b""
    assert hb.reason is None  # a clean end, not a lost connection


def test_poll_wait_defaults_to_keepalive(world):
    bob = world.user("bob")
    hb = bob.heartbeat(mode="poll")
    world.advance(24.9)
    assert not hb.finished
    world.advance(0.1)
    assert hb.finished and hb.read() == b""


def test_poll_wait_zero_answers_at_once(world):
    bob = world.user("bob")
    hb = bob.heartbeat(mode="poll", wait="0")
    world.advance(0)
    assert hb.finished


def test_dropped_poll_is_cleaned_up(world):
    bob = world.user("bob")
    hb = bob.heartbeat(mode="poll", wait="5")
    hb.drop()
    assert world.hub.held == 0
    world.advance(10)  # its wait timer must not fire on the dead request
    world.sweep()
    assert hb.read() == b""


def test_long_poll_gets_keepalives_without_ending(world, sweeping):
    bob = world.user("bob")
    hb = bob.heartbeat(mode="poll", wait="60")
    for _ in range(7):  # 28 s
        world.advance(4)
    assert not hb.finished
    assert hb.read() == b"\n"
    for _ in range(8):  # 60 s
        world.advance(4)
    assert hb.finished
    assert parse_stream(hb.read()) == ([], 2)


def test_poll_client_stays_online_between_polls(world):
    bob, alice, hb = watched(world)
    poll = alice.heartbeat(mode="poll", wait="5")
    world.advance(5)
    assert poll.finished
    world.sweep()
    again = alice.heartbeat(mode="poll", wait="5")  # the client asks again at once
    world.advance(5)
    world.sweep()
    assert again.finished
    assert hb.heads() == ["msg update online alice"]


# -- one held request per session ---------------------------------------------------

def test_second_stream_request_releases_the_first(world):
    alice = world.user("alice")
    bob = world.user("bob")
    first = bob.heartbeat()
    alice.post("/chat", to="bob", msg="one")
    second = bob.heartbeat(ack="1")
    assert first.finished and first.reason is None
    assert not second.finished
    assert world.hub.held == 1
    alice.post("/chat", to="bob", msg="two")
    assert first.ids() == [1]
    assert second.ids() == [2]


def test_second_poll_request_releases_the_first_empty(world):
    alice = world.user("alice")
    bob = world.user("bob")
    first = bob.heartbeat(mode="poll")
    second = bob.heartbeat(mode="poll")
    assert first.finished
    assert first.read() == b""
    assert not second.finished
    alice.post("/chat", to="bob", msg="to the newer one")
    assert second.finished and len(chats(second)) == 1
    assert first.read() == b""


def test_release_does_not_make_the_user_offline(world):
    bob, alice, hb = watched(world)
    alice.heartbeat()
    for _ in range(5):
        alice.heartbeat()
        world.advance(30)
        world.sweep()
    assert hb.heads() == ["msg update online alice"]
    assert world.browser().get("/api/presence/alice").json["online"] is True


# -- reliable delivery --------------------------------------------------------------

def test_unacknowledged_frames_are_resent_with_their_ids(world):
    alice = world.user("alice")
    bob = world.user("bob")
    first = bob.heartbeat()
    for i in range(5):
        alice.post("/chat", to="bob", msg=f"m{i}")
    sent = first.events()
    assert [e.id for e in sent] == [1, 2, 3, 4, 5]
    again = bob.heartbeat(ack="2")
    resent = again.events()
    assert [(e.id, e.text) for e in resent] == [(e.id, e.text) for e in sent[2:]]
    alice.post("/chat", to="bob", msg="new")
    assert again.ids() == [3, 4, 5, 6]  # the numbering only grows


def test_last_event_id_acknowledges(world):
    alice = world.user("alice")
    bob = world.user("bob")
    first = bob.heartbeat()
    for i in range(4):
        alice.post("/chat", to="bob", msg=f"m{i}")
    assert first.ids() == [1, 2, 3, 4]
    again = bob.browser.heartbeat(headers={"Last-Event-ID": ["3"]}, **bob.creds)
    assert again.ids() == [4]


def test_ack_and_last_event_id_together_take_the_larger(world):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.heartbeat()
    for i in range(4):
        alice.post("/chat", to="bob", msg=f"m{i}")
    again = bob.browser.heartbeat(headers={"Last-Event-ID": ["1"]}, ack="3", **bob.creds)
    assert again.ids() == [4]


def test_nothing_is_lost_while_the_session_lives(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    alice.post("/chat", to="bob", msg="before the drop")
    hb.drop()
    alice.post("/chat", to="bob", msg="while away")  # still lingering: online
    world.advance(60)
    world.sweep()
    alice.post("/chat", to="bob", msg="while offline")
    back = bob.heartbeat()
    texts = [e.text.split("\n")[1] for e in chats(back)]
    assert texts == ["before the drop", "while away"]
    assert back.heads()[-1] == "msg message alice"
    assert [m["text"] for m in bob.get("/api/messages").json["messages"]] == ["while offline"]
    ids = back.ids()
    assert ids == sorted(ids)


def test_ack_beyond_the_last_frame_acknowledges_all(world):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.heartbeat()
    alice.post("/chat", to="bob", msg="x")
    assert bob.heartbeat(ack="999").ids() == []
    alice.post("/chat", to="bob", msg="y")
    assert bob.heartbeat(ack="0").ids() == [2]


def test_mailbox_overflow_moves_chat_to_the_message_box(logged_errors):
    world = World(mailbox=5)
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    for i in range(7):
        alice.post("/chat", to="bob", msg=f"m{i}")
    assert "msg refresh bob" in hb.heads()
    box = bob.get("/api/messages").json["messages"]
    assert sorted(m["text"] for m in box) == ["m0", "m1", "m2"]
    again = bob.heartbeat()
    texts = [e.text.split("\n")[1] for e in chats(again)]
    assert texts == ["m3", "m4", "m5", "m6"]
    # every chat text is either still in the mailbox or in the message box
    assert sorted(texts + [m["text"] for m in box]) == [f"m{i}" for i in range(7)]
    assert not logged_errors


# -- lost connections, linger, expiry -----------------------------------------------------

def test_lost_connection_goes_offline_after_linger(world, sweeping):
    bob, alice, hb = watched(world)
    ahb = alice.heartbeat()
    assert hb.heads() == ["msg update online alice"]
    ahb.drop()
    assert ahb.finished and ahb.reason is not None
    assert world.hub.held == 1  # bob's only
    world.advance(4)  # one sweep: within linger (8 s)
    assert world.browser().get("/api/presence/alice").json["online"] is True
    assert hb.heads() == ["msg update online alice"]
    world.advance(4)  # linger has passed: the sweep ends her presence
    assert hb.heads() == ["msg update online alice", "msg update offline alice"]
    body = world.browser().get("/api/presence/alice").json
    assert body["online"] is False and body["last_seen"] == world.clock.seconds()
    # her session lives on: she can come back
    assert alice.get("/api/welcome").status == 200


def test_reconnect_within_linger_does_not_flap(world):
    bob, alice, hb = watched(world)
    first = alice.heartbeat()
    first.drop()
    world.advance(5)
    world.sweep()
    alice.heartbeat()
    world.advance(60)
    world.sweep()
    assert hb.heads() == ["msg update online alice"]


def test_linger_option(logged_errors):
    world = World(poll=1, linger=0)
    bob, alice, hb = watched(world)
    a = alice.heartbeat()
    a.drop()
    # linger 0: offline at once when the heartbeat ends
    assert hb.heads() == ["msg update online alice", "msg update offline alice"]
    assert not logged_errors


def test_offline_is_recorded_for_the_presence_api(world):
    bob, alice, hb = watched(world)
    a = alice.heartbeat()
    a.drop()
    world.advance(8)
    world.sweep()
    gone = world.clock.seconds()
    world.advance(50)
    body = world.browser().get("/api/presence/alice").json
    assert body == {"name": "alice", "online": False, "state": "offline", "text": "", "last_seen": gone}


def test_welcome_after_a_dropped_heartbeat_counts_the_time_away(world):
    bob, alice, hb = watched(world)
    a = alice.heartbeat()
    a.drop()
    world.advance(8)
    world.sweep()
    assert hb.heads()[-1] == "msg update offline alice"
    world.advance(50)
    result_of(world.service.page_hit("alice"))
    back = world.login("alice")  # her old session has not expired yet
    figures = back.get("/api/welcome").json
    assert figures["hits_while_offline"] == 1
    assert figures["offline_seconds"] == 50


def test_session_without_heartbeat_expires(logged_errors):
    world = World(session_ttl=60)
    alice = world.user("alice")
    world.advance(59)
    world.sweep()
    assert alice.get("/api/welcome").status == 200
    world.advance(1)
    world.sweep()
    assert alice.get("/api/welcome").status == 403
    assert alice.browser.heartbeat_reply(**alice.creds).status == 403
    assert not logged_errors


def test_held_heartbeat_keeps_the_session(logged_errors):
    world = World(session_ttl=60)
    alice = world.user("alice")
    hb = alice.heartbeat()
    for _ in range(10):
        world.advance(30)
        world.sweep()
    assert alice.get("/api/welcome").status == 200
    assert not hb.finished
    hb.drop()
    world.advance(59)
    world.sweep()
    assert alice.get("/api/welcome").status == 200
    world.advance(1)
    world.sweep()
    assert alice.get("/api/welcome").status == 403
    assert not logged_errors


def test_expired_session_keeps_unread_chat(logged_errors):
    world = World(session_ttl=60)
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    alice.post("/chat", to="bob", msg="did you read this?")
    assert len(chats(hb)) == 1  # sent, never acknowledged
    hb.drop()
    world.advance(60)
    world.sweep()
    again = world.login("bob")
    box = again.get("/api/messages").json
    assert [(m["from"], m["text"]) for m in box["messages"]] == [
        ("alice", "did you read this?")]
    assert not logged_errors


def test_acknowledged_chat_is_not_kept_again(logged_errors):
    world = World(session_ttl=60)
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    alice.post("/chat", to="bob", msg="read it")
    assert bob.post("/ack", ack=str(hb.ids()[-1])).status == 204
    hb.drop()
    world.advance(60)
    world.sweep()
    assert world.login("bob").get("/api/messages").json["messages"] == []
    assert not logged_errors


# -- writes on a dead connection ----------------------------------------------------------

class BrokenPipe(StringTransport):
    """A socket whose peer vanished: once ``broken``, every write fails."""

    broken = False

    def write(self, data):
        if self.broken:
            raise OSError(errno.EPIPE, "Broken pipe")
        super().write(data)

    def writeSequence(self, data):
        if self.broken:
            raise OSError(errno.EPIPE, "Broken pipe")
        super().writeSequence(data)


def test_write_on_a_dead_connection(world):
    bob, alice, hb = watched(world)
    carol = world.user("carol")
    pipe = BrokenPipe(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
                      peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    conn = RawConnection(world.site, transport=pipe)
    raw = conn.send(f"GET /jchat?me=alice&id={alice.session} HTTP/1.1\r\n"
                    "Host: presence.test\r\n\r\n".encode())
    assert split_response(raw)[0] == 200
    assert hb.heads() == ["msg update online alice"]
    pipe.broken = True
    # the write fails inside the server; the sender is not troubled by it
    reply = carol.post("/chat", to="alice", msg="are you there?")
    assert reply.status == 202
    assert reply.json["delivered"] == "online"
    assert world.hub.held == 1  # bob's only: the dead request is no longer held
    world.advance(8)
    world.sweep()
    assert hb.heads()[-1] == "msg update offline alice"
    assert world.browser().get("/api/presence/alice").json["online"] is False
    # later frames to the dead request are not attempted, nothing raises
    carol.post("/chat", to="alice", msg="still?")
    world.sweep()
    # the frame written to the dead socket was never acknowledged: it comes again
    back = alice.heartbeat()
    assert [e.text.split("\n")[1] for e in chats(back)] == ["are you there?"]
    assert back.heads()[-1] == "msg message carol"


def test_keepalive_on_a_dead_connection(world):
    alice = world.user("alice")
    pipe = BrokenPipe(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
                      peerAddress=IPv4Address("TCP", "127.0.0.1", 40002))
    conn = RawConnection(world.site, transport=pipe)
    conn.send(f"GET /jchat?me=alice&id={alice.session} HTTP/1.1\r\n"
              "Host: presence.test\r\n\r\n".encode())
    assert world.hub.held == 1
    pipe.broken = True
    world.advance(25)
    world.sweep()  # the keep-alive write fails: handled, the request let go
    assert world.hub.held == 0
    world.advance(8)
    world.sweep()
    assert world.browser().get("/api/presence/alice").json["online"] is False


def test_lost_connection_is_released(world):
    alice = world.user("alice")
    hb = alice.heartbeat()
    hb.drop()
    assert world.hub.held == 0
    stats = world.browser().get("/api/stats").json
    assert stats["held"] == 0 and stats["sessions"] == 1


# -- dynamic session information -----------------------------------------------------

def test_new_address_is_announced(world):
    bob, alice, hb = watched(world)
    alice.heartbeat()  # from 127.0.0.1
    conn = RawConnection(world.site, peer=("192.0.2.10", 5000))
    conn.send(f"GET /jchat?me=alice&id={alice.session} HTTP/1.1\r\n"
              "Host: presence.test\r\n\r\n".encode())
    assert hb.heads() == ["msg update online alice", "msg update address alice"]
    info = alice.get("/api/session").json
    assert info["ip"] == "192.0.2.10" and info["port"] == 5000
    conn.close()


def test_new_port_alone_is_not_announced(world):
    bob, alice, hb = watched(world)
    a = RawConnection(world.site, peer=("192.0.2.10", 5000))
    a.send(f"GET /jchat?me=alice&id={alice.session} HTTP/1.1\r\n"
           "Host: presence.test\r\n\r\n".encode())
    b = RawConnection(world.site, peer=("192.0.2.10", 5001))
    b.send(f"GET /jchat?me=alice&id={alice.session} HTTP/1.1\r\n"
           "Host: presence.test\r\n\r\n".encode())
    # coming online says it all; the same host on another port is no news
    assert hb.heads() == ["msg update online alice"]
    assert alice.get("/api/session").json["port"] == 5001
    a.close()
    b.close()


# -- writes spread over reactor turns ---------------------------------------------------

class TurnClock:
    """The reactor as the pacer sees it: a ``callLater(0)`` made during a
    turn runs in the next turn, never in the same one (as in
    ``ReactorBase.runUntilCurrent``; ``Clock.advance(0)`` would run it at once)."""

    def __init__(self):
        self.calls = []

    def callLater(self, delay, fn, *args):
        assert delay == 0
        from twisted.internet.task import Clock
        call = Clock().callLater(0, fn, *args)  # a real IDelayedCall
        self.calls.append(call)
        return call

    def turn(self):
        calls, self.calls = self.calls, []
        for call in calls:
            if call.active():
                call.called = True
                call.func(*call.args, **call.kw)


class _Channel:
    """What the pacer sees of a channel: the frames that wait, and flush."""

    def __init__(self, log, name):
        self.log, self.name = log, name
        self.queued = ["x"]
        self.done = False

    def flush(self):
        self.queued = None
        self.log.append(self.name)


def test_pacer_admits_so_many_writes_per_turn_and_the_rest_in_order():
    from presence.web.heartbeat import WritePacer
    clock = TurnClock()
    pacer = WritePacer(clock, per_turn=3)
    assert [pacer.admit() for _ in range(4)] == [True, True, True, False]
    log = []
    waiting = [_Channel(log, n) for n in "abcdefg"]
    for c in waiting:
        pacer.wait(c)
    waiting[1].done = True  # its request ended meanwhile: skipped, costs nothing
    clock.turn()
    assert log == ["a", "c", "d"]
    assert not pacer.admit()  # this turn is spent on those in line
    clock.turn()
    assert log == ["a", "c", "d", "e", "f", "g"]
    assert not pacer.admit()  # three went out in this turn already
    clock.turn()  # the next turn starts afresh
    assert [pacer.admit() for _ in range(4)] == [True, True, True, False]
    clock.turn()
    clock.turn()
    assert clock.calls == []  # idle: nothing left scheduled


def _paced(world, per_turn):
    """The world's heartbeats paced at ``per_turn`` writes, on a TurnClock."""
    pacer = world.site.resource.routes[b"jchat"].pacer
    pacer.per_turn = per_turn
    pacer.clock = TurnClock()
    return pacer.clock


def _heard(watchers, head):
    return sum(1 for hb in watchers if hb.heads() == [head])


def test_a_large_fan_out_is_written_over_several_turns(world):
    turns = _paced(world, 2)
    alice = world.user("alice")
    watchers = []
    for name in ("bob", "carol", "dave", "erin", "frank"):
        w = world.user(name)
        assert w.post("/api/contacts", contact="alice").status == 204
        hb = w.heartbeat(ack="1")
        assert hb.heads() == []
        watchers.append(hb)
    turns.turn()
    turns.turn()  # a fresh turn
    alice.heartbeat()  # alice comes online: five sessions must hear it
    assert _heard(watchers, "msg update online alice") == 2  # two in this turn
    turns.turn()
    assert _heard(watchers, "msg update online alice") == 4
    turns.turn()
    assert _heard(watchers, "msg update online alice") == 5


def test_frames_waiting_for_a_turn_keep_their_order(world):
    turns = _paced(world, 1)
    bob, alice, hb = watched(world)
    turns.turn()
    turns.turn()
    alice.heartbeat()  # the one write of this turn: to bob, "online"
    for text in ("one", "two", "three"):
        assert alice.post("/chat", to="bob", msg=text).status == 202
    assert hb.heads() == ["msg update online alice"]
    turns.turn()
    assert [e.text.split("\n")[1] for e in chats(hb)] == ["one", "two", "three"]
    assert hb.ids() == [2, 3, 4, 5]


def test_frames_waiting_when_the_heartbeat_ends_are_sent_again(world):
    turns = _paced(world, 1)
    bob, alice, hb = watched(world)
    turns.turn()
    turns.turn()
    alice.heartbeat()
    assert alice.post("/chat", to="bob", msg="kept").status == 202
    assert chats(hb) == []  # waiting for the next turn...
    hb2 = bob.heartbeat(ack="2")  # ...when bob's client reconnects
    turns.turn()
    assert chats(hb) == []  # not written to the released request
    assert [e.text.split("\n")[1] for e in chats(hb2)] == ["kept"]
    assert hb2.ids() == [3]
