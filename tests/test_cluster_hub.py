"""ClusterHub against a fake of its Redis seam: an in-memory Redis that
understands the hub's scripts and delivers what they publish to every hub
subscribed, when the test pumps it (no reactor, no sleeps)."""

from __future__ import annotations

import json
from typing import Dict, List, Set, Tuple

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from presence.cluster import hub as cluster
from presence.cluster.hub import ClusterHub
from presence.core import frames
from presence.core.hub import Hub, HubConfig, IHub
from presence.core.tables import book_key

from test_core_hub import FakeChannel, RecordingListener

P = "presence:"


class Unavailable(Exception):
    pass


class FakeRedis:
    """Just enough Redis for the hub's scripts, shared by several hubs."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.hubs: List[ClusterHub] = []
        self.queue: List[Tuple[bytes, bytes]] = []
        self.sessions: Dict[str, str] = {}
        self.onbox: Dict[str, Set[str]] = {}
        self.online: Dict[str, Set[str]] = {}
        self.nodes: Set[str] = set()
        self.expires: Dict[str, Tuple[str, float]] = {}
        self.down = False
        self.pending: Dict[str, Dict[str, str]] = {}
        self.pendt: Dict[str, Dict[str, float]] = {}
        self.seqs: Dict[str, Dict[str, str]] = {}
        self.states: Dict[str, Dict[str, str]] = {}
        self.devices: Dict[str, str] = {}
        self.batches: List[list] = []
        self.takes = 0
        self.take_answer = b"0"

    def seam(self) -> "Seam":
        return Seam(self)

    def publish(self, channel: bytes, message: bytes) -> None:
        self.queue.append((channel, message))

    def pump(self) -> None:
        self.clock.advance(0)           # the end of the turn: the boxes' batches go
        while self.queue:
            while self.queue:
                channel, message = self.queue.pop(0)
                for hub in self.hubs:
                    if channel in hub.channels():
                        hub.received(channel, message)
            self.clock.advance(0)       # what handling them shared goes too

    def alive(self, box: str) -> bool:
        found = self.expires.get(box)
        return found is not None and found[1] > self.clock.seconds()

    def bound(self, sid: str, bound: int) -> list:
        """BOUND: the user's oldest sessions past ``bound`` (never ``sid``)."""
        user = json.loads(self.sessions[sid])["u"]
        mine = sorted((json.loads(r)["t"], s) for s, r in self.sessions.items()
                      if json.loads(r)["u"] == user)
        if bound <= 0 or len(mine) <= bound:
            return []
        others = [s for _, s in mine if s != sid]
        return [x.encode() for s in others[:len(mine) - bound]
                for x in (s, json.loads(self.sessions[s])["b"])]

    def command(self, words, answers: list) -> None:
        """One command of a batch, on the structures of this fake."""
        name, key, rest = words[0], words[1].decode(), [w.decode() for w in words[2:]]
        kind, _, box = key[len(P):].partition(":")
        if name == b"PUBLISH":
            self.publish(words[1], words[2])
        elif name == b"BOUND":
            answers.append(self.bound(rest[1], int(rest[2])))
        elif name == b"TAKE":
            self.takes += 1
            answers.append(self.take_answer)
        elif kind == "states":
            if name == b"HSET":
                self.states.setdefault(box, {})[rest[0]] = rest[1]
            else:
                self.states.get(box, {}).pop(rest[0], None)
        elif kind == "devices":
            if name == b"HSET":
                self.devices[rest[0]] = rest[1]
            else:
                for field in rest:
                    self.devices.pop(field, None)
        elif kind == "sessions":
            if name == b"HSET":
                self.sessions[rest[0]] = rest[1]
            else:
                self.sessions.pop(rest[0], None)
        elif kind == "onbox":
            (self.onbox.setdefault(box, set()).add if name == b"SADD"
             else self.onbox.setdefault(box, set()).discard)(rest[0])
        elif kind == "online":
            (self.online.setdefault(box, set()).add if name == b"SADD"
             else self.online.setdefault(box, set()).discard)(rest[0])
        elif kind == "pending":
            if name == b"HSET":
                self.pending.setdefault(key, {})[rest[0]] = rest[1]
            else:
                for field in rest:
                    self.pending.get(key, {}).pop(field, None)
        elif kind == "pendt":
            times = self.pendt.setdefault(key, {})
            if name == b"ZADD":
                times[rest[1]] = float(rest[0])
            else:
                for field in rest:
                    times.pop(field, None)
        elif kind == "seqs":
            for field in rest:
                self.seqs.get(key, {}).pop(field, None)
        elif kind != "where":
            raise AssertionError(f"unexpected command {words!r}")

    def eval(self, script, keys, args):
        if self.down:
            return defer.fail(Unavailable("down"))
        k = [x.decode() for x in keys]
        a = [x.decode() for x in args]
        if script == cluster.BATCH:
            self.batches.append(args)
            answers: list = []
            i = 0
            while i < len(args):
                words = int(args[i])
                self.command(args[i + 1:i + 1 + words], answers)
                i += words + 1
            return defer.succeed(answers)
        elif script == cluster.STATES_ON:
            box = k[0][len(P + "states:"):]
            return defer.succeed([x.encode() for user, value in self.states.get(box, {}).items()
                                  for x in (user, value)])
        elif script == cluster.OLD_PENDING:
            out = []
            times = self.pendt.get(k[1], {})
            old = sorted((t, f) for f, t in times.items() if t <= float(a[0]))
            for _, field in old[:int(a[1])]:
                value = self.pending.get(k[0], {}).get(field)
                if value is None:
                    del times[field]
                else:
                    out += [field.encode(), value.encode()]
                    times[field] = float(a[2])
            return defer.succeed(out)
        elif b"PUBLISH" in script and b"HSET" not in script and b"SREM" not in script:
            self.publish(keys[0], args[0])
        elif script == cluster.REGISTER:
            self.expires[a[0]] = (a[1], self.clock.seconds() + float(a[2]))
            self.nodes.add(a[0])
            out = []
            for box in sorted(self.nodes):
                alive = self.alive(box)
                left = (self.expires[box][1] - self.clock.seconds()) * 1000 if alive else -2
                out += [box.encode(), self.expires[box][0].encode() if alive else b"",
                        int(left)]
            return defer.succeed(out)
        elif script == cluster.BURY:
            box = a[0]
            if a[2] != "1" and self.alive(box):
                return defer.succeed([[], []])
            if box not in self.nodes:
                return defer.succeed([[], []])
            pending = [v.encode() for v in self.pending.pop(k[6], {}).values()]
            self.pendt.pop(k[8], None)
            self.nodes.discard(box)
            self.expires.pop(box, None)
            out = [self.sessions.pop(s).encode() for s in self.onbox.pop(box, set())
                   if s in self.sessions]
            self.online.pop(box, None)
            self.states.pop(box, None)
            self.publish(keys[5], json.dumps({"e": "dead", "b": box}).encode())
            return defer.succeed([out, pending])
        elif script == cluster.SESSIONS_PAGE:   # pages of two records
            flat = [x.encode() for sid in sorted(self.sessions)
                    for x in (sid, self.sessions[sid])]
            start = int(a[0])
            end = start + 4
            return defer.succeed([str(end if end < len(flat) else 0).encode(), flat[start:end]])
        elif script == cluster.BOXES:
            return defer.succeed([box.encode() for box in sorted(self.nodes)])
        elif script == cluster.ONLINE_ON:
            return defer.succeed([u.encode() for u in self.online.get(k[0][len(P + "online:"):],
                                                                      ())])
        elif script == cluster.SEQ:
            self.seqs.setdefault(k[0], {})[a[0]] = a[1]
        elif b"HGET" in script and k[0] == P + "devices":
            found = self.devices.get(a[0])
            return defer.succeed(None if found is None else found.encode())
        elif b"HGET" in script and k[0].startswith(P + "seqs:"):
            found = self.seqs.get(k[0], {}).get(a[0])
            return defer.succeed(None if found is None else found.encode())
        elif b"HGET" in script:
            found = self.sessions.get(a[0])
            return defer.succeed(None if found is None else found.encode())
        else:
            raise AssertionError(f"unexpected script {script!r}")
        return defer.succeed(1)


