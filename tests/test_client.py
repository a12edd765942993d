"""
Unit tests for L{presence.client.heartbeat}, the reusable L{HeartbeatClient},
and for the console command handler of L{presence.cli.client}.

No sockets, no global reactor, no sleeps: time is a
L{twisted.internet.task.Clock} and HTTP is L{FakeHTTP}, which records every
request and lets each test answer it (and stream a body) by hand. One test
goes through the real treq plumbing with L{treq.testing.StubTreq}.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from presence.cli.client import CommandHandler
from presence.client.eventstream import encode_event
from presence.client.heartbeat import (
    ClientStopped,
    HeartbeatClient,
    LoginRefused,
    ServerError,
    format_frame,
)

BASE = "http://presence.test"


@pytest.fixture(autouse=True)
def no_unhandled_errors() -> Any:
    """
    Fail a test that leaves a Deferred with an unhandled failure behind, or
    that logs a failure it did not expect.
    """
    import gc

    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    from twisted.logger import formatEvent

    unexpected = [formatEvent(e) for e in events if not e.get("expected")]
    assert not unexpected, unexpected


# -- a fake treq-like HTTP client ------------------------------------------------


class FakeResponse:
    """
    A response whose body the test feeds: all at once (C{body}) for
    C{content}, or piece by piece (L{push}, L{end}) for C{collect}.
    """

    def __init__(self, code: int, body: bytes = b"") -> None:
        self.code = code
        self.phrase = b"Phrase"
        self.headers = Headers()
        self.body = body
        self.collector: Callable[[bytes], None] | None = None
        self.finished: Deferred[None] | None = None
        self.closed = False

    def push(self, data: bytes) -> None:
        """
        Deliver body bytes like treq.collect does: a raising collector closes
        the connection and fails the collect Deferred.
        """
        assert self.collector is not None and self.finished is not None
        if self.closed:
            return
        try:
            self.collector(data)
        except BaseException:
            self.closed = True
            self.finished.errback(Failure())

    def frames(self, *frames: tuple[int, str]) -> None:
        self.push(b"".join(encode_event(text, id=i) for i, text in frames))

    def end(self) -> None:
        assert self.finished is not None
        if not self.closed:
            self.closed = True
            self.finished.callback(None)

    def fail(self, exc: Exception) -> None:
        assert self.finished is not None
        if not self.closed:
            self.closed = True
            self.finished.errback(exc)


@dataclass
class FakeRequest:
    method: str
    url: str
    kwargs: dict[str, Any]
    deferred: Deferred[Any] = field(default_factory=Deferred)
    response: FakeResponse | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query))

    @property
    def form(self) -> dict[str, str]:
        return dict(self.kwargs.get("data") or {})

    @property
    def params(self) -> dict[str, str]:
        """
        Query and form fields together, as the server sees them.
        """
        return self.query | self.form

    def respond(self, code: int, body: Any = None) -> FakeResponse:
        raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        self.response = FakeResponse(code, raw)
        self.deferred.callback(self.response)
        return self.response

    def refuse(self) -> None:
        self.deferred.errback(ConnectionRefusedError("refused"))


class FakeHTTP:
    """
    Records requests; each returns a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        req = FakeRequest(method, url, kwargs)
        self.requests.append(req)
        return req.deferred

    def collect(self, response: FakeResponse, collector: Callable[[bytes], None]) -> Deferred[None]:
        response.collector = collector
        response.finished = Deferred()
        return response.finished

    def content(self, response: FakeResponse) -> Deferred[bytes]:
        return succeed(response.body)

    def pending(self, path: str | None = None) -> list[FakeRequest]:
        return [
            r for r in self.requests
            if not r.deferred.called and (path is None or r.path == path)
        ]

    def last(self, path: str) -> FakeRequest:
        matching = [r for r in self.requests if r.path == path]
        assert matching, f"no request to {path}; got {[r.path for r in self.requests]}"
        return matching[-1]

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)


