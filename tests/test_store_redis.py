"""The directory in Redis against a real ``redis-server``, where Redis
itself matters: two nodes racing for one name or one message box, spills
batched into few script calls, a password and a unix socket in the URL, and
Redis killed (SIGKILL) and started again: calls and the JSON API fail with
503 within the bound while it is down, one log line says so, chat spilled
meanwhile is written when it is back, and with append-only persistence
(``appendfsync always``) nothing written before the kill is lost.  The directory suite itself runs on Redis in ``test_store.py``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

import helpers
from presence.core.hub import Hub, HubConfig
from presence.service import PresenceService
from presence.store.interface import BoxFull, NameTaken, StoreUnavailable
from presence.store.open import open_store
from presence.store.redis import BATCH, RedisDirectory
from presence.web.site import make_site
from redis_support import RedisServer, fresh_prefix, settle, start_redis

pytestmark = pytest.mark.blocking

HASH = "scrypt$1$8$1$00$00"
UNAVAILABLE = {"error": "the directory is unavailable, try again shortly"}


def reactor():
    from twisted.internet import reactor as global_reactor
    return global_reactor


def result_of(d: Any) -> Any:
    return helpers.result_of(settle(d))


def outcomes(ds: List[defer.Deferred]) -> List[Any]:
    """Each Deferred's result, or the class of its failure."""
    done = settle(defer.DeferredList(ds, consumeErrors=True))
    return [value if ok else value.type for ok, value in helpers.result_of(done)]


def turn(seconds: float) -> None:
    """Let the reactor run for ``seconds`` (between checks of a condition)."""
    settle(task.deferLater(reactor(), seconds, lambda: None))


@pytest.fixture(scope="module")
def redis_server(request, tmp_path_factory):
    return start_redis(request, tmp_path_factory)


@pytest.fixture
def nodes(redis_server):
    """Two directories on one Redis and one prefix: two host boxes."""
    url = f"{redis_server.url}?prefix={fresh_prefix()}"
    made = [open_store(url, "", reactor(), connect=True) for _ in range(2)]
    yield made
    for store in made:
        settle(store.stop())


@pytest.fixture
def log_lines():
    """``log_lines(level)``: the directory's lines at ``level``;
    ``log_lines(None)``: every event, formatted."""
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda level: [formatEvent(e) for e in events if level is None or (
        e.get("log_level") == level and "directory in Redis" in (e.get("log_format") or ""))]
    globalLogPublisher.removeObserver(events.append)


# -- two nodes at once ------------------------------------------------------------------

def test_two_nodes_creating_one_name_at_once_exactly_one_wins(nodes):
    a, b = nodes
    result_of(a.create_user("owner", HASH))
    assert result_of(b.resolve("owner")) == ("user", "owner")     # both connected
    calls: Dict[str, List[defer.Deferred]] = {}
    for i in range(60):
        name = f"n{i}"
        first = a.create_user(name, HASH)                  # both sent before either answers
        second = [lambda: b.create_user(name, "scrypt$other"),
                  lambda: b.create_group(name, "owner"),
                  lambda: b.add_alias("owner", name)][i % 3]()
        calls[name] = [first, second]
    for name, ds in calls.items():
        got = outcomes(ds)
        assert sorted(map(str, got)) == sorted([name, str(NameTaken)]), (name, got)
    # the winner is what the name resolves to, on either node
    for i, (name, ds) in enumerate(calls.items()):
        won = outcomes([a.resolve(name)])[0]
        loser_kind = ["user", "group", "user"][i % 3]
        assert won in (("user", name), (loser_kind, name), ("user", "owner"))
        assert outcomes([b.resolve(name)])[0] == won


def test_the_quota_holds_when_two_nodes_store_at_once(nodes):
    a, b = nodes
    ds = [(a, b)[i % 2].store_message("bob", "alice", "abc", 1.0, quota=(10, 10**6))
          for i in range(40)]
    got = outcomes(ds)
    assert sum(isinstance(g, int) for g in got) == 10
    assert got.count(BoxFull) == 30
    assert len({g for g in got if isinstance(g, int)}) == 10     # ids from one INCR
    assert result_of(a.box_usage("bob")) == (10, 30)
    # the byte quota too: 10 bytes each, 55 allowed
    got = outcomes([(a, b)[i % 2].store_message("carol", "x", "0123456789", 1.0,
                                                 quota=(100, 55)) for i in range(20)])
    assert got.count(BoxFull) == 15
    assert result_of(b.box_usage("carol")) == (5, 50)


