"""The directory (SQLite and Redis) and the password hashes.

Every test that takes the ``store`` fixture runs twice: on the embedded
SQLite directory, its SQL at once on this thread (``runner=run_now``) on a
real file under ``tmp_path``, and on :class:`RedisDirectory` over a real
``redis-server`` (append-only, on a free loopback port, one per module; each
test has a key prefix of its own).  Durability across a restart is checked
for real: a new directory object on the same file, or on the same Redis.
Tests of SQLite's own machinery (its worker queue, batches on the worker,
the migration of an older file) take ``path`` and stay SQLite-only.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

import helpers
from presence.store import passwords
from presence.store.interface import IDirectory, NameTaken
from presence.store.redis import RedisDirectory, open_redis
from presence.store.sqlite import SQLiteDirectory, open_directory, run_now
from redis_support import fresh_prefix, settle, start_redis

HASH = "scrypt$1$8$1$00$00"  # the directory stores hashes as given

#: SQLite's resume tokens are built on another branch at the same time

#: the bodies run outside the reactor's greenlet, so Redis's Deferreds can be waited for
pytestmark = pytest.mark.blocking


def result_of(d):
    return helpers.result_of(settle(d))


def failure_of(d, *types):
    return helpers.failure_of(settle(d), *types)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "data" / "presence.sqlite3")


@pytest.fixture(scope="module")
def redis_server(request, tmp_path_factory):
    return start_redis(request, tmp_path_factory)


def redis_directory(url: str) -> RedisDirectory:
    from twisted.internet import reactor
    return open_redis(url, reactor)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, path):
    if request.param == "sqlite":
        s = SQLiteDirectory(path, runner=run_now)
    else:
        server = request.getfixturevalue("redis_server")
        s = redis_directory(f"{server.url}?prefix={fresh_prefix()}")
        s.url = f"{server.url}?prefix={s.prefix.decode()}"
    yield s
    settle(s.stop())


def reopen(store):
    """Close the directory and open the same file (the same Redis) again:
    a server restart."""
    settle(store.stop())
    if isinstance(store, RedisDirectory):
        again = redis_directory(store.url)
        again.url = store.url
        return again
    return SQLiteDirectory(store.path, runner=run_now)


def test_provides_idirectory(store):
    assert verifyObject(IDirectory, store)


def test_open_directory_creates_the_data_dir(tmp_path):
    store = open_directory(str(tmp_path / "new" / "dir"), runner=run_now)
    try:
        assert result_of(store.create_user("alice", HASH)) == "alice"
        assert (tmp_path / "new" / "dir" / "presence.sqlite3").exists()
    finally:
        store.stop()


def test_calls_before_start_fail_clearly(path):
    store = SQLiteDirectory(path)  # no runner, not started
    try:
        with pytest.raises(RuntimeError, match="not started"):
            store.get_user("alice")
    finally:
        store.stop()


# -- users ----------------------------------------------------------------------

def test_create_and_get_user(store):
    result_of(store.create_user("alice", HASH, "a@example.com", "+4930123", "+4917011",
                                now=1234.5))
    user = result_of(store.get_user("alice"))
    assert user["name"] == "alice"
    assert user["password_hash"] == HASH
    assert (user["email"], user["phone"], user["wireless"]) == (
        "a@example.com", "+4930123", "+4917011")
    assert user["created"] == 1234.5
    assert user["last_login"] is None and user["last_seen"] is None
    assert user["hits_offline"] == 0


def test_unknown_user_is_none(store):
    assert result_of(store.get_user("nobody")) is None


def test_user_name_taken_by_user(store):
    result_of(store.create_user("alice", HASH))
    failure_of(store.create_user("alice", "scrypt$other"), NameTaken)
    # the first account is untouched
    assert result_of(store.get_user("alice"))["password_hash"] == HASH


def test_user_name_taken_by_group_and_alias(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.create_group("friends", "alice"))
    result_of(store.add_alias("alice", "ally"))
    failure_of(store.create_user("friends", HASH), NameTaken)
    failure_of(store.create_user("ally", HASH), NameTaken)
    assert result_of(store.get_user("friends")) is None
    assert result_of(store.get_user("ally")) is None


def test_group_name_taken_by_user_alias_and_group(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.add_alias("alice", "ally"))
    result_of(store.create_group("friends", "alice"))
    for name in ("alice", "ally", "friends"):
        failure_of(store.create_group(name, "alice"), NameTaken)
    # a failed create leaves no half-made group behind
    assert result_of(store.get_group("ally")) is None
    assert result_of(store.members("ally")) == []


def test_alias_name_taken(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.create_user("bob", HASH))
    result_of(store.create_group("friends", "alice"))
    result_of(store.add_alias("alice", "ally"))
    for name in ("bob", "friends", "ally"):
        failure_of(store.add_alias("bob", name), NameTaken)
    assert result_of(store.aliases("bob")) == []
    assert result_of(store.aliases("alice")) == ["ally"]


def test_resolve_user_group_alias_unknown(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.create_group("friends", "alice"))
    result_of(store.add_alias("alice", "alice@example.com"))
    result_of(store.add_alias("alice", "+4930123"))
    assert result_of(store.resolve("alice")) == ("user", "alice")
    assert result_of(store.resolve("friends")) == ("group", "friends")
    assert result_of(store.resolve("alice@example.com")) == ("user", "alice")
    assert result_of(store.resolve("+4930123")) == ("user", "alice")
    assert result_of(store.resolve("nobody")) is None
    assert result_of(store.aliases("alice")) == ["+4930123", "alice@example.com"]


def test_record_login_returns_previous_figures_and_resets_hits(store):
    result_of(store.create_user("alice", HASH, now=100.0))
    first = result_of(store.record_login("alice", 200.0))
    assert first == {"last_login": None, "last_seen": None, "hits_offline": 0}

    result_of(store.record_offline("alice", 300.0))
    for _ in range(3):
        result_of(store.add_hit("alice"))
    assert result_of(store.get_user("alice"))["hits_offline"] == 3

    second = result_of(store.record_login("alice", 400.0))
    assert second == {"last_login": 200.0, "last_seen": 300.0, "hits_offline": 3}
    user = result_of(store.get_user("alice"))
    assert user["last_login"] == 400.0
    assert user["hits_offline"] == 0

    third = result_of(store.record_login("alice", 500.0))
    assert third["last_login"] == 400.0 and third["hits_offline"] == 0


def test_record_login_of_unknown_user(store):
    figures = result_of(store.record_login("ghost", 1.0))
    assert figures == {"last_login": None, "last_seen": None, "hits_offline": 0}
    assert result_of(store.get_user("ghost")) is None


def test_add_hit_counts_per_user(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.create_user("bob", HASH))
    result_of(store.add_hit("alice"))
    result_of(store.add_hit("alice"))
    result_of(store.add_hit("bob"))
    assert result_of(store.get_user("alice"))["hits_offline"] == 2
    assert result_of(store.get_user("bob"))["hits_offline"] == 1


# -- groups and address books --------------------------------------------------------

def test_create_group_owner_is_member(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.create_group("friends", "alice", "scrypt$grp", now=7.0))
    group = result_of(store.get_group("friends"))
    assert group["name"] == "friends" and group["owner"] == "alice"
    assert group["password_hash"] == "scrypt$grp" and group["created"] == 7.0
    assert result_of(store.members("friends")) == ["alice"]
    assert result_of(store.get_group("nothing")) is None


def test_join_leave_members(store):
    for name in ("alice", "bob", "carol"):
        result_of(store.create_user(name, HASH))
    result_of(store.create_group("friends", "bob"))
    assert result_of(store.join("friends", "carol")) is True
    assert result_of(store.join("friends", "alice")) is True
    assert result_of(store.join("friends", "alice")) is False  # already a member
    assert result_of(store.members("friends")) == ["alice", "bob", "carol"]  # sorted
    assert result_of(store.leave("friends", "alice")) is True
    assert result_of(store.leave("friends", "alice")) is False
    assert result_of(store.members("friends")) == ["bob", "carol"]


def test_is_member_and_has_contact(store):
    for name in ("alice", "bob"):
        result_of(store.create_user(name, HASH))
    result_of(store.create_group("friends", "bob"))
    assert result_of(store.is_member("friends", "bob")) is True
    assert result_of(store.is_member("friends", "alice")) is False
    assert result_of(store.is_member("nothing", "alice")) is False
    result_of(store.join("friends", "alice"))
    assert result_of(store.is_member("friends", "alice")) is True
    result_of(store.add_contact("alice", "bob"))
    assert result_of(store.has_contact("alice", "bob")) is True
    assert result_of(store.has_contact("bob", "alice")) is False
    result_of(store.remove_contact("alice", "bob"))
    assert result_of(store.has_contact("alice", "bob")) is False


def test_a_group_remembers_presence_on_demand(store):
    result_of(store.create_user("bob", HASH))
    result_of(store.create_group("big", "bob"))
    assert result_of(store.get_group("big"))["on_demand"] is False
    result_of(store.set_on_demand("big", True))
    result_of(store.set_on_demand("big", True))
    assert result_of(store.get_group("big"))["on_demand"] is True
    result_of(store.set_on_demand("big", False))
    assert result_of(store.get_group("big"))["on_demand"] is False
    result_of(store.set_on_demand("nothing", True))  # no such group: no record made
    assert result_of(store.get_group("nothing")) is None


def test_memberships_include_address_book_owners(store):
    for name in ("alice", "bob", "carol", "dave"):
        result_of(store.create_user(name, HASH))
    result_of(store.create_group("friends", "alice"))
    result_of(store.create_group("work", "bob"))
    result_of(store.join("work", "alice"))
    result_of(store.add_contact("carol", "alice"))
    result_of(store.add_contact("dave", "alice"))
    result_of(store.add_contact("alice", "bob"))  # alice's own book is not hers to be in
    groups, owners = result_of(store.memberships("alice"))
    assert sorted(groups) == ["friends", "work"]
    assert sorted(owners) == ["carol", "dave"]
    assert result_of(store.memberships("nobody")) == ([], [])


def test_contacts(store):
    for name in ("alice", "bob", "carol"):
        result_of(store.create_user(name, HASH))
    assert result_of(store.add_contact("alice", "carol")) is True
    assert result_of(store.add_contact("alice", "bob")) is True
    assert result_of(store.add_contact("alice", "bob")) is False
    assert result_of(store.contacts("alice")) == ["bob", "carol"]
    assert result_of(store.contacts("bob")) == []  # not symmetric
    assert result_of(store.remove_contact("alice", "bob")) is True
    assert result_of(store.remove_contact("alice", "bob")) is False
    assert result_of(store.contacts("alice")) == ["carol"]


# -- message boxes ---------------------------------------------------------------

def test_messages_newest_first_with_fields(store):
    first = result_of(store.store_message("bob", "alice", "one", 10.0))
    second = result_of(store.store_message("bob", "anonymous", "two\nlines", 20.0))
    result_of(store.store_message("carol", "alice", "not bob's", 15.0))
    assert isinstance(first, int) and second != first
    box = result_of(store.messages("bob"))
    assert box == [
        {"id": second, "from": "anonymous", "text": "two\nlines", "time": 20.0, "read": False},
        {"id": first, "from": "alice", "text": "one", "time": 10.0, "read": False},
    ]
    assert result_of(store.messages("nobody")) == []


def test_messages_limit_keeps_newest(store):
    ids = [result_of(store.store_message("bob", "alice", f"m{i}", float(i))) for i in range(5)]
    box = result_of(store.messages("bob", limit=2))
    assert [m["id"] for m in box] == [ids[4], ids[3]]


def test_repeated_msgid_kept_once(store):
    first = result_of(store.store_message("bob", "alice", "hello", 1.0, msgid="abc123"))
    again = result_of(store.store_message("bob", "alice", "hello", 2.0, msgid="abc123"))
    assert again == first
    assert [m["text"] for m in result_of(store.messages("bob"))] == ["hello"]
    assert result_of(store.unread("bob")) == 1
    # without a msgid every call is a new message
    result_of(store.store_message("bob", "alice", "hello", 3.0))
    result_of(store.store_message("bob", "alice", "hello", 3.0))
    assert result_of(store.unread("bob")) == 3


def test_mark_read_only_for_the_recipient(store):
    ident = result_of(store.store_message("bob", "alice", "for bob", 1.0))
    other = result_of(store.store_message("bob", "alice", "also for bob", 2.0))
    assert result_of(store.unread("bob")) == 2
    assert result_of(store.mark_read("carol", ident)) is False
    assert result_of(store.unread("bob")) == 2
    assert result_of(store.mark_read("bob", ident)) is True
    assert result_of(store.unread("bob")) == 1
    box = {m["id"]: m["read"] for m in result_of(store.messages("bob"))}
    assert box == {ident: True, other: False}
    assert result_of(store.mark_read("bob", 999999)) is False


def test_unread_counts_per_recipient(store):
    result_of(store.store_message("bob", "alice", "x", 1.0))
    result_of(store.store_message("carol", "alice", "y", 1.0))
    result_of(store.store_message("carol", "alice", "z", 1.0))
    assert result_of(store.unread("bob")) == 1
    assert result_of(store.unread("carol")) == 2
    assert result_of(store.unread("alice")) == 0


# -- durability -------------------------------------------------------------------

def test_everything_survives_a_restart(store):
    result_of(store.create_user("alice", HASH, "a@example.com", now=1.0))
    result_of(store.create_user("bob", HASH))
    result_of(store.add_alias("alice", "ally"))
    result_of(store.create_group("friends", "alice", "scrypt$grp"))
    result_of(store.join("friends", "bob"))
    result_of(store.add_contact("bob", "alice"))
    result_of(store.record_login("alice", 50.0))
    result_of(store.record_offline("alice", 60.0))
    result_of(store.add_hit("alice"))
    kept = result_of(store.store_message("alice", "bob", "see you", 70.0, msgid="m1"))
    read = result_of(store.store_message("alice", "bob", "read me", 71.0))
    result_of(store.mark_read("alice", read))

    again = reopen(store)
    try:
        user = result_of(again.get_user("alice"))
        assert user["email"] == "a@example.com" and user["password_hash"] == HASH
        assert (user["last_login"], user["last_seen"], user["hits_offline"]) == (50.0, 60.0, 1)
        assert result_of(again.resolve("ally")) == ("user", "alice")
        assert result_of(again.resolve("friends")) == ("group", "friends")
        assert result_of(again.get_group("friends"))["password_hash"] == "scrypt$grp"
        assert result_of(again.members("friends")) == ["alice", "bob"]
        assert result_of(again.contacts("bob")) == ["alice"]
        assert result_of(again.memberships("alice")) == (["friends"], ["bob"])
        box = result_of(again.messages("alice"))
        assert [(m["id"], m["text"], m["read"]) for m in box] == [
            (read, "read me", True), (kept, "see you", False)]
        assert result_of(again.unread("alice")) == 1
        # names stay taken and msgids stay de-duplicated after the restart
        failure_of(again.create_user("ally", HASH), NameTaken)
        assert result_of(again.store_message("alice", "bob", "see you", 80.0, "m1")) == kept
        assert result_of(again.unread("alice")) == 1
    finally:
        settle(again.stop())


def test_started_directory_runs_on_its_worker_thread(path):
    """``start`` (what the server does) moves the SQL to a thread of its own;
    with a fake reactor the results come back through callFromThread."""
    import threading

    from twisted.internet.testing import MemoryReactorClock

    class ThreadReactor(MemoryReactorClock):
        def __init__(self):
            super().__init__()
            self.calls = []
            self.lock = threading.Condition()

        def callFromThread(self, f, *args, **kw):
            with self.lock:
                self.calls.append((f, args, kw))
                self.lock.notify_all()

    reactor = ThreadReactor()
    store = SQLiteDirectory(path)
    store.start(reactor)
    try:
        d = store.create_user("alice", HASH)
        with reactor.lock:
            assert reactor.lock.wait_for(lambda: reactor.calls, timeout=10)
        f, args, kw = reactor.calls.pop()
        f(*args, **kw)
        assert result_of(d) == "alice"
    finally:
        store.stop()
    again = SQLiteDirectory(path, runner=run_now)
    try:
        assert result_of(again.get_user("alice"))["name"] == "alice"
    finally:
        again.stop()


# -- password hashes ------------------------------------------------------------------

def test_hash_and_check_round_trip():
    stored = passwords.hash_password("correct horse", cost=1)
    assert stored.startswith("scrypt$1$")
    assert "correct horse" not in stored
    assert passwords.check_password("correct horse", stored) is True


def test_wrong_password_is_refused():
    stored = passwords.hash_password("correct horse", cost=1)
    assert passwords.check_password("correct horsf", stored) is False
    assert passwords.check_password("", stored) is False


def test_hashes_are_salted():
    a = passwords.hash_password("same", cost=1)
    b = passwords.hash_password("same", cost=1)
    assert a != b
    assert passwords.check_password("same", a) and passwords.check_password("same", b)


def test_hash_records_its_cost():
    stored = passwords.hash_password("pw-pw-pw", cost=3)
    assert stored.split("$")[1] == "3"
    assert passwords.check_password("pw-pw-pw", stored)


def test_unicode_password():
    stored = passwords.hash_password("pässwörd-✓", cost=1)
    assert passwords.check_password("pässwörd-✓", stored)
    assert not passwords.check_password("passwort-✓", stored)


@pytest.mark.parametrize("stored", [
    "",
    "garbage",
    "bcrypt$1$8$1$00$00",
    "scrypt$1$8$1$00",                      # a field missing
    "scrypt$1$8$1$00$00$00",                # a field too many
    "scrypt$x$8$1$00$00",                   # cost not a number
    "scrypt$0$8$1$00$00",                   # N = 1 is not valid
    "scrypt$40$8$1$00$00",                  # beyond any memory limit
    "scrypt$1$0$1$00$00",                   # r = 0
    "scrypt$1$8$1$zz$00",                   # salt not hex
])
def test_malformed_stored_hash_is_false(stored):
    assert passwords.check_password("pw", stored) is False


def test_malformed_stored_hash_with_non_hex_key_is_false():
    assert passwords.check_password("pw", "scrypt$1$8$1$00$zz") is False


def test_malformed_stored_hash_with_negative_cost_is_false():
    assert passwords.check_password("pw", "scrypt$-1$8$1$00$00") is False


# -- message-box quota and batched spills (issue 11) ----------------------------------

def test_box_usage_counts_unread_messages_and_their_bytes(store):
    assert result_of(store.box_usage("bob")) == (0, 0)
    first = result_of(store.store_message("bob", "alice", "h\u00e9", 1.0))   # 3 bytes
    result_of(store.store_message("bob", "alice", "abcd", 2.0))
    result_of(store.store_message("carol", "alice", "x", 2.0))
    assert result_of(store.box_usage("bob")) == (2, 7)
    assert result_of(store.mark_read("bob", first))
    assert result_of(store.box_usage("bob")) == (1, 4)
    assert result_of(store.mark_read("bob", first))          # twice: counted once
    assert result_of(store.box_usage("bob")) == (1, 4)
    assert not result_of(store.mark_read("carol", first))   # not carol's
    assert result_of(store.box_usage("carol")) == (1, 1)


def test_store_message_refuses_past_the_quota(store):
    from presence.store.interface import BoxFull
    for i in range(3):
        result_of(store.store_message("bob", "alice", "abc", 1.0, quota=(3, 100)))
    failure_of(store.store_message("bob", "alice", "abc", 1.0, quota=(3, 100)), BoxFull)
    assert result_of(store.unread("bob")) == 3
    # bytes: 9 used, 100 allowed
    failure_of(store.store_message("bob", "alice", "y" * 92, 1.0, quota=(10, 100)), BoxFull)
    result_of(store.store_message("bob", "alice", "y" * 91, 1.0, quota=(10, 100)))
    # a repeated msgid is no new message, even in a full box
    result_of(store.store_message("carol", "alice", "z", 1.0, "m1", quota=(1, 100)))
    assert result_of(store.store_message("carol", "alice", "z", 1.0, "m1",
                                         quota=(1, 100))) > 0
    # without a quota (what spills use) the box takes it
    result_of(store.store_message("bob", "alice", "over", 1.0))
    assert result_of(store.box_usage("bob"))[0] == 5


def test_the_box_counts_of_an_older_directory_are_made_once(path):
    store = SQLiteDirectory(path, runner=run_now)
    result_of(store.store_message("bob", "alice", "one", 1.0))
    read = result_of(store.store_message("bob", "alice", "two", 1.0))
    result_of(store.mark_read("bob", read))
    store._db.execute("DROP TABLE boxes")                  # as before the quota
    store.stop()
    again = SQLiteDirectory(path, runner=run_now)
    try:
        assert result_of(again.box_usage("bob")) == (1, 3)
    finally:
        again.stop()


# -- one namespace, kept by the database ------------------------------------------

def test_the_names_of_an_older_directory_are_taken_once(path):
    """A directory from before the ``names`` table: it is filled from users,
    groups and aliases at the first open, and those names stay taken."""
    store = SQLiteDirectory(path, runner=run_now)
    result_of(store.create_user("alice", HASH))
    result_of(store.create_group("friends", "alice"))
    result_of(store.add_alias("alice", "ally"))
    store._db.execute("DROP TABLE names")                  # as before the table
    store.stop()
    again = SQLiteDirectory(path, runner=run_now)
    try:
        rows = again._db.execute("SELECT name, kind FROM names ORDER BY name").fetchall()
        assert [tuple(r) for r in rows] == [
            ("alice", "user"), ("ally", "alias"), ("friends", "group")]
        for name in ("alice", "friends", "ally"):
            failure_of(again.create_user(name, HASH), NameTaken)
            failure_of(again.create_group(name, "alice"), NameTaken)
            failure_of(again.add_alias("alice", name), NameTaken)
        result_of(again.create_user("bob", HASH))
    finally:
        again.stop()
    third = SQLiteDirectory(path, runner=run_now)         # filled once, not again
    try:
        assert third._db.execute("SELECT COUNT(*) FROM names").fetchone()[0] == 4
    finally:
        third.stop()


def test_a_name_claimed_by_another_writer_is_taken(path):
    """The claim in ``names`` decides, not a look at the three tables: a name
    another connection (another process on the same file) has claimed in a
    committed transaction is refused, even before its row is anywhere else.
    (SQLite only: Redis claims a name with one SET NX, tests/test_store_redis.py.)"""
    import sqlite3
    store = SQLiteDirectory(path, runner=run_now)
    result_of(store.create_user("alice", HASH))
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("INSERT INTO names (name, kind) VALUES ('zed', 'user')")
        failure_of(store.create_group("zed", "alice"), NameTaken)
        failure_of(store.create_user("zed", HASH), NameTaken)
        failure_of(store.add_alias("alice", "zed"), NameTaken)
        assert result_of(store.get_group("zed")) is None
        assert result_of(store.resolve("zed")) is None
    finally:
        other.close()
        store.stop()


def test_two_connections_racing_for_a_name_make_one_winner(path):
    """Two directories on one file (two processes), each on its own thread,
    create the same names at the same moment as a user, a group or an alias:
    every name has exactly one holder and the loser gets NameTaken."""
    import threading
    first = SQLiteDirectory(path, runner=run_now)
    second = SQLiteDirectory(path, runner=run_now)
    for s in (first, second):
        s._db.execute("PRAGMA busy_timeout=10000")
    result_of(first.create_user("owner", HASH))
    rounds = 40
    barrier = threading.Barrier(2)
    outcomes = {0: [], 1: []}

    def race(index, store, kinds):
        for i in range(rounds):
            name = f"name{i}"
            kind = kinds[i % len(kinds)]
            barrier.wait()
            try:
                if kind == "user":
                    result_of(store.create_user(name, HASH))
                elif kind == "group":
                    result_of(store.create_group(name, "owner"))
                else:
                    result_of(store.add_alias("owner", name))
                outcomes[index].append((name, kind))
            except NameTaken:
                outcomes[index].append((name, None))

    threads = [threading.Thread(target=race, args=(0, first, ("user", "group", "alias"))),
               threading.Thread(target=race, args=(1, second, ("group", "alias", "user")))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert len(outcomes[0]) == len(outcomes[1]) == rounds
        for (name, a), (_, b) in zip(outcomes[0], outcomes[1]):
            assert (a is None) != (b is None), (name, a, b)   # exactly one winner
            kind = a or b
            found = result_of(first.resolve(name))
            assert found == (("user", "owner") if kind == "alias" else (kind, name)), name
            held = sum(1 for sql in ("SELECT 1 FROM users WHERE name=?",
                                     "SELECT 1 FROM groups WHERE name=?",
                                     "SELECT 1 FROM aliases WHERE alias=?")
                       if first._db.execute(sql, (name,)).fetchone())
            assert held == 1, name
    finally:
        first.stop()
        second.stop()


class Queue:
    """A worker the test runs by hand."""

    def __init__(self):
        self.calls = []

    def __call__(self, fn, *args):
        from twisted.internet import defer
        d = defer.Deferred()
        self.calls.append((fn, args, d))
        return d

    def run_one(self):
        fn, args, d = self.calls.pop(0)
        d.callback(fn(*args))


def test_spills_are_written_in_batches_one_at_a_time(path):
    from presence.store.sqlite import SPILL_BATCH
    queue = Queue()
    store = SQLiteDirectory(path, runner=queue)
    for i in range(2 * SPILL_BATCH + 10):
        store.spill("bob", "alice", f"t{i}", float(i), f"m{i}")
    assert store.queued == 1 and len(queue.calls) == 1     # the first row alone
    store.get_user("carol")                                # a login's read
    assert store.queued == 2
    queue.run_one()                                        # the first spill
    queue.run_one()                                        # the read, then the next batch
    writes = 1
    while queue.calls:
        queue.run_one()
        writes += 1
    assert writes == 4                                     # 1, 500, 500, 9 rows
    store._run = run_now
    assert result_of(store.unread("bob")) == 2 * SPILL_BATCH + 10
    assert [m["text"] for m in result_of(store.messages("bob", limit=3))] == [
        f"t{i}" for i in (1009, 1008, 1007)]
    store.stop()


def test_a_read_of_the_box_sees_every_spill_made_before_it(path):
    # the spills of a batch in flight and of the one waiting behind it are
    # all in the answer of a read asked for after them (as they were when
    # each spill was a write of its own, in order on the one worker)
    queue = Queue()
    store = SQLiteDirectory(path, runner=queue)
    for i in range(3):
        store.spill("bob", "alice", f"t{i}", float(i), f"m{i}")
    seen = []
    store.messages("bob").addCallback(seen.append)
    store.unread("bob").addCallback(seen.append)
    while queue.calls:
        queue.run_one()
    assert [m["text"] for m in seen[0]] == ["t2", "t1", "t0"]
    assert seen[1] == 3
    store.stop()


def test_spills_still_waiting_are_written_at_stop(path):
    queue = Queue()
    store = SQLiteDirectory(path, runner=queue)
    for i in range(5):
        store.spill("bob", "alice", f"t{i}", 1.0, f"m{i}")
    # at stop, the worker finishes what it was given (the first row) but the
    # reactor no longer runs its callback; the four that waited behind it
    # are written by stop itself
    fn, args, _ = queue.calls.pop()
    fn(*args)
    store.stop()
    again = SQLiteDirectory(path, runner=run_now)
    try:
        assert result_of(again.unread("bob")) == 5
        assert result_of(again.box_usage("bob")) == (5, 10)
    finally:
        again.stop()


def test_unmatchable_hash_costs_a_check_and_matches_nothing():
    dummy = passwords.unmatchable(1)
    assert dummy.split("$")[:4] == ["scrypt", "1", "8", "1"]
    assert not passwords.check_password("", dummy)
    assert not passwords.check_password("anything", dummy)
    assert passwords.unmatchable(1) != dummy


def test_page_hits_of_a_flood_are_one_write_at_a_time(path):
    queue = Queue()
    store = SQLiteDirectory(path, runner=queue)
    queue_run = queue.run_one
    store.create_user("alice", HASH)
    queue_run()
    hits = [store.add_hit("alice") for _ in range(1000)] + [store.add_hit("bob")]
    assert store.queued == 1                               # the first hit alone
    login = store.get_user("alice")
    queue_run()                                            # hit 1
    assert hits[0].called and not hits[1].called
    queue_run()                                            # the login's read
    assert login.called
    writes = 0
    while queue.calls:
        queue_run()
        writes += 1
    assert writes == 2 and all(d.called for d in hits)     # 500 + 500 hits
    store._run = run_now
    assert result_of(store.record_login("alice", 1.0))["hits_offline"] == 1000
    store.stop()


# -- profiles and handset numbers --------------------------------------------------------

def test_update_profile_sets_and_clears_and_moves_the_handset_number(store):
    result_of(store.create_user("alice", HASH, "a@example.com", None, "+4917011", now=1.0))
    result_of(store.create_user("bob", HASH, wireless="+4917011", now=2.0))
    assert result_of(store.user_by_wireless("+4917011")) == "alice"      # the earliest
    assert result_of(store.update_profile("alice", None, "+4930", "+4917099")) is True
    user = result_of(store.get_user("alice"))
    assert (user["email"], user["phone"], user["wireless"]) == (None, "+4930", "+4917099")
    assert result_of(store.user_by_wireless("+4917011")) == "bob"
    assert result_of(store.user_by_wireless("+4917099")) == "alice"
    assert result_of(store.update_profile("alice", "", None, None)) is True
    assert result_of(store.get_user("alice"))["email"] == ""            # empty is not None
    assert result_of(store.user_by_wireless("+4917099")) is None
    assert result_of(store.update_profile("ghost", "g@example.com")) is False
    assert result_of(store.get_user("ghost")) is None


def test_names_and_texts_beyond_ascii_round_trip(store):
    name, text = "j\u00fcrgen-\u2713", "gr\u00fc\u00dfe \U0001f600 42"
    result_of(store.create_user(name, "123"))                  # a hash that looks like a number
    result_of(store.add_alias(name, "+49"))
    assert result_of(store.resolve("+49")) == ("user", name)
    assert result_of(store.get_user(name))["password_hash"] == "123"
    ident = result_of(store.store_message(name, "\u00e9ve", text, 1.5, msgid="007"))
    assert result_of(store.messages(name)) == [
        {"id": ident, "from": "\u00e9ve", "text": text, "time": 1.5, "read": False}]
    assert result_of(store.box_usage(name)) == (1, len(text.encode("utf-8")))


# -- resume tokens (issue 12) ----------------------------------------------------------

def test_resume_token_hash_names_its_user(store):
    result_of(store.create_user("alice", HASH))
    assert result_of(store.resume_user("h1")) is None
    assert result_of(store.store_resume("h1", "alice", "laptop", 10.0)) is None
    result_of(store.store_resume("h2", "alice", "phone", 11.0))
    assert result_of(store.resume_user("h1")) == "alice"
    assert result_of(store.resume_user("h2")) == "alice"
    assert result_of(store.resume_user("h3")) is None


def test_resume_login_is_the_four_calls_in_one(store):
    for name in ("alice", "carol"):
        result_of(store.create_user(name, HASH, now=1.0))
    result_of(store.create_group("work", "alice"))
    result_of(store.create_group("\u00e9quipe/\"1\"", "alice"))
    result_of(store.add_contact("carol", "alice"))
    result_of(store.store_resume("h1", "alice", "laptop", 10.0))
    assert result_of(store.resume_login("nope", None, 20.0)) is None
    first = result_of(store.resume_login("h1", 5.0, 20.0))
    assert first == ("alice", False, {"last_login": None, "last_seen": None,
                                      "hits_offline": 0}, ["work", "\u00e9quipe/\"1\""],
                     ["carol"])
    result_of(store.create_user("dave", HASH, now=1.0))
    result_of(store.store_resume("h2", "dave", "phone", 10.0))
    assert result_of(store.resume_login("h2", None, 20.0))[3:] == ([], [])   # no groups
    result_of(store.record_offline("alice", 30.0))
    result_of(store.add_hit("alice"))
    second = result_of(store.resume_login("h1", None, 40.0))
    assert second.before == {"last_login": 20.0, "last_seen": 30.0, "hits_offline": 1}
    assert result_of(store.get_user("alice"))["last_login"] == 40.0
    result_of(store.set_locked("alice", True))
    assert result_of(store.resume_login("h1", None, 50.0)) == ("alice", True, {}, [], [])
    assert result_of(store.get_user("alice"))["last_login"] == 40.0   # nothing recorded
    # expired: refused and forgotten
    assert result_of(store.resume_login("h1", 11.0, 60.0)) is None
    assert result_of(store.resume_user("h1")) is None


def test_revoke_one_resume_token(store):
    for name in ("alice", "bob"):
        result_of(store.create_user(name, HASH))
    result_of(store.store_resume("h1", "alice", "laptop", 10.0))
    result_of(store.store_resume("h2", "alice", "phone", 11.0))
    result_of(store.store_resume("h3", "bob", "phone", 12.0))
    assert result_of(store.revoke_resume("bob", "h1")) == 0      # not bob's to revoke
    assert result_of(store.resume_user("h1")) == "alice"
    assert result_of(store.revoke_resume("alice", "h1")) == 1
    assert result_of(store.resume_user("h1")) is None
    assert result_of(store.resume_user("h2")) == "alice"
    assert result_of(store.revoke_resume("alice", "h1")) == 0    # twice: gone already


def test_revoke_all_resume_tokens_of_a_user(store):
    for name in ("alice", "bob"):
        result_of(store.create_user(name, HASH))
    for i in range(3):
        result_of(store.store_resume(f"a{i}", "alice", f"device {i}", float(i)))
    result_of(store.store_resume("b0", "bob", "phone", 1.0))
    assert result_of(store.revoke_resume("alice")) == 3
    assert [result_of(store.resume_user(f"a{i}")) for i in range(3)] == [None] * 3
    assert result_of(store.resume_user("b0")) == "bob"
    assert result_of(store.revoke_resume("alice")) == 0
    # kept across a restart, like everything else
    again = reopen(store)
    try:
        assert result_of(again.resume_user("b0")) == "bob"
    finally:
        settle(again.stop())


def test_a_resume_token_older_than_not_before_has_expired_and_is_forgotten(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.store_resume("h1", "alice", "laptop", 100.0))
    result_of(store.store_resume("h2", "alice", "phone", 200.0))
    assert result_of(store.resume_user("h1", not_before=100.0)) == "alice"   # not yet
    assert result_of(store.resume_user("h1", not_before=150.0)) is None      # expired
    # forgotten: even without a bound it no longer names alice
    assert result_of(store.resume_user("h1")) is None
    assert result_of(store.resume_user("h2", not_before=150.0)) == "alice"
    assert result_of(store.revoke_resume("alice")) == 1        # only h2 was left


def test_resume_tokens_per_user_are_bounded_oldest_dropped(store):
    from presence.store.sqlite import RESUME_PER_USER
    for i in range(RESUME_PER_USER + 2):
        result_of(store.store_resume(f"t{i}", "alice", "api", float(i)))
    result_of(store.store_resume("bob", "bob", "api", 0.0))
    assert result_of(store.resume_user("t0")) is None
    assert result_of(store.resume_user("t1")) is None
    assert result_of(store.resume_user("t2")) == "alice"
    assert result_of(store.resume_user(f"t{RESUME_PER_USER + 1}")) == "alice"
    assert result_of(store.resume_user("bob")) == "bob"      # another user's stays
    assert result_of(store.revoke_resume("alice")) == RESUME_PER_USER


def test_set_password_replaces_the_hash(store):
    result_of(store.create_user("alice", HASH))
    assert result_of(store.set_password("alice", "scrypt$new")) is True
    assert result_of(store.get_user("alice"))["password_hash"] == "scrypt$new"
    assert result_of(store.set_password("nobody", "scrypt$new")) is False


# -- SIP digest secrets (HA1) ------------------------------------------------------

HA1S = {"MD5": "a" * 32, "SHA-256": "b" * 64}


def test_sip_ha1_is_kept_per_realm_and_algorithm_and_survives_a_restart(store):
    result_of(store.create_user("alice", HASH))
    assert result_of(store.sip_ha1("alice", "example.org", "MD5")) is None
    assert result_of(store.set_sip_ha1("alice", "example.org", HA1S)) is True
    assert result_of(store.sip_ha1("alice", "example.org", "MD5")) == "a" * 32
    assert result_of(store.sip_ha1("alice", "example.org", "SHA-256")) == "b" * 64
    assert result_of(store.sip_ha1("alice", "example.org", "SHA-512")) is None
    assert result_of(store.sip_ha1("alice", "other.net", "MD5")) is None
    assert result_of(store.sip_ha1("bob", "example.org", "MD5")) is None
    assert result_of(store.set_sip_ha1("nobody", "example.org", HA1S)) is False
    assert result_of(store.sip_ha1("nobody", "example.org", "MD5")) is None
    # never part of the user's record (which answers may show parts of)
    assert all("ha1" not in key for key in result_of(store.get_user("alice")))
    store = reopen(store)
    try:
        assert result_of(store.sip_ha1("alice", "example.org", "MD5")) == "a" * 32
    finally:
        settle(store.stop())


def test_a_new_realm_replaces_the_old_realms_ha1(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.set_sip_ha1("alice", "example.org", HA1S))
    result_of(store.set_sip_ha1("alice", "new.example", {"MD5": "c" * 32}))
    assert result_of(store.sip_ha1("alice", "example.org", "MD5")) is None
    assert result_of(store.sip_ha1("alice", "new.example", "MD5")) == "c" * 32
    assert result_of(store.sip_ha1("alice", "new.example", "SHA-256")) is None


def test_a_password_change_forgets_the_ha1(store):
    result_of(store.create_user("alice", HASH))
    result_of(store.create_user("bob", HASH))
    result_of(store.set_sip_ha1("alice", "example.org", HA1S))
    result_of(store.set_sip_ha1("bob", "example.org", HA1S))
    assert result_of(store.set_password("alice", "scrypt$new")) is True
    assert result_of(store.sip_ha1("alice", "example.org", "MD5")) is None
    assert result_of(store.sip_ha1("alice", "example.org", "SHA-256")) is None
    assert result_of(store.sip_ha1("bob", "example.org", "MD5")) == "a" * 32


def test_resume_tokens_survive_a_restart_and_old_files_get_the_table(path):
    import os
    import sqlite3
    # a directory file from before resume tokens: no "resume" table
    os.makedirs(os.path.dirname(path))
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL,"
                      " email TEXT, phone TEXT, wireless TEXT, created REAL NOT NULL,"
                      " last_login REAL, last_seen REAL,"
                      " hits_offline INTEGER NOT NULL DEFAULT 0);"
                      "INSERT INTO users (name, password_hash, created) VALUES"
                      " ('alice', 'h', 0);")
    old.close()
    store = SQLiteDirectory(path, runner=run_now)
    result_of(store.store_resume("h1", "alice", "api", 1.0))
    again = reopen(store)
    try:
        assert result_of(again.resume_user("h1")) == "alice"
        assert result_of(again.get_user("alice"))["password_hash"] == "h"
    finally:
        again.stop()


# -- per-user settings (issue 13: the greeting, the update token's hash) ------------

def test_extras_are_kept_per_user_and_removed_with_none(store):
    result_of(store.create_user("alice", "h", now=1.0))
    result_of(store.create_user("bob", "h", now=1.0))
    assert result_of(store.extras("alice")) == {}
    assert result_of(store.set_extra("alice", "greeting", "Back at *six*. ünï")) is None
    result_of(store.set_extra("alice", "update_token", "ab" * 32))
    result_of(store.set_extra("alice", "greeting", "Back at seven."))
    assert result_of(store.extras("alice")) == {"greeting": "Back at seven.",
                                                "update_token": "ab" * 32}
    assert result_of(store.extras("bob")) == {}
    result_of(store.set_extra("alice", "update_token", None))
    assert result_of(store.extras("alice")) == {"greeting": "Back at seven."}
    result_of(store.set_extra("alice", "greeting", ""))
    assert result_of(store.extras("alice")) == {"greeting": ""}

# -- operator locks and purges (the operator console) ----------------------------------

def test_a_lock_is_kept_per_account_and_survives_a_restart(store):
    result_of(store.create_user("alice", HASH, now=1.0))
    assert result_of(store.is_locked("alice")) is False
    assert result_of(store.set_locked("alice", True)) is True
    assert result_of(store.set_locked("alice", True)) is True   # twice: still locked
    assert result_of(store.set_locked("nobody", True)) is False
    assert result_of(store.is_locked("nobody")) is False
    again = reopen(store)
    try:
        assert result_of(again.is_locked("alice")) is True
        assert result_of(again.set_locked("alice", False)) is True
        assert result_of(again.is_locked("alice")) is False
    finally:
        settle(again.stop())


def test_purging_removes_unread_messages_of_one_sender_or_all(store):
    for i in range(3):
        result_of(store.store_message("bob", "flood", f"spam {i}", float(i)))
    kept = result_of(store.store_message("bob", "alice", "hello", 5.0))
    read = result_of(store.store_message("bob", "flood", "read one", 6.0))
    assert result_of(store.mark_read("bob", read)) is True
    assert result_of(store.box_usage("bob")) == (4, 3 * 6 + 5)
    assert result_of(store.purge_messages("bob", "flood")) == 3
    assert [m["text"] for m in result_of(store.messages("bob"))] == ["read one", "hello"]
    assert result_of(store.box_usage("bob")) == (1, 5)
    assert result_of(store.purge_messages("bob", "nobody")) == 0
    assert result_of(store.purge_messages("bob")) == 1
    assert result_of(store.box_usage("bob")) == (0, 0)
    assert result_of(store.unread("bob")) == 0
    assert result_of(store.messages("bob"))[0]["text"] == "read one"