class Harness:
    """
    A client on a Clock and a FakeHTTP, recording frames and statuses.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.http = FakeHTTP()
        self.frames: list[tuple[int | None, str]] = []
        self.statuses: list[str] = []
        self.client = HeartbeatClient(
            self.clock,
            BASE + "/",
            kwargs.pop("username", "alice"),
            kwargs.pop("password", "secret1"),
            http=self.http,
            on_frame=lambda i, t: self.frames.append((i, t)),
            on_status=self.statuses.append,
            **kwargs,
        )

    def login(self, session: str = "S1") -> FakeRequest:
        """
        Answer the pending login; return the heartbeat request it leads to.
        """
        req = self.http.last("/api/login")
        assert not req.deferred.called
        req.respond(200, {"session": session, "username": "alice", "heartbeat": "/jchat", "host_box": "h:1"})
        return self.http.last("/jchat")

    def connect(self, session: str = "S1") -> tuple[FakeRequest, FakeResponse]:
        self.client.start()
        hb = self.login(session)
        return hb, hb.respond(200)

    def heartbeat(self) -> FakeRequest:
        return self.http.last("/jchat")


def chat(i: int, text: str = "hi") -> tuple[int, str]:
    return (i, f"msg chat bob {i}\n{text}")


# -- login and the heartbeat --------------------------------------------------------


def test_login_then_heartbeat() -> None:
    h = Harness()
    h.client.start()
    login = h.http.last("/api/login")
    assert login.method == "POST"
    assert login.form == {"username": "alice", "password": "secret1"}
    assert login.url == BASE + "/api/login"
    hb = h.login("S1")
    assert hb.method == "GET"
    assert hb.query == {"me": "alice", "id": "S1", "mode": "stream"}
    assert hb.kwargs["unbuffered"] is True
    connected = h.client.when_connected()
    assert not connected.called
    hb.respond(200)
    assert connected.called and h.client.connected
    assert h.client.when_connected().called


def test_register_first_and_409_is_fine() -> None:
    h = Harness(register=True)
    h.client.start()
    reg = h.http.last("/api/register")
    assert reg.form == {"username": "alice", "password": "secret1"}
    assert h.http.count("/api/login") == 0
    reg.respond(409, {"error": "name taken"})
    assert h.http.count("/api/login") == 1


def test_register_refused_stops() -> None:
    h = Harness(register=True)
    stopped = h.client.when_stopped()
    h.client.start()
    h.http.last("/api/register").respond(400, {"error": "password too weak"})
    failure = _failure_of(stopped)
    assert failure.check(LoginRefused)
    assert failure.value.message == "password too weak"
    h.clock.advance(60)
    assert h.http.count("/api/login") == 0


def test_wrong_password_stops_without_retry() -> None:
    h = Harness()
    stopped = h.client.when_stopped()
    h.client.start()
    h.http.last("/api/login").respond(401, {"error": "wrong username or password"})
    failure = _failure_of(stopped)
    assert failure.check(LoginRefused)
    assert failure.value.code == 401
    h.clock.advance(100)
    assert h.http.count("/api/login") == 1


class NoJitter(random.Random):
    """The backoff's random numbers, all 0: each wait is the whole delay."""

    def random(self) -> float:
        return 0.0


def test_login_connection_error_retries_with_backoff() -> None:
    h = Harness(rng=NoJitter())
    h.client.start()
    h.http.last("/api/login").refuse()
    assert h.http.count("/api/login") == 1
    h.clock.advance(0.49)
    assert h.http.count("/api/login") == 1
    h.clock.advance(0.01)
    assert h.http.count("/api/login") == 2
    h.http.last("/api/login").respond(429, {"error": "too many attempts"})
    h.clock.advance(0.99)
    assert h.http.count("/api/login") == 2
    h.clock.advance(0.01)
    assert h.http.count("/api/login") == 3


def test_frames_are_delivered_in_order() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.push(b"\n")  # keep-alive
    resp.frames((1, "msg update online bob"), chat(2, "hello\nworld"))
    assert h.frames == [(1, "msg update online bob"), (2, "msg chat bob 2\nhello\nworld")]
    assert h.client.last_id == 2


def test_frames_split_across_chunks() -> None:
    h = Harness()
    hb, resp = h.connect()
    raw = encode_event("msg chat bob 1\nhello", id=1)
    for i in range(len(raw)):
        resp.push(raw[i : i + 1])
    assert h.frames == [(1, "msg chat bob 1\nhello")]


def test_heartbeat_after_drop_carries_ack_of_last_id() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(chat(1), chat(2), chat(3))
    resp.fail(ConnectionRefusedError("connection lost"))
    assert not h.client.connected
    assert h.http.count("/jchat") == 1
    h.clock.advance(0.5)
    assert h.http.count("/jchat") == 2
    assert h.heartbeat().query == {"me": "alice", "id": "S1", "mode": "stream", "ack": "3"}
    h.heartbeat().respond(200)
    assert h.client.acked_id == 3


def test_clean_end_of_stream_is_a_drop_too() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(chat(1))
    resp.end()
    h.clock.advance(0.5)
    assert h.heartbeat().query["ack"] == "1"


def test_duplicate_ids_are_dropped() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(chat(1), chat(2), chat(2), chat(1))
    assert [i for i, _ in h.frames] == [1, 2]
    resp.end()
    h.clock.advance(0.5)
    resp2 = h.heartbeat().respond(200)
    # The server re-sends what it has not seen acknowledged, then new frames.
    resp2.frames(chat(1), chat(2), chat(3), chat(4))
    assert [i for i, _ in h.frames] == [1, 2, 3, 4]


