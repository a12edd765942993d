"""Joining, leaving and membership look-ups cost the same whatever the size
of the group (or address book): the work SQLite does for ``POST
/api/groups/<g>/join`` is counted (its virtual machine steps, with a progress
handler called at every step) for groups of 10 and of 5,000 members, and the
Redis directory asks one ``SISMEMBER`` instead of reading the set."""

from __future__ import annotations

from twisted.internet.task import Clock

from helpers import World, logged_errors, result_of, world  # noqa: F401  (fixtures)
from test_store_redis_units import FakeRedis
from presence.store.redis import RedisDirectory


class Steps:
    """Counts the SQLite VM steps (rows read, index probes, ...) made while
    it is on."""

    def __init__(self, db) -> None:
        self.db = db
        self.count = 0

    def _step(self) -> int:
        self.count += 1
        return 0

    def __enter__(self) -> "Steps":
        self.db.set_progress_handler(self._step, 1)
        return self

    def __exit__(self, *exc) -> None:
        self.db.set_progress_handler(None, 1)


def _group_of(world: World, size: int):
    owner = world.user("owner")
    assert owner.post("/api/groups", name="big").status in (200, 201)
    world.store._db.executemany("INSERT INTO members (grp, user) VALUES ('big', ?)",
                                [(f"m{i}",) for i in range(size)])
    world.store._db.executemany("INSERT INTO contacts (owner, contact) VALUES ('owner', ?)",
                                [(f"m{i}",) for i in range(size)])
    return owner


def _join_cost(size: int) -> tuple:
    world = World()
    owner = _group_of(world, size)
    joiner = world.user("joiner")
    with Steps(world.store._db) as join:
        assert joiner.post("/api/groups/big/join").status == 204
    with Steps(world.store._db) as watch:
        assert joiner.post("/api/active", group="big").status in (200, 204)
    with Steps(world.store._db) as leave:
        assert joiner.post("/api/groups/big/leave").status == 204
    with Steps(world.store._db) as add:
        assert owner.post("/api/contacts", contact="joiner").status == 204
    with Steps(world.store._db) as remove:
        assert owner.post("/api/contacts/remove", contact="joiner").status == 204
    return join.count, watch.count, leave.count, add.count, remove.count


def test_joins_leaves_and_contacts_cost_the_same_in_a_group_of_10_or_5000():
    small, large = _join_cost(10), _join_cost(5000)
    assert all(s > 0 for s in small)
    # an index look-up grows with log(size) at most: a few steps, never 500x
    for s, l in zip(small, large):
        assert l <= s * 1.2 + 50, (small, large)


def test_the_redis_directory_answers_membership_with_one_sismember():
    redis = FakeRedis()
    store = RedisDirectory(redis, Clock(), prefix="p:")
    redis.answers = [1, 0]
    assert result_of(store.is_member("big", "alice")) is True
    assert result_of(store.has_contact("owner", "bob")) is False
    assert [(name, keys, args) for name, keys, args in redis.calls] == [
        ("is_member", [b"p:members:big"], [b"alice"]),
        ("is_member", [b"p:contacts:owner"], [b"bob"]),
    ]
