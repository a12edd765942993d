"""The sweep: every ``--poll`` seconds one pass over all sessions
(:meth:`presence.core.hub.Hub.sweep`), a chunk per reactor turn so that no
single turn stalls for long.  Records how long the longest chunk took."""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from presence.core.hub import Hub


class SweepService(Service):
    log = Logger()

    def __init__(self, hub: Hub, clock, interval: float) -> None:
        self.hub = hub
        self.clock = clock
        self.interval = interval
        self.sweeps = 0
        #: presence.core.counters.Counters for the chunk durations, if any
        self.counters: Optional[Any] = None
        #: when (the clock's seconds) the last chunk ran: a stalled sweep shows
        self.last_chunk: Optional[float] = None
        self.max_chunk = 0.0  # seconds, wall clock
        self._pass: Optional[Iterator[int]] = None
        self._loop: Optional[LoopingCall] = None
        self._next = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.begin)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._pass = None
        return super().stopService()

    def begin(self) -> None:
        if self._pass is not None:
            return  # the previous pass is still going
        try:
            self._pass = self.hub.sweep()
        except Exception:
            self.log.failure("sweep failed to start")
            return
        self.step()

    def step(self) -> None:
        self._next = None
        started = time.perf_counter()
        try:
            next(self._pass)
        except StopIteration:
            self._pass = None
            self.sweeps += 1
        except Exception:
            self._pass = None
            self.log.failure("sweep failed")
        took = time.perf_counter() - started
        self.max_chunk = max(self.max_chunk, took)
        if self.counters is not None:
            self.counters.sweep_chunk.observe(took)
            self.last_chunk = self.clock.seconds()
        if self._pass is not None:
            self._next = self.clock.callLater(0, self.step)

    def stats(self) -> dict:
        return {"sweeps": self.sweeps, "sweep_max_ms": round(self.max_chunk * 1000, 3)}