def test_backoff_doubles_to_30s_and_resets_after_success() -> None:
    h = Harness(rng=NoJitter())
    h.client.start()
    h.login()
    h.heartbeat().refuse()
    delays = []
    for _ in range(9):
        before = h.http.count("/jchat")
        waited = 0.0
        while h.http.count("/jchat") == before:
            h.clock.advance(0.25)
            waited += 0.25
        delays.append(waited)
        h.heartbeat().refuse()
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    # A successful heartbeat resets the delay.
    h.clock.advance(30)
    resp = h.heartbeat().respond(200)
    assert h.client.delay == 0.5
    resp.fail(ConnectionRefusedError())
    before = h.http.count("/jchat")
    h.clock.advance(0.5)
    assert h.http.count("/jchat") == before + 1


def reconnect_waits(seed: int, drops: int = 8) -> list:
    """The waits before each reconnection of a client whose heartbeat is
    refused ``drops`` times, with the jitter's random numbers from ``seed``."""
    h = Harness(rng=random.Random(seed))
    h.client.start()
    h.login()
    h.heartbeat().refuse()
    waits = []
    for _ in range(drops):
        before = h.http.count("/jchat")
        waited = 0.0
        while h.http.count("/jchat") == before:
            h.clock.advance(0.01)
            waited += 0.01
        waits.append(round(waited, 2))
        h.heartbeat().refuse()
    return waits


def test_backoff_waits_are_jittered_within_the_second_half_of_each_delay() -> None:
    bounds = [0.5, 1, 2, 4, 8, 16, 30, 30]
    waits = reconnect_waits(1)
    for wait, delay in zip(waits, bounds):
        assert delay / 2 - 0.011 <= wait <= delay + 0.011, (waits, bounds)
    assert reconnect_waits(1) == waits              # the same seed, the same waits
    # clients dropped together come back apart: other seeds, other waits
    others = [reconnect_waits(seed)[0] for seed in range(2, 12)]
    assert len(set(others + [waits[0]])) >= 5, others


def test_server_error_on_heartbeat_backs_off() -> None:
    h = Harness()
    h.client.start()
    h.login()
    h.heartbeat().respond(503, {"error": "overloaded"})
    assert any("overloaded" in s for s in h.statuses)
    h.clock.advance(0.5)
    assert h.http.count("/jchat") == 2


def test_silent_stream_is_replaced_after_idle_timeout() -> None:
    h = Harness(idle_timeout=65)
    hb, resp = h.connect()
    h.clock.advance(60)
    resp.push(b"\n")  # a keep-alive resets the watchdog
    h.clock.advance(64)
    assert h.http.count("/jchat") == 1
    h.clock.advance(1)
    assert not h.client.connected
    h.clock.advance(0.5)
    assert h.http.count("/jchat") == 2
    # The abandoned stream is closed when anything more arrives on it, and
    # its frames are ignored.
    resp.frames(chat(1))
    assert resp.closed
    assert h.frames == []


def test_request_without_headers_times_out() -> None:
    h = Harness(idle_timeout=65)
    h.client.start()
    hb = h.login()
    h.clock.advance(65)
    assert hb.deferred.called  # cancelled
    h.clock.advance(0.5)
    assert h.http.count("/jchat") == 2


def test_heartbeat_403_logs_in_again_and_restarts_ids() -> None:
    h = Harness()
    hb, resp = h.connect("S1")
    resp.frames(chat(1), chat(2))
    h.clock.advance(11)  # ack timer; and the session is now settled
    h.http.last("/ack").respond(204)
    resp.end()
    h.clock.advance(0.5)
    h.heartbeat().respond(403, {"error": "no such session"})
    assert h.client.session is None
    # A session that had been working: log in again at once.
    h.clock.advance(0)
    assert h.http.count("/api/login") == 2
    hb2 = h.login("S2")
    assert hb2.query == {"me": "alice", "id": "S2", "mode": "stream"}
    resp2 = hb2.respond(200)
    # The new session numbers its frames from 1 again.
    resp2.frames(chat(1, "again"))
    assert h.frames[-1] == (1, "msg chat bob 1\nagain")


def test_403_right_after_login_uses_backoff() -> None:
    h = Harness()
    h.client.start()
    h.login("S1").respond(403, {"error": "no such session"})
    assert h.http.count("/api/login") == 1
    h.clock.advance(0.5)
    assert h.http.count("/api/login") == 2


def test_bye_expired_logs_in_again() -> None:
    h = Harness()
    hb, resp = h.connect("S1")
    resp.frames((1, "msg bye expired"))
    assert resp.closed
    h.clock.advance(0)
    assert h.http.count("/api/login") == 2


def test_bye_replaced_stops() -> None:
    h = Harness()
    stopped = h.client.when_stopped()
    hb, resp = h.connect("S1")
    resp.frames((1, "msg bye replaced"), chat(2))
    assert stopped.result == "bye replaced"
    assert h.frames == [(1, "msg bye replaced")]
    h.clock.advance(100)
    assert h.http.count("/jchat") == 1


