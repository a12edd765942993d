"""Keep full garbage collections short: freeze the long-lived objects.

A full (generation 2) collection of CPython scans every object the collector
tracks, and it stops the reactor while it runs: about 0.6 µs per object on
the server's objects, so some 200 ms with 19,000 logged-in users each holding
a heartbeat (~15 objects each, plus ~60,000 of the program itself), and it
recurs whenever the old generation grew by a quarter.

This policy checks every second how many objects the collector tracks
outside the frozen set.  When there are ``freeze_at`` or more, it collects
once (a full collection, over those objects only, so it is short) and calls
``gc.freeze()``: everything alive is moved to the permanent generation, which
no later collection scans.  Objects frozen that die are still freed by
reference counting as usual.  So a full collection never scans more than
about ``freeze_at`` objects (plus what arrived since the last check), however
many sessions there are, and the first check, at start, freezes the program
itself.

The trade-off: a frozen object that later becomes part of *cyclic* garbage
(unreachable, but kept alive by a reference cycle) is never reclaimed, since
no collection looks at it.  The server's own objects were made not to form
such cycles (a session, its heartbeat request and connection, a chat or an
acknowledgement, a login or a logout, a SIP call leave none; see
``tests/test_gc_cycles.py``), and the collection just before each freeze
reclaims the garbage that is pending then; only an object that is in
flight at that moment and ends up in a cycle later (a request served through
Klein, about 40 objects) can leak.  With ``thaw_every`` the policy also,
every ``thaw_every`` seconds, unfreezes everything, runs one full collection
over all of it and freezes again: it reclaims any such leak and logs how much
it found, at the price of one long pause (the 200 ms above).  It is off by
default, since nothing was measured to leak and the pause is what this policy
exists to avoid.
"""

from __future__ import annotations

import gc as _gc
import time
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: default of ``--gc-freeze-at``: a full collection of this many of the
#: server's objects takes about 12-15 ms
FREEZE_AT = 20_000
#: seconds between two counts of the unfrozen objects
CHECK_EVERY = 1.0


class GCPolicy(Service):
    """Freeze long-lived objects once ``freeze_at`` of them are unfrozen.

    ``gc_module`` and ``timer`` are for tests (a fake collector, a fake
    clock); ``clock`` schedules the checks.
    """

    log = Logger()

    def __init__(self, clock: Any, freeze_at: int = FREEZE_AT, thaw_every: float = 0.0,
                 check_every: float = CHECK_EVERY, gc_module: Any = _gc,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.freeze_at = freeze_at
        self.thaw_every = thaw_every
        self.check_every = check_every
        self.gc = gc_module
        self.timer = timer
        self.freezes = 0
        self.thaws = 0
        #: the longest collection this policy ran (freeze or thaw), seconds
        self.max_pause = 0.0
        #: unreachable objects the last thaw found among the frozen ones
        self.thaw_found: Optional[int] = None
        self._check: Optional[LoopingCall] = None
        self._thaw: Optional[LoopingCall] = None

    @property
    def enabled(self) -> bool:
        return self.freeze_at > 0

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        # with a reactor: once it runs (twistd starts services just before);
        # a bare Clock (tests) has no callWhenRunning: at once
        when_running = getattr(self.clock, "callWhenRunning", None)
        if when_running is not None:
            when_running(self._begin)
        else:
            self._begin()

    def _begin(self) -> None:
        if not self.running:
            return
        self._check = LoopingCall(self.check)
        self._check.clock = self.clock
        self._check.start(self.check_every, now=True)
        if self.thaw_every > 0:
            self._thaw = LoopingCall(self.thaw)
            self._thaw.clock = self.clock
            self._thaw.start(self.thaw_every, now=False)

    def stopService(self):
        for loop in (self._check, self._thaw):
            if loop is not None and loop.running:
                loop.stop()
        self._check = self._thaw = None
        return super().stopService()

    def unfrozen(self) -> int:
        """Objects the collector tracks outside the frozen set (what a full
        collection would scan)."""
        return len(self.gc.get_objects())

    def check(self) -> None:
        try:
            if self.unfrozen() >= self.freeze_at:
                self.freeze()
        except Exception:
            self.log.failure("garbage collector policy: check failed")

    def freeze(self) -> None:
        """Collect the unfrozen objects once, then freeze what is alive."""
        started = self.timer()
        found = self.gc.collect()
        self.gc.freeze()
        pause = self.timer() - started
        self.freezes += 1
        self.max_pause = max(self.max_pause, pause)
        self.log.info("gc: froze, {frozen} objects frozen in all; {found} unreachable"
                      " collected first; {ms:.1f} ms",
                      frozen=self.gc.get_freeze_count(), found=found, ms=pause * 1000)

    def thaw(self) -> None:
        """Unfreeze everything, collect it all once, freeze again."""
        try:
            started = self.timer()
            self.gc.unfreeze()
            found = self.gc.collect()
            self.gc.freeze()
            pause = self.timer() - started
        except Exception:
            self.log.failure("garbage collector policy: thaw failed")
            return
        self.thaws += 1
        self.thaw_found = found
        self.max_pause = max(self.max_pause, pause)
        self.log.info("gc: thawed and collected everything: {found} unreachable objects"
                      " (cyclic garbage among frozen objects); {frozen} frozen again;"
                      " {ms:.1f} ms", found=found, frozen=self.gc.get_freeze_count(),
                      ms=pause * 1000)

    def stats(self) -> dict:
        if not self.enabled:
            return {"gc_policy": "off"}
        return {
            "gc_frozen": self.gc.get_freeze_count(),
            "gc_freezes": self.freezes,
            "gc_thaws": self.thaws,
            "gc_thaw_found": self.thaw_found,
            "gc_pause_max_ms": round(self.max_pause * 1000, 3),
        }
