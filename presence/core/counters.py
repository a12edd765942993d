"""What the server counts for its operators: plain integers, no I/O.

The core and the front-ends add to one :class:`Counters` per server (a few
integer additions on the hot paths); the operator endpoint
(``presence.admin``) reads them when Prometheus scrapes ``/metrics`` and
turns them into metric families there, so that nothing here imports
``prometheus_client`` and a server without ``--admin`` pays only the
additions.

Labels are bounded by construction: every labelled counter is a dict whose
keys come from a fixed set chosen by the code (a release reason, a refusal
kind, a route family, a status class), never from what a client sends; an
unknown key is counted under ``other``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Deque, Dict, Iterable, List, Optional, Sequence, Tuple

#: seconds; chat accept-to-write latency and sweep chunks (0.1 ms .. 2.5 s)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: seconds; garbage-collector pauses and Redis round trips
PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0)
#: frames written to one heartbeat in one write
FRAME_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

#: why a held heartbeat ended (``msg bye`` reasons and the channel's own)
RELEASE_REASONS = frozenset({
    "answered", "timeout", "dead", "lost", "replaced", "logout", "expired", "overflow",
    "password", "shutdown", "admin", "locked",
})
#: what a 429 refused (``Counters.refused``)
REFUSAL_KINDS = frozenset({
    "chat", "message", "registration", "login_address", "login_account", "resume",
    "password", "guest_address", "guest_rate", "guest_total", "changes",
    "group_password", "hashing", "box_full", "admin_token", "wireless",
})
#: what became of a text to a handset (sent: the operator took it; then its
#: delivery report: delivered or failed)
WIRELESS_OUTCOMES = frozenset({"sent", "refused", "unreachable", "delivered", "failed"})
#: first path segment -> route family of the public HTTP port
ROUTE_FAMILIES = {
    "jchat": "heartbeat", "api": "api", "chat": "chat", "ack": "ack",
    "initchat": "chat", "sip": "sip", "wml": "wml", "nic": "nic",
    "static": "static", "": "pages",
}
#: recent abuse refusals kept for the console
RECENT_REFUSALS = 100
#: chats accepted and not yet written whose latency is measured, at most
PENDING_CHATS = 4096


class Histogram:
    """Cumulative-bucket counts, their sum and count, as Prometheus wants
    them; :meth:`observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        #: per bucket (not cumulative), the last one is ``+Inf``
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> List[Tuple[str, int]]:
        """``[(upper bound, count so far)]`` ending with ``("+Inf", count)``."""
        out, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


def _bump(table: Dict[str, int], key: str, allowed: Iterable[str], by: int = 1) -> None:
    if key not in allowed:
        key = "other"
    table[key] = table.get(key, 0) + by


class Counters:
    """Every figure the operator endpoint exposes that is counted (not read
    from a table at scrape time).  One per server; tests make their own."""

    #: whether chat latency is measured, and the (perf-counter) clock it is
    #: measured with: set by the operator endpoint, off without it
    timing = False

    @staticmethod
    def clock() -> float:
        return 0.0

    def __init__(self) -> None:
        self.logins = 0
        self.resumes = 0
        self.guests = 0
        #: chats accepted, and by how they were delivered
        self.chats = 0
        self.chats_online = 0
        self.chats_stored = 0
        self.frames_written = 0
        self.acks = 0
        self.keepalives = 0
        self.releases: Dict[str, int] = {}
        self.refusals: Dict[str, int] = {}
        #: (route family, "4xx" | "5xx") -> responses
        self.http_errors: Dict[Tuple[str, str], int] = {}
        self.wireless: Dict[str, int] = {}
        self.admin_actions: Dict[str, int] = {}
        self.chat_latency = Histogram(LATENCY_BUCKETS)
        self.frames_per_write = Histogram(FRAME_BUCKETS)
        self.sweep_chunk = Histogram(LATENCY_BUCKETS)
        self.gc_pause = Histogram(PAUSE_BUCKETS)
        self.redis_rtt = Histogram(PAUSE_BUCKETS)
        #: the newest abuse refusals: (time, kind, client address)
        self.recent: Deque[Tuple[float, str, str]] = deque(maxlen=RECENT_REFUSALS)
        #: msgid -> when its chat was accepted (perf counter), until written
        self._pending: Dict[str, float] = {}

    # -- counted where it happens ---------------------------------------------

    def release(self, reason: str) -> None:
        _bump(self.releases, reason, RELEASE_REASONS)

    def refused(self, kind: str, address: str = "", now: float = 0.0) -> None:
        """A request refused by an abuse limit (429), for the counter by kind
        and for the console's list of recent refusals."""
        _bump(self.refusals, kind, REFUSAL_KINDS)
        self.recent.append((now, kind if kind in REFUSAL_KINDS else "other", address[:64]))

    def http_error(self, segment: str, status: int) -> None:
        family = ROUTE_FAMILIES.get(segment, "pages")
        key = (family, "5xx" if status >= 500 else "4xx")
        self.http_errors[key] = self.http_errors.get(key, 0) + 1

    def count(self, table: str, key: str, allowed: Iterable[str]) -> None:
        _bump(getattr(self, table), key, allowed)

    # -- chat accept-to-write latency -------------------------------------------

    def chat_accepting(self, msgid: str) -> None:
        """Chat ``msgid`` is about to be handed to the hub: its latency is
        measured from now to its first write to a heartbeat."""
        if len(self._pending) >= PENDING_CHATS:
            # chats never written here (held by no heartbeat of this box):
            # start again rather than grow
            self._pending.clear()
        self._pending[msgid] = self.clock()

    def chat_accepted(self, msgid: str, delivered: str) -> None:
        """The hub took chat ``msgid``: ``online``, ``stored`` or ``repeat``
        (a repeated seq, not counted again)."""
        if delivered == "online":
            self.chats += 1
            self.chats_online += 1
            return
        self._pending.pop(msgid, None)
        if delivered == "stored":
            self.chats += 1
            self.chats_stored += 1

    @property
    def measuring(self) -> bool:
        """Whether a write should look for chats to time (cheap to test)."""
        return bool(self._pending)

    def chat_written(self, msgid: str, at: float) -> None:
        accepted = self._pending.pop(msgid, None)
        if accepted is not None:
            self.chat_latency.observe(max(0.0, at - accepted))