# -- poll mode ------------------------------------------------------------------


def test_poll_mode_asks_again_at_once_with_ack() -> None:
    h = Harness(mode="poll")
    h.client.start()
    hb = h.login()
    assert hb.query["mode"] == "poll"
    resp = hb.respond(200)
    resp.frames(chat(1), chat(2))
    resp.end()
    assert h.http.count("/jchat") == 2
    assert h.heartbeat().query == {"me": "alice", "id": "S1", "mode": "poll", "ack": "2"}
    # An empty answer (the wait ran out): again at once.
    h.heartbeat().respond(200).end()
    assert h.http.count("/jchat") == 3
    assert h.client.connected
    assert h.statuses.count("connected (poll mode, ack=0)") == 1
    # A failure: backoff.
    h.heartbeat().refuse()
    assert h.http.count("/jchat") == 3
    h.clock.advance(0.5)
    assert h.http.count("/jchat") == 4


# -- acknowledgements ----------------------------------------------------------------


def test_ack_after_10_seconds_while_frames_arrive() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(chat(1))
    h.clock.advance(5)
    resp.frames(chat(2), chat(3))
    h.clock.advance(4.9)
    assert h.http.count("/ack") == 0
    h.clock.advance(0.1)
    ack = h.http.last("/ack")
    assert ack.method == "POST"
    assert ack.query == {"me": "alice", "id": "S1", "ack": "3"}
    ack.respond(204)
    assert h.client.acked_id == 3
    # Nothing new: no more acks.
    h.clock.advance(60)
    assert h.http.count("/ack") == 1


def test_ack_every_100_frames() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(*[chat(i) for i in range(1, 100)])
    assert h.http.count("/ack") == 0
    resp.frames(chat(100))
    assert h.http.count("/ack") == 1
    assert h.http.last("/ack").query["ack"] == "100"
    # While that ack is in flight, the next hundred count from it.
    resp.frames(*[chat(i) for i in range(101, 200)])
    assert h.http.count("/ack") == 1
    resp.frames(chat(200))
    assert h.http.count("/ack") == 2
    assert h.http.last("/ack").query["ack"] == "200"
    resp.frames(chat(201))
    h.clock.advance(10)
    assert h.http.last("/ack").query["ack"] == "201"


def test_failed_ack_is_tried_again() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(chat(1))
    h.clock.advance(10)
    h.http.last("/ack").refuse()
    h.clock.advance(10)
    assert h.http.count("/ack") == 2
    assert h.http.last("/ack").query["ack"] == "1"


def test_reconnect_ack_counts_as_ack() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(chat(1), chat(2))
    resp.end()
    h.clock.advance(0.5)
    h.heartbeat().respond(200)
    h.clock.advance(30)
    assert h.http.count("/ack") == 0


# -- chat ---------------------------------------------------------------------------


def test_chat_retry_reuses_seq() -> None:
    h = Harness()
    h.connect()
    d = h.client.send_chat("bob", "hello there")
    first = h.http.last("/chat")
    assert first.method == "POST"
    assert first.form == {"me": "alice", "id": "S1", "to": "bob", "msg": "hello there", "seq": "1"}
    first.refuse()
    h.clock.advance(0.5)
    second = h.http.last("/chat")
    assert second is not first
    assert second.form["seq"] == "1"
    second.deferred.errback(Failure(TimeoutError()))
    h.clock.advance(1)
    third = h.http.last("/chat")
    assert third.form["seq"] == "1"
    third.respond(202, {"delivered": "online", "msgid": 9})
    assert d.result == {"delivered": "online", "msgid": 9}
    h.client.send_chat("bob", "next")
    assert h.http.last("/chat").form["seq"] == "2"


def test_chat_request_timeout_is_retried() -> None:
    h = Harness(request_timeout=30)
    h.connect()
    d = h.client.send_chat("bob", "x")
    h.clock.advance(30)  # no answer: cancelled
    h.clock.advance(0.5)
    assert h.http.count("/chat") == 2
    assert h.http.last("/chat").form["seq"] == "1"
    h.http.last("/chat").respond(202, {"delivered": "stored", "msgid": 1})
    assert d.result["delivered"] == "stored"


def test_chat_gives_up_after_some_tries() -> None:
    h = Harness()
    h.connect()
    d = h.client.send_chat("bob", "x")
    for _ in range(h.client.retry_attempts):
        h.http.last("/chat").refuse()
        h.clock.advance(30)
    assert h.http.count("/chat") == h.client.retry_attempts
    failure = _failure_of(d)
    assert failure.check(ServerError)
    assert "gave up" in failure.value.message


def test_chat_client_errors_are_not_retried() -> None:
    h = Harness()
    h.connect()
    d = h.client.send_chat("nobody", "x")
    h.http.last("/chat").respond(404, {"error": "unknown user nobody"})
    failure = _failure_of(d)
    assert failure.check(ServerError)
    assert (failure.value.code, failure.value.message) == (404, "unknown user nobody")
    h.clock.advance(60)
    assert h.http.count("/chat") == 1


