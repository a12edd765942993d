"""The operator endpoint, ``--admin`` (docs/operations.md, "Operators"):
``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes, and
the live console (``presence.admin.app``), on a listener of its own that is
never the public ``--http`` port.

``--admin ENDPOINT``            where it listens (``tcp:8081:interface=127.0.0.1``;
                                ``none`` turns it off)
``--admin-token-file PATH``     the token it asks for [default: a random one
                                made at every start, in ``<--data>/admin-token``
                                (mode 0600); the ready line names the file]
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer, endpoints, task
from twisted.python import usage

from presence.admin import metrics
from presence.admin.metrics import GCTimer
from presence.admin.token import GENERATED, TokenError, generate_token, read_token
from presence.endpoint_option import check_server_endpoint

DEFAULT_ADMIN = "tcp:8081:interface=127.0.0.1"
#: seconds between readiness probes of the directory (and of Redis)
PROBE = 2.0
#: a probe older than this many intervals counts as failed
PROBE_STALE = 3

OPTIONS = [
    ["admin", None, DEFAULT_ADMIN,
     "Endpoint of the operator endpoint: /metrics (Prometheus), /healthz, /readyz and the"
     " live console; 'none' turns it off. Loopback by default; it is never the --http port."],
    ["admin-token-file", None, None,
     "File holding the token the operator endpoint asks for (one line) [default: a random"
     " one made at each start in <--data>/admin-token, mode 0600; the ready line names"
     " the file, never the token]."],
]


def check_options(options: Any) -> None:
    """The operator part of ``Options.postOptions``: the endpoint parses and
    a token file given can be read (its token is kept in the options)."""
    admin = options["admin"]
    if admin == "none":
        return
    check_server_endpoint("admin", admin, also=" (or none)")
    if admin == options["http"] and not re.match(r"tcp6?:0(:|$)", admin):
        raise usage.UsageError("--admin must not be the --http endpoint")
    if options["admin-token-file"]:
        try:
            options["admin-token"] = read_token(options["admin-token-file"])
        except TokenError as e:
            raise usage.UsageError(str(e))


class AdminFrontEnd(Service):
    """Builds the operator site and keeps its readiness probes and the
    console's figures going while the server runs."""

    def __init__(self, options: Any, service: Any, reactor: Any, gate: Any,
                 sweep: Any = None, sip: Any = None, wireless: Any = None,
                 cluster: Any = None) -> None:
        self.enabled = options.get("admin", "none") != "none"
        self.options = options
        self.service = service
        self.reactor = reactor
        self.gate = gate
        self.cluster = cluster
        self.redis_up = cluster is None
        self.token: Optional[str] = options.get("admin-token")
        self.token_path = (os.path.abspath(options["admin-token-file"])
                           if options.get("admin-token-file")
                           else os.path.abspath(os.path.join(options["data"], GENERATED)))
        self.directory_ok: Optional[float] = None
        self._probing_directory = False
        self._probing_redis = False
        self._probe: Optional[task.LoopingCall] = None
        self._gc: Any = None
        self.app: Any = None
        counters = service.counters
        self.sources = metrics.Sources(service.hub, counters, sweep, sip, wireless,
                                       cluster=self if cluster is not None else None,
                                       ready=lambda: self.ready()[0])
        if self.enabled:
            gate.details["admin_token"] = self.token_path
            if sweep is not None:
                sweep.counters = counters

    # -- readiness ----------------------------------------------------------------------

    def ready(self) -> Tuple[bool, List[str]]:
        missing = []
        if not self.gate.done:
            missing.append("listeners")
        now = self.reactor.seconds()
        if self.directory_ok is None or now - self.directory_ok > PROBE * PROBE_STALE:
            missing.append("directory")
        if not self.redis_up:
            missing.append("redis")
        return not missing, missing

    def probe(self) -> defer.Deferred:
        """Read the directory and, in cluster mode, make one Redis round
        trip; each is bounded by the probe interval, and one of each is in
        flight at most."""
        d = defer.succeed(None)
        if not self._probing_directory:
            self._probing_directory = True
            d = defer.maybeDeferred(self.service.probe_directory)
            d.addTimeout(PROBE, self.reactor)
            d.addCallbacks(self._directory_answered, lambda f: None)
            d.addBoth(self._probed, "_probing_directory")
        if self.cluster is not None and not self._probing_redis:
            redis = getattr(self.cluster, "redis", None)
            if redis is None:
                self.redis_up = False
                return d
            self._probing_redis = True
            began = time.perf_counter()
            r = defer.maybeDeferred(redis.eval, b"return 1", [], [])
            r.addTimeout(PROBE, self.reactor)
            r.addCallbacks(self._redis_answered, self._redis_failed, callbackArgs=(began,))
            r.addBoth(self._probed, "_probing_redis")
        return d

    def _directory_answered(self, _: Any) -> None:
        self.directory_ok = self.reactor.seconds()

    def _redis_answered(self, _: Any, began: float) -> None:
        self.redis_up = True
        self.service.counters.redis_rtt.observe(time.perf_counter() - began)

    def _redis_failed(self, _: Any) -> None:
        self.redis_up = False

    def _probed(self, _: Any, flag: str) -> None:
        setattr(self, flag, False)

    # -- life ---------------------------------------------------------------------------

    def listener(self) -> Any:
        """The ListenService of the endpoint (bound before privileges drop)."""
        from presence.admin.app import AdminApp
        from presence.listen import ListenService
        from presence.service import Operator
        from presence.web.http import PresenceSite
        self.app = AdminApp(Operator(self.service), self.sources, self.token or "",
                            self.reactor, self.ready)
        site = PresenceSite(self.app.app.resource(), reactor=self.reactor, access_log=False)
        return ListenService(self.gate.expect("admin"),
                             endpoints.serverFromString(self.reactor, self.options["admin"]),
                             site, self.gate.listener, value=self.options["admin"],
                             option="admin")

    def _ensure_token(self) -> None:
        if self.token is None:
            try:
                self.token, self.token_path = generate_token(self.options["data"])
            except OSError as e:
                raise SystemExit(f"presence: cannot write the operator token into --data"
                                 f" {self.options['data']}: {e.strerror}")
        if self.app is not None:
            self.app.token = self.token.encode("ascii")

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        self._ensure_token()
        counters = self.service.counters
        counters.timing = True
        counters.clock = time.perf_counter  # type: ignore[method-assign]
        self._gc = GCTimer(counters.gc_pause)
        self._gc.start()
        self._probe = task.LoopingCall(self.probe)
        self._probe.clock = self.reactor
        self._probe.start(PROBE, now=True)
        if self.app is not None:
            self.app.start()

    def stopService(self):
        super().stopService()
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        if self._gc is not None:
            self._gc.stop()
        if self.app is not None:
            self.app.stop()
