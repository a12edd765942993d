"""Tier-1 unit tests of L{presence.core.hub.Hub} with a
L{twisted.internet.task.Clock}: no reactor, no sockets, no sleeps.

A L{FakeChannel} stands for a held heartbeat request: it records the
``(id, frame)`` entries written to it, keep-alives and its release, and (like
the real one) tells the hub it ended by calling ``hub.detach``.  A
L{RecordingListener} records chat text spilled to the message box and
presence transitions.  The assertions are about what clients and the
listener see (spec sections 2-4, docs/decisions-draft.md).
"""

from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from presence.core import frames
from presence.core.frames import Frame
from presence.core.hub import (
    SEQ_MEMORY, Hub, HubConfig, IChannel, IHub, IHubListener,
)
from presence.core.mailbox import Entry
from presence.core.tables import Session


@implementer(IChannel)
class FakeChannel:
    """A held heartbeat request that records what is written to it."""

    def __init__(self, hub: Hub, session: Session) -> None:
        self.hub = hub
        self.session = session
        self.sent: List[Entry] = []
        self.keepalives = 0
        self.released: List[str] = []

    def send(self, entries: Sequence[Entry]) -> None:
        assert not self.released, "frames written to a released request"
        self.sent.extend(entries)

    def keepalive(self) -> None:
        assert not self.released, "keep-alive written to a released request"
        self.keepalives += 1

    def release(self, reason: str) -> None:
        assert not self.released, "released twice"
        self.released.append(reason)
        self.hub.detach(self.session, self)

    # what the client saw
    def texts(self) -> List[str]:
        return [f.text for _, f in self.sent]

    def ids(self) -> List[int]:
        return [i for i, _ in self.sent]


@implementer(IHubListener)
class RecordingListener:
    def __init__(self) -> None:
        self.spilled: List[Tuple[str, Frame]] = []
        self.presence: List[Tuple[str, bool, float]] = []

    def spill(self, user: str, frame: Frame) -> None:
        self.spilled.append((user, frame))

    def presence_changed(self, user: str, online: bool, now: float) -> None:
        self.presence.append((user, online, now))


class World:
    """A hub on a Clock, with helpers to log in and hold heartbeats."""

    def __init__(self, **config) -> None:
        self.clock = Clock()
        self.listener = RecordingListener()
        self.hub = Hub(self.clock, HubConfig(**config), self.listener)
        self._ids = itertools.count(1)

    def login(self, name: str, groups: Sequence[str] = (), watch: Optional[str] = None,
              **kw) -> Session:
        session = self.hub.login(name, f"{name}-sid-{next(self._ids)}", groups=groups, **kw)
        if watch is not None:
            self.hub.watch(session, watch)
        return session

    def attach(self, session: Session, ack: int = 0) -> FakeChannel:
        channel = FakeChannel(self.hub, session)
        self.hub.attach(session, channel, ack)
        return channel

    def watcher(self, name: str, watch: Optional[str] = None,
                groups: Sequence[str] = (), **kw) -> FakeChannel:
        """A logged-in session holding a heartbeat, watching ``watch``."""
        return self.attach(self.login(name, groups=groups, watch=watch, **kw))

    def sweep(self, chunk: Optional[int] = None) -> List[int]:
        return list(self.hub.sweep() if chunk is None else self.hub.sweep(chunk))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


def pending_texts(session: Session) -> List[str]:
    return [f.text for _, f in session.mailbox.pending()]


ONLINE_BOB = "msg update online bob"
OFFLINE_BOB = "msg update offline bob"


@pytest.fixture
def w() -> World:
    return World()


# -- interfaces and configuration --------------------------------------------

def test_fakes_and_hub_provide_their_interfaces(w: World) -> None:
    s = w.login("alice")
    assert verifyObject(IChannel, FakeChannel(w.hub, s))
    assert verifyObject(IHubListener, w.listener)
    assert verifyObject(IHub, w.hub)
    assert w.hub.clock is w.clock


def test_default_config_matches_the_decisions() -> None:
    cfg = HubConfig()
    assert (cfg.keepalive, cfg.poll, cfg.session_ttl, cfg.mailbox, cfg.sessions_per_user) == (
        25.0, 4.0, 3600.0, 1000, 16)
    assert cfg.linger == 8.0                      # two poll intervals
    assert HubConfig(poll=1.5).linger == 3.0
    assert HubConfig(poll=1.5, linger=0.5).linger == 0.5


# -- online fan-out -------------------------------------------------------------

def test_online_reaches_watchers_of_the_users_groups(w: World) -> None:
    alice = w.watcher("alice", watch="friends", groups=["friends"])
    carol = w.watcher("carol", watch="team", groups=["team"])
    dave = w.watcher("dave")                      # own address book, bob not in it
    bob_s = w.login("bob", groups=["friends"])
    assert alice.sent == [] and not w.hub.is_online("bob")
    bob = w.attach(bob_s)
    assert alice.texts() == [ONLINE_BOB]
    assert carol.sent == [] and dave.sent == []
    assert bob.sent == []                         # no update about oneself
    assert w.hub.is_online("bob")
    assert ("bob", True, 0) in w.listener.presence


def test_online_reaches_address_books_listing_the_user(w: World) -> None:
    alice = w.watcher("alice")                    # default active group: her address book
    carol = w.watcher("carol")                    # carol's book does not list bob
    w.attach(w.login("bob", groups=["~alice"]))
    assert alice.texts() == [ONLINE_BOB]
    assert carol.sent == []


def test_online_reaches_single_user_watchers(w: World) -> None:
    guest = w.watcher("guest.7f3a", watch="bob", guest=True)
    other = w.watcher("guest.8e21", watch="carol", guest=True)
    bob_s = w.login("bob")
    bob = w.attach(bob_s)
    assert guest.texts() == [ONLINE_BOB]
    assert other.sent == []
    w.hub.end(bob_s, "logout")
    assert guest.texts() == [ONLINE_BOB, OFFLINE_BOB]
    assert bob.released == ["logout"]