def test_chat_5xx_is_retried_with_same_seq() -> None:
    h = Harness()
    h.connect()
    h.client.send_chat("bob", "x")
    h.http.last("/chat").respond(503, {"error": "busy"})
    h.clock.advance(0.5)
    assert [r.form["seq"] for r in h.http.requests if r.path == "/chat"] == ["1", "1"]


def test_chat_waits_for_login() -> None:
    h = Harness()
    h.client.start()
    d = h.client.send_chat("bob", "early")
    assert h.http.count("/chat") == 0
    h.login("S1")
    assert h.http.last("/chat").form["id"] == "S1"
    assert not d.called


def test_chat_carries_ack() -> None:
    h = Harness()
    hb, resp = h.connect()
    resp.frames(chat(1), chat(2))
    h.client.send_chat("bob", "x")
    req = h.http.last("/chat")
    assert req.form["ack"] == "2"
    req.respond(202, {"delivered": "online", "msgid": 1})
    assert h.client.acked_id == 2
    h.clock.advance(10)
    assert h.http.count("/ack") == 0


def test_chat_403_waits_for_new_session_and_retries() -> None:
    h = Harness()
    hb, resp = h.connect("S1")
    h.clock.advance(20)
    d = h.client.send_chat("bob", "x")
    h.http.last("/chat").respond(403, {"error": "no such session"})
    assert h.client.session is None
    h.clock.advance(0)
    assert h.http.count("/chat") == 1
    h.login("S2")
    retry = h.http.last("/chat")
    assert retry.form["id"] == "S2" and retry.form["seq"] == "1"
    retry.respond(202, {"delivered": "online", "msgid": 3})
    assert d.result["msgid"] == 3


def test_init_chat() -> None:
    h = Harness()
    h.connect()
    d = h.client.init_chat("bob")
    req = h.http.last("/initchat")
    assert req.method == "GET"
    assert req.query == {"me": "alice", "id": "S1", "to": "bob"}
    req.respond(204)
    assert d.result is None
    d = h.client.init_chat("carol")
    h.http.last("/initchat").respond(200, {"online": False})
    assert d.result == {"online": False}


# -- logout and stopping -------------------------------------------------------------


def test_logout() -> None:
    h = Harness()
    stopped = h.client.when_stopped()
    hb, resp = h.connect("S1")
    resp.frames(chat(1))
    d = h.client.logout()
    req = h.http.last("/api/logout")
    assert req.method == "POST"
    assert req.form == {"me": "alice", "id": "S1"}
    assert not stopped.called
    req.respond(204)
    assert d.called and stopped.result == "logout"
    # The server ends the stream (after msg bye logout): no reconnection,
    # no ack timer left behind.
    resp.frames((2, "msg bye logout"))
    resp.end()
    h.clock.advance(100)
    assert h.http.count("/jchat") == 1
    assert h.http.count("/ack") == 0
    assert h.clock.getDelayedCalls() == []
    # Again: the same, nothing sent.
    assert h.client.logout().called
    assert h.http.count("/api/logout") == 1


def test_logout_fails_pending_chat() -> None:
    h = Harness()
    h.client.start()
    d = h.client.send_chat("bob", "x")
    h.client.logout()
    assert _failure_of(d).check(ClientStopped)


def test_logout_cancels_chat_retry_wait() -> None:
    h = Harness()
    h.connect()
    d = h.client.send_chat("bob", "x")
    h.http.last("/chat").refuse()
    h.client.logout()
    assert _failure_of(d).check(ClientStopped)
    h.clock.advance(10)
    assert h.http.count("/chat") == 1


def test_logout_tolerates_errors() -> None:
    h = Harness()
    h.connect()
    d = h.client.logout()
    h.http.last("/api/logout").refuse()
    assert d.called


def test_on_frame_errors_do_not_break_the_stream(no_unhandled_errors: list[dict[str, Any]]) -> None:
    h = Harness()
    seen = []

    def boom(i: int | None, text: str) -> None:
        seen.append(i)
        raise RuntimeError("handler bug")

    h.client._on_frame = boom
    hb, resp = h.connect()
    resp.frames(chat(1), chat(2))
    assert seen == [1, 2]
    assert not resp.closed
    assert len(no_unhandled_errors) == 2
    for event in no_unhandled_errors:
        assert event["log_failure"].check(RuntimeError)
        event["expected"] = True


def test_session_id_not_in_repr() -> None:
    h = Harness()
    h.connect("VERYSECRETSESSION")
    assert "VERYSECRETSESSION" not in repr(h.client.session)
    assert not any("VERYSECRETSESSION" in s for s in h.statuses)