class Seam:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis

    def eval(self, script, keys, args):
        return self.redis.eval(script, keys, args)

    def unavailable(self, error) -> bool:
        return isinstance(error, Unavailable)


class Cluster:
    def __init__(self, n: int = 2) -> None:
        self.clock = Clock()
        self.redis = FakeRedis(self.clock)
        self.hubs: List[ClusterHub] = []
        self.listeners: List[RecordingListener] = []
        for i in range(n):
            listener = RecordingListener()
            hub = ClusterHub(self.clock, HubConfig(host_box=f"10.0.0.{i + 1}:80", linger=0),
                             self.redis.seam(), listener=listener)
            self.redis.hubs.append(hub)
            self.hubs.append(hub)
            self.listeners.append(listener)
        self.refresh()   # each box registers ...
        self.refresh()   # ... and then sees the others

    def refresh(self) -> None:
        for hub in self.hubs:
            hub.refresh()
        self.redis.pump()

    def login(self, via: int, name: str, groups=()):
        session = self.hubs[via].login(name, f"sid-{name}-{len(self.redis.sessions):016d}",
                                       "10.1.1.1", 5000, list(groups))
        self.redis.pump()
        return session

    def hub_of(self, session) -> ClusterHub:
        return next(h for h in self.hubs if h.me == session.host_box)

    def hold(self, session) -> FakeChannel:
        hub = self.hub_of(session)
        local = hub.session(session.id)
        channel = FakeChannel(hub, local)
        hub.attach(local, channel)
        self.redis.pump()
        return channel


def lines(channel: FakeChannel) -> List[str]:
    return [" ".join(("msg", f.kind) + f.args) for _, f in channel.sent]


def test_the_cluster_hub_provides_IHub() -> None:
    c = Cluster(1)
    assert verifyObject(IHub, c.hubs[0])


