"""The cluster's scripts against a real ``redis-server`` where Redis itself
matters: the per-user bound on sessions counted over every box in the
batch that records a session (its BOUND), a box's states in its batch
and the view, and the chat limits counted over every box
(presence/cluster/limits.py).  The hubs' logic around them is tested
against a fake of the seam in test_cluster_hub.py."""

from __future__ import annotations

import json
from typing import Any, List

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

import helpers
from presence.cluster import hub as cluster
from presence.cluster.hub import ClusterHub
from presence.cluster.limits import SharedLimits
from presence.core.hub import HubConfig
from presence.core.tables import UserState
from presence.store.redis import TxRedis, parse_url
from redis_support import fresh_prefix, settle, start_redis

pytestmark = pytest.mark.blocking


@pytest.fixture(scope="module")
def redis_server(request, tmp_path_factory):
    return start_redis(request, tmp_path_factory)


def result_of(d: Any) -> Any:
    return helpers.result_of(settle(d))


@pytest.fixture
def hubs(redis_server):
    """Two boxes' hubs on one real Redis (one key prefix), with a Clock."""
    prefix = fresh_prefix()
    address = parse_url(f"{redis_server.url}?prefix={prefix}")
    clock = Clock()
    made: List[ClusterHub] = []
    conns = []
    for box in ("10.0.0.1:80", "10.0.0.2:80"):
        conn = TxRedis(address, poolsize=1)
        conns.append(conn)
        made.append(ClusterHub(clock, HubConfig(host_box=box), conn, prefix=prefix))
    yield made
    settle(defer.DeferredList([c.close() for c in conns]))


def open_session(hub: ClusterHub, sid: str, user: str, box: str, t: float, bound: int):
    """Record a session in a batch of its own (see BATCH), as a login does:
    the answer of its BOUND, when there is one."""
    record = {"s": sid, "u": user, "b": box, "t": t}
    args: List[Any] = []
    for command in hub.open_commands(record, bound):
        args += [len(command)] + command
    answers = result_of(hub._eval(cluster.BATCH, [], args))
    return answers[0] if bound > 0 else answers


def test_the_session_script_answers_the_oldest_sessions_past_the_bound(hubs):
    a, b = hubs
    assert open_session(a, "s1", "alice", a.me, 10.0, 2) == []
    assert open_session(b, "s2", "alice", b.me, 11.0, 2) == []
    assert open_session(a, "s0", "bob", a.me, 1.0, 2) == []   # another user's
    # the third of alice's, from either node: the oldest (on a) is answered
    assert open_session(b, "s3", "alice", b.me, 12.0, 2) == [b"s1", a.me.encode()]
    # no bound (a resynchronisation): nothing answered
    assert open_session(a, "s4", "alice", a.me, 13.0, 0) == []
    # the new one is never its own victim, even when its clock is behind
    assert open_session(a, "s5", "alice", a.me, 0.5, 1) == [
        x for sid, box in (("s1", a.me), ("s2", b.me), ("s3", b.me), ("s4", a.me))
        for x in (sid.encode(), box.encode())]


