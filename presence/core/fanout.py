"""Fan-out: delivering one presence change to its many watchers.

A change of a user in a group of M members is M mailbox entries and M
writes.  Done at once, a change in an 18,000-member group held the reactor
for half a second and every other user of the box waited (docs/benchmarks.md,
"Large groups").  :class:`FanOut` does that work in *slices* instead:

* A change becomes a **job**: the frame (built and encoded once, shared by
  every watcher) and the list of the sessions to reach.  Jobs run in the
  order they were made, and each watcher gets its frames in that order.
* Work is sliced **by time**: at most ``budget`` seconds per reactor turn
  (measured with the ``timer`` given, so tests drive it with a clock), then
  the rest waits for the next turn (``clock.callLater(0)``), and the
  requests of everyone else (chat, acks, heartbeats, SIP) are served in
  between.  The first slice runs at once, inside the call that made the
  change, so a small group hears of it exactly as before.
* A frame enters a watcher's mailbox only when its slice reaches that
  watcher, and is written then: mailbox order is wire order, and a frame is
  either in the mailbox (and on its way) or not.  Direct frames (chat, acks,
  SIP, bye) never enter a job: they go to the mailbox at once.
* **Coalescing.**  A newer change of the same user replaces the job still in
  flight: watchers it had not reached yet get only the final state.  With a
  window (``HubConfig.presence_batch`` > 0), a user's changes after the first
  within the window wait for the window's end and go out as the final state
  only (nothing at all when that is what the watchers were last told).
  Membership refreshes (``msg refresh``) of a group are coalesced the same
  way.
* **Bundles.**  Sessions whose heartbeat asked for ``bundle=1`` are kept
  apart by the group table; a change of a member of the key they watch is
  noted in that key's pending bundle (member -> final state), and once per
  window one ``msg updates`` frame, built once for the key, goes to all of
  them (a job like any other).  A session never hears of its own user in a
  bundle (it never did in ``msg update``).  While a key's bundle is still
  being delivered the next one keeps collecting: under a storm bundles grow
  instead of multiplying, and the next one of a key is sent no sooner than
  the last one took to deliver (after it ended): a key's bundles take at
  most half of the box's time, whatever the storm.
* **Presence on demand.**  Keys in ``hub.on_demand`` push nothing: their
  watchers read presence when they open the page or the list.

Pure: no I/O, no Twisted; time comes from the hub's clock and ``timer``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

from presence.core import frames
from presence.core.frames import Frame

#: the update states that bundle (``msg update address`` does not: it is not
#: a state, and is rare)
STATES = frozenset(("online", "offline", "away", "busy"))
#: seconds of fan-out work per reactor turn at most
SLICE = 0.002
#: watchers served between two looks at the timer
CHECK_EVERY = 32


class _Job:
    """One frame on its way to a list of sessions."""

    __slots__ = ("frame", "sessions", "pos", "pending", "own", "started")

    def __init__(self, frame: Frame, sessions: List[Any],
                 pending: Optional[Dict[str, str]] = None, started: float = 0.0) -> None:
        self.started = started
        self.frame = frame
        self.sessions = sessions
        self.pos = 0
        #: a bundle's member -> state (to leave a watcher's own user out)
        self.pending = pending
        #: per own user, the bundle without that user's line
        self.own: Optional[Dict[str, Optional[Frame]]] = None

    def frame_for(self, session: Any) -> Optional[Frame]:
        pending = self.pending
        if pending is None:
            return self.frame
        name = session.user.name
        if name not in pending:
            return self.frame
        own = self.own
        if own is None:
            own = self.own = {}
        if name not in own:
            rest = [(u, s) for u, s in pending.items() if u != name]
            own[name] = frames.updates(rest) if rest else None
        return own[name]


class FanOut:
    """The fan-out work of one hub (see the module's docstring)."""

    def __init__(self, hub: Any, timer: Optional[Callable[[], float]] = None,
                 budget: float = SLICE) -> None:
        self.hub = hub
        self.clock = hub.clock
        self.timer = timer or hub.clock.seconds
        self.budget = budget
        #: the jobs in flight, oldest first, by what they coalesce on:
        #: ("u", user) a state change, ("a", user) an address change,
        #: ("r", key) a refresh, ("b", key) a bundle
        self.jobs: "OrderedDict[Hashable, _Job]" = OrderedDict()
        #: fan-out time spent in this reactor turn
        self.used = 0.0
        self.call: Any = None
        #: key -> member -> final state, for the bundled watchers of key
        self.bundles: Dict[str, Dict[str, str]] = {}
        #: key -> when its last bundle was delivered, and how long that took
        self.bundled_at: Dict[str, Tuple[float, float]] = {}
        #: (due time, n, job key) heap: bundles and held changes to send
        self.due: List[Tuple[float, int, Hashable]] = []
        self._n = 0
        self.wake: Any = None
        self.running = False
        #: job key -> (when its last change went out, that frame), for the window
        self.sent: "OrderedDict[Hashable, Tuple[float, Frame]]" = OrderedDict()
        #: job key -> (frame, how to find its audience), waiting for its window
        self.held: Dict[Hashable, Tuple[Frame, Callable[[], List[Any]]]] = {}
        #: figures: frames delivered by jobs, slices run, changes coalesced
        self.delivered = 0
        self.slices = 0
        self.coalesced = 0

    @property
    def batch(self) -> float:
        return self.hub.config.presence_batch

    # -- what the hub calls ---------------------------------------------------

    def change(self, user: Any, frame: Frame) -> None:
        """``user``'s presence changed (``frame``: its ``msg update``)."""
        groups = self.hub.groups
        keys = (user.name, *user.groups)
        on_demand = self.hub.on_demand
        if on_demand:
            keys = tuple(k for k in keys if k not in on_demand)
            if not keys:
                return
        state = frame.args[0] if frame.kind == "update" and frame.args else None
        if state in STATES:
            for key in keys:
                if key in groups.bundled:
                    self._bundle(key, user.name, state)
            self.submit(("u", user.name), frame,
                        lambda: groups.audience(user, keys, bundled=False), True)
        else:
            self.submit(("a", user.name), frame, lambda: groups.audience(user, keys), False)

    def refresh(self, key: str, frame: Frame) -> None:
        """The membership of ``key`` changed: ``msg refresh`` to its watchers."""
        if key in self.hub.on_demand:
            return
        groups = self.hub.groups
        self.submit(("r", key), frame, lambda: list(groups.watching(key)), True)

    def submit(self, key: Hashable, frame: Frame, audience: Callable[[], List[Any]],
               windowed: bool) -> None:
        """Send ``frame`` to ``audience()``; a ``windowed`` change coming
        within the window after the last one of ``key`` waits for the
        window's end (and is replaced by any later one meanwhile)."""
        batch = self.batch
        if windowed and batch > 0:
            now = self.clock.seconds()
            self._forget_sent(now - batch)
            last = self.sent.get(key)
            if last is not None and now - last[0] < batch:
                if key in self.held:
                    self.coalesced += 1
                else:
                    self._at(last[0] + batch, ("h", key))
                self.held[key] = (frame, audience)
                return
            self.sent[key] = (now, frame)
            self.sent.move_to_end(key)
        self.start(key, frame, audience())

    def start(self, key: Hashable, frame: Frame, sessions: List[Any],
              pending: Optional[Dict[str, str]] = None) -> None:
        """A job: ``frame`` to ``sessions``.  One still in flight under the
        same key is replaced (its watchers not reached get this one only)."""
        if self.jobs.pop(key, None) is not None:
            self.coalesced += 1
        if sessions:
            self.jobs[key] = _Job(frame, sessions, pending, self.timer())
            self.run()

    def busy(self) -> bool:
        return bool(self.jobs)

    # -- slices ---------------------------------------------------------------

    def run(self) -> None:
        """Work on the jobs until this turn's budget is spent."""
        if self.running:
            return  # a change made while a slice writes: that slice takes it
        if self.used >= self.budget:
            self._next_turn()
            return
        hub = self.hub
        live = hub.users.sessions
        push = hub._push
        jobs = self.jobs
        timer = self.timer
        start = timer()
        limit = self.budget - self.used
        self.slices += 1
        self.running = True
        try:
            while jobs:
                key = next(iter(jobs))
                job = jobs[key]
                sessions = job.sessions
                n = len(sessions)
                i = job.pos
                frame = job.frame
                plain = job.pending is None
                while i < n:
                    end = i + CHECK_EVERY
                    for session in sessions[i:end]:
                        if live.get(session.id) is session:
                            f = frame if plain else job.frame_for(session)
                            if f is not None:
                                push(session, f, True)
                                self.delivered += 1
                    i = job.pos = end
                    if jobs.get(key) is not job:
                        break  # replaced by a newer change meanwhile
                    if timer() - start >= limit:
                        if i >= n:
                            self._done(key, job)
                        return
                if jobs.get(key) is job:
                    self._done(key, job)
        finally:
            self.running = False
            self.used += timer() - start
            if jobs or self.used > 0:
                self._next_turn()
            hub._release_overflowed()

    def _done(self, key: Hashable, job: _Job) -> None:
        del self.jobs[key]
        if key[0] == "b":
            # when (the clock) and how long it took (the timer: the work)
            self.bundled_at[key[1]] = (self.clock.seconds(), self.timer() - job.started)

    def _next_turn(self) -> None:
        if self.call is None:
            self.call = self.clock.callLater(0, self._turn)

    def _turn(self) -> None:
        self.call = None
        self.used = 0.0
        if self.jobs:
            self.run()

    # -- windows --------------------------------------------------------------

    def _bundle(self, key: str, member: str, state: str) -> None:
        pending = self.bundles.get(key)
        if pending is None:
            pending = self.bundles[key] = {}
            self._at(self.clock.seconds() + self.batch, ("b", key))
        elif member in pending:
            self.coalesced += 1
            del pending[member]  # listed in the order of the final changes
        pending[member] = state

    def _at(self, when: float, what: Hashable) -> None:
        self._n += 1
        heapq.heappush(self.due, (when, self._n, what))
        self._arm()

    def _arm(self) -> None:
        if not self.due:
            return
        when = self.due[0][0]
        wake = self.wake
        if wake is not None:
            if wake.getTime() <= when:
                return
            wake.cancel()
        self.wake = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._wake)

    def _wake(self) -> None:
        self.wake = None
        now = self.clock.seconds()
        due = self.due
        while due and due[0][0] <= now:
            _, _, (kind, key) = heapq.heappop(due)
            if kind == "b":
                self._send_bundle(key, now)
            else:
                self._send_held(key, now)
        self._arm()

    def _send_bundle(self, key: str, now: float) -> None:
        if ("b", key) in self.jobs:
            # the last bundle of this key is still on its way: keep collecting
            self._at(now + max(self.batch, self.budget), ("b", key))
            return
        last = self.bundled_at.pop(key, None)
        if last is not None:
            # no sooner than the last one took, after it ended
            wait = last[0] + last[1] - now
            if wait > 0:
                self.bundled_at[key] = last
                self._at(now + wait, ("b", key))
                return
        pending = self.bundles.pop(key, None)
        if not pending:
            return
        sessions = list(self.hub.groups.bundled.get(key, ()))
        self.start(("b", key), frames.updates(pending.items()), sessions, pending)

    def _send_held(self, key: Hashable, now: float) -> None:
        held = self.held.pop(key, None)
        if held is None:
            return
        frame, audience = held
        last = self.sent.get(key)
        self.sent[key] = (now, frame)
        self.sent.move_to_end(key)
        if key[0] == "u" and last is not None and last[1] == frame:
            # back where the watchers were last told: nothing to say
            self.coalesced += 1
            return
        self.start(key, frame, audience())

    def _forget_sent(self, before: float) -> None:
        sent = self.sent
        while sent:
            key = next(iter(sent))
            if sent[key][0] >= before or key in self.held:
                break
            del sent[key]

    def stats(self) -> dict:
        return {"fanout_jobs": len(self.jobs), "fanout_delivered": self.delivered,
                "fanout_slices": self.slices, "fanout_coalesced": self.coalesced,
                "bundles_pending": len(self.bundles)}
