"""Shared builders for the in-memory (tier 1/2) tests of the presence server.

No global reactor, no sockets, no sleeps:

* time is a :class:`twisted.internet.task.Clock` given to the hub (and to the
  site, so that poll-mode ``wait`` timers and the access log use it too);
* the directory is a real :class:`~presence.store.sqlite.SQLiteDirectory`
  running its SQL at once on this thread (``runner=run_now``);
* password hashing runs inline (``hasher``) at work factor 1;
* HTTP goes through :class:`treq.testing.StubTreq` over the real resource
  tree (``make_site(...).resource``): real request parsing, real Klein
  routing, real chunked responses, no sockets.  Each :class:`Browser` is one
  client with its own cookie jar.

Everything a test needs fires synchronously, so :func:`result_of` can take
the result of a Deferred at once (and fails loudly if it has not fired).
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlencode

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from presence.core.hub import Hub, HubConfig
from presence.service import Limits, PresenceService
from presence.store.sqlite import SQLiteDirectory, run_now
from presence.sweep import SweepService
from presence.web.site import make_site

BASE = "http://presence.test"
PASSWORD = "correct horse"
#: the server's limits, but chat, registrations and changes as fast as a test
#: sends them (on a Clock that stands still); tests of the limits pass ``Limits()``
TEST_LIMITS = Limits(chat_session=(10**9, 1), chat_address=(10**9, 1), registrations=10**6,
                     changes=(10**9, 1))


def hasher(fn, *args) -> defer.Deferred:
    """Run the password hash inline (tests use work factor 1)."""
    return defer.maybeDeferred(fn, *args)


def result_of(d: Any) -> Any:
    """The result of a Deferred that has already fired; raise its failure."""
    if not isinstance(d, defer.Deferred):
        d = defer.ensureDeferred(d)
    box: List[Any] = []
    d.addBoth(box.append)
    if not box:
        raise AssertionError(f"{d!r} has not fired")
    value = box[0]
    if isinstance(value, Failure):
        value.raiseException()
    return value


def failure_of(d: Any, *types: type) -> Failure:
    """The failure of a Deferred that has already failed with one of ``types``."""
    if not isinstance(d, defer.Deferred):
        d = defer.ensureDeferred(d)
    box: List[Any] = []
    d.addBoth(box.append)
    if not box:
        raise AssertionError(f"{d!r} has not fired")
    if not isinstance(box[0], Failure):
        raise AssertionError(f"expected a failure, got {box[0]!r}")
    if types and not box[0].check(*types):
        box[0].raiseException()
    return box[0]


# -- the event stream, parsed independently of the server's own code ---------

@dataclass
class Event:
    id: int
    text: str

    @property
    def head(self) -> str:
        return self.text.split("\n", 1)[0]


def parse_stream(raw: bytes) -> Tuple[List[Event], int]:
    """Split an event-stream body into events and count keep-alive bytes.

    A keep-alive is an empty line that does not end an event.  Raises
    AssertionError on anything that is not ``id:``/``data:`` lines.
    """
    events: List[Event] = []
    keepalives = 0
    ident: Optional[int] = None
    data: List[str] = []
    text = raw.decode("utf-8")
    lines = text.split("\n")
    # a complete stream ends with "\n": the last split element is "" (no line)
    assert lines[-1] == "", f"stream ends mid-line: {text[-80:]!r}"
    for line in lines[:-1]:
        if line == "":
            if ident is None and not data:
                keepalives += 1
            else:
                assert ident is not None, f"event without id: {data!r}"
                events.append(Event(ident, "\n".join(data)))
                ident, data = None, []
        elif line.startswith("id: "):
            assert ident is None and not data, f"id line inside an event: {line!r}"
            ident = int(line[4:])
        elif line.startswith("data: "):
            data.append(line[6:])
        else:
            raise AssertionError(f"unexpected event-stream line {line!r}")
    assert ident is None and not data, "the stream ends inside an event"
    return events, keepalives


# -- HTTP through StubTreq ----------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def all_headers(self, name: str) -> List[str]:
        return self.headers.getRawHeaders(name) or []

    @property
    def json(self) -> Any:
        assert self.header("content-type") == "application/json", (
            f"not JSON ({self.status}): {self.header('content-type')!r} {self.body[:200]!r}")
        return jsonlib.loads(self.body)

    @property
    def error(self) -> str:
        body = self.json
        assert set(body) == {"error"}, body
        assert isinstance(body["error"], str) and body["error"]
        return body["error"]


class Heartbeat:
    """A held ``GET /jchat`` as its client sees it."""

    def __init__(self, browser: "Browser", d: defer.Deferred, pump: Any = None) -> None:
        self.browser = browser
        self.pump = pump
        self.response = result_of(d)  # the headers come at once
        self.status = self.response.code
        self.headers = self.response.headers
        self.raw = b""
        self._finished = False
        self.reason: Optional[Failure] = None
        done = treq.collect(self.response, self._got)
        done.addCallbacks(self._done, self._lost)
        browser.flush()

    def _got(self, data: bytes) -> None:
        self.raw += data

    def _done(self, _: Any) -> None:
        self._finished = True

    def _lost(self, reason: Failure) -> None:
        self._finished = True
        self.reason = reason

    @property
    def finished(self) -> bool:
        """Whether the response has ended (after moving any pending bytes)."""
        self.browser.flush()
        return self._finished

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def read(self) -> bytes:
        """Everything received so far (after moving any pending bytes)."""
        self.browser.flush()
        return self.raw

    def events(self) -> List[Event]:
        return parse_stream(self.read())[0]

    def heads(self) -> List[str]:
        return [e.head for e in self.events()]

    def drop(self) -> None:
        """The client's end of the connection goes away (network loss, a
        closed laptop): the server sees the connection lost."""
        assert self.pump is not None
        self.pump.clientIO.abortConnection()
        self.browser.flush()

    def keepalives(self) -> int:
        return parse_stream(self.read())[1]

    def ids(self) -> List[int]:
        return [e.id for e in self.events()]


class Browser:
    """One HTTP client (its own connection pool and cookie jar)."""

    def __init__(self, world: "World") -> None:
        self.world = world
        self.stub = StubTreq(world.site.resource)

    def flush(self) -> None:
        self.stub.flush()

    def request(self, method: str, path: str, params: Optional[Dict[str, Any]] = None,
                data: Any = None, json: Any = None, headers: Optional[Dict] = None,
                body: Optional[bytes] = None) -> Reply:
        url = BASE + path
        kw: Dict[str, Any] = {}
        if params:
            kw["params"] = params
        if data is not None:
            kw["data"] = data
        if json is not None:
            kw["json"] = json
        if body is not None:
            kw["data"] = body
        if headers:
            kw["headers"] = headers
        d = self.stub.request(method, url, **kw)
        self.flush()
        response = result_of(d)
        content = result_of(treq.content(response))
        return Reply(response.code, response.headers, content)

    def get(self, path: str, **params: Any) -> Reply:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, **data: Any) -> Reply:
        return self.request("POST", path, data=data)

    def post_json(self, path: str, obj: Any) -> Reply:
        return self.request("POST", path, json=obj)

    def heartbeat(self, headers: Optional[Dict] = None, **params: Any) -> Heartbeat:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        # the in-memory connection of this request, so that a test can drop it
        # (StubTreq keeps one IOPump per connection)
        before = set(self.stub._agent._pumps)
        d = self.stub.request("GET", f"{BASE}/jchat?{query}", headers=headers)
        new = set(self.stub._agent._pumps) - before
        pump = new.pop() if len(new) == 1 else None
        self.flush()
        return Heartbeat(self, d, pump)

    def heartbeat_reply(self, **params: Any) -> Reply:
        """A heartbeat request expected to be answered at once (errors)."""
        return self.request("GET", "/jchat", params=params)


@dataclass
class User:
    """A registered, logged-in user and the browser they use."""

    name: str
    session: str
    browser: Browser
    password: str = PASSWORD
    login: Dict[str, Any] = field(default_factory=dict)

    @property
    def creds(self) -> Dict[str, str]:
        return {"me": self.name, "id": self.session}

    def get(self, path: str, **params: Any) -> Reply:
        return self.browser.get(path, **{**self.creds, **params})

    def post(self, path: str, **data: Any) -> Reply:
        return self.browser.post(path, **{**self.creds, **data})

    def heartbeat(self, **params: Any) -> Heartbeat:
        return self.browser.heartbeat(**{**self.creds, **params})

    @property
    def hub_session(self):
        return self.browser.world.hub.session(self.session)


class World:
    """One in-memory presence server."""

    def __init__(self, path: str = ":memory:", keepalive: float = 25.0, poll: float = 4.0,
                 linger: Optional[float] = None, session_ttl: float = 3600.0,
                 mailbox: int = 1000, sessions_per_user: int = 16,
                 start: float = 1_000_000.0, limits: Optional[Limits] = None) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.store = SQLiteDirectory(path, runner=run_now)
        self.config = HubConfig(keepalive=keepalive, poll=poll, linger=linger,
                                session_ttl=session_ttl, mailbox=mailbox,
                                sessions_per_user=sessions_per_user,
                                host_box="box1.test:8080")
        self.hub = Hub(self.clock, self.config)
        self.service = PresenceService(self.hub, self.store, hasher, hash_cost=1,
                                       limits=limits or TEST_LIMITS)
        self.site = make_site(self.service, keepalive, reactor=self.clock)

    def browser(self) -> Browser:
        return Browser(self)

    def register(self, name: str, password: str = PASSWORD, browser: Optional[Browser] = None,
                 **extra: Any) -> Reply:
        b = browser or self.browser()
        return b.post("/api/register", username=name, password=password, **extra)

    def login(self, name: str, password: str = PASSWORD,
              browser: Optional[Browser] = None) -> User:
        b = browser or self.browser()
        reply = b.post("/api/login", username=name, password=password)
        assert reply.status == 200, (reply.status, reply.body)
        body = reply.json
        return User(name, body["session"], b, password, body)

    def user(self, name: str, password: str = PASSWORD, **extra: Any) -> User:
        reply = self.register(name, password, **extra)
        assert reply.status == 201, (reply.status, reply.body)
        return self.login(name, password)

    def guest(self) -> User:
        b = self.browser()
        reply = b.post("/api/guest")
        assert reply.status == 200, (reply.status, reply.body)
        body = reply.json
        return User(body["username"], body["session"], b, "", body)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def sweep(self) -> None:
        """One whole sweep pass, as the sweep service runs it."""
        for _ in self.hub.sweep():
            pass

    def sweep_service(self) -> SweepService:
        return SweepService(self.hub, self.clock, self.config.poll)


# -- the real PresenceSite over an in-memory transport (raw bytes) -----------

class RawConnection:
    """One HTTP connection to the real ``PresenceSite`` (``BoundedRequest``,
    masked access log) fed raw bytes over a ``StringTransport``."""

    def __init__(self, site, peer: Tuple[str, int] = ("127.0.0.1", 40000),
                 transport: Optional[StringTransport] = None) -> None:
        address = IPv4Address("TCP", *peer)
        self.transport = transport or StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=address)
        self.protocol = site.buildProtocol(address)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        return self.transport.value()

    def close(self) -> None:
        from twisted.internet.error import ConnectionDone
        self.protocol.connectionLost(Failure(ConnectionDone()))


def split_response(raw: bytes) -> Tuple[int, Dict[str, str], bytes]:
    """Status, headers (lower-case names) and raw body of one HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


# -- fixtures -------------------------------------------------------------------

@pytest.fixture
def logged_errors():
    """Every log event at level error or above, published while the test runs."""
    events: List[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_level") is not None and event["log_level"] >= LogLevel.error:
            events.append(event)
        elif event.get("isError"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def world(logged_errors):
    """A fresh in-memory server; the test fails if the server logged an error."""
    w = World()
    yield w
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def raw_request(site, method: str, target: str, body: bytes = b"",
                headers: Optional[Dict[str, str]] = None,
                peer: Tuple[str, int] = ("127.0.0.1", 40000),
                version: str = "HTTP/1.1") -> Tuple[int, Dict[str, str], bytes]:
    """One request through the real ``PresenceSite`` as raw bytes; returns the
    status, the headers and the (de-chunked) body of the answer."""
    conn = RawConnection(site, peer)
    head = {"Host": "presence.test", "Connection": "close"}
    head.update(headers or {})
    if (body or method == "POST") and "Transfer-Encoding" not in head:
        head.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in head.items()]
    raw = conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    status, hdrs, payload = split_response(raw)
    if hdrs.get("transfer-encoding") == "chunked":
        payload = dechunk(payload)
    return status, hdrs, payload