def test_chat_limits_are_spent_once_over_every_box(hubs):
    """A take is decided at once from the answers before it; Redis's answer
    that a bucket is empty refuses that bucket's next requests on that box
    (one more request per box gets through meanwhile: the documented slack)."""
    a, b = hubs

    class Taking:
        """A box's SharedLimits, the take sent with the batch of its turn
        and its answer read before the next take."""

        def __init__(self, hub):
            self.hub, self.limits = hub, SharedLimits(hub)

        def take(self, buckets, now):
            wait = self.limits.take(buckets, now)
            sent = self.hub.flush()
            if sent is not None:
                result_of(sent)
            return wait
    la, lb = Taking(a), Taking(b)
    buckets = [("chat:s:sid1", 3, 1.0), ("chat:a:10.1.1.1", 5, 1.0)]
    a.clock.advance(100.0 - a.clock.seconds())
    # three chats of one session, through both nodes: the burst is 3 in all
    assert la.take(buckets, 100.0) is None
    assert lb.take(buckets, 100.0) is None
    assert la.take(buckets, 100.0) is None
    assert lb.take(buckets, 100.0) is None        # let through; Redis said "empty"
    assert lb.take(buckets, 100.0) == pytest.approx(1.0)   # b knows now, sends nothing
    assert "chat:a:10.1.1.1" not in lb.limits.empty       # only the empty bucket
    # another session of the same address has its own 3, the address 2 more
    other = [("chat:s:sid2", 3, 1.0), ("chat:a:10.1.1.1", 5, 1.0)]
    assert la.take(other, 100.0) is None
    assert lb.take(other, 100.0) is None
    assert la.take(other, 100.0) is None          # the address is empty in Redis ...
    assert la.take(other, 100.0) == pytest.approx(1.0)    # ... and a knows it now
    # a refusal spent nothing: after 1 s, one more for sid1 (b's memory has run out)
    a.clock.advance(1.0)
    assert lb.take(buckets, 101.0) is None
    assert la.take(buckets, 101.0) is None        # a heard of no empty sid1: goes
    assert la.take(buckets, 101.0) == pytest.approx(1.0)
    # idle buckets leave Redis once they would be full again
    ttl = int(result_of(a._eval(b"return redis.call('TTL', KEYS[1])",
                                [a.key("rl", "chat:s:sid1")], [])))
    assert 0 < ttl <= 4


def test_a_boxs_states_are_written_by_its_batch_read_with_the_view_and_buried(hubs):
    a, b = hubs
    result_of(a.refresh())
    states = [a.key("states", a.me)]
    a._share_presence(UserState("alice"), True, 5.0)
    a._share_presence(UserState("bob"), True, 5.0)
    a._share_presence(UserState("bob"), False, 6.0)         # offline: not kept
    result_of(a.flush())
    flat = result_of(b._eval(cluster.STATES_ON, states, []))
    assert [(flat[i], json.loads(flat[i + 1])) for i in range(0, len(flat), 2)] == [
        (b"alice", ["available", "", 0.0])]
    result_of(a.bury(a.me, alive=True))
    assert result_of(b._eval(cluster.STATES_ON, states, [])) == []


def test_settle_reads_only_the_pending_chats_old_enough(hubs):
    """OLD_PENDING answers the chats written at or before the limit, whatever
    their text holds (quotes, a "t" of its own, backslashes), and no other."""
    from presence.core.frames import Frame
    a, _ = hubs
    key, times = a.key("pending", a.me), a.key("pendt", a.me)
    texts = ['hi', 'x", "t": 1}', '\\', '"t": 5}', 'ünïcode \u2028 "quoted"']
    writes = []
    for i, text in enumerate(texts):
        frame = Frame("chat", ["bob", f"m{i}"], text)
        for t in (100.0 + i, 2_000_000_000.123456):
            value = json.dumps({"u": "alice", "f": cluster.encode_frame(frame), "t": t})
            writes.append([b"HSET", key, f"alice m{i} {t}", value])
            writes.append([b"ZADD", times, repr(t), f"alice m{i} {t}"])
    writes.append([b"ZADD", times, "50.0", "acknowledged, its index entry left"])
    args: List[Any] = []
    for command in writes:
        args += [len(command)] + command
    result_of(a._eval(cluster.BATCH, [], args))

    def old(before, most=1000, now=200.0):
        return result_of(a._eval(cluster.OLD_PENDING, [key, times],
                                 [repr(before), most, repr(now)]))
    flat = old(102.0)
    fields = sorted(flat[0::2])
    assert fields == [b"alice m0 100.0", b"alice m1 101.0", b"alice m2 102.0"]
    assert json.loads(flat[1])["u"] == "alice"
    # the index entry without its chat went; those answered are read again
    # only once they are old again (their time is now 200)
    assert old(102.0) == []
    assert len(old(150.0, most=1)) == 2                   # at most one: m3 (103)
    assert len(old(3e9)) == 20
