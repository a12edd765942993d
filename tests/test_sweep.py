"""Tier-1 unit tests of L{presence.sweep.SweepService} on a
L{twisted.internet.task.Clock}: the pass every ``interval`` seconds, one
chunk of sessions per reactor turn, the count of finished sweeps, and a
failing pass that is logged without stopping the next one.

A plain ``Clock.advance()`` keeps running calls that become due while it
runs, so a chain of ``callLater(0, ...)`` would all run inside one
``advance``.  The real reactor runs such calls on its next iteration;
L{TurnClock} models that: each ``advance`` is one reactor turn.
"""

from __future__ import annotations

from typing import Iterator, List

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from presence.core.hub import Hub, HubConfig, IChannel
from presence.sweep import SweepService


class TurnClock(Clock):
    """A Clock whose ``advance`` is one reactor turn: calls that fall due
    while it runs wait for the next ``advance``."""

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        self._sortCalls()
        due = [c for c in self.calls if c.getTime() <= self.seconds()]
        for call in due:
            if call not in self.calls:  # cancelled by an earlier call
                continue
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


@implementer(IChannel)
class FakeChannel:
    def __init__(self, hub: Hub, session) -> None:
        self.hub, self.session = hub, session
        self.sent: list = []
        self.keepalives = 0
        self.released: List[str] = []

    def send(self, entries) -> None:
        self.sent.extend(entries)

    def keepalive(self) -> None:
        self.keepalives += 1

    def release(self, reason: str) -> None:
        self.released.append(reason)
        self.hub.detach(self.session, self)


def held_sessions(hub: Hub, n: int) -> List[FakeChannel]:
    channels = []
    for i in range(n):
        session = hub.login(f"u{i}", f"sid{i}")
        channel = FakeChannel(hub, session)
        hub.attach(session, channel)
        channels.append(channel)
    return channels


class CountingHub:
    """A stand-in hub whose passes have ``chunks`` chunks."""

    def __init__(self, chunks: int = 1) -> None:
        self.chunks = chunks
        self.passes = 0
        self.steps = 0

    def sweep(self) -> Iterator[int]:
        self.passes += 1
        for _ in range(self.chunks):
            self.steps += 1
            yield 1


@pytest.fixture
def events():
    captured: list = []
    observer = captured.append
    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


def failures(events: list, kind: type) -> list:
    return [e for e in events
            if e.get("log_failure") is not None and e["log_failure"].check(kind)]


def test_a_pass_every_interval() -> None:
    clock = Clock()
    hub = CountingHub()
    service = SweepService(hub, clock, 4)
    service.startService()
    clock.advance(3.9)
    assert hub.passes == 0 and service.sweeps == 0
    clock.advance(0.1)
    assert hub.passes == 1 and service.sweeps == 1
    clock.advance(4)
    clock.advance(4)
    assert hub.passes == 3 and service.sweeps == 3
    service.stopService()
    clock.advance(40)
    assert hub.passes == 3
    assert clock.getDelayedCalls() == []


def test_drives_the_real_hub_linger_and_keepalives() -> None:
    clock = Clock()
    hub = Hub(clock, HubConfig(poll=4, keepalive=8))     # linger 8
    watcher_session = hub.login("alice", "a1")
    hub.watch(watcher_session, "friends")
    watcher = FakeChannel(hub, watcher_session)
    hub.attach(watcher_session, watcher)
    bob = hub.login("bob", "b1", groups=["friends"])
    bob_channel = FakeChannel(hub, bob)
    hub.attach(bob, bob_channel)
    bob_channel.release("closed")                         # t=0
    service = SweepService(hub, clock, 4)
    service.startService()
    clock.advance(4)
    assert hub.is_online("bob") and watcher.keepalives == 0
    clock.advance(4)                                      # t=8: linger over, keep-alive due
    assert not hub.is_online("bob")
    assert [f.text for _, f in watcher.sent] == [
        "msg update online bob", "msg update offline bob"]
    assert watcher.keepalives == 0                        # the offline frame was a write
    clock.advance(4)
    assert watcher.keepalives == 0
    clock.advance(4)                                      # t=16: idle for 8
    assert watcher.keepalives == 1
    assert service.sweeps == 4
    service.stopService()


