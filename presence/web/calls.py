"""Browser calls over HTTP: signalling POSTs, TURN credentials, the options.

    POST /api/call        me, id, action=offer|answer|ice|hangup|decline, ...
        offer:   to, sdp[, call]   200 {"call", "caller", "callee", "state"[, "reason"]}
        answer:  call, sdp         200 {... "state": "active"}
        ice:     call, candidate   204
        hangup:  call              204   (decline: the same, for a ringing call)
    GET  /api/turn        me, id   200 {"turn": true, "iceServers": [...], "iceTransportPolicy",
                                        "ttl", "expires"}
                                   200 {"turn": false, "iceServers": [], "message"}
    POST /api/call-guests me, id, allow=1|0   204 (members: guests may call me)

The call's own frames go to the parties' heartbeats as direct frames (see
:mod:`presence.core.calls`, whose state machine this drives).  The node that
gets a request checks it; its ``router`` carries it out: here, or in a
cluster on the box that owns the call (:mod:`presence.cluster.calls`).  The TURN
credentials follow coturn's REST-API scheme (``--use-auth-secret``):
``username = "<expiry unix time>:<user>"``, ``credential =
base64(HMAC-SHA1(secret, username))``; the secret itself never leaves the
server and is never logged.  docs/calls.md, "Browser calls", tells the
whole story.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.python import usage

from presence.core.calls import (
    RING_TIMEOUT, Calls, carry_out, check_candidate, check_sdp,
)
from presence.core.frames import Frame
from presence.core.ratelimit import RateLimiter, take_all
from presence.errors import BadRequest, Forbidden, TooMany
from presence.web.api import api, request_session

#: seconds TURN credentials are valid [--turn-ttl]
TURN_TTL = 86400.0
#: a TURN server URL (RFC 7065): turn: or turns:, host[:port][?transport=udp|tcp]
TURN_URL_RE = re.compile(r"turns?:[A-Za-z0-9.\-\[\]:]+(\?transport=(udp|tcp))?\Z")
#: signalling requests (POST /api/call, GET /api/turn) per session: burst, per second
SIGNAL_LIMIT = (300, 10.0)
#: calls one session may start: burst, per second (one every 6 s after 10)
OFFER_LIMIT = (10, 1 / 6)
ACTIONS = ("offer", "answer", "ice", "hangup", "decline")
GUEST_PREFIX = "guest."

OPTIONS = [
    ["turn-url", None, None,
     "Browser calls: the TURN server(s) the pages use, comma-separated turn: or turns:"
     " URLs (e.g. turn:turn.example.org:3478?transport=udp,turns:turn.example.org:443?"
     "transport=tcp). Needs --turn-secret-file or --turn-secret. Unset: calls use no"
     " relay (direct connections only)."],
    ["turn-secret-file", None, None,
     "File holding the TURN REST-API shared secret (first line), coturn's"
     " static-auth-secret; never logged."],
    ["turn-secret", None, None,
     "The TURN REST-API shared secret itself (visible in the process list: prefer"
     " --turn-secret-file); never logged."],
    ["turn-policy", None, "all",
     "ICE transport policy the pages use with --turn-url: all (direct routes first, the"
     " relay where they fail) or relay (media always through the TURN server: the two"
     " browsers never learn each other's addresses)."],
    ["turn-ttl", None, TURN_TTL,
     "Seconds the TURN credentials handed to a page are valid (a call must end"
     " before they expire)."],
    ["ring-timeout", None, RING_TIMEOUT,
     "Seconds a browser call rings before it ends with 'noanswer'."],
]


def _positive_seconds(options: Any, name: str) -> float:
    try:
        value = float(options[name])
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name}: must be a number of seconds")
    if not 0 < value < 10 ** 7:  # NaN too
        raise usage.UsageError(f"--{name}: must be positive (seconds), not {options[name]}")
    return value


def check_options(options: Any) -> None:
    """The browser calls' part of ``Options.postOptions``."""
    options["turn-ttl"] = _positive_seconds(options, "turn-ttl")
    options["ring-timeout"] = _positive_seconds(options, "ring-timeout")
    if options["turn-policy"] not in ("all", "relay"):
        raise usage.UsageError("--turn-policy must be all or relay")
    urls = options["turn-url"]
    secret_file, secret = options["turn-secret-file"], options["turn-secret"]
    if secret_file is not None and secret is not None:
        raise usage.UsageError("--turn-secret-file and --turn-secret: give one of them")
    if urls is None:
        if secret_file is not None or secret is not None:
            raise usage.UsageError("--turn-secret-file/--turn-secret need --turn-url")
        if options["turn-policy"] == "relay":
            raise usage.UsageError("--turn-policy relay needs --turn-url")
        return
    listed = [u.strip() for u in urls.split(",") if u.strip()]
    if not listed:
        raise usage.UsageError("--turn-url: give one or more turn: or turns: URLs")
    for url in listed:
        if not TURN_URL_RE.match(url):
            raise usage.UsageError(
                f"--turn-url: not a TURN URL: {url[:80]!r} (turn:HOST[:PORT] or"
                " turns:HOST[:PORT], optionally ?transport=udp or ?transport=tcp)")
    if secret_file is None and secret is None:
        raise usage.UsageError("--turn-url needs --turn-secret-file (or --turn-secret):"
                               " the shared secret of coturn's --static-auth-secret")
    if secret_file is not None:
        try:
            with open(secret_file, encoding="utf-8") as f:
                secret = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise usage.UsageError(f"--turn-secret-file: cannot read {secret_file}:"
                                   f" {getattr(e, 'strerror', None) or e}")
    if not secret:
        raise usage.UsageError("the TURN secret is empty")
    options["turn-urls"] = listed
    # kept out of the options' text form: only the front-end reads it
    options["turn-key"] = secret.encode("utf-8")