def test_a_login_is_placed_on_the_emptiest_live_box_and_opened_there() -> None:
    c = Cluster(2)
    a, b = c.hubs
    first = c.login(0, "alice")
    assert first.host_box == a.me and a.session(first.id) is first
    second = c.login(0, "bob")
    # a holds one session, b none: b gets it; a answers with a stand-in
    assert second.host_box == b.me
    assert b.users.session(second.id) is not None
    assert a.users.session(second.id) is None
    assert a.session(second.id).host_box == b.me
    assert a.boxes() == [{"box": a.me, "sessions": 1}, {"box": b.me, "sessions": 1}]


def test_a_box_silent_for_a_few_seconds_gets_no_new_sessions_before_it_is_buried() -> None:
    # a reconnect storm: the dead box looks emptiest (its sessions are still
    # in the view until it is buried), and every resume would be placed there
    c = Cluster(3)
    a, b, d = c.hubs
    for name in ("u1", "u2", "u3"):
        c.login(0, name)
    c.redis.hubs.remove(d)          # d dies: no refresh any more
    c.hold(c.login(0, "u4"))
    for _ in range(int(cluster.STALE / cluster.REFRESH) + 1):
        c.clock.advance(cluster.REFRESH)
        a.refresh()
        b.refresh()
        c.redis.pump()
    assert d.me in a.live and d.me in a.stale       # not buried yet
    placed = {c.login(0, f"r{i}").host_box for i in range(4)}
    assert placed == {a.me, b.me}
    c.clock.advance(cluster.BOX_TTL)
    a.refresh()
    c.redis.pump()
    assert d.me not in a.live and not a.stale


def test_the_view_of_remote_sessions_is_compact_and_follows_opens_and_closes() -> None:
    c = Cluster(2)
    a, b = c.hubs
    c.login(0, "alice")
    bob = [c.login(0, "bob") for _ in range(3)]       # b, a, b
    assert a.box_sessions == {b.me: 2}
    assert sorted(a.remote_boxes("bob")[b.me]) == sorted(s.id for s in bob if s.host_box == b.me)
    user, box, record = a.where[bob[0].id]
    assert (user, box, record.get("ip"), record.get("port")) == ("bob", b.me, "10.1.1.1", 5000)
    a.end(a.session(bob[0].id), "logout")
    c.redis.pump()
    assert a.box_sessions == {b.me: 1} and a.place() == b.me
    b.end(b.session(bob[2].id), "logout")
    c.redis.pump()
    assert a.box_sessions == {} and "bob" in a.users.users and "bob" not in a.remote


def test_presence_and_chat_cross_boxes_in_order_filtered_by_watching() -> None:
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice")
    bob = c.login(0, "bob", groups=[book_key("alice")])     # placed on b
    carol = c.login(0, "carol")                            # a: not in alice's book
    ha = c.hold(alice)
    c.hold(carol)
    hb = c.hold(bob)
    assert "msg update online bob" in lines(ha)
    assert a.is_online("bob") and b.is_online("alice") and a.knows("bob")
    for i in range(5):
        assert a.chat(alice, "bob", f"hi {i}", None, f"m{i}")[0] == "online"
    c.redis.pump()
    assert [f.payload for _, f in hb.sent if f.is_chat] == [f"hi {i}" for i in range(5)]
    # carol on b's view is not watched by bob... and alice's own change is not
    # sent to alice
    assert not any("alice" in line for line in lines(ha))
    b.end(b.session(bob.id), "logout")
    c.redis.pump()
    assert lines(ha)[-1] == "msg update offline bob"
    assert not a.is_online("bob") and not a.knows("bob")


def test_a_stand_in_is_carried_out_on_its_box() -> None:
    c = Cluster(2)
    a, b = c.hubs
    c.login(0, "alice")
    bob = c.login(0, "bob")
    hb = c.hold(bob)
    stand_in = a.session(bob.id)
    a.deliver_session(stand_in, frames.init_chat("alice"))
    a.watch(stand_in, "alice")
    c.redis.pump()
    held = b.session(bob.id)
    assert held.active == "alice"
    assert "msg initChat alice" in lines(hb)
    a.end(stand_in, "logout")
    c.redis.pump()
    assert b.users.session(bob.id) is None and hb.released == ["logout"]


def test_a_routed_chat_for_a_user_gone_from_the_box_goes_to_the_message_box() -> None:
    c = Cluster(2)
    a, b = c.hubs
    c.login(0, "alice")
    bob = c.login(0, "bob")
    c.hold(bob)
    a.deliver("bob", frames.chat("alice", "m1", "are you there"))
    # bob's session ends on b before the routed frame arrives
    b.end(b.session(bob.id), "expired")
    c.redis.pump()
    spilled = [(u, f.payload) for u, f in c.listeners[1].spilled]
    assert ("bob", "are you there") in spilled


def test_a_heartbeat_that_beats_the_announcement_opens_the_session_from_redis() -> None:
    c = Cluster(2)
    a, b = c.hubs
    c.login(0, "alice")
    bob = a.login("bob", "sid-bob-0123456789abcdef", "10.1.1.1", 5000, [])   # placed on b, not pumped
    assert bob.host_box == b.me and b.session("sid-bob-0123456789abcdef") is None
    found = []
    b.claim("sid-bob-0123456789abcdef").addCallback(found.append)
    assert found[0] is b.users.session("sid-bob-0123456789abcdef")
    c.redis.pump()     # the announcement arrives late: nothing opened twice
    assert len(b.sessions_of("bob")) == 1


