"""Wiring of the SIP front-end into ``twistd presence``.

``--sip PORT`` (default ``5060``; ``0`` turns SIP off): the proxy listens on
that port over UDP and TCP on every interface, and ``POST /sip`` is mounted
on the HTTP site.  ``--sip-outbound``, ``--sip-session-rate`` and
``--sip-source-rate`` bound what tunnel users and network peers may make it
send (``docs/sip.md``).  Both ports are bound before ``twistd`` drops
privileges (:mod:`presence.listen`); one that cannot be bound ends the start
with a message naming ``--sip``.  Each listener reports to the ready gate
(``sip-udp``, ``sip-tcp``), so ``presence ready`` is logged only once both
are up.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from presence.listen import Listener

from presence.sip.proxy import (
    OUTBOUND_NONE, OUTBOUND_PUBLIC, SESSION_RATE, SOURCE_RATE, SipProxy,
)
from presence.sip.media_web import MediaTunnel
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
]

Ready = Callable[[str, str], None]


def check_options(options: Any) -> None:
    """The SIP part of ``Options.postOptions`` (the type check did it all)."""
    if not isinstance(options["sip"], int):  # pragma: no cover - coerced
        raise usage.UsageError("--sip must be a port number")


class SipFrontEnd:
    """The proxy, its network and its HTTP resource for one server."""

    def __init__(self, service: Any, reactor: Any, port: int, domain: str,
                 interface: str = "", *, outbound: str = OUTBOUND_NONE,
                 session_rate: float = SESSION_RATE, source_rate: float = SOURCE_RATE) -> None:
        self.reactor = reactor
        self.port = port
        self.enabled = port != 0
        self.network = SipNetwork(reactor, port, interface)
        self.proxy = SipProxy(service, self.network, reactor, domain, outbound=outbound,
                              session_rate=session_rate, source_rate=source_rate)
        self.network.receiver = self.proxy.received
        self.network.rejecter = self.proxy.reject_malformed
        self.resource = SipTunnelResource(service, self.proxy)
        self.interface = interface

    @classmethod
    def from_options(cls, options: Any, service: Any, reactor: Any) -> "SipFrontEnd":
        """The front-end ``twistd presence`` options ask for."""
        return cls(service, reactor, options["sip"], options["domain"],
                   outbound=options["sip-outbound"], session_rate=options["sip-session-rate"],
                   source_rate=options["sip-source-rate"])

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
        return self.proxy.stats()


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
