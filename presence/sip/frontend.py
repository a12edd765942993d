"""Wiring of the SIP front-end into ``twistd presence``.

``--sip PORT`` (default ``5060``; ``0`` turns SIP off): the proxy listens on
that port over UDP and TCP on every interface, and ``POST /sip`` is mounted
on the HTTP site.  ``--sip-outbound``, ``--sip-session-rate`` and
``--sip-source-rate`` bound what tunnel users and network peers may make it
send (``docs/sip.md``); ``--sip-min-expires`` and ``--sip-max-expires``
bound the registrations it takes (``docs/calls.md``).  Both ports are bound before ``twistd`` drops
privileges (:mod:`presence.listen`); one that cannot be bound ends the start
with a message naming ``--sip``.  Each listener reports to the ready gate
(``sip-udp``, ``sip-tcp``), so ``presence ready`` is logged only once both
are up.

The media relay (``--relay``, ``--relay-advertise``, ``--relay-ports``,
``--relay-calls``, ``--relay-timeout``; ``docs/calls.md``): the calls that
cross the tunnel get port pairs of this server for their RTP and RTCP
(:mod:`presence.sip.relay`), and their SDP is rewritten to them
(:mod:`presence.sip.media`).  Its ports are bound per call, on the SIP
listener's interfaces unless ``--relay`` names an address.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from presence.listen import Listener

from presence.sip.media import MediaAnchor
from presence.sip.proxy import (
    OUTBOUND_NONE, OUTBOUND_PUBLIC, SESSION_RATE, SOURCE_RATE, Hop, SipProxy,
)
from presence.sip.presence_server import SipPresence
from presence.sip.registrar import MAX_EXPIRES, MIN_EXPIRES
from presence.sip.media_web import MediaTunnel
from presence.sip.relay import MAX_CALLS, MEDIA_TIMEOUT, PORTS, MediaRelay, ReactorUdp
from presence.sip.transport import SipDatagramProtocol, SipNetwork, SipStreamFactory
from presence.sip.web import SipTunnelResource

log = Logger()


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number 1-65535, or 0 for no SIP")
    return number


_port.coerceDoc = "A port number; 0 turns SIP off."  # type: ignore[attr-defined]


def _outbound(value: str) -> str:
    value = value.strip().lower()
    if value not in (OUTBOUND_NONE, OUTBOUND_PUBLIC):
        raise ValueError(f"must be {OUTBOUND_NONE} or {OUTBOUND_PUBLIC}")
    return value


_outbound.coerceDoc = f"{OUTBOUND_NONE} or {OUTBOUND_PUBLIC}."  # type: ignore[attr-defined]


def _rate(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1_000_000:
        raise ValueError("must be a number of messages a second above 0")
    return number


_rate.coerceDoc = "Messages a second (a burst of five seconds' worth is allowed)."  # type: ignore[attr-defined]

def _expires(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 86400:
        raise ValueError("must be a number of seconds from 1 to 86400")
    return number


_expires.coerceDoc = "Seconds, 1 to 86400."  # type: ignore[attr-defined]
RELAY_AUTO, RELAY_NONE = "auto", "none"


def _unicast_ipv4(value: str, what: str) -> str:
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"must be {what}")
    if address.is_multicast or address.is_unspecified:
        raise ValueError(f"must be a unicast address: {what}")
    return str(address)


def _relay(value: str) -> str:
    value = value.strip().lower()
    if value in (RELAY_AUTO, RELAY_NONE):
        return value
    return _unicast_ipv4(value, f"{RELAY_AUTO}, {RELAY_NONE} or an IPv4 address of this machine")


_relay.coerceDoc = (f"{RELAY_AUTO} (every interface, like --sip), an IPv4 address, or"  # type: ignore[attr-defined]
                    f" {RELAY_NONE}.")


def _advertise(value: str) -> str:
    value = value.strip()
    return _unicast_ipv4(value, "an IPv4 address (the one phones reach the relay at)") \
        if value else ""


def _port_range(value: str) -> Tuple[int, int]:
    low, sep, high = value.strip().partition("-")
    if not (sep and low.isdigit() and high.isdigit()):
        raise ValueError("must be LOW-HIGH, two port numbers")
    low_n, high_n = int(low), int(high)
    if not 1024 <= low_n < high_n <= 65535:
        raise ValueError("must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535")
    if high_n - low_n + 1 < 4:
        raise ValueError("must hold at least 4 ports (one call: a port pair a side)")
    return low_n, high_n


_port_range.coerceDoc = "LOW-HIGH, UDP ports; each call leg takes an even RTP port and the next."  # type: ignore[attr-defined]


def _calls(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 100_000:
        raise ValueError("must be a number of calls from 1 to 100000")
    return number


def _timeout(value: str) -> float:
    number = float(value)
    if not 5 <= number <= 86400:
        raise ValueError("must be seconds from 5 to 86400")
    return number


OPTIONS = [
    ["sip", None, 5060,
     "SIP proxy port, UDP and TCP on every interface; 0 turns SIP off.", _port],
    ["sip-outbound", None, OUTBOUND_NONE,
     "Where registered users may place new SIP calls through the tunnel besides the users"
     " of --domain: 'none' (only them), or 'public' (also SIP addresses on the public"
     " Internet). Guests never send SIP requests, and loopback, private, link-local"
     " addresses and this server's own are always refused.", _outbound],
    ["sip-session-rate", None, SESSION_RATE,
     "POST /sip messages a second allowed per session; more get 429.", _rate],
    ["sip-source-rate", None, SOURCE_RATE,
     "SIP messages a second taken from one network address (UDP and TCP); more are"
     " dropped unanswered.", _rate],
    ["sip-min-expires", None, MIN_EXPIRES,
     "The shortest SIP registration the registrar takes; a shorter Expires gets 423"
     " Interval Too Brief.", _expires],
    ["sip-max-expires", None, MAX_EXPIRES,
     "The longest SIP registration: a longer Expires is shortened to it (and is the"
     " default when a phone names none).", _expires],
    ["relay", None, RELAY_AUTO,
     "Media relay for the calls that cross the tunnel: 'auto' binds its ports on every"
     " interface, like --sip; an IPv4 address binds them there; 'none' turns it off"
     " (SDP passes untouched).", _relay],
    ["relay-advertise", None, "",
     "The IPv4 address written into relayed SDP (c= lines) when phones reach the relay at"
     " another address than it binds (a server behind 1:1 NAT); default: the bound"
     " address, or with --relay auto the local address facing each side.", _advertise],
    ["relay-ports", None, f"{PORTS[0]}-{PORTS[1]}",
     "UDP port range of the media relay, LOW-HIGH: each side of each relayed media"
     " stream takes an even RTP port and the next one for RTCP.", _port_range],
    ["relay-calls", None, MAX_CALLS,
     "Relayed calls at once; past it (or when no port pair is left) a new call through"
     " the tunnel gets 503.", _calls],
    ["relay-timeout", None, MEDIA_TIMEOUT,
     "Seconds without a media packet after which an answered relayed call's ports are"
     " closed.", _timeout],
]

Ready = Callable[[str, str], None]


def check_options(options: Any) -> None:
    """The SIP part of ``Options.postOptions`` (the type check did it all)."""
    if not isinstance(options["sip"], int):  # pragma: no cover - coerced
        raise usage.UsageError("--sip must be a port number")
    if options["sip-min-expires"] > options["sip-max-expires"]:
        raise usage.UsageError("--sip-min-expires must not be above --sip-max-expires")
    if isinstance(options["relay-ports"], str):  # the default is not coerced
        options["relay-ports"] = _port_range(options["relay-ports"])
    low, high = options["relay-ports"]
    if options["relay"] != RELAY_NONE and options["sip"] and low <= options["sip"] <= high:
        raise usage.UsageError(f"--relay-ports {low}-{high} holds the --sip port"
                               f" {options['sip']}: choose a range without it")
    if options["relay-advertise"] and options["relay"] == RELAY_NONE:
        raise usage.UsageError("--relay-advertise needs the relay: not with --relay none")


class SipFrontEnd:
    """The proxy, its network and its HTTP resource for one server."""

    def __init__(self, service: Any, reactor: Any, port: int, domain: str,
                 interface: str = "", *, outbound: str = OUTBOUND_NONE,
                 session_rate: float = SESSION_RATE, source_rate: float = SOURCE_RATE,
                 min_expires: int = MIN_EXPIRES, max_expires: int = MAX_EXPIRES,
                 relay: str = RELAY_AUTO, relay_advertise: str = "",
                 relay_ports: Tuple[int, int] = PORTS, relay_calls: int = MAX_CALLS,
                 relay_timeout: float = MEDIA_TIMEOUT) -> None:
        self.reactor = reactor
        self.port = port
        self.enabled = port != 0
        self.network = SipNetwork(reactor, port, interface)
        self.proxy = SipProxy(service, self.network, reactor, domain, outbound=outbound,
                              session_rate=session_rate, source_rate=source_rate,
                              registrar={"min_expires": min_expires,
                                         "max_expires": max_expires,
                                         "default_expires": max_expires})
        #: SUBSCRIBE/NOTIFY for the users' presence (docs/calls.md); the
        #: network's subscribers need digest authentication: the proxy's
        #: DigestAuth for the domain (the registrar's)
        self.presence = SipPresence(service, self.proxy, reactor,
                                    auth=self.proxy.digest)
        self.proxy.presence = self.presence
        self.network.receiver = self.proxy.received
        self.network.rejecter = self.proxy.reject_malformed
        self.resource = SipTunnelResource(service, self.proxy)
        self.interface = interface
        self.relay: Optional[MediaRelay] = None
        if relay != RELAY_NONE and self.enabled:
            bind = "" if relay == RELAY_AUTO else relay
            self.relay_address = relay_advertise or bind
            self.relay = MediaRelay(reactor, ReactorUdp(reactor, bind), ports=relay_ports,
                                    max_calls=relay_calls, timeout=relay_timeout)
            self.proxy.media = MediaAnchor(self.relay, self._relay_address,
                                           self.network.is_local)

    def _relay_address(self, hop: Hop) -> str:
        """The relay's address as ``hop`` reaches it (for the SDP sent there)."""
        if self.relay_address:
            return self.relay_address
        if hop.tunnel:
            return self.network.route_to(getattr(hop.session, "ip", "") or "127.0.0.1")
        return self.network.local_host(hop)

    @classmethod
    def from_options(cls, options: Any, service: Any, reactor: Any) -> "SipFrontEnd":
        """The front-end ``twistd presence`` options ask for."""
        return cls(service, reactor, options["sip"], options["domain"],
                   outbound=options["sip-outbound"], session_rate=options["sip-session-rate"],
                   source_rate=options["sip-source-rate"],
                   min_expires=options["sip-min-expires"],
                   max_expires=options["sip-max-expires"], relay=options["relay"],
                   relay_advertise=options["relay-advertise"],
                   relay_ports=options["relay-ports"], relay_calls=options["relay-calls"],
                   relay_timeout=options["relay-timeout"])

    def ready(self, addresses: dict) -> None:
        """The ready gate's hook: every listener of the server is up; the
        proxy never sends to any of their addresses."""
        self.proxy.listening(addresses)

    def mount(self, root: Any) -> None:
        """``/sip`` on the site's root resource; with a media relay, the
        media tunnel under it (``/sip/media/<port>``)."""
        relay = getattr(self, "relay", None)
        if relay is not None and self.resource.media is None:
            self.resource.media = MediaTunnel(self.resource.service, relay, self.reactor)
        root.mount(b"sip", self.resource)

    def services(self, udp_label: str, tcp_label: str, ready: Ready) -> List[Service]:
        """The UDP and the TCP listener, each telling ``ready(label, address)``."""
        return [
            SipUDPService(self, udp_label, ready),
            SipTCPService(self, tcp_label, ready),
        ]

    def stats(self) -> dict:
        figures = self.proxy.stats()
        if self.relay is not None:
            for name, value in self.relay.stats().items():
                figures[f"relay_{name}"] = value
        if self.resource.media is not None:
            for name, value in self.resource.media.stats().items():
                figures[f"media_http_{name}"] = value
        return figures


