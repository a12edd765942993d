"""Unit tests of the sliced, coalesced and bundled fan-out
(L{presence.core.fanout}) on a L{twisted.internet.task.Clock}.

The hub measures its slices with the ``timer`` it is given; here that is a
L{WorkClock} that every write to a channel moves on by ``COST`` seconds, so a
slice of the default budget (2 ms) reaches ``3 ms / COST`` watchers, and the
tests see exactly what a watcher would have been written after each reactor
turn (``clock.advance(0)`` runs the next slice).
"""

from __future__ import annotations

import itertools
from typing import List, Sequence

from twisted.internet.task import Clock

from test_core_hub import FakeChannel
from presence.core import frames
from presence.core.fanout import CHECK_EVERY, SLICE
from presence.core.hub import Hub, HubConfig
from presence.core.mailbox import Entry
from presence.core.tables import Session

COST = 10e-6  # seconds of work per frame written
PER_SLICE = round(SLICE / COST)


class WorkClock:
    """Time as the fan-out's slices see it: it moves only with work done."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Channel(FakeChannel):
    """A held heartbeat whose writes cost ``COST`` seconds of work."""

    def __init__(self, hub: Hub, session: Session, work: WorkClock, bundle: bool) -> None:
        super().__init__(hub, session)
        self.work = work
        self.bundle = bundle

    def send(self, entries: Sequence[Entry]) -> None:
        self.work.now += COST * len(entries)
        super().send(entries)


class World:
    def __init__(self, **config) -> None:
        self.clock = Clock()
        self.work = WorkClock()
        self.hub = Hub(self.clock, HubConfig(**config), timer=self.work)
        self._ids = itertools.count(1)

    def session(self, name: str, groups: Sequence[str] = (), watch=None) -> Session:
        s = self.hub.login(name, f"{name}-{next(self._ids)}", groups=groups)
        if watch is not None:
            self.hub.watch(s, watch)
        return s

    def hold(self, session: Session, bundle: bool = False, ack: int = 0) -> Channel:
        channel = Channel(self.hub, session, self.work, bundle)
        self.hub.attach(session, channel, ack)
        return channel

    def watchers(self, count: int, group: str = "big", bundle: bool = False) -> List[Channel]:
        # watching the group, not members of it (their own logins tell no one)
        return [self.hold(self.session(f"w{i}", (), group), bundle) for i in range(count)]

    def turns(self) -> int:
        """Run reactor turns until the fan-out is idle; how many slices it
        took (a Clock runs the ``callLater(0)`` of each next slice at once)."""
        slices = self.hub.fanout.slices
        self.clock.advance(0)
        assert not self.hub.fanout.busy()
        return self.hub.fanout.slices - slices


def heard(channels: Sequence[Channel], text: str) -> int:
    return sum(1 for c in channels if text in c.texts())


# -- sliced by time -------------------------------------------------------------------

def test_a_change_seen_by_many_is_delivered_over_turns_of_a_few_ms():
    w = World()
    watchers = w.watchers(1000)
    bob = w.session("bob", ["big"])
    w.hold(bob)  # bob comes online: 1,000 watchers to tell
    assert PER_SLICE <= heard(watchers, "msg update online bob") < PER_SLICE + CHECK_EVERY
    turns = w.turns()
    assert turns >= 1000 // PER_SLICE - 1
    # nothing lost, nothing twice
    assert all(c.texts().count("msg update online bob") == 1 for c in watchers)


def test_other_sessions_are_served_between_slices():
    w = World()
    watchers = w.watchers(1000)
    carol = w.session("carol")
    dave = w.hold(w.session("dave"))
    w.hold(w.session("bob", ["big"]))
    assert w.hub.fanout.busy()
    # while the fan-out is under way, a chat is written at once
    w.hub.chat(carol, "dave", "hi", None, "m1")
    assert dave.texts() == ["msg chat carol m1\nhi"]
    assert heard(watchers, "msg update online bob") < 1000
    w.turns()
    assert heard(watchers, "msg update online bob") == 1000


def test_a_slice_reaches_no_more_than_its_budget_even_for_many_changes_in_one_turn():
    w = World()
    watchers = w.watchers(500)
    for name in ("bob", "carol", "dave"):
        w.hold(w.session(name, ["big"]))
    written = sum(len(c.sent) for c in watchers)
    assert PER_SLICE <= written < PER_SLICE + CHECK_EVERY  # the three share the turn
    w.turns()
    for c in watchers:
        assert c.texts() == ["msg update online bob", "msg update online carol",
                             "msg update online dave"]


def test_each_watcher_keeps_mailbox_order_with_direct_frames_in_between():
    w = World()
    watchers = w.watchers(600)
    bob = w.session("bob", ["big"])
    w.hold(bob)
    late = next(c for c in watchers if not c.sent)  # not reached by the first slice
    w.hub.chat(bob, late.session.user.name, "first", None, "m1")
    w.turns()
    assert late.texts() == ["msg chat bob m1\nfirst", "msg update online bob"]
    for c in watchers:
        # ids on the wire are the mailbox's, in order, none skipped
        assert c.ids() == [i for i, _ in c.session.mailbox.pending()]
        assert c.ids() == sorted(c.ids())


def test_watchers_that_leave_midway_are_skipped_and_one_that_reconnects_gets_it():
    w = World()
    watchers = w.watchers(600)
    w.hold(w.session("bob", ["big"]))
    gone, away = [c for c in watchers if not c.sent][:2]
    w.hub.end(gone.session, "logout")
    away.release("dead")  # its heartbeat ended; the session lives
    w.turns()
    assert "msg update online bob" not in gone.texts()
    assert "msg update online bob" not in away.texts()
    again = w.hold(away.session)
    assert again.texts() == ["msg update online bob"]


def test_a_newer_change_of_the_same_user_replaces_the_one_in_flight():
    w = World()
    watchers = w.watchers(1000)
    bob = w.session("bob", ["big"])
    w.hold(bob)
    reached = [c for c in watchers if c.sent]
    w.hub.end(bob, "logout")  # before the first change reached everyone
    w.turns()
    for c in watchers:
        if c in reached:
            assert c.texts() == ["msg update online bob", "msg update offline bob"]
        else:
            assert c.texts() == ["msg update offline bob"]  # the final state only


# -- the window ------------------------------------------------------------------------

def test_changes_within_the_window_after_the_first_go_out_as_the_final_state():
    w = World(presence_batch=0.1)
    watchers = w.watchers(3)
    bob = w.session("bob", ["big"])
    first = w.hold(bob)
    assert heard(watchers, "msg update online bob") == 3  # the first at once
    first.release("dead")
    w.hub.end(bob, "logout")  # offline...
    bob = w.session("bob", ["big"])
    w.hold(bob)  # ...online...
    w.hub.end(bob, "logout")  # ...offline again, all within the window
    assert [c.texts() for c in watchers] == [["msg update online bob"]] * 3
    w.clock.advance(0.1)
    assert [c.texts() for c in watchers] == [
        ["msg update online bob", "msg update offline bob"]] * 3


def test_a_toggle_back_within_the_window_sends_nothing_more():
    w = World(presence_batch=0.1)
    watchers = w.watchers(2)
    bob = w.session("bob", ["big"])
    w.hold(bob)
    w.hub.end(bob, "logout")
    w.hold(w.session("bob", ["big"]))
    w.clock.advance(0.1)
    assert [c.texts() for c in watchers] == [["msg update online bob"]] * 2
    w.clock.advance(1)
    w.hub.end(w.hub.sessions_of("bob")[0], "logout")  # after the window: at once
    assert [c.texts()[-1] for c in watchers] == ["msg update offline bob"] * 2


def test_without_a_window_every_change_goes_out_at_once():
    w = World()  # the core's default: presence_batch 0
    watchers = w.watchers(2)
    for _ in range(3):
        bob = w.session("bob", ["big"])
        w.hold(bob)
        w.hub.end(bob, "logout")
    assert [c.texts() for c in watchers] == [
        ["msg update online bob", "msg update offline bob"] * 3] * 2


def test_refreshes_of_a_group_within_the_window_are_one():
    w = World(presence_batch=0.1)
    watchers = w.watchers(2)
    for i in range(5):
        w.hub.membership_changed("big", f"new{i}", True)
    assert [c.texts() for c in watchers] == [["msg refresh big"]] * 2
    w.clock.advance(0.1)
    assert [c.texts() for c in watchers] == [["msg refresh big"] * 2] * 2


# -- bundles ------------------------------------------------------------------------------

def test_bundled_watchers_get_one_msg_updates_per_window_with_final_states():
    w = World(presence_batch=0.1)
    bundled = w.watchers(3, bundle=True)
    plain = w.hold(w.session("old", (), "big"))
    bob = w.session("bob", ["big"])
    w.hold(bob)
    w.hold(w.session("carol", ["big"]))
    w.hub.end(bob, "logout")
    assert all(c.sent == [] for c in bundled)  # nothing before the window ends
    assert plain.texts() == ["msg update online bob", "msg update online carol"]
    w.clock.advance(0.1)
    for c in bundled:
        assert c.texts() == ["msg updates\nonline carol\noffline bob"]
    # the unbundled client is unchanged, but for the coalesced toggle
    assert plain.texts() == ["msg update online bob", "msg update online carol",
                             "msg update offline bob"]
    assert len({id(c.sent[0][1]) for c in bundled}) == 1  # one frame shared by all


def test_a_bundle_leaves_out_the_watchers_own_user():
    w = World(presence_batch=0.1)
    alice = w.session("alice", ["big"], "big")
    a = w.hold(alice, bundle=True)
    b = w.hold(w.session("bob", ["big"], "big"), bundle=True)
    w.clock.advance(0.1)
    assert a.texts() == ["msg updates\nonline bob"]
    assert b.texts() == ["msg updates\nonline alice"]
    w.hold(w.session("carol", ["big"]))
    w.clock.advance(0.1)
    assert a.texts()[-1] == b.texts()[-1] == "msg updates\nonline carol"


def test_a_bundle_is_built_once_however_many_watchers_and_sliced_too():
    w = World(presence_batch=0.1)
    bundled = w.watchers(1000, bundle=True)
    for name in ("bob", "carol"):
        w.hold(w.session(name, ["big"]))
    slices = w.hub.fanout.slices
    w.clock.advance(0.1)  # (a Clock runs the slices' callLater(0) at once too)
    assert w.hub.fanout.slices - slices >= 1000 // (PER_SLICE + CHECK_EVERY)
    assert heard(bundled, "msg updates\nonline bob\nonline carol") == 1000
    for c in bundled:
        assert len(c.sent) == 1


def test_the_next_bundle_waits_while_the_last_is_on_its_way():
    w = World(presence_batch=0.001)
    bundled = w.watchers(1000, bundle=True)
    w.hold(w.session("bob", ["big"]))
    w.clock.advance(0.001)  # the first bundle starts: a slice of it
    w.hold(w.session("carol", ["big"]))
    w.hold(w.session("dave", ["big"]))
    w.clock.advance(0.001)  # the next window ends while the first is on its way
    for _ in range(20):
        w.clock.advance(0.001)
    for c in bundled:
        assert c.texts() == ["msg updates\nonline bob", "msg updates\nonline carol\nonline dave"]


def test_address_changes_reach_bundled_watchers_as_msg_update():
    w = World(presence_batch=0.1)
    b = w.watchers(1, bundle=True)[0]
    bob = w.session("bob", ["big"])
    w.hold(bob)
    w.clock.advance(0.1)
    w.hub.address_changed(bob, "10.0.0.9", 5000)
    assert b.texts() == ["msg updates\nonline bob", "msg update address bob"]


def test_a_session_that_stops_bundling_hears_each_change_again():
    w = World(presence_batch=0.1)
    s = w.session("w", ["big"], "big")
    w.hold(s, bundle=True)
    c = w.hold(s)  # the next heartbeat asks for no bundle
    w.hold(w.session("bob", ["big"]))
    assert c.texts() == ["msg update online bob"]
    w.clock.advance(0.1)
    assert c.texts() == ["msg update online bob"]


# -- presence on demand -------------------------------------------------------------------

def test_a_group_with_presence_on_demand_pushes_nothing():
    w = World(presence_batch=0.1)
    plain = w.watchers(2)
    bundled = w.watchers(2, group="big", bundle=True)
    w.hub.set_on_demand("big", True)
    w.hold(w.session("bob", ["big"]))
    w.hub.membership_changed("big", "carol", True)
    w.clock.advance(0.1)
    assert all(c.sent == [] for c in plain + bundled)
    assert w.hub.is_online("bob")  # what a page or list reads
    w.hub.set_on_demand("big", False)
    w.hold(w.session("dave", ["big"]))
    assert heard(plain, "msg update online dave") == 2


def test_a_frame_is_shared_not_copied_per_watcher():
    w = World()
    watchers = w.watchers(50)
    w.hold(w.session("bob", ["big"]))
    assert len({id(c.sent[0][1]) for c in watchers}) == 1
    assert frames.parse(watchers[0].sent[0][1].text).args == ("online", "bob")


def test_a_keys_next_bundle_waits_as_long_as_the_last_took_to_deliver():
    w = World(presence_batch=0.001)
    bundled = w.watchers(2000, bundle=True)  # a bundle: 20 ms of work at 10 us a write
    w.hold(w.session("bob", ["big"]))
    w.clock.advance(0.001)
    took = w.work.now  # the work of the first bundle, which ended at 0.001
    assert took > 0.019
    w.hold(w.session("carol", ["big"]))
    w.clock.advance(0.001)  # the window ends: too soon after the last bundle
    assert all(c.texts() == ["msg updates\nonline bob"] for c in bundled)
    w.clock.advance(took)  # as long after its end as it took (and a little)
    assert all(c.texts() == ["msg updates\nonline bob", "msg updates\nonline carol"]
               for c in bundled)