def test_a_dead_box_is_buried_and_its_users_go_offline_for_watchers() -> None:
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice")
    bob = c.login(0, "bob", groups=[book_key("alice")])
    ha = c.hold(alice)
    c.hold(bob)
    assert a.is_online("bob")
    c.redis.hubs.remove(b)          # b dies: no refresh, no messages
    c.clock.advance(cluster.BOX_TTL + 1)
    a.refresh()
    c.redis.pump()
    assert not a.is_online("bob") and a.session(bob.id) is None
    assert lines(ha)[-1] == "msg update offline bob"
    assert [x["box"] for x in a.boxes()] == [a.me]
    assert bob.id not in c.redis.sessions


def test_redis_down_logs_one_line_and_local_delivery_goes_on(caplog=None) -> None:
    c = Cluster(1)
    hub = c.hubs[0]
    alice = c.login(0, "alice")
    bob = c.login(0, "bob", groups=[book_key("alice")])
    ha = c.hold(alice)
    seen = []
    from twisted.logger import globalLogPublisher
    globalLogPublisher.addObserver(seen.append)
    try:
        c.redis.down = True
        c.hold(bob)
        hub.chat(bob, "alice", "still here", None, "m1")
        hub.refresh()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert "still here" in [f.payload for _, f in ha.sent if f.is_chat]
    outages = [e for e in seen if "unavailable" in e.get("log_format", "")]
    assert len(outages) == 1


def alice_on_a_bob_held_on_b():
    """Two boxes: alice's session on a, bob's on b holding a heartbeat."""
    c = Cluster(2)
    alice = c.login(0, "alice")
    bob = c.login(0, "bob")
    return (c, *c.hubs, alice, bob, c.hold(bob))


def test_a_turns_chats_to_a_box_go_out_as_one_call_and_one_message_in_order() -> None:
    c, a, b, alice, bob, hb = alice_on_a_bob_held_on_b()
    c.redis.batches.clear()
    received = []
    original = b.received
    b.received = lambda channel, message: (received.append(message),
                                           original(channel, message))
    for i in range(50):                     # one reactor turn
        a.chat(alice, "bob", f"chat {i}", None, f"m{i}")
    assert c.redis.batches == []            # nothing sent before the end of the turn
    c.redis.pump()
    assert len(c.redis.batches) == 1 and len(received) == 1
    assert [f.payload for _, f in hb.sent if f.is_chat] == [f"chat {i}" for i in range(50)]
    assert len(c.redis.pending[P + "pending:" + b.me]) == 50


def chat_to_bob_on_b(text: str):
    """Alice on box a sends ``text`` to bob, who holds a heartbeat on b."""
    c, a, b, alice, bob, _ = alice_on_a_bob_held_on_b()
    a.chat(alice, "bob", text, None, "m1")
    c.redis.pump()
    return c, b, bob


def test_a_chat_routed_to_a_box_that_dies_unacknowledged_reaches_the_message_box() -> None:
    c, a, b, alice, bob, hb = alice_on_a_bob_held_on_b()
    a.chat(alice, "bob", "read it", None, "m1")
    a.chat(alice, "bob", "never acked", None, "m2")
    c.redis.pump()
    first_id = next(i for i, f in hb.sent if f.is_chat and f.payload == "read it")
    b.ack(b.session(bob.id), first_id)        # the client has the first one
    c.redis.pump()
    assert list(c.redis.pending[P + "pending:" + b.me]) == ["bob m2"]
    c.redis.hubs.remove(b)
    c.clock.advance(cluster.BOX_TTL + 1)
    a.refresh()
    c.redis.pump()
    spilled = [(u, f.payload, f.args[1]) for u, f in c.listeners[0].spilled]
    assert spilled == [("bob", "never acked", "m2")]
    assert ("bob", False) in [(u, on) for u, on, _ in c.listeners[0].presence]




def test_a_pending_chat_spilled_by_its_box_leaves_the_pending_hash_once_settled() -> None:
    c, b, bob = chat_to_bob_on_b("later")
    b.end(b.session(bob.id), "expired")       # spilled to the message box
    pending = c.redis.pending[P + "pending:" + b.me]
    c.clock.advance(1)
    b.settle()
    assert list(pending) == ["bob m1"]        # too recent: the spill may be in flight
    c.clock.advance(cluster.SETTLED)
    b.settle()
    assert pending == {}


def test_a_pending_chat_still_in_a_mailbox_stays_pending_however_old() -> None:
    c, b, _ = chat_to_bob_on_b("unread for long")
    c.clock.advance(10 * cluster.SETTLED)
    b.settle()
    assert list(c.redis.pending[P + "pending:" + b.me]) == ["bob m1"]