def test_non_held_watchers_get_the_frame_in_their_mailbox(w: World) -> None:
    alice_s = w.login("alice", watch="friends")
    w.attach(w.login("bob", groups=["friends"]))
    assert pending_texts(alice_s) == [ONLINE_BOB]
    channel = w.attach(alice_s)
    assert channel.sent == [(1, frames.update("online", "bob"))]


def test_own_sessions_are_excepted(w: World) -> None:
    bob1 = w.login("bob", groups=["friends"], watch="friends")
    bob2 = w.login("bob", groups=["friends"], watch="bob")
    alice = w.watcher("alice", watch="friends")
    w.attach(w.login("bob", groups=["friends"]))
    assert pending_texts(bob1) == [] and pending_texts(bob2) == []
    assert alice.texts() == [ONLINE_BOB]


def test_no_duplicate_delivery_through_two_routes(w: World) -> None:
    # bob is in "friends" and in alice's address book; alice's first session
    # watched "friends" and then switched to her book, her second session
    # watches "friends" and her third watches bob alone.
    a1 = w.login("alice", watch="friends")
    w.hub.watch(a1, "~alice")
    a2 = w.login("alice", watch="friends")
    a3 = w.login("alice", watch="bob")
    w.attach(w.login("bob", groups=["friends", "~alice"]))
    for s in (a1, a2, a3):
        assert pending_texts(s) == [ONLINE_BOB]


def test_switching_the_active_group_stops_the_old_route(w: World) -> None:
    a = w.login("alice", watch="friends")
    w.hub.watch(a, "team")
    w.attach(w.login("bob", groups=["friends"]))
    assert pending_texts(a) == []


# -- several sessions, linger ---------------------------------------------------

def test_online_while_any_session_holds(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s1, s2 = w.login("bob", groups=["friends"]), w.login("bob", groups=["friends"])
    c1, c2 = w.attach(s1), w.attach(s2)
    assert alice.texts() == [ONLINE_BOB]           # once, not per session
    c1.release("closed")
    w.advance(100)
    w.sweep()
    assert w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB]
    c2.release("closed")                           # last heartbeat ends at t=100
    w.advance(7)
    w.sweep()
    assert w.hub.is_online("bob")
    w.advance(1)
    w.sweep()
    assert not w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB, OFFLINE_BOB]
    assert w.listener.presence[-1] == ("bob", False, 108)


def test_state_of_follows_the_presence_rule(w: World) -> None:
    assert w.hub.state_of("bob") == ("offline", "")
    session = w.login("bob")
    assert w.hub.state_of("bob") == ("offline", "")   # no heartbeat yet
    channel = w.attach(session)
    assert w.hub.state_of("bob") == ("available", "")
    channel.release("closed")
    w.advance(9)
    w.sweep()
    assert w.hub.state_of("bob") == ("offline", "")


def test_linger_uses_the_latest_end_of_all_sessions(w: World) -> None:
    s1, s2 = w.login("bob"), w.login("bob")
    c1, c2 = w.attach(s1), w.attach(s2)
    c1.release("closed")                           # t=0
    w.advance(5)
    c2.release("closed")                           # t=5
    w.advance(7)                                   # t=12: 12 s after s1, 7 after s2
    w.sweep()
    assert w.hub.is_online("bob")
    w.advance(1)
    w.sweep()
    assert not w.hub.is_online("bob")


@pytest.mark.parametrize("linger", [8, 3])
def test_offline_exactly_linger_after_the_last_heartbeat(linger: int) -> None:
    w = World(linger=linger)
    alice = w.watcher("alice", watch="friends")
    bob = w.attach(w.login("bob", groups=["friends"]))
    w.advance(10)
    bob.release("closed")                          # t=10
    assert w.hub.is_online("bob")
    w.sweep()
    w.advance(linger - 1)
    w.sweep()
    assert w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB]
    w.advance(1)
    assert w.hub.is_online("bob")                  # the sweep finds it
    w.sweep()
    assert not w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB, OFFLINE_BOB]
    assert w.listener.presence == [("alice", True, 0), ("bob", True, 0),
                                   ("bob", False, 10 + linger)]
    assert w.hub.stats()["online_users"] == 1


def test_reattach_within_linger_is_no_change(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"])
    w.attach(s).release("closed")
    w.advance(7)
    w.sweep()
    w.attach(s)
    w.advance(100)
    w.sweep()
    assert w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB]
    assert [p for p in w.listener.presence if p[0] == "bob"] == [("bob", True, 0)]


def test_zero_linger_is_offline_at_once() -> None:
    w = World(linger=0)
    alice = w.watcher("alice", watch="friends")
    w.attach(w.login("bob", groups=["friends"])).release("closed")
    assert not w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB, OFFLINE_BOB]


