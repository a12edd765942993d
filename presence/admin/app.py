"""The operator endpoint (``--admin``): metrics, health checks and the live
console, a Klein app on a listener of its own (loopback by default).

Access:

- ``GET /healthz`` and ``GET /readyz`` answer anyone who reaches the
  endpoint: probes of load balancers and supervisors often cannot send a
  header, and the answers tell nothing but ``ok`` / ``ready`` or what is not
  ready;
- everything else needs the token: ``Authorization: Bearer <token>``
  (Prometheus, scripts), or the console's cookie, which a ``POST /login``
  with the token sets (``HttpOnly``, ``SameSite=Strict``).  A console
  request that changes something must also carry the header
  ``X-Presence-Admin: 1``, which another site's page cannot send without a
  CORS preflight this endpoint never grants.
- A wrong token counts against the client address (10, then one every 6 s);
  past that, 429 without a look at the token.  Each wrong one is logged
  with the address and the path, never the token.

Every action (end a session, lock, unlock, purge a message box, a notice)
is logged with who did it: the name given at the console's login (or
``token`` for a bearer token) and the client address.
"""

from __future__ import annotations

import functools
import hmac
import json
import secrets
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from klein import Klein
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import server

from presence.admin import metrics
from presence.core.ratelimit import RateLimiter, address_key
from presence.errors import BadRequest, ClientError, Forbidden, TooMany, Unauthorized
from presence.service import Operator
from presence.web.http import client_address, error_answer, params, write_json

log = Logger()

STATIC = Path(__file__).parent / "static"
COOKIE = b"presence_admin"
#: console logins kept at most, and for how long (seconds)
MAX_CONSOLES = 64
CONSOLE_TTL = 12 * 3600.0
#: event streams open at most
MAX_STREAMS = 32
#: a sparkline point every SAMPLE seconds, an hour of them
SAMPLE = 10.0
POINTS = 360
WHO_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")


class Throttled(TooMany):
    pass


def _who_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        return "operator"
    name = value.strip()[:32]
    if not all(c in WHO_CHARS for c in name):
        raise BadRequest("your name: letters, digits and . _ @ - only")
    return name


class History:
    """Sparklines of the last hour, in memory: a point every ``SAMPLE``
    seconds of the gauges and of the rates of the main counters."""

    SERIES = ("held", "sessions", "online_users", "chats_per_s", "frames_per_s",
              "refusals_per_s", "errors_per_s")

    def __init__(self, points: int = POINTS) -> None:
        self.times: Deque[float] = deque(maxlen=points)
        self.series: Dict[str, Deque[float]] = {k: deque(maxlen=points) for k in self.SERIES}
        self._last: Optional[Tuple[float, Dict[str, int]]] = None

    def sample(self, now: float, gauges: Dict[str, Any]) -> Dict[str, Any]:
        totals = {k: gauges[k] for k in ("chats", "frames", "refusals", "errors")}
        point: Dict[str, Any] = {"t": now, "held": gauges["held"],
                                 "sessions": gauges["sessions"],
                                 "online_users": gauges["online_users"]}
        last = self._last
        for key in ("chats", "frames", "refusals", "errors"):
            rate = 0.0
            if last is not None and now > last[0]:
                rate = max(0, totals[key] - last[1][key]) / (now - last[0])
            point[key + "_per_s"] = round(rate, 3)
        self._last = (now, totals)
        self.times.append(now)
        for key in self.SERIES:
            self.series[key].append(point[key])
        return point

    def snapshot(self) -> Dict[str, Any]:
        return {"times": list(self.times),
                "series": {k: list(v) for k, v in self.series.items()}}


def guarded(change: bool = False) -> Callable:
    """A route that needs the token (``change``: and, with the cookie, the
    ``X-Presence-Admin`` header); it gets ``who`` and the parameters, and
    answers JSON; client errors become their status and ``{"error": ...}``."""

    def wrap(handler: Callable) -> Callable:
        @functools.wraps(handler)
        async def route(self: "AdminApp", request: server.Request, **kw: Any) -> bytes:
            request.setHeader(b"cache-control", b"no-store")
            try:
                who = self.authorize(request, change)
                p = params(request)
                status, body = await handler(self, request, who, p, **kw)
            except ClientError as e:
                status, body = error_answer(request, e)
            except Exception:
                log.failure("admin: {path} failed", path=request.path.decode("ascii", "replace"))
                status, body = 500, {"error": "internal error; it has been logged"}
            if isinstance(body, bytes):
                request.setResponseCode(status)
                return body
            return write_json(request, status, body)
        return route
    return wrap


