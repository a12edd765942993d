"""The SIP proxy core: RFC 3261 section 16 for ``--domain``, with the HTTP
tunnel as the way to its users.

The proxy does no I/O of its own.  Messages come in through
:meth:`SipProxy.received` (a UDP datagram, or one message framed from a TCP
stream, with the :class:`Hop` it came from) and :meth:`SipProxy.from_session`
(the body of ``POST /sip`` from a live session).  They leave through the
:class:`ISipNetwork` it is given (UDP and TCP) and as frames on the hub
(``msg sipreq <METHOD> <txid>`` / ``msg sipresp <code> <txid>``).  Time is
the ``IReactorTime`` it is given: every timer is a ``callLater`` on it, so
tests drive it with ``twisted.internet.task.Clock``.

What it does with a request (from the network or from a tunnel session):

1. validation (16.3): syntax (``400``, by :func:`~presence.sip.message.parse`),
   URI scheme (``416``), ``Max-Forwards`` (``483`` at zero), loops (``482``,
   a ``Via`` of ours whose branch carries the hash this request would get),
   ``Proxy-Require`` (``420``: no extensions are supported);
2. route processing (16.4): a first ``Route`` naming this proxy is removed;
3. the target (16.5): ``sip:<user>@<domain or our address>`` is a user (or
   alias) looked up in the directory: unknown ``404``, no live session
   ``480``, a new ``INVITE`` to a user who is busy (their presence state)
   ``486 Busy Here`` without ringing, else every session of the user
   (parallel forking); a URI with our
   ``tun`` parameter is the one session whose Contact it replaced; a URI for
   anyone else, or a further ``Route``, gets ``403`` from the network (not an
   open relay), and from a tunnel session only what its role allows (below);
4. ``100 Trying`` for an INVITE as it is forwarded: at once to a session or
   an outside address, once the user is found (or after
   :data:`TRYING_DELAY`) for a user; a final known before goes alone;
5. forwarding (16.6): a copy per target with ``Max-Forwards`` decremented (or
   ``70`` inserted), ``Record-Route: <sip:host:port;lr>`` for requests that
   may make a dialog, our ``Via`` with a fresh ``z9hG4bK`` branch (the loop
   hash plus a random part) on top; to a session as a ``msg sipreq`` frame
   whose ``txid`` is that branch;
6. responses (16.7): matched by our branch, our ``Via`` removed, ``100``
   absorbed, other provisionals and every ``2xx`` forwarded at once, the best
   final of the others forwarded when all branches are done (``6xx`` cancels
   the rest, ``503`` becomes ``500``), timeouts count as ``408``;
7. ``CANCEL`` (16.10): answered ``200`` (or ``481``) hop by hop and sent on
   to every branch still pending;
8. ``Contact`` of anything a tunnel session sends is rewritten to
   ``sip:<user>@<our address>;tun=<token>`` (the token names the session and
   is not its ID) so that the far end reaches the session through us.
9. with a media relay (``media``, a :class:`presence.sip.media.MediaAnchor`),
   the SDP of calls that cross the tunnel is rewritten to relay ports where
   requests are forwarded and responses sent upstream; a first INVITE the
   relay has no room for gets ``503``.

What a tunnel session may make the proxy send (no open relay, no SSRF):
guests no request at all (``403``; they answer calls); registered users
requests to users of the domain, in-dialog requests of dialogs the proxy
relayed with their session in it (:class:`Dialogs`: to the peer the dialog
was made with, or a public address), and with ``outbound="public"``
(``--sip-outbound``) new requests to public addresses.  Every name is
resolved first and every address it resolves to checked
(:func:`forbidden_address`, :meth:`SipProxy.forbidden_destination`): never
loopback, link-local, private, shared, multicast or reserved ranges, never
an address of this machine nor a listener of this server.  A refusal is a
``403`` with the reason as a ``msg sipresp`` frame; nothing is sent.
``POST /sip`` is rate-limited per session (``429``) and network messages
per source address (dropped).

Transactions (RFC 3261 section 17, with RFC 6026's Accepted state) are kept
in two tables and dropped by their timers, so memory follows the calls in
progress, not the traffic seen; past :data:`MAX_TRANSACTIONS` new requests
get ``503``.  Over UDP requests and final non-2xx responses are retransmitted
(timers A, E, G; G only after a provisional: before it the client's own
retransmissions fetch the final again); the tunnel and TCP are reliable.  ACK of a non-2xx final is
hop by hop: the proxy sends it itself downstream and absorbs the one from
upstream.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from presence.core import frames
from presence.core.ratelimit import RateLimiter
from presence.core.tables import Session
from presence.errors import BadRequest, ClientError, NotFound, TooLarge, TooMany
from presence.service import SOURCE_SCOPES
from presence.sip.digest import DigestAuth
from presence.sip.registrar import Registrar
from presence.sip.relay import NoRoom
from presence.sip.message import (
    MAGIC_COOKIE, MAX_MESSAGE, NameAddr, ParseError, Request, Response, SipURI, Via,
    ack_for, bare_host, make_response, parse, reason_phrase, text_body,
)

log = Logger(namespace="presence.sip")

T1 = 0.5
T2 = 4.0
T4 = 5.0
#: 64*T1: how long a transaction waits for a response (timers B, F, H, J, M)
TIMER_B = 64 * T1
#: how long a proxied INVITE may stay in a provisional state (timer C, > 3 min)
TIMER_C = 181.0
#: an INVITE whose user is being looked up gets its 100 Trying when the user
#: is found, or after this long (RFC 3261 8.2.6.1's 200 ms); an unknown or
#: offline user's final thus goes alone, without timer G
TRYING_DELAY = 0.2
#: transactions (server and client) kept at once, those that wait out their
#: final timers included (about three per call for 32 s); past it, 503
MAX_TRANSACTIONS = 100_000
ALLOW = ("INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, SUBSCRIBE, NOTIFY, REFER,"
         " MESSAGE, REGISTER")
#: requests that do not get our Record-Route
NO_RECORD_ROUTE = frozenset({"ACK", "CANCEL", "BYE", "REGISTER", "PRACK"})
SERVER_NAME = "presence-sip"
UDP, TCP, TUNNEL = "UDP", "TCP", "TUNNEL"
#: ``--sip-outbound``: whether registered tunnel users may start requests to
#: public addresses outside ``--domain`` (``none``: only to users of it)
OUTBOUND_NONE, OUTBOUND_PUBLIC = "none", "public"
#: dialogs the proxy relayed, kept for in-dialog requests of tunnel users;
#: past the bound the least recently used one goes
MAX_DIALOGS = 50_000
#: seconds without an in-dialog request after which a dialog is forgotten
DIALOG_IDLE = 4 * 3600.0
#: defaults of ``--sip-session-rate`` and ``--sip-source-rate`` (messages a
#: second); a bucket holds :data:`BURST` seconds' worth
SESSION_RATE = 20.0
SOURCE_RATE = 50.0
BURST = 5.0


class ServiceUnavailable(ClientError):
    status = 503


class UnsupportedMedia(ClientError):
    status = 415


class Hop:
    """Where a message came from or goes to: a network peer (``UDP`` or
    ``TCP``, with the connection it came on) or a tunnel ``session``."""

    __slots__ = ("transport", "host", "port", "conn", "session", "uri")

    def __init__(self, transport: str, host: str = "", port: int = 0, conn: Any = None,
                 session: Optional[Session] = None, uri: Optional[str] = None) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.conn = conn
        self.session = session
        #: the Request-URI a request forwarded to this hop gets (a registered
        #: Contact, or another box of a cluster: see ISipBoxes), or None:
        #: unchanged
        self.uri = uri

    @property
    def tunnel(self) -> bool:
        return self.transport == TUNNEL

    @property
    def reliable(self) -> bool:
        return self.transport != UDP

    def __repr__(self) -> str:
        if self.tunnel:
            return f"<Hop tunnel {self.session!r}>"
        return f"<Hop {self.transport} {self.host}:{self.port}>"


class ISipNetwork(Interface):
    """The UDP and TCP side of the proxy."""

    port = Attribute("the SIP port (UDP and TCP)")

    def send(data: bytes, hop: Hop, on_error: Optional[Callable[[], None]]) -> None:
        """Send one message to ``hop`` (over ``hop.conn`` if it is still
        open, else over a connection to ``hop.host:hop.port``); call
        ``on_error`` if it could not be sent."""

    def local_host(hop: Hop) -> str:
        """Our address as ``hop`` reaches it (for Via, Record-Route, Contact)."""

    def resolve(host: str) -> defer.Deferred:
        """Every IP address of ``host`` (a list; empty: no such host)."""

    def is_local(host: str) -> bool:
        """Whether ``host`` (an IP address or name) is this machine."""


class ISipBoxes(Interface):
    """The other host boxes of a cluster, as next hops of the proxy
    (``presence.cluster.sip``; None on one node): a user's sessions held
    by another box are reached through that box's proxy."""

    def hops(name: str, uri: SipURI) -> Any:
        """One hop per other live box holding a session of user ``name``
        (each with its ``uri``), for a request whose Request-URI is ``uri``;
        none when ``uri`` says another box forked it already.  A list, or a
        Deferred of one (an address is read first)."""

    def hop_of(uri: SipURI) -> Optional["Hop"]:
        """The hop of ``uri`` (a Route) when it names the SIP listener of a
        live box of the cluster, else None."""

    def is_box(ip: str, port: int) -> bool:
        """Whether ``ip:port`` is the SIP listener of a live box."""

    def is_box_ip(ip: str) -> bool:
        """Whether ``ip`` is the address of a live box's SIP listener."""