def test_one_chunk_per_reactor_turn() -> None:
    clock = TurnClock()
    hub = Hub(clock, HubConfig(keepalive=25, poll=30))
    hub.sweep = lambda: Hub.sweep(hub, 2)                  # chunks of two sessions
    channels = held_sessions(hub, 5)
    service = SweepService(hub, clock, 30)
    service.startService()
    clock.advance(30)
    assert [c.keepalives for c in channels] == [1, 1, 0, 0, 0]
    clock.advance(0)
    assert [c.keepalives for c in channels] == [1, 1, 1, 1, 0]
    assert service.sweeps == 0
    clock.advance(0)
    assert [c.keepalives for c in channels] == [1, 1, 1, 1, 1]
    clock.advance(0)
    clock.advance(0)
    assert service.sweeps == 1
    # nothing is left waiting but the next pass
    assert [c.getTime() for c in clock.getDelayedCalls()] == [60]
    clock.advance(30)
    clock.advance(0)
    clock.advance(0)
    clock.advance(0)
    assert [c.keepalives for c in channels] == [2, 2, 2, 2, 2]
    assert service.sweeps == 2
    service.stopService()


def test_a_whole_pass_covers_every_session() -> None:
    clock = Clock()
    hub = Hub(clock, HubConfig(keepalive=4, poll=4))
    hub.sweep = lambda: Hub.sweep(hub, 3)
    channels = held_sessions(hub, 10)
    service = SweepService(hub, clock, 4)
    service.startService()
    clock.advance(4)          # a plain Clock runs the callLater(0) chain at once
    assert [c.keepalives for c in channels] == [1] * 10
    assert service.sweeps == 1
    service.stopService()


def test_no_new_pass_while_one_is_going() -> None:
    clock = TurnClock()
    hub = CountingHub(chunks=10)
    service = SweepService(hub, clock, 4)
    service.startService()
    clock.advance(4)
    assert (hub.passes, hub.steps) == (1, 1)
    clock.advance(4)          # the next chunk and the next tick fall due together
    assert (hub.passes, hub.steps) == (1, 2)
    for _ in range(9):
        clock.advance(0)
    assert (hub.passes, hub.steps, service.sweeps) == (1, 10, 1)
    clock.advance(4)
    assert hub.passes == 2
    service.stopService()


def test_stop_in_the_middle_of_a_pass() -> None:
    clock = TurnClock()
    hub = CountingHub(chunks=5)
    service = SweepService(hub, clock, 4)
    service.startService()
    clock.advance(4)
    clock.advance(0)
    assert hub.steps == 2
    service.stopService()
    assert clock.getDelayedCalls() == []
    for _ in range(5):
        clock.advance(4)
    assert hub.steps == 2 and service.sweeps == 0


def test_a_failing_sweep_is_logged_and_the_next_one_runs(events: list) -> None:
    class FlakyHub:
        passes = 0

        def sweep(self) -> Iterator[int]:
            self.passes += 1
            if self.passes == 1:
                raise RuntimeError("boom")
            yield 1

    clock = Clock()
    hub = FlakyHub()
    service = SweepService(hub, clock, 4)
    service.startService()
    clock.advance(4)
    assert hub.passes == 1 and service.sweeps == 0
    [failed] = failures(events, RuntimeError)
    assert failed["log_level"] == LogLevel.critical
    assert "sweep failed" in formatEvent(failed)
    clock.advance(4)
    assert hub.passes == 2 and service.sweeps == 1
    clock.advance(4)
    assert hub.passes == 3 and service.sweeps == 2
    service.stopService()


def test_a_pass_failing_after_its_first_chunk() -> None:
    class HalfHub:
        passes = 0
        steps = 0

        def sweep(self) -> Iterator[int]:
            self.passes += 1
            self.steps += 1
            yield 1
            if self.passes == 1:
                raise ValueError("second chunk")
            self.steps += 1
            yield 1

    clock = TurnClock()
    hub = HalfHub()
    service = SweepService(hub, clock, 4)
    service.startService()
    clock.advance(4)
    clock.advance(0)
    clock.advance(0)
    assert (hub.passes, service.sweeps) == (1, 0)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [8]
    clock.advance(4)
    clock.advance(0)
    clock.advance(0)
    assert (hub.passes, hub.steps, service.sweeps) == (2, 3, 1)
    service.stopService()


def test_stats() -> None:
    clock = Clock()
    service = SweepService(CountingHub(chunks=3), clock, 4)
    assert service.stats() == {"sweeps": 0, "sweep_max_ms": 0.0}
    service.startService()
    clock.advance(4)
    clock.advance(4)
    stats = service.stats()
    assert stats["sweeps"] == 2
    assert isinstance(stats["sweep_max_ms"], float) and stats["sweep_max_ms"] >= 0
    service.stopService()