def turn_credentials(secret: bytes, user: str, now: float, ttl: float) -> Dict[str, Any]:
    """coturn's REST-API credentials for ``user``, valid ``ttl`` seconds
    from ``now``."""
    expires = int(now + ttl)
    username = f"{expires}:{user}"
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return {"username": username, "credential": base64.b64encode(digest).decode("ascii"),
            "ttl": int(ttl), "expires": expires}


def _flag(value: Any) -> bool:
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no", "", None):
        return False
    raise BadRequest("allow must be 1 or 0")


class LocalCalls:
    """One process: every call is this process's."""

    def __init__(self, calls: Calls, hub: Any) -> None:
        self.calls = calls
        self.hub = hub

    def sessions(self, callee: str) -> List[str]:
        return [s.id for s in self.hub.sessions_of(callee) if s.scope is None]

    async def act(self, action: str, session: str, user: str,
                  p: Dict[str, Any]) -> Tuple[int, Any]:
        return carry_out(self.calls, action, session, user, p, self.sessions)


class CallsWeb:
    """The browser calls of one server: the state machine and its routes."""

    def __init__(self, service: Any, clock: Any, turn_urls: Optional[List[str]] = None,
                 turn_secret: Optional[bytes] = None, turn_ttl: float = TURN_TTL,
                 ring_timeout: float = RING_TIMEOUT, turn_policy: str = "all") -> None:
        self.service = service
        self.hub = service.hub
        self.clock = clock
        self.turn_urls = list(turn_urls or [])
        self._turn_secret = turn_secret
        self.turn_ttl = turn_ttl
        self.turn_policy = turn_policy
        self.calls = Calls(clock, self._send, self._alive, ring_timeout=ring_timeout)
        self.signals = RateLimiter(capacity=SIGNAL_LIMIT[0], rate=SIGNAL_LIMIT[1],
                                   max_keys=100000)
        self.offers = RateLimiter(capacity=OFFER_LIMIT[0], rate=OFFER_LIMIT[1],
                                  max_keys=100000)
        #: where the checked actions are carried out: here (one process), or
        #: on the call's box (presence.cluster.calls.ClusterCalls)
        self.router: Any = LocalCalls(self.calls, self.hub)

    @classmethod
    def from_options(cls, options: Any, service: Any, clock: Any) -> "CallsWeb":
        return cls(service, clock, options.get("turn-urls"), options.get("turn-key"),
                   float(options.get("turn-ttl", TURN_TTL)),
                   float(options.get("ring-timeout", RING_TIMEOUT)),
                   options.get("turn-policy") or "all")

    def __repr__(self) -> str:  # never the secret
        return f"<CallsWeb turn={self.turn_urls!r}>"

    def mount(self, root: Any) -> None:
        """Mount on the site's :class:`~presence.web.site.Root`."""
        from presence.web.site import Direct
        root.mount_exact((b"api", b"call"), Direct(self.call))
        root.mount_exact((b"api", b"turn"), Direct(self.turn, methods=(b"GET",)))
        root.mount_exact((b"api", b"call-guests"), Direct(self.guests))

    # -- the hub ----------------------------------------------------------------

    def _send(self, ident: str, frame: Frame) -> None:
        """A call frame for one session: a direct frame (like chat), never
        behind presence fan-out."""
        session = self.hub.session(ident)
        if session is not None:
            self.hub.deliver_session(session, frame)

    def _alive(self, ident: str) -> bool:
        """Whether session ``ident`` can take part in a call: it holds a
        heartbeat, or its last one ended less than ``linger`` ago (the
        presence rule, per session)."""
        session = self.hub.session(ident)
        if session is None or session.scope is not None:
            return False
        if session.host_box != self.hub.config.host_box:
            return True  # a stand-in for a session of another box
        if session.channel is not None:
            return True
        end = session.last_end
        return end is not None and self.clock.seconds() - end < self.hub.config.linger

    # -- limits -------------------------------------------------------------------

    def _spend(self, session: Any, offer: bool = False) -> None:
        now = self.clock.seconds()
        buckets = [(self.signals, session.id)]
        if offer:
            buckets.append((self.offers, session.id))
        wait = take_all(buckets, now)
        if wait is not None:
            raise TooMany("you are calling or signalling too fast; slow down",
                          retry_after=wait)

    # -- routes -------------------------------------------------------------------

    @api
    async def call(self, request, p) -> Any:
        session = request_session(self.service, request, p)
        action = p.get("action")
        if action in (None, ""):
            raise BadRequest("action is required: offer, answer, ice, hangup or decline")
        if action not in ACTIONS:
            raise BadRequest("action must be offer, answer, ice, hangup or decline")
        self._spend(session, offer=action == "offer")
        params = await self._checked(session, action, p)
        return await self.router.act(action, session.id, session.user.name, params)

    async def _checked(self, session: Any, action: str, p: Dict[str, Any]) -> Dict[str, Any]:
        """What the node that got the request checks (with the directory),
        as the parameters :func:`presence.core.calls.carry_out` takes: these may be carried out
        on another box (presence.cluster.calls)."""
        if action != "offer":
            params = {"call": p.get("call")}
            if action == "answer":
                params["sdp"] = check_sdp(p.get("sdp"))
            elif action == "ice":
                params["candidate"] = check_candidate(p.get("candidate"))
            return params
        to = p.get("to")
        if not isinstance(to, str) or not to:
            raise BadRequest("to is required: whom to call")
        if to.startswith(GUEST_PREFIX) and self.hub.knows(to):
            raise Forbidden("guests cannot be called: a guest may call you, and you answer")
        callee = await self.service.user_named(to)  # 404 for anyone else not a user
        if session.user.guest and not await self.service.guests_may_call(callee):
            raise Forbidden(f"{callee} takes calls from members only: log in to call them")
        return {"to": callee, "sdp": check_sdp(p.get("sdp")), "call": p.get("call") or None}

    @api
    async def turn(self, request, p) -> Any:
        session = request_session(self.service, request, p)
        self._spend(session)
        if not self.turn_urls or not self._turn_secret:
            return 200, {"turn": False, "iceServers": [],
                         "message": "this server has no TURN relay (--turn-url): calls"
                                    " connect directly, and fail where a firewall or NAT"
                                    " stands between the two browsers"}
        creds = turn_credentials(self._turn_secret, session.user.name,
                                 self.clock.seconds(), self.turn_ttl)
        return 200, {"turn": True, "ttl": creds["ttl"], "expires": creds["expires"],
                     "iceTransportPolicy": self.turn_policy,
                     "iceServers": [{"urls": self.turn_urls, "username": creds["username"],
                                     "credential": creds["credential"]}]}

    @api
    async def guests(self, request, p) -> Any:
        session = request_session(self.service, request, p)
        await self.service.set_guests_may_call(session, _flag(p.get("allow")))
        return 204, None

