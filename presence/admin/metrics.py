"""``GET /metrics``: the server's figures as Prometheus metric families.

:class:`PresenceCollector` is a ``prometheus_client`` custom collector: at
each scrape it reads the plain counters the core and the front-ends keep
(:class:`presence.core.counters.Counters`, the hub's tables, the SIP proxy's
and the wireless gateway's figures, the cluster's Redis timings) and yields
metric families; ``prometheus_client`` writes the exposition format.  No
metric object sits on a hot path, so a server pays for metrics at scrape
time only (plus the integer additions it makes anyway).

Every label has a bounded set of values (see ``presence.core.counters``):
no user name, session ID or address is ever a label.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from presence.core.counters import (
    RELEASE_REASONS, REFUSAL_KINDS, ROUTE_FAMILIES, WIRELESS_OUTCOMES, Counters, Histogram,
)

__all__ = ["PresenceCollector", "Sources", "GCTimer", "CONTENT_TYPE_LATEST", "registry_for"]


class Sources:
    """What the collector reads; the wiring (``presence.tap``) fills it."""

    def __init__(self, hub: Any, counters: Counters, sweep: Any = None,
                 sip: Any = None, wireless: Any = None, cluster: Any = None,
                 ready: Optional[Callable[[], bool]] = None) -> None:
        self.hub = hub
        self.counters = counters
        self.sweep = sweep
        self.sip = sip
        self.wireless = wireless
        self.cluster = cluster
        self.ready = ready


def _histogram(name: str, doc: str, source: Histogram, labels: Optional[dict] = None,
               family: Optional[HistogramMetricFamily] = None) -> HistogramMetricFamily:
    if family is None:
        family = HistogramMetricFamily(name, doc, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), buckets=source.cumulative(),
                      sum_value=source.sum)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, table: dict,
              known: Iterable[str] = ()) -> CounterMetricFamily:
    """A counter by one label: every known value (at 0 until counted, so
    that rates exist from the start) and whatever else was counted."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted(set(known) | set(table)):
        family.add_metric([key], table.get(key, 0))
    return family