@pytest.mark.parametrize("message", [b"not json", b"[1, 2]", b'{"e": "frame"}',
                                     b'{"e": "frame", "u": "bob", "f": 7}',
                                     b'{"e": "pres", "u": null}', b"\xff\xfe"])
def test_an_unreadable_event_is_dropped_and_the_next_one_is_handled(message) -> None:
    c = Cluster(2)
    a, b = c.hubs
    c.login(0, "alice")
    bob = c.login(0, "bob")
    hb = c.hold(bob)
    b.received(b.channels()[1], message)
    a.deliver("bob", frames.init_chat("alice"))
    c.redis.pump()
    assert "msg initChat alice" in lines(hb)


def test_the_view_is_read_in_pages_and_what_is_announced_meanwhile_applies_after() -> None:
    c = Cluster(2)
    a, b = c.hubs
    sessions = [c.login(0, f"u{i}") for i in range(9)]
    on_b = [x for x in sessions if x.host_box == b.me]
    assert len(on_b) >= 4
    c.hold(on_b[1])
    pages = []
    real = c.redis.eval

    def slow_pages(script, keys, args):          # the second page waits
        result = real(script, keys, args)
        if script == cluster.SESSIONS_PAGE and args[0] != b"0":
            later = defer.Deferred()
            pages.append((later, result))
            return later
        return result
    c.redis.eval = slow_pages
    loading = a.load()
    assert pages and not loading.called
    b.end(b.session(on_b[0].id), "logout")        # announced once its page was read
    c.redis.pump()
    assert a.session(on_b[0].id) is not None      # held until the view is read
    c.redis.eval = real
    while pages:
        later, result = pages.pop()
        result.addCallback(later.callback)
    assert loading.called
    assert a.session(on_b[0].id) is None
    assert all(a.session(x.id) is not None for x in on_b[1:])
    assert a.box_sessions == {b.me: len(on_b) - 1}


def test_after_an_outage_a_box_makes_redis_and_the_other_boxes_agree_with_it() -> None:
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice", groups=[book_key("bob")])
    bob = c.login(0, "bob")
    carol = c.login(0, "carol")                      # a, ends during the outage
    ha = c.hold(alice)
    hb = c.hold(bob)
    assert b.is_online("alice") and b.session(carol.id) is not None
    c.redis.down = True
    ha.release("gone")                               # alice offline on a: not shared
    a.end(carol, "expired")                          # nor this
    c.redis.down = False
    assert b.is_online("alice")                      # b's view is stale
    a.load()                                         # a's subscription is back
    c.redis.pump()
    assert lines(hb)[-1] == "msg update offline alice"
    assert not b.is_online("alice") and b.session(carol.id) is None
    assert carol.id not in c.redis.sessions
    b.load()                                         # and b's reload agrees
    assert not b.is_online("alice") and b.session(carol.id) is None


def test_a_chat_that_cannot_be_routed_while_redis_is_down_goes_to_the_message_box() -> None:
    c, a, _, alice, _, _ = alice_on_a_bob_held_on_b()
    c.redis.down = True
    assert a.chat(alice, "bob", "during the outage", None, "m1")[0] == "online"
    c.redis.pump()                  # the turn's batch fails: the chat goes to the box
    assert [(u, f.payload) for u, f in c.listeners[0].spilled] == [("bob", "during the outage")]


def test_a_made_up_session_id_costs_no_look_up_and_look_ups_are_bounded() -> None:
    c = Cluster(1)
    hub = c.hubs[0]
    for bogus in ("x", "a" * 65, "../../etc", "sid with spaces and more"):
        assert hub.claim(bogus) is None
    stuck = defer.Deferred()
    hub.redis = type("Slow", (), {"eval": lambda self, *a: stuck,
                                  "unavailable": lambda self, e: False})()
    pending = [hub.claim(f"unknown-session-{i:08d}") for i in range(cluster.MAX_CLAIMS + 5)]
    assert sum(p is not None for p in pending) == cluster.MAX_CLAIMS
    stuck.callback(None)
    assert hub.claim("unknown-session-00000001") is not None


def test_a_seq_retried_through_another_node_is_answered_as_the_first_time_and_sent_once() -> None:
    c, a, b, alice, bob, hb = alice_on_a_bob_held_on_b()
    assert a.recall_seq(alice, "7") is not None
    first = a.chat(alice, "bob", "once", "7", "m1")
    c.redis.pump()
    # the retry reaches b, which knows alice's session only as a stand-in
    stand_in = b.session(alice.id)
    assert stand_in is not None and stand_in is not alice
    recalled = []
    b.recall_seq(stand_in, "7").addCallback(recalled.append)
    assert recalled
    again = b.chat(stand_in, "bob", "once", "7", "m2")
    c.redis.pump()
    assert again == (first[0], "m1", False)
    assert [f.payload for _, f in hb.sent if f.is_chat] == ["once"]
    assert a.recall_seq(alice, "7") is None          # its own memory answers


def test_a_seq_that_cannot_be_checked_while_redis_is_down_is_refused_with_503() -> None:
    from presence.store.interface import StoreUnavailable
    c, a, b, alice, _, _ = alice_on_a_bob_held_on_b()
    c.redis.down = True
    failures = []
    b.recall_seq(b.session(alice.id), "9").addErrback(failures.append)
    assert failures and failures[0].check(StoreUnavailable)