def test_a_session_that_never_held_is_not_online(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    w.login("bob", groups=["friends"])
    w.sweep()
    assert not w.hub.is_online("bob")
    assert alice.sent == []


# -- logout -------------------------------------------------------------------

def test_logout_is_offline_at_once_says_bye_and_spills_unacked_chat(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"])
    bob = w.attach(s)
    c1, c2 = frames.chat("carol", "m1", "one"), frames.chat("carol", "m2", "two\nlines")
    w.hub.deliver("bob", c1)
    w.hub.deliver("bob", frames.update("online", "dave"))
    w.hub.deliver("bob", c2)
    w.hub.end(s, "logout")
    assert bob.sent[-1] == (4, frames.bye("logout"))
    assert bob.released == ["logout"]
    assert alice.texts() == [ONLINE_BOB, OFFLINE_BOB]   # no sweep, no clock advance
    assert not w.hub.is_online("bob")
    assert w.listener.spilled == [("bob", c1), ("bob", c2)]
    assert w.listener.presence[-1] == ("bob", False, 0)
    assert w.hub.session(s.id) is None
    assert w.hub.stats() == {"sessions": 1, "held": 1, "online_users": 1}


def test_logout_does_not_spill_acked_chat(w: World) -> None:
    s = w.login("bob")
    w.attach(s)
    c1, c2 = frames.chat("carol", "m1", "one"), frames.chat("carol", "m2", "two")
    w.hub.deliver("bob", c1)
    w.hub.deliver("bob", c2)
    w.hub.ack(s, 1)
    w.hub.end(s, "logout")
    assert w.listener.spilled == [("bob", c2)]


def test_logout_without_heartbeat_spills_and_sends_nothing(w: World) -> None:
    s = w.login("bob")
    c = frames.chat("carol", "m1", "hi")
    w.hub.deliver_session(s, c)
    w.hub.end(s, "logout")
    assert w.listener.spilled == [("bob", c)]
    assert w.hub.session(s.id) is None


def test_logout_of_one_session_keeps_the_user_online(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s1, s2 = w.login("bob", groups=["friends"]), w.login("bob", groups=["friends"])
    w.attach(s1)
    w.attach(s2)
    w.hub.end(s1, "logout")
    assert w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB]


def test_logout_during_linger_is_offline_at_once(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"])
    w.attach(s).release("closed")
    w.advance(1)
    assert w.hub.is_online("bob")
    w.hub.end(s, "logout")
    assert not w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB, OFFLINE_BOB]


def test_ending_twice_is_harmless(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"])
    w.attach(s)
    w.hub.end(s, "logout")
    w.hub.end(s, "logout")
    assert alice.texts() == [ONLINE_BOB, OFFLINE_BOB]
    assert w.hub.stats()["sessions"] == 1


def test_logout_with_a_full_mailbox_spills_every_unacked_chat() -> None:
    w = World(mailbox=3)
    s = w.login("bob")
    w.attach(s)
    chats = [frames.chat("carol", f"m{i}", f"text {i}") for i in (1, 2, 3)]
    for c in chats:
        w.hub.deliver("bob", c)
    assert w.listener.spilled == []               # exactly at the bound: nothing evicted yet
    w.hub.end(s, "logout")
    assert w.listener.spilled == [("bob", c) for c in chats]


# -- heartbeats: replacement, acks, resend -----------------------------------------

def test_a_new_heartbeat_releases_the_previous_one(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"])
    c1 = w.attach(s)
    c2 = w.attach(s)
    assert c1.released == ["replaced"]
    assert c2.released == []
    assert w.hub.stats()["held"] == 2              # alice's and bob's newest
    assert w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB]
    f = frames.chat("carol", "m1", "hi")
    w.hub.deliver("bob", f)
    assert c1.sent == [] and c2.sent == [(1, f)]
    c3 = w.attach(s, ack=1)
    assert c2.released == ["replaced"] and c3.sent == []
    assert w.hub.stats()["held"] == 2


def test_the_held_count_is_exact(w: World) -> None:
    s = w.login("bob")
    assert w.hub.stats()["held"] == 0
    c = w.attach(s)
    for _ in range(5):
        c = w.attach(s)
    assert w.hub.stats()["held"] == 1
    c.release("closed")
    assert w.hub.stats()["held"] == 0
    c.hub.detach(s, c)                             # a late second detach changes nothing
    assert w.hub.stats()["held"] == 0


def test_reattach_resends_exactly_the_unacked_frames_with_their_ids(w: World) -> None:
    s = w.login("bob")
    c1 = w.attach(s)
    fs = [frames.chat("carol", f"m{i}", f"t{i}") for i in (1, 2, 3)]
    for f in fs:
        w.hub.deliver("bob", f)
    assert c1.sent == [(1, fs[0]), (2, fs[1]), (3, fs[2])]
    c2 = w.attach(s, ack=2)
    assert c2.sent == [(3, fs[2])]
    c3 = w.attach(s)                               # no ack: the same again
    assert c3.sent == [(3, fs[2])]
    w.hub.ack(s, 3)
    c4 = w.attach(s)
    assert c4.sent == []
    f4 = frames.message("dave")
    w.hub.deliver("bob", f4)
    assert c4.sent == [(4, f4)]                     # ids keep growing


def test_frames_queued_while_detached_arrive_in_order_on_attach(w: World) -> None:
    s = w.login("bob")
    w.attach(s).release("closed")
    fs = [frames.chat("carol", "m1", "a"), frames.init_chat("carol"),
          frames.chat("carol", "m2", "b")]
    for f in fs:
        w.hub.deliver("bob", f)
    c = w.attach(s)
    assert c.sent == [(1, fs[0]), (2, fs[1]), (3, fs[2])]


def test_ack_larger_than_anything_sent(w: World) -> None:
    s = w.login("bob")
    w.hub.deliver("bob", frames.message("x"))
    c = w.attach(s, ack=10**9)
    assert c.sent == []
    w.hub.deliver("bob", frames.message("y"))
    assert c.ids() == [2]


# -- mailbox overflow -------------------------------------------------------------

def test_overflow_spills_chat_drops_presence_and_sends_one_refresh() -> None:
    w = World(mailbox=5)
    s = w.login("alice", watch="friends")
    ch = w.attach(s)
    ups = [frames.update("online", f"u{i}") for i in range(1, 6)]
    for f in ups:
        w.hub.deliver("alice", f)
    assert ch.ids() == [1, 2, 3, 4, 5]
    c6 = frames.chat("bob", "m6", "six")
    w.hub.deliver("alice", c6)                     # evicts u1 (and u2 for the refresh)
    refresh = frames.refresh("friends")
    assert ch.sent[5:] == [(6, c6), (7, refresh)]
    assert w.listener.spilled == []                 # presence frames are dropped
    more = [frames.chat("bob", f"m{i}", str(i)) for i in (8, 9, 10, 11)]
    for f in more:
        w.hub.deliver("alice", f)                  # evicts u3 u4 u5 then c6
    assert ch.texts().count("msg refresh friends") == 1
    assert w.listener.spilled == [("alice", c6)]
    assert [i for i, _ in s.mailbox.pending()] == [7, 8, 9, 10, 11]
    # once the refresh is acknowledged, the next overflow sends a new one
    w.hub.ack(s, 7)
    w.hub.deliver("alice", frames.chat("bob", "m12", "12"))   # 8..12: no overflow
    assert ch.texts().count("msg refresh friends") == 1
    w.hub.deliver("alice", frames.chat("bob", "m13", "13"))
    assert ch.texts().count("msg refresh friends") == 2
    assert ch.sent[-1] == (14, refresh)
    assert w.listener.spilled == [("alice", c6), ("alice", more[0]), ("alice", more[1])]
    assert len(s.mailbox) == 5


def test_overflow_refresh_names_the_active_group() -> None:
    w = World(mailbox=1)
    book = w.login("alice")
    single = w.login("carol", watch="bob")
    for s in (book, single):
        w.hub.deliver_session(s, frames.message("x"))
        w.hub.deliver_session(s, frames.message("y"))
    assert pending_texts(book) == ["msg refresh alice"]
    assert pending_texts(single) == ["msg refresh bob"]


def test_overflow_spills_chat_evicted_by_the_refresh_too() -> None:
    w = World(mailbox=2)
    s = w.login("alice")
    c1, c2, c3 = (frames.chat("bob", f"m{i}", str(i)) for i in (1, 2, 3))
    for c in (c1, c2, c3):
        w.hub.deliver_session(s, c)
    assert w.listener.spilled == [("alice", c1), ("alice", c2)]
    assert s.mailbox.pending() == [(3, c3), (4, frames.refresh("alice"))]


def test_overflow_without_a_heartbeat_is_resent_on_attach() -> None:
    w = World(mailbox=3)
    s = w.login("alice")
    for i in range(1, 6):
        w.hub.deliver_session(s, frames.update("online", f"u{i}"))
    ch = w.attach(s)
    assert ch.texts().count("msg refresh alice") == 1
    assert ch.ids() == sorted(ch.ids())
    assert len(ch.sent) == 3


# -- expiry -------------------------------------------------------------------------

def test_session_expires_session_ttl_after_its_last_heartbeat() -> None:
    w = World(session_ttl=100)
    s = w.login("bob")
    ch = w.attach(s)
    c = frames.chat("carol", "m1", "unread")
    w.hub.deliver("bob", c)
    w.advance(10)
    ch.release("closed")                            # t=10
    w.advance(99)
    w.sweep()
    assert w.hub.session(s.id) is s
    assert w.listener.spilled == []
    w.advance(1)                                    # t=110
    w.sweep()
    assert w.hub.session(s.id) is None
    assert w.listener.spilled == [("bob", c)]
    assert ch.released == ["closed"]                # nothing written to the old request
    assert w.hub.stats() == {"sessions": 0, "held": 0, "online_users": 0}


def test_a_session_that_never_held_expires_ttl_after_login() -> None:
    w = World(session_ttl=50)
    w.advance(5)
    s = w.login("bob")
    w.advance(49)
    w.sweep()
    assert w.hub.session(s.id) is s
    w.advance(1)
    w.sweep()
    assert w.hub.session(s.id) is None


def test_a_held_session_never_expires() -> None:
    w = World(session_ttl=100)
    s = w.login("bob")
    ch = w.attach(s)
    for _ in range(10):
        w.advance(60)
        w.sweep()
    assert w.hub.session(s.id) is s
    assert ch.released == []
    assert w.hub.is_online("bob")


def test_expiry_of_an_online_users_last_session_is_offline() -> None:
    w = World(session_ttl=5, linger=100)
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"])
    w.attach(s).release("closed")
    w.advance(5)
    w.sweep()
    assert w.hub.session(s.id) is None
    assert not w.hub.is_online("bob")
    assert alice.texts() == [ONLINE_BOB, OFFLINE_BOB]


# -- keep-alives and the sweep --------------------------------------------------------

def test_keepalive_only_to_channels_idle_for_keepalive(w: World) -> None:
    s1 = w.login("bob")
    c1 = w.attach(s1)                               # t=0
    w.advance(10)
    c2 = w.attach(w.login("carol"))                 # t=10
    w.login("dave")                                 # no heartbeat held
    w.advance(14)
    w.sweep()                                       # t=24
    assert (c1.keepalives, c2.keepalives) == (0, 0)
    w.advance(1)
    w.sweep()                                       # t=25
    assert (c1.keepalives, c2.keepalives) == (1, 0)
    w.advance(10)
    w.sweep()                                       # t=35
    assert (c1.keepalives, c2.keepalives) == (1, 1)
    w.advance(5)
    w.hub.deliver("bob", frames.message("x"))       # t=40: a write
    w.advance(15)
    w.sweep()                                       # t=55: bob idle 15
    assert c1.keepalives == 1
    w.advance(5)
    w.sweep()                                       # t=60: carol idle 25
    assert (c1.keepalives, c2.keepalives) == (1, 2)
    w.advance(5)
    w.sweep()                                       # t=65: bob idle 25
    assert (c1.keepalives, c2.keepalives) == (2, 2)


def test_sweep_yields_per_chunk_and_covers_every_session(w: World) -> None:
    channels = [w.attach(w.login(f"u{i}")) for i in range(5)]
    w.advance(25)
    sweep = w.hub.sweep(2)
    assert next(sweep) == 2
    assert [c.keepalives for c in channels] == [1, 1, 0, 0, 0]
    assert next(sweep) == 2
    assert [c.keepalives for c in channels] == [1, 1, 1, 1, 0]
    assert next(sweep) == 1
    assert [c.keepalives for c in channels] == [1, 1, 1, 1, 1]
    with pytest.raises(StopIteration):
        next(sweep)


def test_sweep_chunks_of_default_size(w: World) -> None:
    for i in range(3):
        w.attach(w.login(f"u{i}"))
    assert w.sweep() == [3]
    assert w.sweep(1) == [1, 1, 1]
    assert World().sweep() == []


def test_sweep_expires_across_chunks() -> None:
    w = World(session_ttl=10)
    sessions = [w.login(f"u{i}") for i in range(7)]
    w.advance(10)
    assert w.sweep(3) == [3, 3, 1]
    assert all(w.hub.session(s.id) is None for s in sessions)
    assert w.hub.stats()["sessions"] == 0


# -- per-user session bound -----------------------------------------------------------

def test_the_17th_login_ends_the_oldest_session_with_bye_replaced(w: World) -> None:
    sessions = [w.login("bob") for _ in range(16)]
    oldest = w.attach(sessions[0])
    second = w.attach(sessions[1])
    c = frames.chat("carol", "m1", "hi")
    w.hub.deliver_session(sessions[0], c)
    newest = w.login("bob")
    assert oldest.sent[-1][1] == frames.bye("replaced")
    assert oldest.released == ["replaced"]
    assert w.hub.session(sessions[0].id) is None
    assert w.listener.spilled == [("bob", c)]
    assert second.released == [] and frames.bye("replaced") not in [f for _, f in second.sent]
    assert all(w.hub.session(s.id) is s for s in sessions[1:] + [newest])
    assert w.hub.stats()["sessions"] == 16
    assert w.hub.is_online("bob")


def test_a_smaller_session_bound() -> None:
    w = World(sessions_per_user=2)
    s1, s2 = w.login("bob"), w.login("bob")
    c1 = w.attach(s1)
    s3 = w.login("bob")
    assert c1.texts()[-1] == "msg bye replaced"
    assert [w.hub.session(s.id) for s in (s1, s2, s3)] == [None, s2, s3]
    s4 = w.login("bob")
    assert [w.hub.session(s.id) for s in (s2, s3, s4)] == [None, s3, s4]
    assert w.hub.stats()["sessions"] == 2
    w.login("carol")                               # the bound is per user
    assert w.hub.stats()["sessions"] == 3


def test_a_bound_of_one_replaces_the_only_session() -> None:
    w = World(sessions_per_user=1)
    old = w.login("bob")
    old_ch = w.attach(old)
    new = w.login("bob")
    assert old_ch.texts()[-1] == "msg bye replaced"
    w.attach(new)
    assert w.hub.is_online("bob")
    alice = w.login("alice")
    delivered, _, _ = w.hub.chat(alice, "bob", "hi", None, "m1")
    assert delivered == "online"
    assert pending_texts(new) == ["msg chat alice m1\nhi"]


# -- membership and address changes ---------------------------------------------------

def test_membership_change_sends_refresh_to_watchers_of_that_group(w: World) -> None:
    friends1 = w.watcher("alice", watch="friends")
    friends2 = w.login("dave", watch="friends")
    team = w.watcher("carol", watch="team")
    w.hub.membership_changed("friends", "bob", True)
    assert friends1.texts() == ["msg refresh friends"]
    assert pending_texts(friends2) == ["msg refresh friends"]
    assert team.sent == []


def test_address_book_change_refreshes_by_owner_name(w: World) -> None:
    book = w.watcher("alice")
    other = w.watcher("carol")
    w.hub.membership_changed("~alice", "bob", True)
    assert book.texts() == ["msg refresh alice"]
    assert other.sent == []


def test_joining_makes_later_presence_reach_the_group(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob")                              # in no group yet
    w.hub.membership_changed("friends", "bob", True)
    assert alice.texts() == ["msg refresh friends"]
    ch = w.attach(s)
    assert alice.texts() == ["msg refresh friends", ONLINE_BOB]
    w.hub.membership_changed("friends", "bob", False)
    ch.release("closed")
    w.advance(100)
    w.sweep()
    assert not w.hub.is_online("bob")
    assert alice.texts() == ["msg refresh friends", ONLINE_BOB, "msg refresh friends"]


def test_joining_an_address_book_reaches_its_owner(w: World) -> None:
    alice = w.watcher("alice")
    s = w.login("bob")
    w.hub.membership_changed("~alice", "bob", True)
    w.attach(s)
    assert alice.texts() == ["msg refresh alice", ONLINE_BOB]


def test_membership_change_of_a_user_not_on_this_node(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    w.hub.membership_changed("friends", "zed", True)
    assert alice.texts() == ["msg refresh friends"]
    assert not w.hub.is_online("zed")


def test_address_update_only_when_the_ip_changes(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"], ip="10.0.0.1", port=5000)
    bob = w.attach(s)
    w.hub.address_changed(s, "10.0.0.1", 5000)      # same: nothing
    w.hub.address_changed(s, "10.0.0.1", 6000)      # port only: nothing
    assert alice.texts() == [ONLINE_BOB]
    assert (s.ip, s.port) == ("10.0.0.1", 6000)
    w.hub.address_changed(s, "10.0.0.2", 6000)
    assert alice.texts() == [ONLINE_BOB, "msg update address bob"]
    assert bob.sent == []                           # not to bob himself
    info = s.info()
    assert (info["ip"], info["port"], info["held"], info["active"], info["groups"]) == (
        "10.0.0.2", 6000, True, "bob", ["friends"])
    assert "id" not in info and s.id not in repr(info)


def test_no_address_update_for_an_offline_user(w: World) -> None:
    alice = w.watcher("alice", watch="friends")
    s = w.login("bob", groups=["friends"], ip="10.0.0.1")
    w.hub.address_changed(s, "10.0.0.9", 1)
    assert alice.sent == []


# -- chat -----------------------------------------------------------------------------

def test_chat_to_an_online_user_reaches_every_session(w: World) -> None:
    alice = w.login("alice")
    b1, b2 = w.login("bob"), w.login("bob")
    ch = w.attach(b1)                               # b2 holds nothing but is bob's too
    result = w.hub.chat(alice, "bob", "hi\nthere", None, "m1")
    assert result == ("online", "m1", True)
    expected = frames.chat("alice", "m1", "hi\nthere")
    assert ch.sent == [(1, expected)]
    assert b2.mailbox.pending() == [(1, expected)]
    assert alice.mailbox.pending() == []


def test_chat_to_an_offline_user_is_stored(w: World) -> None:
    alice = w.login("alice")
    assert w.hub.chat(alice, "bob", "hi", None, "m1") == ("stored", "m1", True)
    bob = w.login("bob")                            # logged in, no heartbeat: offline
    assert w.hub.chat(alice, "bob", "hi", "1", "m2") == ("stored", "m2", True)
    assert bob.mailbox.pending() == []


def test_chat_to_a_lingering_user_is_online_and_waits_in_the_mailbox(w: World) -> None:
    alice = w.login("alice")
    b = w.login("bob")
    w.attach(b).release("closed")
    assert w.hub.chat(alice, "bob", "hi", None, "m1")[0] == "online"
    ch = w.attach(b)
    assert ch.texts() == ["msg chat alice m1\nhi"]


def test_repeated_seq_is_answered_again_and_delivered_once(w: World) -> None:
    alice = w.login("alice")
    b = w.login("bob")
    ch = w.attach(b)
    assert w.hub.chat(alice, "bob", "hi", "7", "m1") == ("online", "m1", True)
    assert w.hub.chat(alice, "bob", "hi", "7", "m2") == ("online", "m1", False)
    ch.release("closed")
    w.advance(100)
    w.sweep()                                       # bob is offline now
    assert w.hub.chat(alice, "bob", "hi", "7", "m3") == ("online", "m1", False)
    assert len(b.mailbox) == 1 and ch.ids() == [1]
    # another seq, or another session with the same seq, is a new message
    assert w.hub.chat(alice, "bob", "hi", "8", "m4") == ("stored", "m4", True)
    alice2 = w.login("alice")
    assert w.hub.chat(alice2, "bob", "hi", "7", "m5") == ("stored", "m5", True)


def test_stored_seq_repeat_is_stored_again_without_delivery(w: World) -> None:
    alice = w.login("alice")
    b = w.login("bob")
    assert w.hub.chat(alice, "bob", "hi", "1", "m1") == ("stored", "m1", True)
    ch = w.attach(b)                                # bob comes online
    assert w.hub.chat(alice, "bob", "hi", "1", "m2") == ("stored", "m1", False)
    assert ch.sent == []


def test_without_seq_every_call_is_delivered(w: World) -> None:
    alice = w.login("alice")
    ch = w.attach(w.login("bob"))
    w.hub.chat(alice, "bob", "hi", None, "m1")
    w.hub.chat(alice, "bob", "hi", None, "m2")
    assert ch.texts() == ["msg chat alice m1\nhi", "msg chat alice m2\nhi"]


def test_forget_seq_allows_a_resend(w: World) -> None:
    alice = w.login("alice")
    ch = w.attach(w.login("bob"))
    w.hub.chat(alice, "bob", "hi", "1", "m1")
    w.hub.forget_seq(alice, "1")
    assert w.hub.chat(alice, "bob", "hi", "1", "m2") == ("online", "m2", True)
    assert ch.texts() == ["msg chat alice m1\nhi", "msg chat alice m2\nhi"]
    w.hub.forget_seq(alice, "unknown")              # harmless
    w.hub.forget_seq(alice, None)
    w.hub.forget_seq(w.login("carol"), "1")


def test_seq_memory_is_bounded(w: World) -> None:
    alice = w.login("alice")
    ch = w.attach(w.login("bob"))
    for i in range(SEQ_MEMORY + 1):
        assert w.hub.chat(alice, "bob", "x", str(i), f"m{i}")[2]
    assert len(alice.seqs) == SEQ_MEMORY
    # the oldest seq is forgotten, the next oldest and the newest are not
    assert w.hub.chat(alice, "bob", "x", "1", "again1") == ("online", "m1", False)
    assert w.hub.chat(alice, "bob", "x", str(SEQ_MEMORY), "again") == (
        "online", f"m{SEQ_MEMORY}", False)
    assert w.hub.chat(alice, "bob", "x", "0", "new0") == ("online", "new0", True)
    assert len(ch.sent) == SEQ_MEMORY + 2


def test_chat_order_is_kept(w: World) -> None:
    alice = w.login("alice")
    ch = w.attach(w.login("bob"))
    for i in range(20):
        w.hub.chat(alice, "bob", f"n{i}", str(i), f"m{i}")
    assert [f.payload for _, f in ch.sent] == [f"n{i}" for i in range(20)]
    assert ch.ids() == list(range(1, 21))


# -- deliver and stats ------------------------------------------------------------------

def test_deliver_reaches_every_session_and_counts_them(w: World) -> None:
    b1, b2 = w.login("bob"), w.login("bob")
    f = frames.init_chat("alice")
    assert w.hub.deliver("bob", f) == 2
    assert w.hub.deliver("nobody", f) == 0
    assert b1.mailbox.pending() == [(1, f)] and b2.mailbox.pending() == [(1, f)]


def test_stats(w: World) -> None:
    assert w.hub.stats() == {"sessions": 0, "held": 0, "online_users": 0}
    a = w.login("alice")
    b1, b2 = w.login("bob"), w.login("bob")
    w.login("carol")
    assert w.hub.stats() == {"sessions": 4, "held": 0, "online_users": 0}
    w.attach(a)
    c1, c2 = w.attach(b1), w.attach(b2)
    assert w.hub.stats() == {"sessions": 4, "held": 3, "online_users": 2}
    c1.release("closed")
    assert w.hub.stats() == {"sessions": 4, "held": 2, "online_users": 2}
    w.hub.end(b2, "logout")
    assert c2.released == ["logout"]
    assert w.hub.stats() == {"sessions": 3, "held": 1, "online_users": 2}  # bob lingers (b1)
    w.advance(8)
    w.sweep()
    assert w.hub.stats() == {"sessions": 3, "held": 1, "online_users": 1}


def test_replacing_the_only_held_session_does_not_flap_presence() -> None:
    w = World(sessions_per_user=1, linger=8)
    watcher = w.watcher("alice", watch="bob")
    old = w.login("bob")
    w.attach(old)
    assert watcher.texts() == [ONLINE_BOB]
    new = w.login("bob")                       # replaces the held session
    assert w.hub.is_online("bob")              # its heartbeat lingers
    w.attach(new)
    w.advance(20)
    w.sweep()
    assert watcher.texts() == [ONLINE_BOB]     # no offline/online flap


def test_a_replaced_session_that_is_not_followed_goes_offline_after_linger() -> None:
    w = World(sessions_per_user=1, linger=8)
    watcher = w.watcher("alice", watch="bob")
    w.attach(w.login("bob"))
    w.login("bob")                             # never attaches
    w.advance(7)
    w.sweep()
    assert watcher.texts() == [ONLINE_BOB]
    w.advance(1)
    w.sweep()
    assert watcher.texts() == [ONLINE_BOB, OFFLINE_BOB]


# -- abuse limits (issue 11): a session that never reads, guests ---------------

def test_a_session_that_never_reads_is_released_and_its_chat_kept() -> None:
    w = World(mailbox=4, overflow_release=7)
    bob = w.login("bob")                            # never holds, never acks
    reader = w.login("bob")
    rch = w.attach(reader)
    chats = [frames.chat("eve", f"m{i}", str(i)) for i in range(10)]
    for c in chats[:9]:
        w.hub.deliver("bob", c)
        w.hub.ack(reader, reader.mailbox.last_id)   # this one reads
    # bob's session spilled 6 chats so far (one of them for a msg refresh)
    assert w.hub.session(bob.id) is bob
    w.hub.deliver("bob", chats[9])
    assert w.hub.session(bob.id) is None            # released: msg bye overflow
    assert w.hub.session(reader.id) is reader       # the reading session stays
    assert rch.released == []
    spilled = [f for _, f in w.listener.spilled]
    # every chat that left bob's session unread was kept, each once
    assert {f.args[1] for f in spilled} == {c.args[1] for c in chats}
    assert len(spilled) == len({f.args[1] for f in spilled})


def test_the_release_says_bye_overflow_to_a_held_heartbeat() -> None:
    w = World(mailbox=2, overflow_release=3)
    s = w.login("bob")
    ch = w.attach(s)                                # holds, but never acknowledges
    for i in range(5):
        w.hub.deliver("bob", frames.chat("eve", f"m{i}", str(i)))
    assert w.hub.session(s.id) is None
    assert ch.texts()[-1] == "msg bye overflow"
    assert ch.released == ["overflow"]


def test_an_ack_resets_the_overflow_count() -> None:
    w = World(mailbox=2, overflow_release=3)
    s = w.login("bob")
    for i in range(40):
        w.hub.deliver("bob", frames.chat("eve", f"m{i}", str(i)))
        if i % 2:
            w.hub.ack(s, s.mailbox.last_id - 1)     # reads, a little behind
    assert w.hub.session(s.id) is s


def test_a_release_during_a_presence_fan_out_reaches_everyone_else() -> None:
    w = World(mailbox=1, overflow_release=1)
    watchers = [w.login(f"w{i}", watch="bob") for i in range(5)]
    for s in watchers:
        w.hub.deliver_session(s, frames.chat("eve", f"x-{s.id}", "unread"))
    bob = w.login("bob")
    w.attach(bob)                                   # fans out to every watcher
    for s in watchers:
        assert w.hub.session(s.id) is None          # each lost its chat: released
    assert len(w.listener.spilled) == 5
    assert w.hub.stats()["sessions"] == 1


def test_spills_on_delivery_names_the_chat_a_full_mailbox_would_lose() -> None:
    w = World(mailbox=2)
    a, b = w.login("bob"), w.login("bob")
    assert w.hub.spills_on_delivery("bob") == []
    assert w.hub.spills_on_delivery("nobody") == []
    c1 = frames.chat("eve", "m1", "one")
    w.hub.deliver("bob", c1)
    assert w.hub.spills_on_delivery("bob") == []    # room left
    w.hub.deliver("bob", frames.message("eve"))
    assert w.hub.spills_on_delivery("bob") == [c1]  # held by both, counted once
    w.hub.ack(a, 1)
    assert w.hub.spills_on_delivery("bob") == [c1]  # b still holds it
    w.hub.ack(b, 1)
    assert w.hub.spills_on_delivery("bob") == []


def test_guest_sessions_are_counted_per_address() -> None:
    w = World()
    g1 = w.login("guest.1", guest=True, ip="10.0.0.1")
    w.login("guest.2", guest=True, ip="10.0.0.1")
    w.login("guest.3", guest=True, ip="10.0.0.2")
    w.login("alice", ip="10.0.0.1")
    assert w.hub.guests_by_ip == {"10.0.0.1": 2, "10.0.0.2": 1}
    assert len(w.hub.guest_sessions) == 3
    w.hub.end(g1, "logout")
    w.hub.end(g1, "logout")                         # twice: counted once
    assert w.hub.guests_by_ip == {"10.0.0.1": 1, "10.0.0.2": 1}
    for s in list(w.hub.guest_sessions):
        w.hub.end(s, "logout")
    assert w.hub.guests_by_ip == {} and w.hub.guest_sessions == {}


def test_a_guest_expires_after_guest_ttl_a_user_after_session_ttl() -> None:
    w = World(session_ttl=3600, guest_ttl=300)
    guest = w.login("guest.1", guest=True)
    user = w.login("alice")
    held = w.login("guest.2", guest=True)
    w.attach(held)
    w.advance(299)
    w.sweep()
    assert w.hub.session(guest.id) is guest
    w.advance(1)
    w.sweep()
    assert w.hub.session(guest.id) is None          # idle guest: gone after 5 min
    assert w.hub.session(user.id) is user           # a user keeps the hour
    assert w.hub.session(held.id) is held           # a guest holding a heartbeat stays
    assert HubConfig().guest_ttl == 300.0
    assert HubConfig(mailbox=7).overflow_release == 14


def test_an_idle_session_in_a_busy_group_is_not_released_for_presence() -> None:
    w = World(mailbox=3, overflow_release=2)
    idle = w.login("alice", watch="friends")        # no heartbeat, never reads
    for i in range(100):
        w.hub.deliver_session(idle, frames.update("online", f"u{i}"))
    assert w.hub.session(idle.id) is idle           # presence leaving costs nothing
    w.hub.deliver_session(idle, frames.chat("bob", "m1", "one"))
    w.hub.deliver_session(idle, frames.chat("bob", "m2", "two"))
    for i in range(3):
        w.hub.deliver_session(idle, frames.update("offline", f"u{i}"))
    assert w.hub.session(idle.id) is None           # two chats spilled: released
    assert [f.args[1] for _, f in w.listener.spilled] == ["m1", "m2"]


# -- the queries front-ends use instead of the tables (IHub) -----------------

def test_knows_last_seen_and_sessions_of_follow_the_life_of_a_user() -> None:
    w = World(poll=4.0)  # linger 8 s
    assert not w.hub.knows("bob") and w.hub.last_seen("bob") is None
    assert w.hub.sessions_of("bob") == []
    first = w.login("bob")
    second = w.login("bob")
    assert w.hub.knows("bob") and not w.hub.is_online("bob")
    assert w.hub.sessions_of("bob") == [first, second]
    w.hub.sessions_of("bob").clear()  # a copy: the hub's own list is untouched
    assert w.hub.sessions_of("bob") == [first, second]
    w.advance(5)
    w.attach(first)
    assert w.hub.last_seen("bob") == 5 and w.hub.is_online("bob")
    w.hub.end(first, "logout")
    w.hub.end(second, "logout")
    # logged out: offline at once, forgotten; the directory tells from now on
    assert not w.hub.knows("bob") and w.hub.last_seen("bob") is None
    assert w.listener.presence == [("bob", True, 5), ("bob", False, 5)]


def test_a_lingering_user_is_still_known_with_their_last_change() -> None:
    w = World(poll=4.0)
    s = w.login("bob")
    w.attach(s).release("gone")  # the heartbeat ended: presence lingers
    w.advance(3)
    assert w.hub.knows("bob") and w.hub.is_online("bob") and w.hub.last_seen("bob") == 0


def test_guest_counts_per_box_and_per_address() -> None:
    w = World()
    assert w.hub.guest_count() == 0 and w.hub.guests_from("10.0.0.1") == 0
    one = w.login("guest-1", ip="10.0.0.1", guest=True)
    w.login("guest-2", ip="10.0.0.1", guest=True)
    w.login("guest-3", ip="10.0.0.2", guest=True)
    w.login("carol", ip="10.0.0.1")
    assert w.hub.guest_count() == 3
    assert w.hub.guests_from("10.0.0.1") == 2 and w.hub.guests_from("10.0.0.2") == 1
    w.hub.end(one, "logout")
    assert w.hub.guest_count() == 2 and w.hub.guests_from("10.0.0.1") == 1


# -- the name service's seams (issue 13) -----------------------------------------

def test_address_of_is_the_newest_session_holding_a_heartbeat(w: World) -> None:
    assert w.hub.address_of("bob") is None
    pc = w.login("bob", ip="192.0.2.1")
    assert w.hub.address_of("bob") == "192.0.2.1"     # none holds: the newest
    w.attach(pc)
    w.advance(1)
    phone = w.login("bob", ip="2001:db8::7")
    assert w.hub.address_of("bob") == "192.0.2.1"     # the phone holds nothing yet
    w.attach(phone)
    assert w.hub.address_of("bob") == "2001:db8::7"
    w.hub.end(phone, "logout")
    assert w.hub.address_of("bob") == "192.0.2.1"
    w.hub.end(pc, "logout")
    assert w.hub.address_of("bob") is None


def test_login_local_is_a_session_like_any_other(w: World) -> None:
    alice = w.watcher("alice", watch="~alice", groups=["~alice"])
    source = w.hub.login_local("bob", "bob-source", "198.51.100.4", groups=["~alice"])
    assert w.hub.session("bob-source") is source
    w.attach(source)
    assert alice.texts()[-1] == ONLINE_BOB
    assert w.hub.address_of("bob") == "198.51.100.4"


def test_state_observers_hear_every_change_of_the_combined_state(w) -> None:
    heard: List[Tuple[str, Tuple[str, str]]] = []
    w.hub.observe_states(lambda name, state: heard.append((name, state)))
    bob = w.login("bob")
    w.attach(bob)                                 # nobody watches bob: still heard
    w.hub.set_state(bob, "away", "lunch")
    w.hub.set_state(bob, "away", "lunch")         # no change: not heard again
    second = w.login("bob")
    w.attach(second)                              # available wins
    w.hub.end(second, "logout")
    w.hub.end(bob, "logout")
    assert heard == [("bob", ("available", "")), ("bob", ("away", "lunch")),
                     ("bob", ("available", "")), ("bob", ("away", "lunch")),
                     ("bob", ("offline", ""))]