class Timers:
    """Named ``callLater`` timers of one transaction."""

    __slots__ = ("clock", "calls")

    def __init__(self, clock) -> None:
        self.clock = clock
        self.calls: Dict[str, Any] = {}

    def start(self, name: str, delay: float, fn: Callable, *args: Any) -> None:
        self.cancel(name)
        self.calls[name] = self.clock.callLater(delay, self._fire, name, fn, args)

    def _fire(self, name: str, fn: Callable, args: tuple) -> None:
        self.calls.pop(name, None)
        fn(*args)

    def cancel(self, name: str) -> None:
        call = self.calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def cancel_all(self) -> None:
        for name in list(self.calls):
            self.cancel(name)


class Context:
    """One proxied request: its server transaction and its branches."""

    __slots__ = ("server", "clients", "best", "best_owner", "final", "cancelled",
                 "loop_hash", "target_pending")

    def __init__(self, server: "ServerTxn", loop_hash: str) -> None:
        self.server = server
        self.clients: List[ClientTxn] = []
        self.best: Optional[Response] = None
        #: the branch the best response came from (None: made up here)
        self.best_owner: Optional[ClientTxn] = None
        self.final = False
        self.cancelled = False
        self.loop_hash = loop_hash
        self.target_pending = False


class ServerTxn:
    """The transaction of a request we received (RFC 3261 17.2)."""

    def __init__(self, proxy: "SipProxy", key: tuple, request: Request, hop: Hop,
                 txid: str) -> None:
        self.proxy = proxy
        self.key = key
        self.request = request
        self.hop = hop
        self.txid = txid
        self.method = request.method
        self.state = "trying"
        #: what went upstream last (bytes, or a frame for a session), re-sent
        #: when the request is repeated
        self.last_out: Any = None
        self.last_code = 0
        self.reply_hop: Optional[Hop] = None
        self.context: Optional[Context] = None
        self.timers = Timers(proxy.clock)
        self.to_tag = secrets.token_hex(5)
        self.g_interval = T1

    @property
    def is_invite(self) -> bool:
        return self.method == "INVITE"

    def respond(self, response: Response) -> None:
        """Send ``response`` upstream and move the state machine."""
        if self.state in ("completed", "confirmed", "terminated"):
            return  # a final response went already
        if self.state == "accepted" and not 200 <= response.code < 300:
            return
        provisional_sent = self.state == "proceeding"
        if response.code >= 200:
            self.timers.cancel("100")
        self.last_code = response.code
        self.last_out = self.proxy._send_upstream(self, response)
        code = response.code
        if code < 200:
            self.state = "proceeding"
            return
        self._release()
        if self.is_invite and code < 300:
            # RFC 6026 Accepted: absorb INVITE retransmissions, pass further 2xx
            self.state = "accepted"
            self.timers.start("L", TIMER_B, self.terminate)
            return
        self.state = "completed"
        if self.is_invite:
            if self.hop.transport == UDP and provisional_sent:
                # without a provisional the client's timer A retransmits the
                # INVITE and each repeat gets the final again (as a stateless
                # UAS, RFC 3261 8.2.7): timer G would only multiply datagrams
                # towards an address that may be forged
                self.timers.start("G", self.g_interval, self._timer_g)
            self.timers.start("H", TIMER_B, self.terminate)
        else:
            self.timers.start("J", TIMER_B if self.hop.transport != TCP else 0, self.terminate)

    def trying(self) -> None:
        """``100 Trying`` for an INVITE, unless a response went already."""
        self.timers.cancel("100")
        if self.is_invite and self.state == "trying" and self.request is not None:
            self.respond(make_response(self.request, 100, None, None,
                                       [("Server", SERVER_NAME)]))

    def _release(self) -> None:
        """A final response went: keep only what answers repeats (the
        request and the response context are no longer needed)."""
        self.request = None  # type: ignore[assignment]
        if self.context is not None:
            self.context.best = None

    def retransmitted(self) -> None:
        """The same request again: send the last response again."""
        if self.last_out is not None and self.state != "confirmed":
            self.proxy._resend_upstream(self)

    def ack(self) -> None:
        """ACK of our non-2xx final response."""
        if self.state == "completed" and self.is_invite:
            self.state = "confirmed"
            self.timers.cancel("G")
            self.timers.cancel("H")
            self.timers.start("I", T4 if self.hop.transport == UDP else 0, self.terminate)

    def _timer_g(self) -> None:
        if self.state != "completed" or self.last_out is None:
            return
        self.proxy._resend_upstream(self)
        self.g_interval = min(2 * self.g_interval, T2)
        self.timers.start("G", self.g_interval, self._timer_g)

    def terminate(self) -> None:
        self.state = "terminated"
        self.timers.cancel_all()
        self.proxy._drop_server(self)
        _dissolve(self.context)


class ClientTxn:
    """The transaction of a request we forwarded (RFC 3261 17.1)."""

    def __init__(self, proxy: "SipProxy", context: Optional[Context], request: Request,
                 hop: Hop, branch: str) -> None:
        self.proxy = proxy
        self.context = context
        self.request = request
        self.hop = hop
        self.branch = branch
        self.method = request.method
        self.state = "calling" if request.method == "INVITE" else "trying"
        self.provisional = False
        self.final: Optional[int] = None
        self.cancel_wanted = False
        self.cancelled = False
        self.data: Optional[bytes] = None
        self.timers = Timers(proxy.clock)
        self.interval = T1

    @property
    def key(self) -> Tuple[str, str]:
        return (self.branch, self.method)

    @property
    def is_invite(self) -> bool:
        return self.method == "INVITE"

    def start(self) -> None:
        if self.hop.transport == UDP:
            self.timers.start("A", self.interval, self._retransmit)
        self.timers.start("B", TIMER_B, self._timeout)
        if self.is_invite:
            self.timers.start("C", TIMER_C, self._timer_c)

    def _retransmit(self) -> None:
        if self.final is not None or (self.is_invite and self.provisional):
            return
        self.proxy._send_client(self)
        self.interval = 2 * self.interval if self.is_invite else min(2 * self.interval, T2)
        if self.provisional and not self.is_invite:
            self.interval = T2
        self.timers.start("A", self.interval, self._retransmit)

    def _timeout(self) -> None:
        """Timers B and F: no final response in time: a 408."""
        if self.final is None:
            self.proxy._client_failed(self, 408)

    def _timer_c(self) -> None:
        """Timer C: an INVITE that rang for too long."""
        if self.final is not None:
            return
        if self.provisional:
            self.proxy._cancel_branch(self)
            # the 487 should follow; if it does not, give up on the branch
            self.timers.start("B", TIMER_B, self._timeout)
        else:
            self.proxy._client_failed(self, 408)

    def got(self, response: Response) -> None:
        code = response.code
        if code < 200:
            self.provisional = True
            if self.is_invite:
                self.timers.cancel("B")  # timer F of a non-INVITE runs on
                self.state = "proceeding"
                self.timers.cancel("A")
                self.timers.start("C", TIMER_C, self._timer_c)
            if self.cancel_wanted and not self.cancelled:
                self.proxy._cancel_branch(self)
            return
        self.final = code
        self.timers.cancel_all()
        if self.is_invite and code < 300:
            self.state = "accepted"   # RFC 6026: pass 2xx retransmissions
            self.timers.start("M", TIMER_B, self.terminate)
            self.data = None
        else:
            self.state = "completed"
            reliable = self.hop.reliable
            if self.is_invite:
                self.timers.start("D", 0 if reliable else TIMER_B, self.terminate)
            else:
                self.timers.start("K", 0 if reliable else T4, self.terminate)

    def terminate(self) -> None:
        self.state = "terminated"
        self.timers.cancel_all()
        self.proxy._drop_client(self)
        _dissolve(self.context)


