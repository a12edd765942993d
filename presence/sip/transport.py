"""SIP over UDP and TCP: the protocols and the network the proxy sends through.

* :class:`SipDatagramProtocol`: each datagram is one message.
* :class:`SipStreamProtocol`: a TCP connection, framed by ``Content-Length``
  (:class:`~presence.sip.message.StreamFramer`); ``CRLF CRLF`` keep-alives
  are answered with ``CRLF`` (RFC 5626 section 4.4.1); a stream that cannot
  be framed any more (no or a bad ``Content-Length``, a header section or a
  message too large) is answered ``400``/``513`` when the message can be
  addressed and then closed; idle connections are closed after
  :data:`IDLE_TIMEOUT`; at most :data:`MAX_CONNECTIONS` are open.
* :class:`SipNetwork`: :class:`~presence.sip.proxy.ISipNetwork` on the
  reactor: sends over UDP from the listening port, over TCP on the
  connection a peer opened (or a new one), finds our own address as a peer
  sees it, and resolves names.

Nothing a peer sends can raise out of a protocol: a failure is logged and
the message dropped.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from presence.sip.message import ParseError, StreamFramer
from presence.sip.proxy import TCP, UDP, Hop, ISipNetwork

log = Logger(namespace="presence.sip")

#: seconds without traffic after which a TCP connection is closed
IDLE_TIMEOUT = 300.0
#: TCP connections open at once (inbound and outbound)
MAX_CONNECTIONS = 2000
#: inbound TCP connections open at once from one source address, well below
#: :data:`MAX_CONNECTIONS` so that one address cannot take every slot
MAX_CONNECTIONS_PER_SOURCE = 64
#: addresses whose locality (:meth:`SipNetwork.is_local`) is remembered
MAX_LOCAL_CACHE = 4096
#: messages queued for one TCP connection that is being opened
MAX_QUEUED = 64

Receiver = Callable[[bytes, Hop], None]


class SipDatagramProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, network: "SipNetwork") -> None:
        self.network = network

    def datagramReceived(self, data: bytes, addr: Tuple[Any, ...]) -> None:
        host, port = addr[0], addr[1]
        try:
            self.network.deliver(data, Hop(UDP, host, port))
        except Exception:
            log.failure("a SIP datagram from {host}:{port} could not be handled",
                        host=host, port=port)


class SipStreamProtocol(Protocol):
    """One TCP connection, inbound or outbound."""

    def __init__(self, network: "SipNetwork") -> None:
        self.network = network
        self.framer = StreamFramer()
        self.peer: Tuple[str, int] = ("", 0)
        self.connected_ = False
        self._idle = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = (getattr(peer, "host", ""), getattr(peer, "port", 0))
        self.connected_ = True
        self.network.connection_made(self)
        self._touch()

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)
        else:
            self._idle = self.network.reactor.callLater(IDLE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        self._idle = None
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self._touch()
        pings = self.framer.pings
        hop = Hop(TCP, self.peer[0], self.peer[1], conn=self)
        try:
            messages = self.framer.feed(data)
        except ParseError as e:
            messages = []
            error = e
        else:
            error = None
        if self.framer.pings > pings:
            self.transport.write(b"\r\n")  # keep-alive pong
        for message in messages:
            if not self.connected_:
                return
            try:
                self.network.deliver(message, hop)
            except Exception:
                log.failure("a SIP message from {host}:{port} could not be handled",
                            host=self.peer[0], port=self.peer[1])
        if error is not None:
            # the stream cannot be framed any more: answer if we can, close
            try:
                self.network.reject(error, hop)
            except Exception:
                log.failure("answering a broken SIP stream failed")
            self.transport.loseConnection()

    def write(self, data: bytes) -> None:
        self._touch()
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.connected_ = False
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self.network.connection_lost(self)


class SipStreamFactory(Factory):
    noisy = False

    def __init__(self, network: "SipNetwork") -> None:
        self.network = network

    def buildProtocol(self, addr: Any) -> Optional[SipStreamProtocol]:
        if len(self.network.connections_all) >= MAX_CONNECTIONS:
            log.warn("too many SIP TCP connections; refusing {addr}", addr=addr)
            return None
        host = getattr(addr, "host", "")
        if self.network.per_source.get(host, 0) >= MAX_CONNECTIONS_PER_SOURCE:
            log.info("too many SIP TCP connections from {host}; refusing one", host=host)
            return None
        return SipStreamProtocol(self.network)


@implementer(ISipNetwork)
class SipNetwork:
    """UDP and TCP for the proxy.  ``receiver`` and ``rejecter`` (set once
    the proxy exists) take each message and each unframable stream."""

    def __init__(self, reactor, port: int, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.receiver: Optional[Receiver] = None
        self.rejecter: Optional[Callable[[ParseError, Hop], None]] = None
        self.udp: Any = None
        #: the connection to use for each peer address (the newest)
        self.connections: Dict[Tuple[str, int], SipStreamProtocol] = {}
        self.connections_all: set = set()
        #: open TCP connections by peer address (inbound and outbound)
        self.per_source: Dict[str, int] = {}
        self._local_cache: Dict[str, bool] = {}
        self._connecting: Dict[Tuple[str, int], List[Tuple[bytes, Any]]] = {}
        self._route_cache: Dict[str, str] = {}
        self._local: set = {"127.0.0.1", "::1", "localhost", "0.0.0.0"}
        self._learn_local_names()

    def _learn_local_names(self) -> None:
        try:
            name = socket.gethostname()
            self._local.update({name.lower(), socket.getfqdn().lower()})
            for info in socket.getaddrinfo(name, None):
                self._local.add(str(info[4][0]).lower())
        except OSError:
            pass
        if self.interface:
            self._local.add(self.interface)

    # -- ways in ------------------------------------------------------------------

    def deliver(self, data: bytes, hop: Hop) -> None:
        if self.receiver is not None:
            self.receiver(data, hop)

    def reject(self, error: ParseError, hop: Hop) -> None:
        if self.rejecter is not None:
            self.rejecter(error, hop)

    def connection_made(self, conn: SipStreamProtocol) -> None:
        if conn not in self.connections_all:
            host = conn.peer[0]
            self.per_source[host] = self.per_source.get(host, 0) + 1
        self.connections_all.add(conn)
        self.connections[conn.peer] = conn

    def connection_lost(self, conn: SipStreamProtocol) -> None:
        if conn in self.connections_all:
            self.connections_all.discard(conn)
            host = conn.peer[0]
            left = self.per_source.get(host, 1) - 1
            if left > 0:
                self.per_source[host] = left
            else:
                self.per_source.pop(host, None)
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]

    # -- ISipNetwork ---------------------------------------------------------------

    def send(self, data: bytes, hop: Hop, on_error: Optional[Callable[[], None]] = None) -> None:
        try:
            if hop.transport == UDP:
                if self.udp is None:
                    raise RuntimeError("no UDP port")
                self.udp.write(data, (hop.host, hop.port))
                return
            conn = hop.conn if getattr(hop.conn, "connected_", False) else None
            if conn is None:
                conn = self.connections.get((hop.host, hop.port))
            if conn is not None:
                conn.write(data)
                return
            self._connect(data, hop, on_error)
        except Exception as e:
            log.info("SIP message to {host}:{port} not sent: {why}", host=hop.host,
                     port=hop.port, why=str(e) or type(e).__name__)
            if on_error is not None:
                self.reactor.callLater(0, on_error)

    def _connect(self, data: bytes, hop: Hop, on_error) -> None:
        key = (hop.host, hop.port)
        queue = self._connecting.get(key)
        if queue is not None:
            if len(queue) >= MAX_QUEUED:
                raise RuntimeError("too many messages wait for that connection")
            queue.append((data, on_error))
            return
        if len(self.connections_all) >= MAX_CONNECTIONS:
            raise RuntimeError("too many SIP TCP connections")
        self._connecting[key] = [(data, on_error)]
        kind = endpoints.TCP6ClientEndpoint if isIPv6Address(hop.host) \
            else endpoints.TCP4ClientEndpoint
        endpoint = kind(self.reactor, hop.host, hop.port, timeout=10)
        d = endpoints.connectProtocol(endpoint, SipStreamProtocol(self))

        def connected(conn: SipStreamProtocol) -> None:
            for item, _ in self._connecting.pop(key, []):
                conn.write(item)

        def failed(failure) -> None:
            log.info("SIP TCP connection to {host}:{port} failed: {why}", host=hop.host,
                     port=hop.port, why=failure.getErrorMessage())
            for _, callback in self._connecting.pop(key, []):
                if callback is not None:
                    callback()

        d.addCallbacks(connected, failed)

    def local_host(self, hop: Hop) -> str:
        conn = hop.conn
        if conn is not None and getattr(conn, "transport", None) is not None:
            host = getattr(conn.transport.getHost(), "host", None)
            if host:
                return host
        if self.interface and self.interface not in ("0.0.0.0", "::"):
            return self.interface
        return self.route_to(hop.host)

    def route_to(self, peer: str) -> str:
        """The local address the system would send from to reach ``peer``."""
        cached = self._route_cache.get(peer)
        if cached is not None:
            return cached
        address = "127.0.0.1"
        if isIPAddress(peer) or isIPv6Address(peer):
            family = socket.AF_INET6 if isIPv6Address(peer) else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((peer, 9))  # no packet is sent
                    address = probe.getsockname()[0]
            except OSError:
                pass
        if len(self._route_cache) > 1024:
            self._route_cache.clear()
        self._route_cache[peer] = address
        self._local.add(address)
        return address

    def resolve(self, host: str) -> defer.Deferred:
        """Every address of ``host`` (the reactor's ``nameResolver``: A and
        AAAA records), so that the proxy can check each of them."""
        if isIPAddress(host) or isIPv6Address(host):
            return defer.succeed([host])
        receiver = _Addresses()
        self.reactor.nameResolver.resolveHostName(receiver, host)
        return receiver.done

    def is_local(self, host: str) -> bool:
        """Whether ``host`` is this machine: a name or address it is known
        by, or any address a socket can be bound to (an address of one of
        its interfaces, whichever it is)."""
        host = host.lower()
        if host in self._local or host.startswith("127."):
            return True
        if not (isIPAddress(host) or isIPv6Address(host)):
            return False
        known = self._local_cache.get(host)
        if known is None:
            family = socket.AF_INET6 if isIPv6Address(host) else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.bind((host, 0))
                known = True
            except OSError:
                known = False
            if len(self._local_cache) >= MAX_LOCAL_CACHE:
                self._local_cache.clear()
            self._local_cache[host] = known
        return known


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the addresses of one ``resolveHostName`` into ``done``."""

    def __init__(self) -> None:
        self.done: defer.Deferred = defer.Deferred()
        self.found: List[str] = []

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        host = getattr(address, "host", None)
        if host and host not in self.found:
            self.found.append(host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)