def test_guest_login() -> None:
    clock, http = Clock(), FakeHTTP()
    client = HeartbeatClient(clock, BASE, None, None, http=http, guest=True)
    client.start()
    req = http.last("/api/guest")
    assert req.method == "POST"
    req.respond(200, {"session": "G", "username": "guest.7f3a", "heartbeat": "/jchat"})
    assert http.last("/jchat").query["me"] == "guest.7f3a"


# -- through treq itself ------------------------------------------------------------


class _MiniServer(Resource):
    """
    Just enough of the server for StubTreq: login, and a heartbeat that
    writes two frames and then holds (stream) or ends (poll).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []
        self.seen: list[tuple[bytes, dict[bytes, list[bytes]]]] = []

    def render(self, request: Any) -> Any:
        self.seen.append((request.path, dict(request.args)))
        if request.path == b"/api/login":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"session": "S9", "username": "alice", "host_box": "x"}).encode()
        if request.path == b"/jchat":
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.write(encode_event("msg update online bob", id=1))
            request.write(b"\n")
            request.write(encode_event("msg chat bob 5\nh\u00e9", id=2))
            if request.args.get(b"mode") == [b"poll"]:
                return b""
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b'{"error": "nope"}'


def test_with_stub_treq_stream() -> None:
    from treq.testing import StubTreq

    server = _MiniServer()
    stub = StubTreq(server)
    clock = Clock()
    frames: list[tuple[int | None, str]] = []
    client = HeartbeatClient(clock, BASE, "alice", "secret1", http=stub, on_frame=lambda i, t: frames.append((i, t)))
    client.start()
    stub.flush()
    assert server.seen[0] == (b"/api/login", {b"username": [b"alice"], b"password": [b"secret1"]})
    assert server.seen[1][0] == b"/jchat"
    assert client.connected
    assert frames == [(1, "msg update online bob"), (2, "msg chat bob 5\nh\u00e9")]
    # The server ends the held response: a drop, reconnect with ack=2.
    server.held[0].finish()
    stub.flush()
    assert not client.connected
    clock.advance(0.5)
    stub.flush()
    assert server.seen[-1][1][b"ack"] == [b"2"]
    # The re-sent frames 1 and 2 are duplicates.
    assert len(frames) == 2


# -- the console ----------------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.next: Deferred[Any] | None = None

    def _result(self, value: Any) -> Deferred[Any]:
        if self.next is not None:
            d, self.next = self.next, None
            _pending_next[:] = [d]
            return d
        return succeed(value)

    def send_chat(self, to: str, text: str) -> Deferred[Any]:
        self.calls.append(("chat", to, text))
        return self._result({"delivered": "online", "msgid": 4})

    def init_chat(self, to: str) -> Deferred[Any]:
        self.calls.append(("init", to))
        return self._result(None)

    def presence(self, name: str) -> Deferred[Any]:
        self.calls.append(("who", name))
        return self._result({"name": name, "online": True, "last_seen": None})

    def logout(self) -> Deferred[None]:
        self.calls.append(("logout",))
        return succeed(None)


def _console() -> tuple[FakeClient, CommandHandler, list[str]]:
    client = FakeClient()
    said: list[str] = []
    return client, CommandHandler(client, said.append), said  # type: ignore[arg-type]


def test_console_chat_line() -> None:
    client, handler, said = _console()
    handler.line("@bob hello there  ")
    assert client.calls == [("chat", "bob", "hello there")]
    assert said == ["to bob: online (msgid 4)"]


def test_console_commands() -> None:
    client, handler, said = _console()
    handler.line("/init bob")
    handler.line("/who carol")
    handler.line("")
    handler.line("/quit")
    assert client.calls == [("init", "bob"), ("who", "carol"), ("logout",)]
    assert said == ["chat with bob opened", "carol: online"]
    assert handler.quitting


def test_console_help_on_anything_else() -> None:
    client, handler, said = _console()
    handler.line("hello?")
    handler.line("@bob")
    assert client.calls == []
    assert said[0] == "commands:"
    assert "usage: @USER TEXT" in said


def test_console_prints_server_errors_readably_and_in_order() -> None:
    client, handler, said = _console()
    first: Deferred[Any] = Deferred()
    client.next = first
    handler.line("@nobody hi")
    assert client.calls == [("chat", "nobody", "hi")]
    done = handler.line("/init bob")
    assert len(client.calls) == 1  # waits for the command before it
    first.errback(ServerError(404, "unknown user nobody"))
    assert said[0] == "error: unknown user nobody (404)"
    assert done.called
    assert client.calls[-1] == ("init", "bob")


def test_console_other_failures_are_one_line() -> None:
    client, handler, said = _console()
    client.next = Deferred()
    handler.line("@bob hi")
    client_next = client.calls
    assert client_next
    handler_d = handler.idle()
    # A connection error wrapped the way treq does.
    from twisted.web._newclient import ResponseNeverReceived

    pending = _pending_next[0]
    pending.errback(ResponseNeverReceived([Failure(ConnectionRefusedError("refused"))]))
    assert handler_d.called
    assert len(said) == 1 and said[0].startswith("error: ") and "Traceback" not in said[0]


_pending_next: list[Deferred[Any]] = []


def test_format_frame() -> None:
    assert format_frame(12, "msg chat bob 3\nline one\nline two") == (
        "[12] msg chat bob 3\n  line one\n  line two"
    )
    assert format_frame(1, "msg update online bob") == "[1] msg update online bob"
    assert format_frame(None, "x") == "[?] x"


def _failure_of(d: Deferred[Any]) -> Failure:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, f"expected a failure, got {d!r}"
    return failures[0]


def test_logout_during_login_ends_the_new_session() -> None:
    h = Harness()
    stopped = h.client.when_stopped()
    h.client.start()
    d = h.client.logout()
    assert not d.called
    h.http.last("/api/login").respond(200, {"session": "S1", "username": "alice"})
    assert h.http.count("/jchat") == 0
    logout = h.http.last("/api/logout")
    assert logout.form == {"me": "alice", "id": "S1"}
    logout.respond(204)
    assert d.called and stopped.result == "logout"


def test_logout_during_failed_login() -> None:
    h = Harness()
    h.client.start()
    d = h.client.logout()
    h.http.last("/api/login").refuse()
    assert d.called
    assert h.http.count("/api/logout") == 0
    h.clock.advance(60)
    assert h.http.count("/api/login") == 1


def test_post_body_for_sip() -> None:
    h = Harness()
    h.connect()
    msg = b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n"
    d = h.client.post_body("/sip", msg, "message/sip")
    req = h.http.last("/sip")
    assert req.method == "POST"
    assert req.query == {"me": "alice", "id": "S1"}
    assert req.kwargs["data"] == msg
    assert req.kwargs["headers"]["Content-Type"] == ["message/sip"]
    req.respond(202)
    assert d.result is None
    # in a cluster, a 307 to the session's box is followed once, same body
    d = h.client.post_body("/sip", msg, "message/sip")
    first = h.http.requests[-1]
    assert first.kwargs["allow_redirects"] is False   # treq would refuse a POST's 307
    _redirect(first, b"http://box2:8081/sip?me=alice&id=S1")
    second = h.http.requests[-1]
    assert (second.method, second.url) == ("POST", "http://box2:8081/sip?me=alice&id=S1")
    assert second.kwargs["data"] == msg
    assert second.kwargs["headers"]["Content-Type"] == ["message/sip"]
    second.respond(202, {"txid": "z9hG4bK1"})
    assert d.result == {"txid": "z9hG4bK1"}
    # a redirect again, or one to another scheme, is an error, never a loop
    d = h.client.post_body("/sip", msg, "message/sip")
    _redirect(h.http.requests[-1], b"http://box2:8081/sip")
    _redirect(h.http.requests[-1], b"http://box3:8082/sip")
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(ServerError) and failure.value.code == 307
    d = h.client.post_body("/sip", msg, "message/sip")
    count = len(h.http.requests)
    _redirect(h.http.requests[-1], b"file:///etc/passwd", 308)
    assert len(h.http.requests) == count
    failure = d.result
    d.addErrback(lambda f: None)
    assert failure.check(ServerError) and failure.value.code == 308


def _redirect(req: FakeRequest, location: bytes, code: int = 307) -> None:
    response = FakeResponse(code, b'{"error": "this session is held by another box"}')
    response.headers.setRawHeaders(b"location", [location])
    req.response = response
    req.deferred.callback(response)


# -- resume tokens (issue 12) ----------------------------------------------------------

TOKEN = "T" * 43


def _login_answer(session: str, resume: str | None = TOKEN) -> dict[str, Any]:
    return {"session": session, "username": "alice", "heartbeat": "/jchat", "host_box": "h:1",
            "resume": resume}


def _lose_session(h: Harness) -> None:
    """The server restarts under a settled session: the held heartbeat ends,
    the next one is refused."""
    h.clock.advance(11)
    h.heartbeat().response.end()
    h.clock.advance(0.5)
    h.heartbeat().respond(403, {"error": "no such session"})
    h.clock.advance(0)


def test_a_lost_session_is_resumed_without_the_password() -> None:
    h = Harness()
    h.client.start()
    h.http.last("/api/login").respond(200, _login_answer("S1"))
    h.heartbeat().respond(200)
    assert h.client.has_resume_token and TOKEN not in repr(h.client.__dict__.get("session"))
    _lose_session(h)
    resume = h.http.last("/api/resume")
    assert resume.method == "POST" and resume.form == {"token": TOKEN}
    assert h.http.count("/api/login") == 1                 # no second password login
    resume.respond(200, _login_answer("S2"))
    assert h.heartbeat().query == {"me": "alice", "id": "S2", "mode": "stream"}
    assert h.client.session.session == "S2"
    # and again, with the same token
    h.heartbeat().respond(200)
    _lose_session(h)
    assert h.http.last("/api/resume").form == {"token": TOKEN}
    assert h.http.count("/api/login") == 1


def test_a_refused_token_falls_back_to_the_password() -> None:
    h = Harness()
    h.client.start()
    h.http.last("/api/login").respond(200, _login_answer("S1"))
    h.heartbeat().respond(200)
    _lose_session(h)
    h.http.last("/api/resume").respond(401, {"error": "this resume token is not valid"})
    login = h.http.last("/api/login")
    assert h.http.count("/api/login") == 2 and login.form["password"] == "secret1"
    assert not h.client.has_resume_token
    login.respond(200, _login_answer("S3", "U" * 43))
    assert h.client.session.session == "S3" and h.client.has_resume_token


def test_a_busy_server_keeps_the_token_and_retries_later() -> None:
    h = Harness()
    h.client.start()
    h.http.last("/api/login").respond(200, _login_answer("S1"))
    h.heartbeat().respond(200)
    _lose_session(h)
    h.http.last("/api/resume").respond(503, {"error": "busy"})
    assert h.http.count("/api/login") == 1 and h.client.has_resume_token
    h.clock.advance(30)                                    # the backoff delay
    assert h.http.count("/api/resume") == 2 and h.http.count("/api/login") == 1


def test_a_restart_with_the_resume_file_needs_no_password(tmp_path: Any) -> None:
    import os
    path = str(tmp_path / "alice.resume")
    h = Harness(resume_file=path)
    h.client.start()
    h.http.last("/api/login").respond(200, _login_answer("S1"))
    assert open(path).read().strip() == TOKEN
    assert os.stat(path).st_mode & 0o777 == 0o600
    # the next run (no password at all) resumes from the file
    again = Harness(resume_file=path, password=None)
    again.client.start()
    assert again.http.count("/api/login") == 0
    again.http.last("/api/resume").respond(200, _login_answer("S2"))
    assert again.client.session.session == "S2"
    # logging out revokes the token: the file goes too
    again.heartbeat().respond(200)
    again.client.logout()
    again.http.last("/api/logout").respond(204)
    assert not os.path.exists(path) and not again.client.has_resume_token


def test_without_a_password_a_refused_token_stops_the_client(tmp_path: Any) -> None:
    path = tmp_path / "alice.resume"
    path.write_text(TOKEN + "\n")
    h = Harness(resume_file=str(path), password=None)
    stopped = h.client.when_stopped()
    h.client.start()
    h.http.last("/api/resume").respond(401, {"error": "this resume token is not valid"})
    assert _failure_of(stopped).check(LoginRefused)
    assert not path.exists() and h.http.count("/api/login") == 0


def test_bye_password_forgets_the_token() -> None:
    h = Harness()
    h.client.start()
    h.http.last("/api/login").respond(200, _login_answer("S1"))
    resp = h.heartbeat().respond(200)
    resp.frames((1, "msg bye password"))
    assert not h.client.has_resume_token and h.client.stopped


def test_bye_shutdown_comes_back_with_the_token_after_the_backoff() -> None:
    h = Harness()
    h.client.start()
    h.http.last("/api/login").respond(200, _login_answer("S1"))
    resp = h.heartbeat().respond(200)
    h.clock.advance(11)
    resp.frames((1, "msg bye shutdown"))                # a clean restart of the server
    assert not h.client.stopped and h.client.session is None
    h.clock.advance(0.1)
    assert h.http.count("/api/resume") == 0             # not while it is stopping
    h.clock.advance(0.5)
    h.http.last("/api/resume").refuse()                 # still down
    h.clock.advance(1)
    h.http.last("/api/resume").respond(200, _login_answer("S2"))
    assert h.client.session.session == "S2" and h.http.count("/api/login") == 1


def test_bye_shutdown_without_a_token_stops_as_before() -> None:
    h = Harness()
    h.client.start()
    h.http.last("/api/login").respond(200, _login_answer("S1", None))
    h.heartbeat().respond(200).frames((1, "msg bye shutdown"))
    assert h.client.stopped


def test_bundle_asks_for_bundled_presence_and_passes_msg_updates_on() -> None:
    h = Harness(bundle=True)
    hb, resp = h.connect()
    assert hb.query == {"me": "alice", "id": "S1", "mode": "stream", "bundle": "1"}
    resp.frames((1, "msg updates\nonline bob\noffline carol"))
    assert h.frames == [(1, "msg updates\nonline bob\noffline carol")]


def test_presence_client_bundles_unless_told_not_to() -> None:
    from presence.cli.client import build_parser
    assert build_parser().parse_args([]).unbundled is False
    assert build_parser().parse_args(["--unbundled"]).unbundled is True