class _SipListener(Listener):
    """One of the proxy's listening ports, bound before privileges are
    dropped; reports ``label`` to ``ready`` once started."""

    option = "sip"

    def __init__(self, front: SipFrontEnd, label: str, ready: Optional[Ready]) -> None:
        self.front = front
        self.label = label
        self.ready = ready
        self.value = front.port

    def listening(self, port: Any) -> None:
        host = port.getHost()
        log.info("SIP listening on {what} {host}:{port}", what=self.what, host=host.host,
                 port=host.port)
        if self.ready is not None:
            self.ready(self.label, f"{host.host}:{host.port}")


class SipUDPService(_SipListener):
    what = "UDP"

    def bind(self) -> Any:
        front = self.front
        port = front.reactor.listenUDP(front.port, SipDatagramProtocol(front.network),
                                       interface=front.interface, maxPacketSize=65535)
        front.network.udp = port
        return port

    def stopService(self) -> Any:
        self.front.proxy.stop()
        if self.front.relay is not None:
            self.front.relay.stop()
        self.front.network.udp = None
        return super().stopService()


class SipTCPService(_SipListener):
    what = "TCP"

    def bind(self) -> Any:
        front = self.front
        endpoint = endpoints.TCP4ServerEndpoint(front.reactor, front.port,
                                                interface=front.interface)
        outcome: list = []
        endpoint.listen(SipStreamFactory(front.network)).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):  # a TCP endpoint answers at once
            outcome[0].raiseException()
        return outcome[0]

    def stopService(self) -> Any:
        for conn in list(self.front.network.connections_all):
            conn.transport.loseConnection()
        return super().stopService()
