"""The directory in Redis without Redis: URL parsing, the key layout, the
bounded failure when Redis is unreachable (and its log lines), and the 503
it becomes on the JSON API.

A fake of the Redis seam (``ready``/``when_ready``/``eval``/``close``/
``unavailable``) records every script call; time is a ``Clock``; no reactor,
no sockets, no sleeps.  The same directory over a real ``redis-server`` is in
``test_store.py`` and ``test_store_redis.py``.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from helpers import World, failure_of, result_of
from presence.store.interface import BoxFull, NameTaken, StoreUnavailable
from presence.store.open import open_store
from presence.store.redis import (SCRIPTS, Keys, RedisAddress, RedisDirectory, fast_commands,
                                  parse_url)
from presence.store.sqlite import SQLiteDirectory

NAMES = {script: name for name, script in SCRIPTS.items()}


class Down(Exception):
    """What the fake raises for "connection lost"."""


class FakeRedis:
    """The Redis seam, answering from a list the test fills (or never)."""

    def __init__(self, ready: bool = True) -> None:
        self.is_ready = ready
        self.calls: List[tuple] = []
        self.answers: List[Any] = []
        self.pending: List[defer.Deferred] = []
        self.waiting: List[defer.Deferred] = []

    def ready(self) -> bool:
        return self.is_ready

    def when_ready(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting.append(d)
        return d

    def come_up(self) -> None:
        self.is_ready = True
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def eval(self, script: bytes, keys: List[bytes], args: List[bytes]) -> defer.Deferred:
        self.calls.append((NAMES[script], list(keys), list(args)))
        if not self.answers:
            d: defer.Deferred = defer.Deferred()      # no answer (yet)
            self.pending.append(d)
            return d
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            return defer.fail(answer)
        return defer.succeed(answer)

    def unavailable(self, error: BaseException) -> bool:
        return isinstance(error, Down)

    def close(self) -> None:
        self.is_ready = False


@pytest.fixture
def log_events():
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def redis_lines(events: List[dict], level: LogLevel) -> List[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events
            if e.get("log_level") == level and "directory in Redis" in (e.get("log_format") or "")]


def directory(fake: FakeRedis, clock: Clock, prefix: str = "presence:") -> RedisDirectory:
    return RedisDirectory(fake, clock, prefix=prefix,
                          address=RedisAddress(host="10.0.0.7", port=6380, db=2, password="s3cret"))


# -- URLs -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", RedisAddress(host="127.0.0.1", port=6379, db=0)),
    ("redis://redis.internal", RedisAddress(host="redis.internal", port=6379, db=0)),
    ("redis://:pw%40x@10.0.0.5:7000/3",
     RedisAddress(host="10.0.0.5", port=7000, db=3, password="pw@x")),
    ("redis://presence:pw@[::1]:6380/1",
     RedisAddress(host="::1", port=6380, db=1, password="pw", username="presence")),
    ("redis://h:1/0?prefix=cluster1:", RedisAddress(host="h", port=1, db=0, prefix="cluster1:")),
    ("unix:/run/redis/redis.sock", RedisAddress(path="/run/redis/redis.sock", db=0)),
    ("unix:///run/redis.sock?db=4&password=pw",
     RedisAddress(path="/run/redis.sock", db=4, password="pw")),
])
def test_redis_urls(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url, says", [
    ("", "empty"),
    ("http://h:6379/0", "redis:// or unix:"),
    ("redis://:pw@h:99999/0", "port"),
    ("redis://:pw@h:port/0", "port"),
    ("redis://:pw@/0", "no host"),
    ("redis://:pw@h:6379/zero", "database"),
    ("redis://:pw@h:6379/0?sentinel=1", "unknown parameters"),
    ("unix:relative.sock?password=pw", "absolute"),
])
def test_bad_redis_urls_say_why_without_the_password(url, says):
    with pytest.raises(ValueError, match=says) as e:
        parse_url(url)
    assert "pw" not in str(e.value)


def test_the_address_never_shows_its_password():
    address = parse_url("redis://:s3cret@10.0.0.7:6380/2")
    assert address.where == "redis://10.0.0.7:6380/2"
    assert "s3cret" not in repr(address)
    assert parse_url("unix:/run/r.sock?db=1&password=s3cret").where == "unix:/run/r.sock?db=1"


def test_open_store_chooses_sqlite_by_default_and_redis_for_a_url(tmp_path):
    sqlite = open_store(None, str(tmp_path), connect=False)
    assert isinstance(sqlite, SQLiteDirectory)
    assert not (tmp_path / "presence.sqlite3").exists()       # opened at start
    redis = open_store("redis://127.0.0.1:1/5?prefix=c1:", str(tmp_path), Clock())
    assert isinstance(redis, RedisDirectory)
    assert redis.client is None and redis.prefix == b"c1:"    # connects at start
    assert redis.where == "redis://127.0.0.1:1/5"
    with pytest.raises(ValueError):
        open_store("mysql://h/0", str(tmp_path))


# -- the key layout ------------------------------------------------------------------------

def test_commands_are_encoded_as_txredisapi_encodes_them():
    import txredisapi
    fast = fast_commands(txredisapi.RedisProtocol)()
    slow = txredisapi.RedisProtocol()
    words = (b"EVALSHA", b"ab" * 20, 0, 12, -3, 1.5, 1e-07, "\u00e9t\u00e9", b"", b"x\r\ny")
    assert fast._build_command(*words) == slow._build_command(*words)
    assert fast._build_command() == slow._build_command()
    # (what the override relies on: txredisapi builds every command with
    # it, and its factories build connections from ``protocol``)
    import inspect
    assert "self._build_command(" in inspect.getsource(
        txredisapi.BaseRedisProtocol.execute_command)
    assert issubclass(txredisapi.RedisFactory.protocol, txredisapi.BaseRedisProtocol)


def test_keys_are_under_the_prefix():
    keys = Keys("c1:")
    assert keys("name", "alice") == b"c1:name:alice"
    assert keys("user", "j\u00fcrgen") == "c1:user:j\u00fcrgen".encode()
    assert keys("nextid") == b"c1:nextid"


def test_a_user_is_created_by_one_script_that_claims_the_name():
    fake, clock = FakeRedis(), Clock()
    fake.answers = [1, 0]
    store = directory(fake, clock, prefix="c1:")
    assert result_of(store.create_user("alice", "h", wireless="+49170", now=5.0)) == "alice"
    failure_of(store.create_user("alice", "h2"), NameTaken)
    (name, keys, args), (_, keys2, _) = fake.calls
    assert name == "create_user"
    assert keys == [b"c1:name:alice", b"c1:user:alice", b"c1:wireless:+49170"]
    assert keys2 == [b"c1:name:alice", b"c1:user:alice"]
    # the name is claimed with SET NX inside the script, never checked first
    assert b"'SET', KEYS[1], 'u', 'NX'" in SCRIPTS["create_user"]
    assert args[:2] == [b"5.0", b"alice"]
    assert dict(zip(args[2::2], args[3::2])) == {
        b"password_hash": b"h", b"created": b"5.0", b"hits_offline": b"0", b"wireless": b"+49170"}


def test_every_key_of_every_call_is_under_the_prefix():
    fake, clock = FakeRedis(), Clock()
    store = directory(fake, clock, prefix="c1:")
    store.create_group("g", "alice", "pw")
    store.add_alias("alice", "ally")
    store.join("g", "bob")
    store.add_contact("alice", "bob")
    store.memberships("bob")
    store.mark_read("bob", 7)
    store.store_resume("hh", "alice", "phone", 1.0)
    store.revoke_resume("alice")
    assert [c[0] for c in fake.calls] == ["create_group", "add_alias", "pair_add", "pair_add",
                                          "two_sets", "mark_read", "store_resume",
                                          "revoke_resume"]
    assert all(k.startswith(b"c1:") for _, keys, _ in fake.calls for k in keys)
    assert fake.calls[2][1] == [b"c1:members:g", b"c1:groups:bob"]
    assert fake.calls[3][1] == [b"c1:contacts:alice", b"c1:listed:bob"]
    assert fake.calls[5][1] == [b"c1:msg:7", b"c1:usage:bob"]


def test_a_full_box_is_boxfull():
    fake, clock = FakeRedis(), Clock()
    fake.answers = [-1, 12]
    store = directory(fake, clock)
    failure_of(store.store_message("bob", "alice", "hi", 1.0, quota=(3, 100)), BoxFull)
    assert result_of(store.store_message("bob", "alice", "hi", 1.0, "m1")) == 12
    assert fake.calls[0][2][5:] == [b"", b"3", b"100"]    # no msgid; the quota
    assert fake.calls[1][2][5:] == [b"=m1", b"", b""]    # a msgid; no quota


def test_spills_wait_for_the_call_in_flight_and_go_in_one_call():
    fake, clock = FakeRedis(), Clock()
    store = directory(fake, clock)
    for i in range(4):
        store.spill("bob", "alice", f"t{i}", float(i), f"m{i}")
    assert len(fake.calls) == 1                              # the first row alone
    usage = store.box_usage("bob")
    assert not usage.called                                  # waits for the spills
    fake.answers = [3, [b"4", b"8"]]
    fake.pending.pop().callback(1)
    assert len(fake.calls) == 3                              # the other three, at once
    assert fake.calls[1][0] == "spill" and len(fake.calls[1][2]) == 1 + 3 * 5
    assert result_of(usage) == (4, 8)


# -- Redis unreachable -----------------------------------------------------------------------

def test_no_connection_fails_within_the_bound_then_at_once(log_events):
    fake, clock = FakeRedis(ready=False), Clock()
    store = directory(fake, clock)
    first = store.get_user("alice")
    clock.advance(1.9)
    assert not first.called                                  # still in its bound
    clock.advance(0.1)
    failure = failure_of(first, StoreUnavailable)
    assert failure.value.message == "the directory is unavailable, try again shortly"
    assert failure.value.status == 503
    # the outage is known: the next calls fail at once, and are not queued
    for _ in range(3):
        failure_of(store.create_user("bob", "h"), StoreUnavailable)
    assert fake.calls == []
    errors = redis_lines(log_events, LogLevel.error)
    assert len(errors) == 1
    assert "redis://10.0.0.7:6380/2 is unavailable" in errors[0]
    assert "s3cret" not in errors[0]

    fake.come_up()
    fake.answers = [[b"password_hash", b"h", b"created", b"1.0"]]
    assert result_of(store.get_user("alice"))["created"] == 1.0
    assert len(redis_lines(log_events, LogLevel.info)) == 1  # "reachable again"
    assert "reachable again" in redis_lines(log_events, LogLevel.info)[0]
    fake.answers = [[]]
    assert result_of(store.get_user("bob")) is None
    assert len(redis_lines(log_events, LogLevel.info)) == 1


def test_a_connection_that_comes_up_within_the_bound_is_used():
    fake, clock = FakeRedis(ready=False), Clock()
    store = directory(fake, clock)
    d = store.resolve("alice")
    clock.advance(0.5)
    fake.answers = [b"u"]
    fake.come_up()
    assert result_of(d) == ("user", "alice")
    clock.advance(5)                                         # the timer is gone


def test_no_answer_within_the_bound_is_unavailable_and_a_late_answer_is_dropped(log_events):
    fake, clock = FakeRedis(), Clock()
    store = directory(fake, clock)
    d = store.resolve("alice")
    clock.advance(2.0)
    failure_of(d, StoreUnavailable)
    fake.pending.pop().callback(b"u")                        # too late: nobody sees it
    assert len(redis_lines(log_events, LogLevel.error)) == 1


def test_a_lost_connection_is_unavailable_but_a_script_bug_is_not():
    fake, clock = FakeRedis(), Clock()
    store = directory(fake, clock)
    fake.answers = [Down("Lost connection"), ValueError("ERR Error running script")]
    failure_of(store.join("g", "bob"), StoreUnavailable)
    fake.is_ready = True
    failure_of(store.join("g", "bob"), ValueError)           # a bug: a 500, logged


def test_calls_before_start_fail_clearly():
    store = RedisDirectory(reactor=Clock())
    with pytest.raises(RuntimeError, match="not started"):
        store.get_user("alice")


# -- the JSON API -----------------------------------------------------------------------

def test_the_json_api_answers_503_while_the_directory_is_unavailable(log_events):
    world = World()
    fake = FakeRedis()
    fake.answers = [Down("Connection refused"), Down("Connection refused")]
    world.service.store = directory(fake, world.clock)
    browser = world.browser()
    reply = browser.post("/api/register", username="alice", password="correct horse")
    assert reply.status == 503
    assert reply.json == {"error": "the directory is unavailable, try again shortly"}
    assert reply.header("retry-after") == "2"
    reply = browser.post("/api/login", username="alice", password="correct horse")
    assert reply.status == 503 and reply.error.startswith("the directory is unavailable")
    assert not [e for e in log_events if e.get("log_failure") is not None]   # no traceback


def test_a_connection_that_comes_up_after_the_bound_sends_nothing():
    # the caller was told it failed: the write must not happen later
    fake, clock = FakeRedis(ready=False), Clock()
    store = directory(fake, clock)
    d = store.create_user("alice", "h")
    clock.advance(2.0)
    failure_of(d, StoreUnavailable)
    fake.come_up()
    assert fake.calls == []


def test_spills_made_while_redis_is_down_are_kept_and_sent_when_it_is_back(log_events):
    fake, clock = FakeRedis(), Clock()
    store = directory(fake, clock)
    fake.answers = [Down("Lost connection")]
    store.spill("bob", "alice", "t0", 1.0, "m0")                # fails: Redis is down
    fake.is_ready = False
    store.spill("bob", "alice", "t1", 2.0, "m1")
    assert len(fake.calls) == 1
    failure_of(store.unread("bob"), StoreUnavailable)           # a read fails at once
    clock.advance(5)                                            # tries, fast, while down
    assert len(fake.calls) == 1
    fake.come_up()
    fake.answers = [2]
    clock.advance(1)                                            # the next try
    name, _, args = fake.calls[-1]
    assert name == "spill" and args[1::5] == [b"bob", b"bob"]
    assert args[3::5] == [b"t0", b"t1"]                         # both, in order
    assert len(redis_lines(log_events, LogLevel.error)) == 1


def test_spills_that_cannot_be_sent_at_stop_are_logged_as_lost(log_events):
    fake, clock = FakeRedis(), Clock()
    store = directory(fake, clock)
    fake.answers = [Down("Lost connection")]
    store.spill("bob", "alice", "t0", 1.0, "m0")
    fake.is_ready = False
    result_of(store.stop())
    lost = [line for line in redis_lines(log_events, LogLevel.error) if "lost" in line]
    assert len(lost) == 1 and "1 chat messages that left a mailbox unread" in lost[0]
    clock.advance(10)
    assert len(fake.calls) == 1                                 # no more tries


def test_a_page_hit_while_redis_is_down_fails_fast_and_is_not_kept():
    # a page waits for its hit: it gets the 503 at once, never waits for Redis
    fake, clock = FakeRedis(), Clock()
    store = directory(fake, clock)
    fake.answers = [Down("Lost connection")]
    failure_of(store.add_hit("alice"), StoreUnavailable)
    fake.is_ready = False
    failure_of(store.add_hit("alice"), StoreUnavailable)
    clock.advance(10)
    assert len(fake.calls) == 1