def test_spills_go_in_one_script_call_per_batch(nodes):
    store = nodes[0]
    calls: List[int] = []
    real = store.client.eval

    def counting(script, keys, args):
        calls.append((len(args) - 1) // 5)
        return real(script, keys, args)
    store.client.eval = counting
    for i in range(2 * BATCH + 10):
        store.spill("bob", "alice", f"t{i}", float(i), f"m{i}")
    box = result_of(store.messages("bob", limit=3))
    assert calls[:4] == [1, BATCH, BATCH, 9]
    assert [m["text"] for m in box] == ["t1009", "t1008", "t1007"]
    assert result_of(store.unread("bob")) == 2 * BATCH + 10
    # a repeated msgid in a spill is kept once
    store.spill("bob", "alice", "t0", 0.0, "m0")
    assert result_of(store.unread("bob")) == 2 * BATCH + 10


# -- URLs with a password, and a unix socket ---------------------------------------------------

def test_a_password_in_the_url(request, tmp_path_factory, log_lines):
    server = start_redis(request, tmp_path_factory, password="s3cret-pw")
    good = open_store(server.url, "", reactor(), connect=True)
    bad = open_store(server.url.replace("s3cret-pw", "wrong-pw"), "", reactor(), connect=True)
    try:
        assert result_of(good.create_user("alice", HASH)) == "alice"
        started = time.monotonic()
        helpers.failure_of(settle(bad.get_user("alice")), StoreUnavailable)
        assert time.monotonic() - started < 3.0
    finally:
        settle(good.stop())
        settle(bad.stop())
    assert log_lines(LogLevel.error)
    everything = " ".join(log_lines(None)) + repr(good.where) + repr(bad.where)
    assert "s3cret-pw" not in everything and "wrong-pw" not in everything


def test_a_unix_socket_url(request, tmp_path_factory):
    server = start_redis(request, tmp_path_factory, unixsocket=True)
    store = open_store(f"unix:{server.socket}?db=3", "", reactor(), connect=True)
    try:
        assert result_of(store.create_user("alice", HASH)) == "alice"
        assert result_of(store.resolve("alice")) == ("user", "alice")
    finally:
        settle(store.stop())
    assert b"keys=" in server.command("INFO", "keyspace") and b"db3:" in server.command(
        "INFO", "keyspace")


# -- Redis killed and started again --------------------------------------------------------

class Api:
    """The JSON API over a directory, on the real reactor (StubTreq)."""

    def __init__(self, store: RedisDirectory) -> None:
        clock = Clock()
        clock.advance(1_000_000)
        hub = Hub(clock, HubConfig(host_box="box1.test:8080"))
        service = PresenceService(hub, store, helpers.hasher, hash_cost=1,
                                  limits=helpers.TEST_LIMITS)
        self.stub = StubTreq(make_site(service, 25.0, reactor=clock).resource)

    def post(self, path: str, **data: str):
        d = self.stub.post(helpers.BASE + path, data=data)
        done: List[bool] = []

        def seen(result: Any) -> Any:
            done.append(True)
            return result
        d.addBoth(seen)
        deadline = time.monotonic() + 10
        while not done:
            self.stub.flush()
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} did not answer within 10 s")
            turn(0.02)
        response = helpers.result_of(d)
        body = helpers.result_of(treq.json_content(response))
        return response.code, body, response.headers.getRawHeaders("retry-after")


def test_redis_killed_gives_503_within_the_bound_and_its_restart_loses_nothing(
        request, tmp_path_factory, log_lines):
    server: RedisServer = start_redis(request, tmp_path_factory, appendfsync="always")
    store = open_store(server.url, "", reactor(), connect=True)
    api = Api(store)
    try:
        assert api.post("/api/register", username="alice", password="correct horse")[0] == 201
        kept = result_of(store.store_message("alice", "bob", "see you", 70.0, msgid="m1"))
        result_of(store.create_group("friends", "alice"))

        server.kill()
        started = time.monotonic()
        status, body, retry = api.post("/api/register", username="bob", password="correct horse")
        took = time.monotonic() - started
        assert (status, body, retry) == (503, UNAVAILABLE, ["2"])
        assert took < 2.0 + 1.0
        started = time.monotonic()
        assert api.post("/api/login", username="alice", password="correct horse")[:2] == (
            503, UNAVAILABLE)
        assert time.monotonic() - started < 0.5                  # the outage is known
        helpers.failure_of(settle(store.members("friends")), StoreUnavailable)
        # chat that leaves a mailbox while Redis is down waits, in order
        store.spill("alice", "bob", "while down", 75.0, "m2")
        store.spill("alice", "carol", "also while down", 76.0, "m3")
        assert len(log_lines(LogLevel.error)) == 1               # one line per outage

        server.start()
        deadline = time.monotonic() + 30
        while True:
            status = api.post("/api/register", username="bob", password="correct horse")[0]
            if status == 201:
                break
            assert status == 503 and time.monotonic() < deadline, status
            turn(0.1)
        assert len(log_lines(LogLevel.error)) == 1
        assert len(log_lines(LogLevel.info)) == 1                # "reachable again"
        # what was written before the kill is there (appendonly, fsync always)
        assert api.post("/api/login", username="alice", password="correct horse")[0] == 200
        box = result_of(store.messages("alice"))
        assert [m["text"] for m in box] == ["also while down", "while down", "see you"]
        assert box[-1]["id"] == kept
        assert result_of(store.members("friends")) == ["alice"]
        helpers.failure_of(settle(store.create_user("alice", HASH)), NameTaken)
    finally:
        settle(store.stop())