def test_a_password_change_ends_the_users_other_sessions_on_every_box() -> None:
    c = Cluster(2)
    a, b = c.hubs
    first = c.login(0, "alice")                     # a
    c.login(0, "bob")                               # b
    second = c.login(0, "alice")                    # placed by load
    third = c.login(1, "alice")
    held = {s.id: c.hold(s) for s in (first, second, third)}
    assert {first.host_box, second.host_box, third.host_box} == {a.me, b.me}
    assert a.end_user("alice", "password", keep=first) == 2
    c.redis.pump()
    assert held[first.id].released == []
    assert held[second.id].released == ["password"] and held[third.id].released == ["password"]
    assert [s.id for s in a.sessions_of("alice")] == [first.id] and b.sessions_of("alice") == []


def test_a_session_look_up_while_redis_is_down_is_a_503() -> None:
    from presence.store.interface import StoreUnavailable
    c = Cluster(1)
    c.redis.down = True
    failures = []
    c.hubs[0].claim("unknown-session-00000001").addErrback(failures.append)
    assert failures and failures[0].check(StoreUnavailable)
    again = c.hubs[0].claim("unknown-session-00000001")   # none left in flight
    assert again is not None
    again.addErrback(failures.append)
    assert len(failures) == 2


# -- limits over every box ----------------------------------------------------------

def test_the_per_user_bound_on_sessions_counts_every_box() -> None:
    c = Cluster(2)
    a, b = c.hubs
    for hub in c.hubs:
        hub.config.sessions_per_user = 2
    first = c.login(0, "alice")                       # on a
    h1 = c.hold(first)
    c.clock.advance(1)
    second = c.login(0, "alice")                      # on b (a holds one)
    assert second.host_box == b.me
    c.clock.advance(1)
    third = c.login(1, "alice")                       # on a or b: three in all
    c.redis.pump()
    c.redis.pump()
    # the oldest, on a, was replaced; the two newest live on
    assert h1.released == ["replaced"]
    assert a.users.session(first.id) is None and a.session(first.id) is None
    for s in (second, third):
        assert c.hub_of(s).users.session(s.id) is not None
    assert sum(len(h.sessions_of("alice")) for h in c.hubs) == 2


def test_the_bound_on_guests_per_address_counts_every_box() -> None:
    c = Cluster(2)
    a, b = c.hubs
    sessions = [a.login(f"guest.{i}", f"sid-guest-{i:016d}", "10.9.9.9", 1, (), True)
                for i in range(3)]
    c.redis.pump()
    assert {s.host_box for s in sessions} == {a.me, b.me}
    key = "10.9.9.9"
    assert a.guests_from(key) == b.guests_from(key) == 3
    assert a.guests_from("10.9.9.8") == 0
    for s in sessions:
        c.hub_of(s).end(c.hub_of(s).session(s.id), "logout")
    c.redis.pump()
    assert a.guests_from(key) == b.guests_from(key) == 0


def test_limits_over_the_cluster_fail_open_while_redis_is_down() -> None:
    from presence.cluster.limits import SharedLimits
    c = Cluster(1)
    hub = c.hubs[0]
    c.redis.down = True
    limits = SharedLimits(hub)
    results = []
    for _ in range(3):
        results.append(limits.take([("chat:s:x", 1, 1.0)], c.clock.seconds()))
        c.clock.advance(0)                  # the turn's batch goes (and fails)
    assert results == [None, None, None]   # allowed: the node's own buckets decide
    assert hub._outage                      # (noticed: one line for the outage)
    assert limits.empty == {}


def test_a_turns_chats_spend_the_shared_limits_in_its_one_batch() -> None:
    """Each chat's TAKE is a command of the turn's batch, answered to it in
    order: one Redis call for the turn's writes and takes."""
    from presence.cluster.limits import SharedLimits
    c = Cluster(1)
    hub = c.hubs[0]
    limits = SharedLimits(hub)
    c.redis.pump()
    sent = len(c.redis.batches)
    results: list = []
    for i in range(3):
        hub._queue([[b"HSET", hub.key("pending", hub.me), f"u {i}", "{}"]])
        results.append(limits.take([("chat:s:x", 10, 1.0)], c.clock.seconds()))
    assert c.redis.takes == 0 and results == [None, None, None]   # nobody waits
    c.clock.advance(0)                      # the end of the turn
    assert c.redis.takes == 3 and len(c.redis.batches) == sent + 1


