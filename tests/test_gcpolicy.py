"""Tier-1 unit tests of L{presence.gcpolicy.GCPolicy} on a
L{twisted.internet.task.Clock} with a fake collector: the process's own
garbage collector is never frozen or collected here."""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from presence.gcpolicy import FREEZE_AT, GCPolicy


class FakeGC:
    """The few calls of the ``gc`` module the policy makes, on counts."""

    def __init__(self, old: int = 0) -> None:
        self.old = old          # objects tracked, not frozen
        self.frozen = 0
        self.garbage = 0        # unreachable objects the next collect finds
        self.frozen_garbage = 0  # cyclic garbage among the frozen objects
        self.calls: List[str] = []

    def get_objects(self, generation=None):
        assert generation is None
        self.calls.append("get_objects")
        return [None] * self.old

    def collect(self) -> int:
        self.calls.append("collect")
        found, self.garbage = self.garbage, 0
        self.old -= found
        return found

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen += self.old
        self.old = 0

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.old += self.frozen
        self.frozen = 0
        self.garbage += self.frozen_garbage
        self.frozen_garbage = 0

    def get_freeze_count(self) -> int:
        return self.frozen


class Ticks:
    """A timer that advances ``step`` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def make(old: int = 0, **kw):
    clock, fake = Clock(), FakeGC(old)
    policy = GCPolicy(clock, gc_module=fake, **kw)
    return policy, clock, fake


def test_defaults():
    policy = GCPolicy(Clock())
    assert policy.freeze_at == FREEZE_AT == 20_000
    assert policy.thaw_every == 0
    assert policy.check_every == 1.0
    assert policy.enabled


def test_first_check_at_start_freezes_the_program():
    policy, clock, fake = make(old=60_000, freeze_at=20_000)
    with capturedLogs() as events:
        policy.startService()
    assert fake.calls == ["get_objects", "collect", "freeze"]  # collected first
    assert fake.frozen == 60_000 and fake.old == 0
    assert policy.freezes == 1
    text = [formatEvent(e) for e in events]
    assert any("gc: froze" in t and "60000 objects frozen" in t for t in text), text
    policy.stopService()


def test_freezes_only_once_the_old_generation_reaches_the_threshold():
    policy, clock, fake = make(old=100, freeze_at=1000)
    policy.startService()
    assert "freeze" not in fake.calls
    fake.old = 999
    clock.advance(1)
    assert "freeze" not in fake.calls
    fake.old = 1000
    clock.advance(0.5)
    assert "freeze" not in fake.calls  # checks once a second
    clock.advance(0.5)
    assert fake.calls[-2:] == ["collect", "freeze"]
    assert fake.frozen == 1000 and policy.freezes == 1
    # the frozen objects are not counted again: growth from here on is
    clock.advance(1)
    assert policy.freezes == 1
    fake.old = 1500
    clock.advance(1)
    assert policy.freezes == 2 and fake.frozen == 2500
    policy.stopService()


def test_garbage_pending_at_a_freeze_is_collected_not_frozen():
    policy, clock, fake = make(old=30, freeze_at=20)
    fake.garbage = 10
    policy.startService()
    assert fake.frozen == 20


def test_off_when_freeze_at_is_zero():
    policy, clock, fake = make(old=10**6, freeze_at=0, thaw_every=60)
    policy.startService()
    clock.advance(3600)
    assert fake.calls == []
    assert not policy.enabled
    assert policy.stats() == {"gc_policy": "off"}
    policy.stopService()


def test_no_thaw_by_default():
    policy, clock, fake = make(old=50, freeze_at=10)
    policy.startService()
    clock.advance(24 * 3600)
    assert "unfreeze" not in fake.calls
    policy.stopService()


def test_thaw_reclaims_frozen_cyclic_garbage_and_freezes_again():
    policy, clock, fake = make(old=50, freeze_at=10, thaw_every=3600)
    policy.startService()
    assert fake.frozen == 50
    fake.frozen_garbage = 7
    clock.advance(3599)
    assert "unfreeze" not in fake.calls
    del fake.calls[:]
    with capturedLogs() as events:
        clock.advance(1)
    assert fake.calls[:3] == ["unfreeze", "collect", "freeze"]
    assert fake.frozen == 43 and fake.old == 0
    assert policy.thaws == 1 and policy.thaw_found == 7
    text = [formatEvent(e) for e in events]
    assert any("gc: thawed" in t and "7 unreachable" in t for t in text), text
    policy.stopService()


def test_pauses_are_measured():
    clock, fake = Clock(), FakeGC(50)
    policy = GCPolicy(clock, freeze_at=10, thaw_every=100, gc_module=fake, timer=Ticks(0.004))
    policy.startService()
    assert policy.max_pause == 0.004
    stats = policy.stats()
    assert stats == {"gc_frozen": 50, "gc_freezes": 1, "gc_thaws": 0, "gc_thaw_found": None,
                     "gc_pause_max_ms": 4.0}
    policy.timer = Ticks(0.25)
    clock.advance(100)
    assert policy.stats()["gc_pause_max_ms"] == 250.0
    assert policy.stats()["gc_thaws"] == 1
    policy.stopService()


def test_stop_ends_the_checks_and_thaws():
    policy, clock, fake = make(old=0, freeze_at=10, thaw_every=5)
    policy.startService()
    policy.stopService()
    fake.old = 100
    del fake.calls[:]
    clock.advance(3600)
    assert fake.calls == []


def test_a_failing_check_is_logged_and_checks_go_on():
    policy, clock, fake = make(old=0, freeze_at=10)
    policy.startService()

    def broken():
        raise RuntimeError("boom")

    fake.get_objects = broken
    with capturedLogs() as events:
        clock.advance(1)
    assert any("check failed" in formatEvent(e) for e in events)
    del fake.get_objects
    fake.old = 10
    clock.advance(1)
    assert policy.freezes == 1
    policy.stopService()


def test_with_a_reactor_it_begins_once_the_reactor_runs():
    reactor, fake = MemoryReactorClock(), FakeGC(100)
    policy = GCPolicy(reactor, freeze_at=10, gc_module=fake)
    policy.startService()
    reactor.advance(5)
    assert fake.calls == []  # twistd starts services before the reactor runs
    assert len(reactor.whenRunningHooks) == 1
    hook, args, kw = reactor.whenRunningHooks[0]
    hook(*args, **kw)
    assert fake.calls == ["get_objects", "collect", "freeze"]
    policy.stopService()


def test_stopped_before_the_reactor_runs_it_never_begins():
    reactor, fake = MemoryReactorClock(), FakeGC(100)
    policy = GCPolicy(reactor, freeze_at=10, gc_module=fake)
    policy.startService()
    policy.stopService()
    hook, args, kw = reactor.whenRunningHooks[0]
    hook(*args, **kw)
    reactor.advance(5)
    assert fake.calls == []