def _dissolve(context: Optional[Context]) -> None:
    """Once the server transaction of ``context`` and all its branches have
    terminated, nothing uses the context any more: drop the references
    between them (the context and its transactions refer to each other), so
    that a finished call is freed by reference counting and is not left to
    the cyclic garbage collector (which never sees objects it froze, see
    ``presence.gcpolicy``)."""
    if context is None or context.server.state != "terminated":
        return
    if any(c.state != "terminated" for c in context.clients):
        return
    context.server.context = None
    for client in context.clients:
        client.context = None
    context.clients = []
    context.best = context.best_owner = None


def forbidden_address(ip: str) -> Optional[str]:
    """Why the proxy never sends to the IP address ``ip`` (an address
    after name resolution), or None for a public unicast address.

    Refused: loopback, link-local, private ranges (RFC 1918, ``fc00::/7``),
    shared address space (``100.64/10``), unspecified, multicast, broadcast,
    and every other range the IANA registries do not call globally
    reachable (documentation, benchmarking, reserved ...); an IPv4-mapped
    IPv6 address is judged as its IPv4 address."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_multicast:
        return "multicast address"
    if address.is_private:
        return "private address"
    if not address.is_global:
        return "address not globally reachable"
    return None


class Dialog:
    """A dialog the proxy relayed (it record-routed the request that made
    it): the tunnel sessions in it (by ID) and the network peer the proxy
    exchanged it with (``(transport, ip, port)``), if any, with its TCP
    connection (weakly: the dialog does not keep it)."""

    __slots__ = ("sessions", "peer", "used", "_conn")

    def __init__(self, sessions: frozenset, peer: Optional[Tuple[str, str, int]],
                 used: float, conn: Any = None) -> None:
        self.sessions = sessions
        self.peer = peer
        self.used = used
        try:
            self._conn = weakref.ref(conn) if conn is not None else None
        except TypeError:  # an object without weak references (tests)
            self._conn = lambda: conn

    @property
    def conn(self) -> Any:
        conn = self._conn() if self._conn is not None else None
        return conn if getattr(conn, "connected_", True) else None

    def is_peer(self, transport: str, ip: str, port: int) -> bool:
        """Whether ``transport:ip:port`` is the peer the dialog was made with:
        over UDP the very address and port it sent from; over TCP its IP
        while its connection is open (the request then goes on that
        connection, see :meth:`peer_hop`: no new connection is opened, so
        that a peer seen through a NAT or proxy address opens no other port
        of that address)."""
        if self.peer is None:
            return False
        p_transport, p_ip, p_port = self.peer
        if transport != p_transport or ip != p_ip:
            return False
        return self.conn is not None if transport == TCP else port == p_port

    def peer_hop(self) -> "Hop":
        transport, ip, port = self.peer  # type: ignore[misc]
        return Hop(transport, ip, port, conn=self.conn if transport == TCP else None)


class Dialogs:
    """The dialogs the proxy relayed, by Call-ID and the pair of tags;
    bounded (:data:`MAX_DIALOGS`, least recently used out) and expiring
    (:data:`DIALOG_IDLE` without use); no timers: checked when looked up."""

    def __init__(self, clock, limit: int = MAX_DIALOGS, idle: float = DIALOG_IDLE) -> None:
        self.clock = clock
        self.limit = limit
        self.idle = idle
        self._dialogs: "OrderedDict[tuple, Dialog]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._dialogs)

    @staticmethod
    def key(message) -> Optional[tuple]:
        ours, theirs = message.tag("from"), message.tag("to")
        if not ours or not theirs or not message.call_id:
            return None
        return (message.call_id, frozenset((ours, theirs)))

    def add(self, message, sessions: List[Session], peer: Optional["Hop"]) -> None:
        """Remember the dialog of ``message`` (a dialog-making response) with
        ``sessions`` in it and ``peer`` (a network hop) as its peer."""
        key = self.key(message)
        if key is None:
            return
        ids = frozenset(s.id for s in sessions)
        now = self.clock.seconds()
        known = self._dialogs.get(key)
        if known is not None:
            ids |= known.sessions
        if known is not None and peer is None:
            known.sessions, known.used = ids, now  # a 200 after a 180: same peer
        else:
            address = (peer.transport, bare_host(peer.host).lower(), peer.port) \
                if peer is not None else None
            self._dialogs[key] = Dialog(ids, address, now,
                                        peer.conn if peer is not None else None)
        self._dialogs.move_to_end(key)
        while len(self._dialogs) > self.limit:
            self._dialogs.popitem(last=False)

    def find(self, message, session: Session) -> Optional[Dialog]:
        """The dialog of in-dialog request ``message`` if ``session`` is in it."""
        key = self.key(message)
        dialog = self._dialogs.get(key) if key is not None else None
        if dialog is None:
            return None
        now = self.clock.seconds()
        if now - dialog.used > self.idle:
            del self._dialogs[key]
            return None
        if session.id not in dialog.sessions:
            return None
        dialog.used = now
        self._dialogs.move_to_end(key)
        return dialog

    def drop(self, message) -> None:
        key = self.key(message)
        if key is not None:
            self._dialogs.pop(key, None)


class _Target:
    """Where route processing says a request goes."""

    def __init__(self, kind: str, code: int = 0, reason: str = "", name: str = "",
                 session: Optional[Session] = None, uri: Optional[SipURI] = None) -> None:
        self.kind = kind  # error, self, user, session, outside
        self.code = code
        self.reason = reason
        self.name = name
        self.session = session
        self.uri = uri


class SipProxy:
    """The proxy for ``domain``: see the module docstring."""

    def __init__(self, service, network, clock, domain: str, *,
                 outbound: str = OUTBOUND_NONE, session_rate: float = SESSION_RATE,
                 source_rate: float = SOURCE_RATE,
                 registrar: Optional[Dict[str, int]] = None) -> None:
        if outbound not in (OUTBOUND_NONE, OUTBOUND_PUBLIC):
            raise ValueError(f"outbound must be {OUTBOUND_NONE!r} or {OUTBOUND_PUBLIC!r}")
        self.service = service
        self.hub = service.hub
        self.network = network
        self.clock = clock
        self.domain = domain.lower()
        self.outbound = outbound
        #: ``(host, port)`` of every listener of this server (HTTP, SIP,
        #: SMSC ...; a wildcard host stands for every local address), filled
        #: by :meth:`listening` once they are up
        self.own_listeners: set = set()
        self.dialogs = Dialogs(clock)
        #: POST /sip per session, and messages per source address from the network
        self.session_limiter = RateLimiter(max(1.0, session_rate * BURST), session_rate)
        self.source_limiter = RateLimiter(max(1.0, source_rate * BURST), source_rate)
        self.server_txns: Dict[tuple, ServerTxn] = {}
        self.client_txns: Dict[Tuple[str, str], ClientTxn] = {}
        #: Contact tokens: token -> session, and back (weak: gone with the session)
        self._sessions_by_token: "weakref.WeakValueDictionary[str, Session]" = \
            weakref.WeakValueDictionary()
        self._tokens: "weakref.WeakKeyDictionary[Session, str]" = weakref.WeakKeyDictionary()
        self.counters: Dict[str, int] = {}
        #: the SIP presence notifier (presence.sip.presence_server.SipPresence)
        #: that answers SUBSCRIBEs to our users; None: they are relayed
        self.presence: Any = None
        # digest authentication for the domain (REGISTER here; SUBSCRIBE from
        # the network), its nonces keyed by a secret of this process only;
        # passwords set or proven from now on also keep their HA1s
        service.sip_realm = self.domain
        self.digest = DigestAuth(
            self.domain, lambda user, realm, algorithm: defer.ensureDeferred(
                service.sip_ha1(user, realm, algorithm)),
            clock, secrets.token_bytes(32), uri_ok=self._digest_uri_ok)
        self.registrar = Registrar(self, self.digest, **(registrar or {}))
        #: the media relay's SDP hooks (presence.sip.media.MediaAnchor), or
        #: None: SDP passes untouched
        self.media: Any = None
        #: the other boxes of a cluster (ISipBoxes), or None: one node
        self.boxes: Optional[Any] = None

    @property
    def port(self) -> int:
        return self.network.port

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def stats(self) -> Dict[str, int]:
        figures = dict(self.counters)
        figures["server_transactions"] = len(self.server_txns)
        figures["client_transactions"] = len(self.client_txns)
        figures["dialogs"] = len(self.dialogs)
        if self.presence is not None:
            figures.update(self.presence.stats())
        figures.update(self.registrar.stats())
        return figures

    def listening(self, addresses: Dict[str, str]) -> None:
        """The ready gate's hook: ``label -> "host:port"`` of every listener
        of this server; the proxy never sends to any of them."""
        for address in addresses.values():
            host, _, port = address.rpartition(":")
            if port.isdigit():
                self.own_listeners.add((bare_host(host).lower(), int(port)))

    # -- who we are --------------------------------------------------------

    def is_me(self, host: str, port: Optional[int]) -> bool:
        """Whether ``host:port`` (of a URI or a Via) names this proxy."""
        host = bare_host(host)
        if host == self.domain:
            return port is None or port == self.port
        if port is None:
            port = 5060
        return port == self.port and self.network.is_local(host)

    def _digest_uri_ok(self, given: str, request: Request) -> bool:
        """Digest credentials may name this proxy or the domain as their
        ``uri`` instead of the Request-URI (SIPp puts the address it sends to)."""
        try:
            uri = SipURI.parse(given)
        except ValueError:
            return False
        return uri.user is None and (self._uri_is_me(uri) or bare_host(uri.host) == self.domain)

    def _uri_is_me(self, uri: Optional[SipURI]) -> bool:
        return uri is not None and self.is_me(uri.host, uri.port)

    def local_host(self, hop: Hop) -> str:
        if hop.tunnel:
            return self.domain
        return self.network.local_host(hop)

    def token_of(self, session: Session) -> str:
        token = self._tokens.get(session)
        if token is None:
            token = secrets.token_urlsafe(12)
            self._tokens[session] = token
            self._sessions_by_token[token] = session
        return token

    def _alive(self, session: Optional[Session]) -> bool:
        return session is not None and self.hub.session(session.id) is session

    # -- ways in -----------------------------------------------------------

    def received(self, data: bytes, hop: Hop) -> None:
        """One message from the network (a datagram, or one framed from a
        stream; ``TCP`` messages have been framed by Content-Length)."""
        if not data.strip(b"\r\n \t"):
            return  # keep-alive
        # (another box's TCP connection carries all its callers: it is not
        # counted as one source; TCP, since its source cannot be forged)
        if not (hop.transport == TCP and self.boxes is not None
                and self.boxes.is_box_ip(hop.host)) \
                and not self.source_limiter.take(hop.host, self.clock.seconds()):
            # dropped unanswered: an answer would go to an address that may
            # be forged; a real peer retransmits
            self._count("rate_limited")
            return
        try:
            message = parse(data)
        except ParseError as e:
            self._count("malformed")
            self.reject_malformed(e, hop)
            return
        if isinstance(message, Response):
            self._network_response(message, hop)
        else:
            self._network_request(message, hop)

    def reject_malformed(self, error: ParseError, hop: Hop) -> None:
        """Answer a request that could not be taken, when it can be
        addressed; drop anything else."""
        partial = error.partial
        log.debug("malformed SIP message from {hop}: {why}", hop=hop, why=error.reason)
        if not isinstance(partial, Request) or partial.method == "ACK" \
                or not partial.get_all("via"):
            return
        try:
            phrase = f"{reason_phrase(error.status)} ({error.reason})"
        except Exception:  # pragma: no cover
            phrase = None
        response = make_response(partial, error.status, phrase, secrets.token_hex(5),
                                 [("Server", SERVER_NAME)])
        # answer the source itself: the Via of a broken message is not trusted
        self.network.send(response.to_bytes(), Hop(hop.transport, hop.host, hop.port, hop.conn),
                          None)

    def from_session(self, session: Session, data: bytes) -> Dict[str, Any]:
        """The body of ``POST /sip`` from ``session``: a response to a
        ``msg sipreq`` or a request of the user.  Returns the JSON answer;
        raises a :class:`~presence.errors.ClientError` for the HTTP error."""
        if not self.session_limiter.take(session.id, self.clock.seconds()):
            self._count("rate_limited")
            raise TooMany("too many SIP messages from this session: slow down")
        if len(data) > MAX_MESSAGE:
            raise TooLarge(f"a SIP message may be at most {MAX_MESSAGE} bytes")
        if b"\r" not in data:
            data = data.replace(b"\n", b"\r\n")  # frame text: restore CRLF
        try:
            message = parse(data)
        except ParseError as e:
            if e.status == 513:
                raise TooLarge(f"SIP message too large: {e.reason}")
            raise BadRequest(f"not a valid SIP message: {e.reason}")
        if not text_body(message):
            raise BadRequest("not a valid SIP message: the body is not UTF-8 text"
                             " (the tunnel carries text)")
        hop = Hop(TUNNEL, session=session)
        if isinstance(message, Response):
            return self._session_response(message, session)
        return self._session_request(message, hop)

    # -- requests ----------------------------------------------------------

    def _network_request(self, request: Request, hop: Hop) -> None:
        via = request.top_via()
        assert via is not None
        # RFC 3261 18.2.1 and RFC 3581: where the request really came from
        if bare_host(via.host) != bare_host(hop.host) or via.param("rport") == "":
            via.set_param("received", hop.host)
        if via.param("rport") == "":
            via.set_param("rport", str(hop.port))
        request.set_top_via(via)
        key = self._network_key(request)
        self._request(request, hop, key, via.branch or key[1])

    def _session_request(self, request: Request, hop: Hop) -> Dict[str, Any]:
        via = request.top_via()
        assert via is not None
        branch = via.branch
        if not branch:
            branch = "t" + hashlib.sha1(repr(self._network_key(request)).encode()).hexdigest()[:16]
        if hop.session.user.guest:
            # guests answer calls but never place them (nor hang up: the
            # caller does), so that a visitor without an account cannot make
            # the server send anything anywhere
            self._count("refused_guest")
            if request.method != "ACK":
                self._reply_stateless(request, hop, 403, txid=branch,
                                      reason="Forbidden (guests may not send SIP requests)")
            return {"txid": branch}
        method = "INVITE" if request.method == "ACK" else request.method
        key = ("T", hop.session.id, branch, method)
        self._request(request, hop, key, branch)
        return {"txid": branch}

    def _network_key(self, request: Request) -> tuple:
        via = request.top_via()
        method = "INVITE" if request.method == "ACK" else request.method
        branch = via.branch or ""
        if branch.startswith(MAGIC_COOKIE):
            host, port = via.sent_by
            return ("N", branch, host, port, method)
        number, _ = request.cseq
        return ("O", request.call_id, request.tag("from"), number,
                request.values("via")[0], method)

    def _request(self, request: Request, hop: Hop, key: tuple, txid: str) -> None:
        if request.method == "ACK":
            stx = self.server_txns.get(key)
            if stx is not None:
                stx.ack()
                return
            self._stateless(request, hop)
            return
        stx = self.server_txns.get(key)
        if stx is not None:
            stx.retransmitted()
            return
        if request.method == "CANCEL":
            self._cancel_request(request, hop, key[:-1] + ("INVITE",))
            return
        if len(self.server_txns) + len(self.client_txns) >= MAX_TRANSACTIONS:
            self._count("overload")
            self._reply_stateless(request, hop, 503, [("Retry-After", "5")])
            return
        stx = ServerTxn(self, key, request, hop, txid)
        self.server_txns[key] = stx
        self._count("requests")
        self._handle(stx)

    def _reply_stateless(self, request: Request, hop: Hop, code: int,
                         extra: List[Tuple[str, str]] = (), reason: Optional[str] = None,
                         txid: Optional[str] = None) -> None:
        response = make_response(request, code, reason, secrets.token_hex(5),
                                  [("Server", SERVER_NAME), *extra])
        if hop.tunnel:
            self._deliver_response(hop.session, txid or _txid_of(request), response)
        else:
            self._send_response(response.to_bytes(), self._response_hop(request, hop))

    def _reply(self, stx: ServerTxn, code: int, extra: List[Tuple[str, str]] = (),
               reason: Optional[str] = None) -> None:
        response = make_response(stx.request, code, reason, stx.to_tag,
                                 [("Server", SERVER_NAME), *extra])
        if stx.context is not None:
            stx.context.final = code >= 200
        stx.respond(response)

    def _validate(self, request: Request, loop_hash: str) -> Optional[Tuple[int, str, list]]:
        """RFC 3261 16.3: ``(code, reason, extra headers)`` to refuse with."""
        try:
            uri = SipURI.parse(request.uri)
        except ValueError:
            return 416, "Unsupported URI Scheme", []
        if uri.scheme != "sip":
            return 416, "Unsupported URI Scheme (no TLS here)", []
        mf = request.get("max-forwards")
        if mf is not None and int(mf) == 0:
            return 483, "Too Many Hops", []
        for value in request.values("via"):
            via = Via.parse(value)
            branch = via.branch or ""
            if self.is_me(via.host, via.port) and branch.startswith(
                    f"{MAGIC_COOKIE}{loop_hash}."):
                return 482, "Loop Detected", []
        required = [r.strip() for v in request.get_all("proxy-require") for r in v.split(",")]
        required = [r for r in required if r]
        if required:
            return 420, "Bad Extension", [("Unsupported", ", ".join(required))]
        return None

    def _loop_hash(self, request: Request) -> str:
        """What the branch of a forwarded copy depends on (RFC 3261 16.6
        step 8): the Request-URI, the routing and admission fields, the
        dialog and transaction identifiers; not the Via or Max-Forwards."""
        parts = [request.uri, request.call_id or "", request.tag("from") or "",
                 request.tag("to") or "", str(request.cseq[0])]
        for name in ("route", "proxy-require", "proxy-authorization"):
            parts.extend(request.get_all(name))
        return hashlib.sha1("\x00".join(parts).encode("utf-8")).hexdigest()[:12]

    def _handle(self, stx: ServerTxn) -> None:
        request = stx.request
        loop_hash = self._loop_hash(request)
        context = stx.context = Context(stx, loop_hash)
        refusal = self._validate(request, loop_hash)
        if refusal is not None:
            code, reason, extra = refusal
            self._count(f"refused_{code}")
            self._reply(stx, code, extra, reason)
            return
        forwarded = request.copy()
        target = self._target(forwarded, stx.hop)
        if request.method == "SUBSCRIBE" and target.kind == "user" \
                and self.presence is not None:
            # answered by the server from its presence tables, never relayed
            # to the user's sessions (nor back to the subscriber's own)
            self._subscribe(stx, target.name)
            return
        if request.method == "REGISTER":
            # registrar for the domain (and, from the tunnel, for the
            # bridge's phone); for any other domain a 403 (RFC 3261 10.3
            # step 1: a proxy that is no open relay does not forward it)
            if stx.hop.tunnel or target.kind in ("self", "user"):
                self.registrar.register(stx)
                return
            if target.kind != "error":
                target = _Target("error", 403, f"Forbidden (the registrar of {self.domain}"
                                               " only)")
        # 100 Trying as the request is forwarded, or when its user is found
        # (or the lookup is slow); a final known before goes alone, and the
        # caller's retransmissions get it again
        if target.kind == "user":
            stx.timers.start("100", TRYING_DELAY, stx.trying)
        elif target.kind in ("session", "outside"):
            stx.trying()
        if target.kind == "error":
            self._count(f"refused_{target.code}")
            self._reply(stx, target.code, reason=target.reason or None)
        elif target.kind == "self":
            if request.method == "OPTIONS":
                extra = [("Allow", ALLOW), ("Accept", "application/sdp")]
                if self.presence is not None:
                    extra.append(("Allow-Events", "presence"))
                self._reply(stx, 200, extra)
            else:
                self._reply(stx, 405, [("Allow", "OPTIONS")])
        elif target.kind == "session":
            self._forward(context, forwarded, [Hop(TUNNEL, session=target.session)])
        elif target.kind == "user":
            context.target_pending = True
            d = defer.ensureDeferred(self.service.resolve(target.name))
            if self.boxes is not None:
                d.addCallback(self._with_boxes, forwarded)
            d.addCallback(self._user_found, context, forwarded)
            d.addErrback(self._target_failed, context)
        else:
            context.target_pending = True
            d = self._outside_hop(target.uri, stx.hop, forwarded)
            d.addCallback(lambda hop: self._forward(context, forwarded, [hop]))
            d.addErrback(self._target_failed, context)

    def _subscribe(self, stx: ServerTxn, name: str) -> None:
        def reply(code: int, extra: List[Tuple[str, str]], reason: Optional[str]) -> None:
            if stx.state != "terminated" and stx.request is not None:
                self._count(f"presence_{code}")
                self._reply(stx, code, extra, reason)

        self.presence.subscribe(stx.request, stx.hop, name, stx.to_tag, reply)

    def send_request(self, request: Request, hop: Hop, on_error: Callable[[], None]) -> None:
        """Send a request the server makes itself (a NOTIFY) to ``hop``: as
        a ``msg sipreq`` frame to a live session, else over UDP or on the
        TCP connection it names while that is open (no new connection to a
        peer's source port); ``on_error`` when it cannot go."""
        if hop.tunnel:
            if not self._alive(hop.session) or not text_body(request):
                on_error()
                return
            branch = request.top_via().branch or "-"
            self.hub.deliver_session(hop.session, frames.sipreq(
                request.method, branch, request.to_text()))
            return
        if hop.transport == TCP and not getattr(hop.conn, "connected_", hop.conn is not None):
            on_error()
            return
        self.network.send(request.to_bytes(), hop, on_error)

    def _target(self, request: Request, source: Hop) -> _Target:
        """RFC 3261 16.4 and 16.5: route processing and the target.
        ``request`` is the copy to forward; our own Route is removed."""
        routes = request.values("route")
        if routes:
            try:
                first = NameAddr.parse(routes[0]).sip_uri()
            except ValueError:
                return _Target("error", 400, "Bad Request (malformed Route)")
            if self._uri_is_me(first):
                request.set_values("route", routes[1:])
                routes = routes[1:]
        uri = SipURI.parse(request.uri)
        if routes and uri.user is None and self._uri_is_me(uri) and uri.param("lr") is not None:
            # the previous hop was a strict router (RFC 3261 16.4)
            try:
                request.uri = NameAddr.parse(routes[-1]).uri
            except ValueError:
                return _Target("error", 400, "Bad Request (malformed Route)")
            request.set_values("route", routes[:-1])
            routes = routes[:-1]
            try:
                uri = SipURI.parse(request.uri)
            except ValueError:
                return _Target("error", 416, "Unsupported URI Scheme")
        if routes:
            try:
                next_uri = NameAddr.parse(routes[0]).sip_uri()
            except ValueError:
                next_uri = None
            if not source.tunnel and not (next_uri is not None and self.boxes is not None
                                          and self.boxes.hop_of(next_uri) is not None):
                # (a dialog through another box of the cluster goes on)
                return _Target("error", 403, "Forbidden (not an open relay)")
            if next_uri is None:
                return _Target("error", 416, "Unsupported URI Scheme (Route)")
            return _Target("outside", uri=next_uri)
        if self._uri_is_me(uri) or bare_host(uri.host) == self.domain:
            if not self._uri_is_me(uri):
                # the domain, but another port: someone else's
                return self._elsewhere(uri, source)
            token = uri.param("tun")
            if token is not None:
                session = self._sessions_by_token.get(token)
                if not self._alive(session):
                    if request.tag("to"):
                        return _Target("error", 481, "Call/Transaction Does Not Exist")
                    return _Target("error", 404, "Not Found (that session has ended)")
                return _Target("session", session=session)
            if uri.user is None:
                return _Target("self")
            return _Target("user", name=unquote(uri.user))
        return self._elsewhere(uri, source)

    def _elsewhere(self, uri: SipURI, source: Hop) -> _Target:
        if not source.tunnel:
            return _Target("error", 403, "Forbidden (not an open relay)")
        return _Target("outside", uri=uri)

    def _outside_hop(self, uri: SipURI, source: Hop, request: Request) -> defer.Deferred:
        """The network hop for ``uri`` (the next ``Route`` or the
        Request-URI) of ``request`` from tunnel session ``source``, once the
        name is resolved and every address it resolves to is allowed; fails
        with :class:`_Refused` (``403``) when the user may not send there."""
        box = self.boxes.hop_of(uri) if self.boxes is not None else None
        if box is not None:
            return defer.succeed(box)   # another box of the cluster
        transport = TCP if uri.transport == "TCP" else UDP
        if uri.transport not in ("UDP", "TCP"):
            return defer.fail(_Refused(503, f"Service Unavailable (no {uri.transport[:10]})"))
        host = (uri.param("maddr") or bare_host(uri.host)).lower()
        port = uri.port or 5060
        try:
            dialog = self._outside_permit(request, source)
            if host == self.domain:
                # the domain on another port than ours: never this server's
                raise _Refused(403, "Forbidden (this server's own address)")
        except _Refused as e:
            self._count("refused_outside")
            return defer.fail(e)
        d = self.network.resolve(host)
        d.addCallback(self._checked_hop, host, transport, port, dialog)
        return d

    def _outside_permit(self, request: Request, source: Hop) -> Optional[Dialog]:
        """Whether the tunnel user may send ``request`` outside at all: an
        in-dialog request of a dialog the proxy relayed with this session
        in it (the dialog is returned: its peer is allowed), or with
        ``--sip-outbound public`` any request of a registered user (guests
        got their 403 before)."""
        session = source.session
        if session is not None and request.tag("to"):
            dialog = self.dialogs.find(request, session)
            if dialog is not None:
                return dialog
        if self.outbound != OUTBOUND_PUBLIC or session is None or session.user.guest:
            raise _Refused(403, f"Forbidden (only users of {self.domain} can be reached"
                                " through this server)")
        return None

    def _checked_hop(self, ips: List[str], host: str, transport: str, port: int,
                     dialog: Optional[Dialog]) -> Hop:
        """Every address ``host`` resolved to must be allowed (a name with
        one private address among public ones is refused); then the hop."""
        if not ips:
            from twisted.internet.error import DNSLookupError
            raise DNSLookupError(host)
        for ip in ips:
            why = self.forbidden_destination(ip, port, transport, dialog)
            if why is not None:
                self._count("refused_address")
                log.info("SIP request of a tunnel user to {host}:{port} refused: {why}",
                         host=host, port=port, why=why)
                raise _Refused(403, f"Forbidden ({why})")
        ipv4 = [ip for ip in ips if ":" not in ip]
        ip = (ipv4 or ips)[0]
        if dialog is not None and transport == TCP and dialog.is_peer(transport, ip, port):
            return dialog.peer_hop()  # on the peer's own connection
        return Hop(transport, ip, port)

    def forbidden_destination(self, ip: str, port: int, transport: str = UDP,
                              dialog: Optional[Dialog] = None) -> Optional[str]:
        """Why the proxy does not send to ``ip:port``, or None: never to a
        listener of this server nor any other address of this machine; the
        network peer of ``dialog`` is allowed even when it is a private
        address (it talked to us from there); else only public addresses,
        and for an in-dialog request only with ``--sip-outbound public`` (a
        dialog is no way around it: its peer is the one address it opens)."""
        ip = bare_host(ip).lower()
        if self._is_own_listener(ip, port):
            return "this server's own address"
        if self.boxes is not None and self.boxes.is_box(ip, port):
            return None     # another box of the cluster (its SIP listener)
        if dialog is not None and dialog.is_peer(transport, ip, port):
            return None
        why = forbidden_address(ip)
        if why is None and self.network.is_local(ip):
            why = "this server's own address"
        if why is None and dialog is not None and self.outbound != OUTBOUND_PUBLIC:
            why = "not the address this dialog was made with"
        return why

    def _is_own_listener(self, ip: str, port: int) -> bool:
        if port == self.port and self.network.is_local(ip):
            return True
        for host, own_port in self.own_listeners:
            if own_port == port and (host == ip or (
                    host in ("", "0.0.0.0", "::") and self.network.is_local(ip))):
                return True
        return False

    def _routing_settled(self, context: Context) -> bool:
        """The target of ``context`` is known: False when the transaction
        has meanwhile been answered, ended or cancelled (cancelled: ``487``)."""
        context.target_pending = False
        stx = context.server
        if context.final or stx.state == "terminated":
            return False
        if context.cancelled:
            self._reply(stx, 487, reason="Request Terminated")
            return False
        return True

    def _user_found(self, found, context: Context, request: Request) -> None:
        stx = context.server
        if not self._routing_settled(context):
            return
        if found is None or found[0] != "user":
            self._count("not_found")
            self._reply(stx, 404, reason="Not Found")
            return
        name = found[1]
        sessions = self.hub.sessions_of(name) if self.hub.is_online(name) else []
        # presence sources (a dyndns2 name, a registration) have nobody
        # behind them to answer; a registered phone is reached at its binding
        dests = [Hop(TUNNEL, session=s) for s in sessions if s.scope not in SOURCE_SCOPES]
        dests += self._binding_hops(name)
        # (in a cluster, the proxies of the other boxes holding sessions of
        # the user: _with_boxes)
        dests += list(found[2]) if len(found) > 2 else []
        if not dests:
            self._count("offline")
            self._reply(stx, 480, reason="Temporarily Unavailable")
            return
        if (request.method == "INVITE" and request.tag("to") is None
                and self.hub.state_of(name)[0] == "busy"):
            # busy (spec section 12): a new call is refused without ringing;
            # away still rings (and 480 stays "no live session")
            self._count("busy")
            self._reply(stx, 486, reason="Busy Here")
            return
        stx.trying()
        self._forward(context, request, dests)

    def _binding_hops(self, name: str) -> List[Hop]:
        """Where the user's registered phones are reached: the address each
        REGISTER came from, with the registered Contact as Request-URI."""
        hops = []
        for binding in self.registrar.network_bindings(name):
            conn = binding.conn
            if binding.transport == TCP and conn is None:
                continue  # its connection closed: unreachable until it registers again
            if self._is_own_listener(bare_host(binding.host).lower(), binding.port):
                continue
            hops.append(Hop(binding.transport, binding.host, binding.port, conn=conn,
                            uri=binding.contact))
        return hops

    def _with_boxes(self, found, request: Request) -> Any:
        """A cluster: ``found`` and the hops of the other boxes holding
        sessions of the user (ISipBoxes.hops, which may read Redis)."""
        if found is None or found[0] != "user":
            return found
        d = defer.maybeDeferred(self.boxes.hops, found[1], SipURI.parse(request.uri))
        d.addCallback(lambda hops: (found[0], found[1], hops))
        return d

    def _target_failed(self, failure, context: Context, code: int = 500) -> None:
        context.target_pending = False
        if context.final:
            return
        if failure.check(_Refused):
            self._reply(context.server, failure.value.code, reason=failure.value.reason)
            return
        if failure.check(ClientError) is None:
            from twisted.internet.error import DNSLookupError
            if failure.check(DNSLookupError):
                self._reply(context.server, 404, reason="Not Found (no such host)")
                return
            log.failure("routing a SIP request failed", failure)
        self._reply(context.server, 500, reason="Server Internal Error")

    # -- forwarding -----------------------------------------------------------

    def _record_route(self, source: Hop, dest: Hop) -> str:
        leg = source if not source.tunnel else dest
        host = self.local_host(leg)
        uri = SipURI(host, None, self.port, [("lr", None)])
        if leg.transport == TCP:
            uri = SipURI(host, None, self.port, [("transport", "tcp"), ("lr", None)])
        return f"<{uri}>"

    def _prepare(self, request: Request, source: Hop, dest: Hop, branch: str) -> Request:
        """The copy of ``request`` for ``dest``: 16.6 steps 3 to 8."""
        copy = request.copy()
        if dest.uri is not None:
            copy.uri = dest.uri
        mf = copy.get("max-forwards")
        copy.set("max-forwards", str(int(mf) - 1) if mf is not None else "70")
        if source.tunnel:
            self._rewrite_contacts(copy, source.session, self.local_host(dest))
        if copy.method not in NO_RECORD_ROUTE and (source.tunnel or dest.tunnel
                                                   or self._is_box_hop(source)
                                                   or self._is_box_hop(dest)):
            # between two network peers (a phone calling a registered
            # phone) the proxy stays out of the dialog: it relays no
            # in-dialog requests from the network to the network; a call
            # that crosses to (or comes from) another box of the cluster
            # keeps both proxies in its route set
            copy.prepend("record-route", self._record_route(source, dest))
        via_transport = TCP if dest.transport == TCP else UDP
        copy.prepend("via", str(Via(via_transport, self.local_host(dest), self.port,
                                    [("branch", branch)])))
        return copy

    def _is_box_hop(self, hop: Hop) -> bool:
        """Whether ``hop`` is the SIP listener of another box of the cluster."""
        return (self.boxes is not None and not hop.tunnel
                and self.boxes.is_box(bare_host(hop.host).lower(), hop.port))

    def _branch(self, context: Optional[Context], request: Request) -> str:
        loop_hash = context.loop_hash if context is not None else self._loop_hash(request)
        return f"{MAGIC_COOKIE}{loop_hash}.{secrets.token_hex(6)}"

    def _forward(self, context: Context, request: Request, dests: List[Hop]) -> None:
        stx = context.server
        if not self._routing_settled(context):
            return
        if request.method != "ACK" and not text_body(request) and any(d.tunnel for d in dests):
            self._reply(stx, 415, reason="Unsupported Media Type (the tunnel carries text)")
            return
        copies = []
        for dest in dests:
            branch = self._branch(context, request)
            copy = self._prepare(request, stx.hop, dest, branch)
            if self.media is not None:
                try:
                    self.media.request(copy, stx.hop, dest)
                except NoRoom as e:
                    self._count("refused_relay")
                    log.info("a call got 503: {why}", why=str(e))
                    self._reply(stx, e.status, [("Retry-After", "30")], reason=e.reason)
                    return
            copies.append((dest, branch, copy))
        for dest, branch, copy in copies:
            ctx = ClientTxn(self, context, copy, dest, branch)
            context.clients.append(ctx)
            self.client_txns[ctx.key] = ctx
            ctx.start()
            self._send_client(ctx)

    def _send_client(self, ctx: ClientTxn) -> None:
        hop = ctx.hop
        if hop.tunnel:
            if not self._alive(hop.session):
                self.clock.callLater(0, self._client_failed, ctx, 480)
                return
            self.hub.deliver_session(hop.session, frames.sipreq(
                ctx.method, ctx.branch, ctx.request.to_text()))
            return
        if ctx.data is None:
            ctx.data = ctx.request.to_bytes()
        self.network.send(ctx.data, hop, lambda: self._client_failed(ctx, 503))

    def _stateless(self, request: Request, hop: Hop) -> None:
        """An ACK of a 2xx (its own transaction, never answered): forward it."""
        if self._validate(request, self._loop_hash(request)) is not None:
            return
        copy = request.copy()
        target = self._target(copy, hop)
        if target.kind == "session":
            self._send_stateless(copy, hop, [Hop(TUNNEL, session=target.session)])
        elif target.kind == "user":
            sessions = self.hub.sessions_of(target.name.lower())
            if sessions:
                self._send_stateless(copy, hop, [Hop(TUNNEL, session=s) for s in sessions])
        elif target.kind == "outside":
            d = self._outside_hop(target.uri, hop, copy)
            d.addCallback(lambda dest: self._send_stateless(copy, hop, [dest]))
            d.addErrback(lambda f: log.debug("ACK not forwarded: {f}", f=f.getErrorMessage()))

    def _send_stateless(self, request: Request, source: Hop, dests: List[Hop]) -> None:
        for dest in dests:
            branch = self._branch(None, request)
            copy = self._prepare(request, source, dest, branch)
            if self.media is not None:
                try:
                    self.media.request(copy, source, dest)
                except NoRoom:  # only a first INVITE raises it, never an ACK
                    pass
            if dest.tunnel:
                if self._alive(dest.session) and text_body(copy):
                    self.hub.deliver_session(dest.session, frames.sipreq(
                        copy.method, branch, copy.to_text()))
            else:
                self.network.send(copy.to_bytes(), dest, None)

    # -- CANCEL ---------------------------------------------------------------

    def _cancel_request(self, request: Request, hop: Hop, invite_key: tuple) -> None:
        stx = self.server_txns.get(invite_key)
        if stx is None:
            self._reply_stateless(request, hop, 481, reason="Call/Transaction Does Not Exist")
            return
        to_tag = stx.to_tag
        response = make_response(request, 200, None, to_tag, [("Server", SERVER_NAME)])
        if hop.tunnel:
            self._deliver_response(hop.session, _txid_of(request), response)
        else:
            self._send_response(response.to_bytes(), self._response_hop(request, hop))
        context = stx.context
        if context is None or context.final:
            return
        if self.media is not None:
            self.media.cancel(request)
        context.cancelled = True
        if not context.clients and not context.target_pending:
            self._reply(stx, 487, reason="Request Terminated")
            return
        for ctx in context.clients:
            if ctx.final is None:
                self._cancel_branch(ctx)

    def _cancel_branch(self, ctx: ClientTxn) -> None:
        """Send CANCEL for a pending INVITE branch (RFC 3261 9.1): at once to a
        session, after a provisional response over the network."""
        if not ctx.is_invite or ctx.final is not None or ctx.cancelled:
            return
        if not ctx.provisional and not ctx.hop.tunnel:
            ctx.cancel_wanted = True
            return
        ctx.cancelled = True
        invite = ctx.request
        cancel = Request("CANCEL", invite.uri)
        cancel.add("Via", invite.values("via")[0])
        for name in ("route",):
            for value in invite.get_all(name):
                cancel.add("Route", value)
        cancel.add("Max-Forwards", "70")
        for name, spelled in (("from", "From"), ("to", "To"), ("call-id", "Call-ID")):
            cancel.add(spelled, invite.get(name) or "")
        cancel.add("CSeq", f"{invite.cseq[0]} CANCEL")
        cancel_tx = ClientTxn(self, None, cancel, ctx.hop, ctx.branch)
        self.client_txns[cancel_tx.key] = cancel_tx
        cancel_tx.start()
        self._send_client(cancel_tx)

    # -- responses --------------------------------------------------------------

    def _network_response(self, response: Response, hop: Hop) -> None:
        if self.presence is not None and self.presence.response(response, hop):
            return
        via = response.top_via()
        ctx = self._match_client(response)
        if ctx is None or ctx.hop.tunnel or not self.is_me(via.host, via.port):
            self._count("stray_responses")
            log.debug("stray SIP response {code} from {hop}", code=response.code, hop=hop)
            return
        self._client_response(ctx, response)

    def _session_response(self, response: Response, session: Session) -> Dict[str, Any]:
        if self.presence is not None and self.presence.response(
                response, Hop(TUNNEL, session=session)):
            return {"txid": response.top_via().branch}
        ctx = self._match_client(response)
        if ctx is None or not ctx.hop.tunnel or ctx.hop.session is not session:
            raise NotFound("no SIP transaction of this session matches the response"
                           " (its top Via must be the proxy's, as in the msg sipreq)")
        if ctx.context is not None and len(response.values("via")) < 2:
            self._count("responses_no_via")
            raise BadRequest("the response has no Via below the proxy's: it would go"
                             " nowhere (RFC 3261 16.7); copy every Via of the request")
        self._client_response(ctx, response)
        return {"txid": ctx.branch}

    def _match_client(self, response: Response) -> Optional[ClientTxn]:
        via = response.top_via()
        if via is None or not via.branch:
            return None
        return self.client_txns.get((via.branch, response.cseq[1]))

    def _client_response(self, ctx: ClientTxn, response: Response) -> None:
        code = response.code
        if ctx.context is not None and len(response.values("via")) < 2:
            # RFC 3261 16.7 step 3: no Via left once ours is removed: the
            # response would be for the proxy itself, yet it answers a
            # request it forwarded for someone: it goes nowhere
            self._count("responses_no_via")
            log.debug("a SIP response {code} with no Via below ours was dropped", code=code)
            return
        if ctx.state == "completed":
            # a retransmitted final: ACK it again (non-2xx INVITE)
            if ctx.is_invite and not ctx.hop.tunnel and code >= 300:
                self._ack_branch(ctx, response)
            return
        if ctx.state == "terminated":
            return
        if ctx.state == "accepted":
            if 200 <= code < 300 and ctx.context is not None:
                self._upstream(ctx, response)  # a 2xx retransmission
            return
        ctx.got(response)
        if ctx.context is None:
            return  # our own CANCEL
        if code == 100:
            return
        if code >= 300 and ctx.is_invite and not ctx.hop.tunnel:
            self._ack_branch(ctx, response)
        self._response_context(ctx, response)

    def _ack_branch(self, ctx: ClientTxn, response: Response) -> None:
        """RFC 3261 17.1.1.3: the ACK of a non-2xx final, sent by us."""
        self.network.send(ack_for(ctx.request, response).to_bytes(), ctx.hop, None)

    def _upstream(self, ctx: ClientTxn, response: Response) -> None:
        """Forward ``response`` of branch ``ctx`` to the previous hop."""
        copy = response.copy()
        copy.pop_first_value("via")
        stx = ctx.context.server
        if ctx.hop.tunnel and 100 < copy.code < 300:
            self._rewrite_contacts(copy, ctx.hop.session, self.local_host(stx.hop))
        if 100 < copy.code < 300 and ctx.method not in NO_RECORD_ROUTE:
            self._remember_dialog(copy, stx.hop, ctx.hop)
        elif ctx.method == "BYE" and 200 <= copy.code < 300:
            self.dialogs.drop(copy)
        stx.respond(copy)

    def _remember_dialog(self, response: Response, upstream: Hop, downstream: Hop) -> None:
        """A dialog-making response we relay (we record-routed its request):
        its tunnel sessions may send in-dialog requests to its network peer."""
        hops = (upstream, downstream)
        sessions = [h.session for h in hops if h.tunnel and h.session is not None]
        if not sessions:
            return
        peers = [h for h in hops if not h.tunnel]
        self.dialogs.add(response, sessions, peers[0] if peers else None)

    def _response_context(self, ctx: ClientTxn, response: Response) -> None:
        """RFC 3261 16.7 for one response of a branch."""
        context = ctx.context
        code = response.code
        if context.final and not (200 <= code < 300 and ctx.is_invite):
            return
        if code < 200:
            self._upstream(ctx, response)
            return
        if 200 <= code < 300:
            context.final = True
            self._upstream(ctx, response)
            if ctx.is_invite:
                for other in context.clients:
                    if other is not ctx and other.final is None:
                        self._cancel_branch(other)
            return
        if context.best is None or _better(response, context.best):
            context.best, context.best_owner = response, ctx
        if code >= 600 and ctx.is_invite:
            for other in context.clients:
                if other is not ctx and other.final is None:
                    self._cancel_branch(other)
        self._maybe_done(context)

    def _maybe_done(self, context: Context) -> None:
        if context.final or any(c.final is None for c in context.clients):
            return
        best = context.best
        context.final = True
        if best is None:
            self._reply(context.server, 408)
            return
        if best.code == 503:
            best = best.copy()
            best.code, best.reason = 500, "Server Internal Error"
        if context.best_owner is not None:
            self._upstream(context.best_owner, best)
        else:
            context.server.respond(best)

    def _client_failed(self, ctx: ClientTxn, code: int) -> None:
        """A branch without answer (timeout, unreachable, session gone)."""
        if ctx.final is not None:
            return
        ctx.final = code
        ctx.timers.cancel_all()
        self._drop_client(ctx)
        ctx.state = "terminated"
        context = ctx.context
        try:
            if context is None or context.final:
                return
            synthetic = make_response(context.server.request, code, None,
                                      context.server.to_tag, [("Server", SERVER_NAME)])
            if context.best is None or _better(synthetic, context.best):
                context.best, context.best_owner = synthetic, None
            self._maybe_done(context)
        finally:
            _dissolve(context)  # the branch ended without terminate()

    # -- sending responses upstream ------------------------------------------------

    def _response_hop(self, request: Request, hop: Hop) -> Hop:
        """RFC 3261 18.2.2 and RFC 3581: where a response to ``request``
        (received from ``hop``) goes."""
        via = request.top_via()
        host = via.param("received") or bare_host(via.host)
        rport = via.param("rport")
        port = int(rport) if rport and rport.isdigit() else (via.port or 5060)
        if hop.transport == TCP:
            # the connection it came on; if that closed, a new one to the Via
            return Hop(TCP, host, port, conn=hop.conn)
        return Hop(hop.transport, host, port)

    def _send_upstream(self, stx: ServerTxn, response: Response) -> Any:
        """Send ``response`` to the previous hop of ``stx``; return what was
        sent (bytes, or the frame), for repeats."""
        if self.media is not None:
            initial = stx.request is None or stx.request.tag("to") is None
            self.media.response(response, stx.method, initial, stx.hop)
        if stx.hop.tunnel:
            return self._deliver_response(stx.hop.session, stx.txid, response)
        if stx.reply_hop is None:
            stx.reply_hop = self._response_hop(stx.request, stx.hop)
        data = response.to_bytes()
        self._send_response(data, stx.reply_hop)
        return data

    def _resend_upstream(self, stx: ServerTxn) -> None:
        if stx.hop.tunnel:
            if self._alive(stx.hop.session):
                self.hub.deliver_session(stx.hop.session, stx.last_out)
        elif stx.reply_hop is not None:
            self._send_response(stx.last_out, stx.reply_hop)

    def _send_response(self, data: bytes, hop: Hop) -> None:
        """A response to the network.  Over TCP whose connection has closed,
        RFC 3261 18.2.2 would open a new one to the ``received`` address and
        the ``Via`` port, which the sender chose: only where a tunnel user
        could send too (a source seen through a NAT or Docker's gateway must
        not open other ports of that address); else it is dropped."""
        if hop.transport == TCP and not getattr(hop.conn, "connected_", hop.conn is not None):
            why = self.forbidden_destination(hop.host, hop.port, TCP)
            if why is not None:
                self._count("responses_dropped")
                log.debug("a SIP response over a closed TCP connection was dropped: {why}",
                          why=why)
                return
        self.network.send(data, hop, None)

    def _deliver_response(self, session: Session, txid: str, response: Response) -> Any:
        if not self._alive(session):
            return None
        if not text_body(response):
            response = response.copy()
            response.body = b""
        frame = frames.sipresp(response.code, txid, response.to_text())
        self.hub.deliver_session(session, frame)
        return frame

    # -- Contact ------------------------------------------------------------------

    def _rewrite_contacts(self, message, session: Session, host: str) -> None:
        """Point every Contact of a tunnel session's message at us."""
        values = message.values("contact")
        if not values:
            return
        token = self.token_of(session)
        out = []
        for value in values:
            try:
                address = NameAddr.parse(value)
            except ValueError:
                out.append(value)
                continue
            if address.uri == "*":
                out.append(value)
                continue
            uri = address.sip_uri()
            user = uri.user if uri is not None and uri.user else session.user.name
            address.uri = str(SipURI(host, user, self.port, [("tun", token)]))
            address.angle = True
            out.append(str(address))
        message.set_values("contact", out)

    # -- bookkeeping -------------------------------------------------------------

    def _drop_server(self, stx: ServerTxn) -> None:
        if self.server_txns.get(stx.key) is stx:
            del self.server_txns[stx.key]

    def _drop_client(self, ctx: ClientTxn) -> None:
        if self.client_txns.get(ctx.key) is ctx:
            del self.client_txns[ctx.key]

    def stop(self) -> None:
        """Cancel every timer (the service stops); presence subscriptions
        end with a final NOTIFY."""
        if self.presence is not None:
            self.presence.stop()
        self.registrar.stop()
        for stx in list(self.server_txns.values()):
            stx.terminate()
        for ctx in list(self.client_txns.values()):
            ctx.terminate()


def _txid_of(request: Request) -> str:
    via = request.top_via()
    return (via.branch if via is not None else None) or "-"


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _rank(code: int) -> Tuple[int, int]:
    """Lower is better (RFC 3261 16.7 step 6): 6xx first, then the lowest
    class, with 401/407/415/420/484 and 3xx preferred within 4xx; 408 and 503
    (timeouts, overload) last among their classes."""
    klass = code // 100
    if klass == 6:
        return (0, code)
    order = {2: 1, 3: 2, 4: 3, 5: 4}.get(klass, 5)
    penalty = 1 if code in (408, 503) else 0
    return (order, penalty)


def _better(a: Response, b: Response) -> bool:
    return _rank(a.code) < _rank(b.code)


Answer = Union[Dict[str, Any], None]