def test_an_empty_shared_bucket_refuses_its_next_requests_on_the_box_without_redis() -> None:
    """Redis's answer that a bucket is empty is remembered: the box refuses
    that bucket (and only it) without asking Redis, until it would have a
    token again; the request that found it empty was not held up."""
    from presence.cluster.limits import SharedLimits
    c = Cluster(1)
    hub = c.hubs[0]
    limits = SharedLimits(hub)
    c.redis.pump()
    buckets = [("chat:s:x", 3, 1.0), ("chat:a:10.1.1.1", 5, 1.0)]
    c.redis.take_answer = b"2.5 0"          # the session's bucket is empty
    assert limits.take(buckets, c.clock.seconds()) is None
    c.clock.advance(0)
    assert set(limits.empty) == {"chat:s:x"}
    takes = c.redis.takes
    assert limits.take(buckets, c.clock.seconds()) == pytest.approx(2.5)
    c.clock.advance(1.0)
    assert limits.take(buckets, c.clock.seconds()) == pytest.approx(1.5)
    # another session of the address is not refused
    assert limits.take([("chat:s:y", 3, 1.0), ("chat:a:10.1.1.1", 5, 1.0)],
                       c.clock.seconds()) is None
    c.redis.take_answer = b"0"
    c.clock.advance(1.5)                    # the bucket has a token again
    assert limits.take(buckets, c.clock.seconds()) is None
    c.clock.advance(0)
    assert c.redis.takes == takes + 2       # the refused ones sent nothing


def test_the_memory_of_empty_buckets_is_bounded(monkeypatch) -> None:
    from presence.cluster import limits as module
    monkeypatch.setattr(module, "MAX_EMPTY", 3)
    c = Cluster(1)
    hub = c.hubs[0]
    limits = module.SharedLimits(hub)
    c.redis.pump()
    c.redis.take_answer = b"1"
    for i in range(3):
        limits.take([(f"chat:s:{i}", 1, 1.0)], c.clock.seconds())
        c.clock.advance(0)                  # answered: empty for 1 s
        c.clock.advance(0.5)
    assert len(limits.empty) == 3
    limits.take([("chat:s:new", 1, 1.0)], c.clock.seconds())
    c.clock.advance(0)
    # the expired ones went (0 and 1: until 1.0 and 1.5, now 1.5)
    assert set(limits.empty) == {"chat:s:2", "chat:s:new"}
    for i in range(5):
        limits.take([(f"chat:s:more{i}", 1, 1.0)], c.clock.seconds())
        c.clock.advance(0)
    assert len(limits.empty) <= 3


def test_the_boxes_with_users_online_are_counted_not_read_from_every_user() -> None:
    """The refresh asks which remote boxes have users online (to forget the
    boxes no longer live); the hub counts them per box as users come and go
    instead of reading every user's boxes each second."""
    c = Cluster(3)
    a = c.hubs[0]

    def counted():
        return {box: sum(box in boxes for boxes in a.remote_online.values())
                for boxes in a.remote_online.values() for box in boxes}
    sessions = [c.login(i % 3, f"u{i}") for i in range(6)]
    for s in sessions:
        c.hold(s)
    c.redis.pump()
    remote = [s for s in sessions if c.hub_of(s) is not a]
    assert remote and sum(a._online_count.values()) == len(remote)
    assert a._online_count == counted()
    assert a.remote_online_boxes() == {c.hub_of(s).me for s in remote}
    for s in remote:
        hub = c.hub_of(s)
        hub.end(hub.session(s.id), "logout")
        c.redis.pump()
        assert a._online_count == counted()
    assert a._online_count == {} and a.remote_online_boxes() <= set(a.box_sessions)


# -- a change of groups racing a login on another box ------------------------------

def test_a_group_change_racing_a_login_on_another_box_reaches_every_watcher() -> None:
    """bob joins ``club`` through a, while he logs in on b with the groups
    b read before the join, and comes online there before b hears of the
    join: alice, on a and watching ``club``, still hears him come online."""
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice", groups=["club"])
    ha = c.hold(alice)
    a.watch(alice, "club")
    a.membership_changed("club", "bob", True)         # published, not yet delivered
    bob = b.login("bob", "sid-bob-0000000000000001", "10.1.1.2", 5000, [])   # stale groups
    b.attach(bob, FakeChannel(b, bob))
    c.redis.pump()
    assert "msg refresh club" in lines(ha)
    assert lines(ha)[-1] == "msg update online bob"
    assert a.remote_groups["bob"] == {"club"}
    assert b.users.user("bob").groups == {"club"}
    # and the watchers of his old groups only are not told of the club
    b.end(bob, "logout")
    c.redis.pump()
    assert lines(ha)[-1] == "msg update offline bob"


def test_a_login_on_a_box_that_heard_of_the_change_first_gets_the_new_groups() -> None:
    """b hears of bob's leaving ``club`` before it opens the session whose
    groups were read before: the session does not keep the old group."""
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice", groups=["club"])
    ha = c.hold(alice)
    a.watch(alice, "club")
    a.membership_changed("club", "bob", False)
    c.redis.pump()                                    # b heard of it ...
    bob = b.login("bob", "sid-bob-0000000000000002", "10.1.1.2", 5000, ["club"])   # ... before
    assert b.users.user("bob").groups == frozenset()
    b.attach(bob, FakeChannel(b, bob))
    c.redis.pump()
    assert "msg update online bob" not in lines(ha)   # not in the club any more


