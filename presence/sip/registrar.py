"""The registrar of the proxy's domain (RFC 3261 section 10.3), with digest
authentication (:mod:`presence.sip.digest`).

The proxy hands it every ``REGISTER`` it is the registrar for
(:meth:`SipProxy._handle`): one from the network whose Request-URI names the
proxy or ``--domain``, and every one from a tunnel session (a softphone
registering at ``presence-sip-bridge``, which relays it through
``POST /sip``).  A ``REGISTER`` for another domain gets ``403`` from the
proxy: it is no registrar there and no open relay.

What it does with one (10.3 steps 1 to 8):

* the address of record is the ``To`` URI; its user must be a user of the
  domain (from the network the host must be the domain or the proxy's
  address; from the tunnel the phone may name the bridge) and, from a
  tunnel, the session's own user (``403`` else);
* credentials: none, wrong or stale gets ``401`` with a fresh challenge
  (``stale=true`` when only the nonce was old); malformed ones ``400``; a
  user who authenticates as someone else than the address of record
  ``403``; a locked account ``403``.  Wrong digests count as failed logins
  of the source address (``login_failures``, the same allowance a password
  login has): past it ``403`` until it refills;
* ``Expires`` and the ``expires`` Contact parameter (default
  :data:`DEFAULT_EXPIRES`, shortened to ``max_expires``); below
  ``min_expires`` (and not 0) ``423 Interval Too Brief`` with
  ``Min-Expires``; ``0`` removes the binding; ``Contact: *`` with
  ``Expires: 0`` (and nothing else) removes all of the user's; a Call-ID
  seen before with a CSeq not above the stored one is ``500`` (out of
  order);
* bounds: at most ``per_user`` bindings per user (``403`` past it) and
  ``total`` in all (``503`` with ``Retry-After``);
* ``200`` lists every current binding of the user as ``Contact: <uri>;
  expires=<seconds left>``.

Each binding expires by its own ``callLater`` on the clock.  A binding made
from the network keeps the address the ``REGISTER`` came from (transport,
IP, port, and the TCP connection while it is open): calls for the user go
there with the Request-URI set to the registered Contact, never to a host
the Contact names, so a registration cannot point the proxy at another
machine (as RFC 5626 flows, and what NAT traversal needs anyway).

Presence: while a user has a binding from the network, a presence source
holds them online (a session opened with
:meth:`~presence.service.PresenceService.open_source`, scope ``sip``, whose
"heartbeat" is a :class:`RegistrationChannel` here); removing or expiring
the last binding ends it (``msg bye unregistered`` / ``expired``) and the
user's watchers hear ``offline`` unless another session holds them online.
If that session is ended from elsewhere (a password change, an operator),
the user's bindings go with it.  A binding made through the tunnel needs
no source: the bridge's own session holds the user online, calls reach the
bridge as for any session, and the binding ends with the session.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from presence.core import frames
from presence.core.hub import IChannel
from presence.core.mailbox import Entry
from presence.core.tables import Session
from presence.sip.digest import DigestAuth, source_of
from presence.sip.message import NameAddr, SipURI, bare_host

log = Logger(namespace="presence.sip")

DEFAULT_EXPIRES = 3600
MAX_EXPIRES = 3600
MIN_EXPIRES = 60
#: bindings one user may have, and all users together
PER_USER = 10
TOTAL = 10_000
#: the largest Expires value RFC 3261 allows (2**32 - 1)
_EXPIRES_LIMIT = 2 ** 32 - 1
#: the scope of a registration's presence source session
SCOPE = "sip"
#: the reason of a 403 once the login allowance is spent
TOO_MANY = "Forbidden (too many failed attempts; try again later)"


def refusal(verdict: Any, service: Any, ip: str) -> Optional[Tuple[int, str]]:
    """What a checked digest (``DigestAuth.verify``'s verdict) from ``ip``
    is refused with before its user is looked at, counted as a password
    login (``service.judge_digest``): ``(400, reason)`` for malformed
    credentials, ``(403, TOO_MANY)`` past the allowances, else None.  The
    registrar and SIP presence (REGISTER and SUBSCRIBE) share it."""
    if verdict.error:
        return 400, f"Bad Request ({verdict.error})"
    if verdict.present and not service.judge_digest(
            verdict.tried, ip, None if verdict.stale else verdict.user is not None):
        return 403, TOO_MANY
    return None


class Binding:
    """One Contact of one user."""

    __slots__ = ("user", "contact", "key", "call_id", "cseq", "expires_at", "timer",
                 "transport", "host", "port", "_conn", "session_id")

    def __init__(self, user: str, contact: str, key: str, call_id: str, cseq: int,
                 expires_at: float) -> None:
        self.user = user
        self.contact = contact            # the Contact URI as registered
        self.key = key                    # its comparison form (RFC 3261 19.1.4, loosely)
        self.call_id = call_id
        self.cseq = cseq
        self.expires_at = expires_at
        self.timer: Any = None
        self.transport = ""
        self.host = ""
        self.port = 0
        self._conn: Any = None
        self.session_id: Optional[str] = None   # made through this tunnel session

    @property
    def conn(self) -> Any:
        conn = self._conn() if self._conn is not None else None
        return conn if getattr(conn, "connected_", True) else None

    def set_conn(self, conn: Any) -> None:
        try:
            self._conn = weakref.ref(conn) if conn is not None else None
        except TypeError:  # an object without weak references (tests)
            self._conn = lambda: conn


class _Refusal(Exception):
    def __init__(self, code: int, reason: str, extra: Sequence[Tuple[str, str]] = ()) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.extra = list(extra)


@implementer(IChannel)
class RegistrationChannel:
    """The "heartbeat" of a registration's presence source: nobody reads
    it, so every frame is acknowledged at once and chat goes to the
    message box (as a dyndns2 source's)."""

    def __init__(self, registrar: "Registrar", session: Session) -> None:
        self.registrar = registrar
        self.session = session

    def send(self, entries: Sequence[Entry]) -> None:
        for _, frame in entries:
            if frame.is_chat:
                self.registrar.keep_chat(self.session.user.name, frame)
        if entries:
            self.registrar.hub.ack(self.session, entries[-1][0])

    def keepalive(self) -> None:
        pass

    def release(self, reason: str) -> None:
        self.registrar.source_released(self.session, reason)


class Registrar:
    """Bindings of the users of one domain (see the module docstring)."""

    def __init__(self, proxy: Any, digest: DigestAuth, *, min_expires: int = MIN_EXPIRES,
                 max_expires: int = MAX_EXPIRES, default_expires: int = DEFAULT_EXPIRES,
                 per_user: int = PER_USER, total: int = TOTAL) -> None:
        if not 1 <= min_expires <= max_expires:
            raise ValueError("min_expires must be at least 1 and at most max_expires")
        self.proxy = proxy
        self.service = proxy.service
        self.hub = proxy.hub
        self.clock = proxy.clock
        self.digest = digest
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = min(max(default_expires, min_expires), max_expires)
        self.per_user = per_user
        self.total = total
        self.bindings: Dict[str, Dict[str, Binding]] = {}
        self.count = 0
        #: user -> their presence source session (None while it is being opened)
        self.sources: Dict[str, Optional[Session]] = {}

    # -- what the proxy asks -------------------------------------------------------

    def network_bindings(self, user: str) -> List[Binding]:
        """The user's live bindings made from the network (where calls go)."""
        return [b for b in self.bindings.get(user, {}).values() if b.session_id is None]

    def stats(self) -> Dict[str, int]:
        return {"bindings": self.count, "registered_users": len(self.bindings)}

    # -- REGISTER --------------------------------------------------------------------

    def register(self, stx: Any) -> None:
        """Answer the REGISTER of server transaction ``stx``."""
        d = defer.ensureDeferred(self._register(stx))
        d.addErrback(self._failed, stx)

    def _failed(self, failure: Any, stx: Any) -> None:
        log.failure("a SIP REGISTER failed", failure)
        self._answer(stx, 500, "Server Internal Error")

    def _answer(self, stx: Any, code: int, reason: Optional[str] = None,
                extra: Sequence[Tuple[str, str]] = ()) -> None:
        if stx.state == "terminated" or stx.request is None:
            return
        self.proxy._count(f"register_{code}")
        self.proxy._reply(stx, code, list(extra), reason)

    async def _register(self, stx: Any) -> None:
        request, hop = stx.request, stx.hop
        try:
            aor = self._address_of_record(request, hop)
        except _Refusal as e:
            self._answer(stx, e.code, e.reason, e.extra)
            return
        ip = hop.session.ip if hop.tunnel else hop.host
        if not self.service.digest_allowed(ip):
            self._answer(stx, 403, TOO_MANY)
            return
        verdict = await self.digest.verify(request, source=source_of(hop))
        if stx.state == "terminated" or stx.request is None:
            return
        refused = refusal(verdict, self.service, ip)
        if refused is not None:
            self._answer(stx, *refused)
            return
        if verdict.user is None:
            if verdict.present and not verdict.stale:
                log.info("SIP REGISTER for {aor} from {ip}: wrong credentials", aor=aor, ip=ip)
            self._answer(stx, 401, "Unauthorized",
                         self.digest.challenge(request, stale=verdict.stale,
                                               source=source_of(hop)))
            return
        if verdict.user != aor:
            self._answer(stx, 403, "Forbidden (the credentials are not those of the"
                                   " address of record)")
            return
        if await self.service.is_locked(aor):
            self._answer(stx, 403, "Forbidden (this account is locked)")
            return
        if stx.state == "terminated" or stx.request is None:
            return
        try:
            self._update(aor, request, hop)
        except _Refusal as e:
            self._answer(stx, e.code, e.reason, e.extra)
            return
        self._answer(stx, 200, "OK", self._contacts(aor))

    def _address_of_record(self, request: Any, hop: Any) -> str:
        """The user the REGISTER is for (the ``To`` URI's user)."""
        try:
            to = NameAddr.parse(request.get("to") or "")
            uri = to.sip_uri()
        except ValueError:
            uri = None
        if uri is None or not uri.user:
            raise _Refusal(400, "Bad Request (To must be the sip: address of record)")
        user = unquote(uri.user).lower()
        if hop.tunnel:
            if user != hop.session.user.name:
                raise _Refusal(403, "Forbidden (a phone at the bridge registers the bridge's"
                                    " own user)")
            return user
        if bare_host(uri.host).lower() != self.proxy.domain and not self.proxy.is_me(
                uri.host, uri.port):
            raise _Refusal(404, f"Not Found (not an address of {self.proxy.domain})")
        return user

    # -- bindings --------------------------------------------------------------------

    def _expires_header(self, request: Any) -> Optional[int]:
        value = request.get("expires")
        if value is None:
            return None
        return _seconds(value, "Expires")

    def _update(self, user: str, request: Any, hop: Any) -> None:
        """RFC 3261 10.3 steps 6 to 8 for ``user``; raises :class:`_Refusal`."""
        header = self._expires_header(request)
        contacts = request.values("contact")
        call_id = request.call_id or ""
        cseq = request.cseq[0]
        self._prune(user)
        if any(c.strip() == "*" for c in contacts):
            if len(contacts) != 1 or header != 0:
                raise _Refusal(400, "Bad Request (Contact: * goes alone, with Expires: 0)")
            for binding in list(self.bindings.get(user, {}).values()):
                if binding.call_id == call_id and cseq <= binding.cseq:
                    raise _Refusal(500, "Server Internal Error (a REGISTER out of order)")
            for binding in list(self.bindings.get(user, {}).values()):
                self._remove(binding, "unregistered")
            return
        if len(contacts) > self.per_user:
            raise _Refusal(403, f"Forbidden (at most {self.per_user} contacts per user)")
        changes = []
        for value in contacts:
            try:
                address = NameAddr.parse(value)
            except ValueError:
                raise _Refusal(400, "Bad Request (malformed Contact)")
            uri = address.sip_uri()
            if uri is None or uri.scheme != "sip":
                raise _Refusal(400, "Bad Request (a Contact must be a sip: URI)")
            param = address.param("expires")
            expires = _seconds(param, "expires") if param is not None else header
            if expires is None:
                expires = self.default_expires
            if 0 < expires < self.min_expires:
                raise _Refusal(423, "Interval Too Brief",
                               [("Min-Expires", str(self.min_expires))])
            changes.append((address.uri, _key(uri), min(expires, self.max_expires)))
        mine = self.bindings.get(user, {})
        for _, key, _ in changes:
            old = mine.get(key)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                raise _Refusal(500, "Server Internal Error (a REGISTER out of order)")
        added = len({key for _, key, e in changes if e and key not in mine})
        if len(mine) + added > self.per_user:
            raise _Refusal(403, f"Forbidden (at most {self.per_user} registered contacts"
                                " per user)")
        if self.count + added > self.total:
            raise _Refusal(503, "Service Unavailable (the registrar is full)",
                           [("Retry-After", "60")])
        now = self.clock.seconds()
        for contact, key, expires in changes:
            old = mine.get(key)
            if expires == 0:
                if old is not None:
                    self._remove(old, "unregistered")
                continue
            if old is not None:
                self._remove(old, None)
            binding = Binding(user, contact, key, call_id, cseq, now + expires)
            if hop.tunnel:
                binding.session_id = hop.session.id
            else:
                binding.transport, binding.host, binding.port = hop.transport, hop.host, hop.port
                binding.set_conn(hop.conn)
            binding.timer = self.clock.callLater(expires, self._expired, binding)
            self.bindings.setdefault(user, {})[key] = binding
            mine = self.bindings[user]
            self.count += 1
            if binding.session_id is None:
                self._hold(user, hop.host)
        log.info("SIP registration of {user}: {n} binding(s)", user=user,
                 n=len(self.bindings.get(user, {})))

    def _contacts(self, user: str) -> List[Tuple[str, str]]:
        now = self.clock.seconds()
        out = []
        for binding in self.bindings.get(user, {}).values():
            left = max(0, int(round(binding.expires_at - now)))
            out.append(("Contact", f"<{binding.contact}>;expires={left}"))
        return out

    def _prune(self, user: str) -> None:
        """Drop the user's bindings whose tunnel session has ended."""
        for binding in list(self.bindings.get(user, {}).values()):
            if binding.session_id is not None and self.hub.session(binding.session_id) is None:
                self._remove(binding, None)

    def _expired(self, binding: Binding) -> None:
        binding.timer = None
        log.info("SIP registration of {user} expired", user=binding.user)
        self._remove(binding, "expired")

    def _remove(self, binding: Binding, reason: Optional[str]) -> None:
        mine = self.bindings.get(binding.user)
        if mine is None or mine.get(binding.key) is not binding:
            return
        del mine[binding.key]
        self.count -= 1
        if binding.timer is not None and binding.timer.active():
            binding.timer.cancel()
        binding.timer = None
        if not mine:
            del self.bindings[binding.user]
        if reason is not None and not self.network_bindings(binding.user):
            self._let_go(binding.user, reason)

    # -- presence ---------------------------------------------------------------------

    def _hold(self, user: str, ip: str) -> None:
        """A presence source for ``user`` while they have network bindings."""
        if user in self.sources:
            return
        self.sources[user] = None
        d = defer.ensureDeferred(self.service.open_source(user, ip, SCOPE))

        def opened(session: Session) -> None:
            if user in self.sources and self.sources[user] is None \
                    and self.network_bindings(user):
                self.sources[user] = session
                self.hub.attach(session, RegistrationChannel(self, session))
            else:
                self.hub.end(session, "unregistered")

        def failed(f: Any) -> None:
            if self.sources.get(user, 0) is None:
                del self.sources[user]
            log.failure("holding {user} online for their SIP registration failed", f,
                        user=user)

        d.addCallbacks(opened, failed)

    def _let_go(self, user: str, reason: str) -> None:
        if user not in self.sources:
            return
        session = self.sources.pop(user)
        if session is not None:
            self.hub.end(session, reason)

    def source_released(self, session: Session, reason: str) -> None:
        """The source session ended: by us, or from elsewhere (a password
        change, an operator, shutdown): then the user's network bindings
        go too."""
        user = session.user.name
        if self.sources.get(user) is session:
            del self.sources[user]
            for binding in self.network_bindings(user):
                self._remove(binding, None)
            log.info("SIP registration of {user} ended ({reason})", user=user, reason=reason)

    def keep_chat(self, user: str, frame: Any) -> None:
        sender, msgid = frame.args[0], frame.args[1]
        d = defer.ensureDeferred(self.service.keep_message(user, sender, frame.payload, msgid))
        d.addCallback(lambda _: self.hub.deliver(user, frames.message(sender)))
        d.addErrback(lambda f: log.failure(
            "keeping a chat for {user} (online by SIP registration only) failed", f, user=user))

    def stop(self) -> None:
        for mine in list(self.bindings.values()):
            for binding in list(mine.values()):
                if binding.timer is not None and binding.timer.active():
                    binding.timer.cancel()
        self.bindings.clear()
        self.count = 0
        self.sources.clear()


def _seconds(value: str, what: str) -> int:
    value = value.strip()
    if not value.isdigit() or len(value) > 10 or int(value) > _EXPIRES_LIMIT:
        raise _Refusal(400, f"Bad Request ({what} must be a number of seconds)")
    return int(value)


def _key(uri: SipURI) -> str:
    """A Contact URI's comparison form: scheme, user, host (case-folded),
    port, transport."""
    return (f"{uri.scheme}:{uri.user or ''}@{bare_host(uri.host).lower()}:{uri.port or 5060}"
            f";{uri.transport}")