class PresenceCollector:
    """Yields every ``presence_*`` family at each scrape."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def describe(self) -> List[Metric]:
        return []  # collected at scrape time only: no registration-time call

    def collect(self) -> Iterator[Metric]:
        src = self.sources
        hub, c = src.hub, src.counters
        figures = hub.stats()
        box = hub.config.host_box
        yield GaugeMetricFamily("presence_held_heartbeats",
                                "Heartbeat requests held open on this box", value=figures["held"])
        yield GaugeMetricFamily("presence_sessions", "Sessions on this box",
                                value=figures["sessions"])
        yield GaugeMetricFamily("presence_online_users",
                                "Users online by the presence rule, on this box",
                                value=figures["online_users"])
        yield GaugeMetricFamily("presence_guests", "Guest sessions on this box",
                                value=hub.guest_count())
        if src.ready is not None:
            yield GaugeMetricFamily("presence_ready", "1 when /readyz answers 200",
                                    value=1 if src.ready() else 0)
        yield _counter("presence_logins", "Password logins", c.logins)
        yield _counter("presence_resumes", "Sessions resumed with a resume token", c.resumes)
        yield _counter("presence_guest_logins", "Guest sessions opened", c.guests)
        chats = CounterMetricFamily("presence_chats", "Chats accepted, by how they were"
                                    " delivered", labels=["delivered"])
        chats.add_metric(["online"], c.chats_online)
        chats.add_metric(["stored"], c.chats_stored)
        yield chats
        yield _counter("presence_frames_written", "Frames written to heartbeats",
                       c.frames_written)
        yield _counter("presence_acks", "Requests that acknowledged frames", c.acks)
        yield _counter("presence_keepalives", "Keep-alive bytes written", c.keepalives)
        yield _labelled("presence_heartbeat_releases", "Held heartbeats ended, by reason"
                        " (lost: the client went)", "reason", c.releases, RELEASE_REASONS)
        yield _counter("presence_mailbox_overflows",
                       "Frames pushed out of a full session mailbox", hub.overflows)
        yield _labelled("presence_refusals", "Requests refused by an abuse limit (429),"
                        " by kind", "kind", c.refusals, REFUSAL_KINDS)
        errors = CounterMetricFamily("presence_http_errors", "4xx and 5xx answers of the"
                                     " public HTTP port, by route family",
                                     labels=["family", "status"])
        known = {(f, s) for f in ROUTE_FAMILIES.values() for s in ("4xx", "5xx")}
        for key in sorted(known | set(c.http_errors)):
            errors.add_metric(list(key), c.http_errors.get(key, 0))
        yield errors
        yield _labelled("presence_admin_actions", "Actions taken on the operator console",
                        "action", c.admin_actions)
        yield _histogram("presence_chat_latency_seconds", "From a chat's acceptance to its"
                         " write to the recipient's heartbeat (local recipients)",
                         c.chat_latency)
        yield _histogram("presence_frames_per_write", "Frames written to a heartbeat in one"
                         " write", c.frames_per_write)
        yield _histogram("presence_sweep_chunk_seconds", "Duration of one sweep chunk",
                         c.sweep_chunk)
        yield _histogram("presence_gc_pause_seconds", "Garbage-collector pauses", c.gc_pause)
        if src.sweep is not None:
            yield _counter("presence_sweeps", "Completed sweep passes", src.sweep.sweeps)
        if src.sip is not None:
            yield from self._sip(src.sip.stats())
        if src.wireless is not None:
            yield GaugeMetricFamily("presence_wireless_pending",
                                    "Texts to handsets waiting for a delivery report",
                                    value=len(src.wireless.pending))
            yield _labelled("presence_wireless_texts", "Texts to handsets, by outcome",
                            "outcome", c.wireless, WIRELESS_OUTCOMES)
        if src.cluster is not None:
            yield GaugeMetricFamily("presence_cluster_boxes", "Live boxes of the cluster",
                                    value=figures.get("boxes", 0))
            yield GaugeMetricFamily("presence_cluster_redis_up",
                                    "1 while the last Redis round trip succeeded",
                                    value=1 if src.cluster.redis_up else 0)
            yield _histogram("presence_redis_rtt_seconds", "Round trip of a Redis command",
                             c.redis_rtt, {"box": box})
            yield _histogram("presence_pubsub_lag_seconds", "From an event's publication on"
                             " another box to its arrival here", hub.pubsub_lag, {"box": box})

    @staticmethod
    def _sip(figures: dict) -> Iterator[Metric]:
        txns = GaugeMetricFamily("presence_sip_transactions", "SIP transactions in"
                                 " progress", labels=["side"])
        txns.add_metric(["server"], figures.get("server_transactions", 0))
        txns.add_metric(["client"], figures.get("client_transactions", 0))
        yield txns
        yield GaugeMetricFamily("presence_sip_calls", "SIP dialogs (calls) in progress",
                                value=figures.get("dialogs", 0))
        yield GaugeMetricFamily("presence_sip_subscriptions", "SIP presence subscriptions"
                                " held", value=figures.get("subscriptions", 0))
        yield GaugeMetricFamily("presence_sip_bindings", "SIP registrations (bindings) held"
                                " by the registrar", value=figures.get("bindings", 0))
        events = CounterMetricFamily("presence_sip_events", "SIP requests and refusals of"
                                     " the proxy, by event", labels=["event"])
        for key in sorted(figures):
            if key not in ("server_transactions", "client_transactions", "dialogs",
                           "subscriptions", "bindings", "registered_users"):
                events.add_metric([key[:40]], figures[key])
        yield events


def registry_for(sources: Sources) -> CollectorRegistry:
    """A registry of its own (never the global one): the presence families
    and the process's (CPU, memory, file descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PresenceCollector(sources))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class GCTimer:
    """Times the garbage collector's pauses into a histogram
    (``gc.callbacks``), while started."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._began = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began:
            self.histogram.observe(time.perf_counter() - self._began)
            self._began = 0.0

    def start(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