def test_a_chat_with_a_seq_is_answered_once_its_answer_is_in_redis() -> None:
    """The 202 waits for the write any node's retry reads (recall_seq): a
    retry sent through another node the moment the 202 arrives finds it."""
    c = Cluster(2)
    a, _ = c.hubs
    alice = c.login(0, "alice")
    c.login(0, "bob")
    held = []
    real = a.redis.eval

    def eval(script, keys, args):
        if script == cluster.SEQ:
            held.append((defer.Deferred(), (script, keys, args)))
            return held[-1][0]
        return real(script, keys, args)
    a.redis.eval = eval
    assert a.chat(alice, "bob", "hi", "7", "m1")[2] is True
    written = a.shared_seq(alice, "7")
    assert written is not None and not written.called
    assert a.shared_seq(alice, "7") is None               # (asked once, by the caller)
    d, call = held.pop()
    real(*call)
    d.callback(1)
    assert written.called
    # a repeat is answered from memory: nothing to wait for
    assert a.chat(alice, "bob", "hi", "7", "m2")[2] is False
    assert a.shared_seq(alice, "7") is None


def test_box_names_are_the_live_boxes_without_counting_sessions() -> None:
    c = Cluster(2)
    a, b = c.hubs
    assert a.box_names() == b.box_names() == sorted([a.me, b.me])
    assert Hub(c.clock, HubConfig(host_box="one:1")).box_names() == ["one:1"]

def test_a_local_login_stays_here_and_every_box_answers_its_address() -> None:
    c = Cluster(2)
    a, b = c.hubs
    c.login(0, "carol")                        # a holds one: placement would pick b
    source = a.login_local("bob", "sid-bob-source-000001", "198.51.100.9")
    c.redis.pump()
    assert source.host_box == a.me and a.users.session(source.id) is source
    a.attach(source, FakeChannel(a, source))
    c.redis.pump()
    assert a.address_of("bob") == b.address_of("bob") == "198.51.100.9"
    assert b.is_online("bob")
    a.end(source, "alive")
    c.redis.pump()
    assert a.address_of("bob") is None and b.address_of("bob") is None
    assert not b.is_online("bob")


# -- what main's cluster shares, in cbench's batch of a turn ----------------------

def test_the_per_user_bound_is_counted_in_the_batch_of_the_logins_turn() -> None:
    c = Cluster(2)
    a, b = c.hubs
    a.config.sessions_per_user = 2
    c.redis.batches.clear()
    made = []
    for i in range(4):                      # one reactor turn, one user
        made.append(a.login("alice", f"sid-alice-turn-{i:08d}", "10.1.1.1", 5000, []))
    assert c.redis.batches == []
    c.clock.advance(0)
    first = c.redis.batches[0]              # the four bounds went with the writes
    assert first.count(b"BOUND") == 4 and first.count(b"presence:sessions") == 8
    c.redis.pump()
    c.redis.pump()
    live = [s for s in made if c.hub_of(s).users.session(s.id) is not None]
    assert [s.id for s in live] == [s.id for s in made[2:]]   # the two newest
    assert sorted(json.loads(r)["s"] for r in c.redis.sessions.values()) == [
        s.id for s in made[2:]]


def test_a_box_reading_the_view_takes_the_states_from_each_boxs_hash() -> None:
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice")                                  # on a
    ha = c.hold(alice)
    bob = c.login(0, "bob", groups=[book_key("alice")])          # on b
    c.hold(bob)
    b.set_state(b.session(bob.id), "busy", "in a meeting")
    c.redis.pump()
    assert json.loads(c.redis.states[b.me]["bob"])[:2] == ["busy", "in a meeting"]
    a.remote_states = {}                  # as a box that never heard the event
    a.load()
    c.redis.pump()
    assert a.state_of("bob") == ("busy", "in a meeting")
    assert [f.text for _, f in ha.sent if f.kind == "update"][-1] == (
        "msg update busy bob\nin a meeting")
    b.end(b.session(bob.id), "logout")
    c.redis.pump()
    assert "bob" not in c.redis.states.get(b.me, {})


def test_every_event_of_a_batch_times_the_pubsub_lag() -> None:
    c = Cluster(2)
    a, b = c.hubs
    before = b.pubsub_lag.count
    for i in range(3):                      # three opens in one batch
        a.login("carol", f"sid-carol-lag-{i:08d}", "10.1.1.1", 5000, [])
    c.clock.advance(0.25)                   # the message takes its time
    c.redis.pump()
    assert b.pubsub_lag.count - before >= 3
    assert b.pubsub_lag.sum >= 3 * 0.25


def test_state_observers_hear_the_changes_made_on_another_box() -> None:
    c = Cluster(2)
    a, b = c.hubs
    heard = []
    a.observe_states(lambda name, state: heard.append((name, state)))
    bob = c.login(0, "bob")
    assert bob.host_box == a.me
    carol = c.login(0, "carol")                   # on b
    assert carol.host_box == b.me
    c.hold(carol)
    b.set_state(b.session(carol.id), "busy", "in a meeting")
    c.redis.pump()
    b.end(b.session(carol.id), "logout")
    c.redis.pump()
    assert [h for h in heard if h[0] == "carol"] == [
        ("carol", ("available", "")), ("carol", ("busy", "in a meeting")),
        ("carol", ("offline", ""))]