class AdminApp:
    app = Klein()

    def __init__(self, operator: Operator, sources: metrics.Sources, token: str,
                 clock: Any, ready: Callable[[], Tuple[bool, List[str]]]) -> None:
        self.operator = operator
        self.sources = sources
        self.counters = sources.counters
        self.registry = metrics.registry_for(sources)
        self.token = token.encode("ascii")
        self.clock = clock
        self.ready = ready
        self.failures = RateLimiter(capacity=10, rate=1 / 6)
        #: console cookie -> (who, expires)
        self.consoles: "OrderedDict[str, Tuple[str, float]]" = OrderedDict()
        self.history = History()
        self.streams: Dict[server.Request, defer.Deferred] = {}
        self._tick: Optional[task.LoopingCall] = None
        self._sampler: Optional[task.LoopingCall] = None
        self._pages = {name: (STATIC / name).read_bytes()
                       for name in ("console.html", "console.js", "console.css", "login.html")}

    # -- life -------------------------------------------------------------------------

    def start(self) -> None:
        self._sampler = task.LoopingCall(self.sample)
        self._sampler.clock = self.clock
        self._sampler.start(SAMPLE, now=True)
        self._tick = task.LoopingCall(self.tick)
        self._tick.clock = self.clock
        self._tick.start(1.0, now=False)

    def stop(self) -> None:
        for loop in (self._tick, self._sampler):
            if loop is not None and loop.running:
                loop.stop()
        for request, d in list(self.streams.items()):
            if not d.called:
                d.callback(b"")
        self.streams.clear()

    # -- access -------------------------------------------------------------------------

    def authorize(self, request: server.Request, change: bool = False) -> str:
        """``name@address`` of the caller, or the error to answer."""
        ip, _ = client_address(request)
        header = request.getHeader(b"authorization") or b""
        if header[:7].lower() == b"bearer ":
            self.check_token(request, header[7:].strip())
            return f"token@{ip}"
        cookie = request.getCookie(COOKIE)
        console = self._console(cookie.decode("ascii", "replace")) if cookie else None
        if console is None:
            raise Unauthorized("the operator token is needed (Authorization: Bearer, or log"
                               " in to the console)")
        if change and request.getHeader(b"x-presence-admin") != b"1":
            raise Forbidden("a console action needs the header X-Presence-Admin: 1")
        return f"{console}@{ip}"

    def check_token(self, request: server.Request, given: bytes) -> None:
        ip, _ = client_address(request)
        key = address_key(ip)
        now = self.clock.seconds()
        if not self.failures.allowed(key, now):
            self.counters.refused("admin_token", ip, now)
            raise Throttled("too many wrong operator tokens from this address; try again"
                            " later", retry_after=self.failures.wait(key, now))
        if not hmac.compare_digest(given, self.token):
            self.failures.take(key, now)
            log.warn("admin: a wrong token from {ip} for {path}", ip=ip,
                     path=request.path.decode("ascii", "replace")[:80])
            raise Unauthorized("wrong operator token")

    def _console(self, cookie: str) -> Optional[str]:
        entry = self.consoles.get(cookie)
        if entry is None:
            return None
        who, expires = entry
        if expires <= self.clock.seconds():
            del self.consoles[cookie]
            return None
        return who

    # -- probes -------------------------------------------------------------------------

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"

    @app.route("/readyz", methods=["GET", "HEAD"])
    def readyz(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        ok, missing = self.ready()
        if ok:
            return b"ready\n"
        request.setResponseCode(503)
        return ("not ready: " + ", ".join(missing) + "\n").encode("utf-8")

    # -- metrics --------------------------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    @guarded()
    async def metrics(self, request, who, p) -> Tuple[int, bytes]:
        request.setHeader(b"content-type", metrics.CONTENT_TYPE_LATEST.encode("ascii"))
        return 200, metrics.exposition(self.registry)

    # -- the console's pages -----------------------------------------------------------------

    @app.route("/", methods=["GET"])
    def index(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy",
                          b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        request.setHeader(b"x-frame-options", b"DENY")
        cookie = request.getCookie(COOKIE)
        if cookie and self._console(cookie.decode("ascii", "replace")):
            return self._pages["console.html"]
        return self._pages["login.html"]

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: server.Request, name: str) -> bytes:
        types = {"console.js": b"text/javascript; charset=utf-8",
                 "console.css": b"text/css; charset=utf-8"}
        if name not in types:
            return write_json(request, 404, {"error": "no such file"})
        request.setHeader(b"content-type", types[name])
        return self._pages[name]

    @app.route("/login", methods=["POST"])
    def login(self, request: server.Request) -> bytes:
        try:
            p = params(request)
            self.check_token(request, str(p.get("token") or "").strip().encode("utf-8"))
            name = _who_name(p.get("name"))
        except ClientError as e:
            request.setResponseCode(e.status)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            message = {401: "That is not the operator token.",
                       429: "Too many wrong tokens from this address; wait a while."}.get(
                e.status, "Letters, digits and . _ @ - only in your name.")
            return self._pages["login.html"].replace(
                b"<!--error-->", b'<p class="error" id="error">' + message.encode() + b"</p>")
        cookie = secrets.token_urlsafe(32)
        self.consoles[cookie] = (name, self.clock.seconds() + CONSOLE_TTL)
        while len(self.consoles) > MAX_CONSOLES:
            self.consoles.popitem(last=False)
        ip, _ = client_address(request)
        log.info("admin: {who} logged in to the console from {ip}", who=name, ip=ip)
        request.addCookie(COOKIE, cookie.encode("ascii"), path=b"/", httpOnly=True,
                          sameSite="strict", max_age=str(int(CONSOLE_TTL)).encode())
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        return b""

    @app.route("/logout", methods=["POST"])
    @guarded(change=True)
    async def logout(self, request, who, p) -> Tuple[int, Any]:
        cookie = request.getCookie(COOKIE)
        if cookie:
            self.consoles.pop(cookie.decode("ascii", "replace"), None)
        return 204, None

    # -- figures --------------------------------------------------------------------------------

    def gauges(self) -> Dict[str, Any]:
        hub, c = self.sources.hub, self.counters
        figures = hub.stats()
        ok, missing = self.ready()
        return {
            "box": hub.config.host_box, "held": figures["held"],
            "sessions": figures["sessions"], "online_users": figures["online_users"],
            "guests": hub.guest_count(), "chats": c.chats, "frames": c.frames_written,
            "refusals": sum(c.refusals.values()),
            "errors": sum(c.http_errors.values()), "ready": ok, "not_ready": missing,
        }

    def sample(self) -> None:
        point = self.history.sample(time.time(), self.gauges())
        self._broadcast({"sample": point})

    def tick(self) -> None:
        if self.streams:
            self._broadcast({"gauges": self.gauges()})

    def _broadcast(self, event: Dict[str, Any]) -> None:
        data = b"data: " + json.dumps(event).encode("utf-8") + b"\n\n"
        for request in list(self.streams):
            try:
                request.write(data)
            except Exception:
                self.streams.pop(request, None)

    @app.route("/api/gauges", methods=["GET"])
    @guarded()
    async def api_gauges(self, request, who, p) -> Tuple[int, Any]:
        return 200, self.gauges()

    @app.route("/api/history", methods=["GET"])
    @guarded()
    async def api_history(self, request, who, p) -> Tuple[int, Any]:
        return 200, self.history.snapshot()

    @app.route("/api/refusals", methods=["GET"])
    @guarded()
    async def api_refusals(self, request, who, p) -> Tuple[int, Any]:
        recent = [{"time": t, "kind": kind, "address": address}
                  for t, kind, address in reversed(self.counters.recent)]
        return 200, {"refusals": recent, "by_kind": dict(self.counters.refusals)}

    @app.route("/events", methods=["GET"])
    def events(self, request: server.Request) -> Any:
        try:
            self.authorize(request)
            if len(self.streams) >= MAX_STREAMS:
                raise TooMany("too many consoles are open")
        except ClientError as e:
            return write_json(request, e.status, {"error": e.message})
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.write(b"retry: 2000\n\n" + b"data: " + json.dumps(
            {"gauges": self.gauges()}).encode("utf-8") + b"\n\n")
        done: defer.Deferred = defer.Deferred(lambda d: self.streams.pop(request, None))
        self.streams[request] = done
        return done

    # -- users and actions -------------------------------------------------------------------

    @app.route("/api/user", methods=["GET"])
    @guarded()
    async def api_user(self, request, who, p) -> Tuple[int, Any]:
        return 200, await self.operator.user(p.get("name"))

    def _acted(self, action: str) -> None:
        self.counters.admin_actions[action] = self.counters.admin_actions.get(action, 0) + 1

    @app.route("/api/session/end", methods=["POST"])
    @guarded(change=True)
    async def api_end(self, request, who, p) -> Tuple[int, Any]:
        user = self.operator.end_session(p.get("name"), p.get("handle"), who)
        self._acted("end_session")
        return 200, {"ended": user}

    @app.route("/api/user/lock", methods=["POST"])
    @guarded(change=True)
    async def api_lock(self, request, who, p) -> Tuple[int, Any]:
        ended = await self.operator.lock(p.get("name"), True, who)
        self._acted("lock")
        return 200, {"locked": True, "sessions_ended": ended}

    @app.route("/api/user/unlock", methods=["POST"])
    @guarded(change=True)
    async def api_unlock(self, request, who, p) -> Tuple[int, Any]:
        await self.operator.lock(p.get("name"), False, who)
        self._acted("unlock")
        return 200, {"locked": False}

    @app.route("/api/user/purge", methods=["POST"])
    @guarded(change=True)
    async def api_purge(self, request, who, p) -> Tuple[int, Any]:
        removed = await self.operator.purge(p.get("name"), p.get("from"), who)
        self._acted("purge")
        return 200, {"removed": removed}

    @app.route("/api/notice", methods=["POST"])
    @guarded(change=True)
    async def api_notice(self, request, who, p) -> Tuple[int, Any]:
        sessions = self.operator.notice(p.get("text"), who)
        self._acted("notice")
        return 200, {"sessions": sessions}

    @app.handle_errors(Exception)
    def _routing(self, request, failure) -> bytes:
        from werkzeug.exceptions import HTTPException
        error = failure.value
        if isinstance(error, HTTPException):
            text = {404: "no such endpoint", 405: "method not allowed here"}.get(
                error.code, error.name)
            return write_json(request, error.code, {"error": text})
        log.failure("admin: {path} failed", failure,
                    path=request.path.decode("ascii", "replace"))
        return write_json(request, 500, {"error": "internal error; it has been logged"})
