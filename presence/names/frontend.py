"""Wiring of the name service into ``twistd presence`` (docs/names.md).

``--dns ENDPOINT`` (``[HOST:]PORT``, or ``udp:``/``tcp:PORT[:interface=HOST]``;
``none`` or ``0``, the default, turns it off): the zone of ``--domain``
answers on that port over UDP and TCP, on every interface unless a host is
given.  Both ports are bound before ``twistd`` drops privileges, so a server
started as root can take port 53.  ``--dns-ttl`` is the TTL of every record,
``--page-address`` the addresses offline names answer (where the pages are),
``--alive`` how long a dyndns2 name stays online after its last update.
``/nic/update`` is mounted on the HTTP site whether or not ``--dns`` is on (an
update makes its user online either way).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Callable, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from presence.listen import Listener
from presence.names.dyndns import DEFAULT_ALIVE, Sources, UpdateResource
from presence.names.zone import NameCache, PresenceZone, QueryDatagrams, ZoneServerFactory

log = Logger()

Ready = Callable[[str, str], None]
#: tries to find a port free for both UDP and TCP (``--dns HOST:0``)
PICK_TRIES = 20
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]+)\Z")


def parse_dns(value: str) -> Optional[Tuple[str, int]]:
    """``--dns``: ``(interface, port)``, or None when off.  Raises
    ValueError for anything else."""
    value = value.strip()
    if value.lower() in ("none", "0", "off", ""):
        return None
    interface = ""
    if value[:4].lower() in ("udp:", "tcp:"):
        port_text, _, options = value[4:].partition(":")
        if options:
            key, sep, rest = options.partition("=")
            if key != "interface" or not sep:
                raise ValueError(f"only interface= may follow the port, not {options!r}")
            interface = rest.replace("\\", "")   # Twisted's escaped colons: \:
    elif value.isdigit():
        port_text = value
    else:
        match = _HOST_PORT.match(value)
        if match is None:
            raise ValueError(f"not [HOST:]PORT: {value!r}")
        interface = match.group("v6") or match.group("host")
        port_text = match.group("port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be 0-65535, not {port_text!r}")
    if int(port_text) == 0 and not interface and value[:4].lower() not in ("udp:", "tcp:"):
        raise ValueError("0 alone turns DNS off; HOST:0 picks a free port")
    if interface:
        ipaddress.ip_address(interface)  # an address to bind, not a name
    return interface, int(port_text)


def _dns(value: str) -> str:
    try:
        parse_dns(value)
    except ValueError as e:
        raise ValueError(f"--dns: {e}") from None
    return value


_dns.coerceDoc = "[HOST:]PORT (UDP and TCP), or none."  # type: ignore[attr-defined]


def parse_addresses(value: str) -> List[str]:
    out = []
    for part in value.split(","):
        if part.strip():
            out.append(str(ipaddress.ip_address(part.strip())))
    if not out:
        raise ValueError("give at least one IP address")
    return out


def _addresses(value: str) -> List[str]:
    try:
        return parse_addresses(value)
    except ValueError as e:
        raise ValueError(f"--page-address: {e}") from None


_addresses.coerceDoc = "IP addresses, comma-separated (IPv4 and/or IPv6)."  # type: ignore[attr-defined]


def _ttl(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 86400:
        raise ValueError(f"--dns-ttl: must be 1 to 86400 seconds, not {value}")
    return number


def _alive(value: str) -> float:
    number = float(value)
    if not 0 < number <= 86400 * 30:
        raise ValueError(f"--alive: must be above 0 and at most 30 days, not {value}")
    return number


OPTIONS = [
    ["dns", None, "none",
     "The name service (docs/names.md): the zone of --domain on [HOST:]PORT over UDP and"
     " TCP (every interface unless HOST is given; e.g. 5353, 127.0.0.1:5353,"
     " udp:5353:interface=::); none or 0 turns it off.", _dns],
    ["dns-ttl", None, 60, "TTL in seconds of every record of the zone (and of NXDOMAIN).",
     _ttl],
    ["page-address", None, None,
     "The addresses a name answers while its user is offline, where the pages are: IPs,"
     " comma-separated [default: the host of --host-box if it is an IP address, else the"
     " --http interface, else this machine's address].", _addresses],
    ["alive", None, DEFAULT_ALIVE,
     "Seconds a name updated by dyndns2 (/nic/update) stays online after its last update.",
     _alive],
]


def check_options(options: Any) -> None:
    """The names part of ``Options.postOptions``."""
    if isinstance(options["dns-ttl"], str):
        options["dns-ttl"] = _ttl(options["dns-ttl"])
    if isinstance(options["alive"], str):
        options["alive"] = _alive(options["alive"])
    if options["page-address"] is None or isinstance(options["page-address"], list):
        return
    raise usage.UsageError("--page-address: give IP addresses")  # pragma: no cover


def _ip(value: str) -> Optional[str]:
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        return None


def own_address() -> str:
    """This machine's address toward the Internet (no packet is sent: a UDP
    socket is only connected), else 127.0.0.1."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def page_addresses(options: Any) -> List[str]:
    """``--page-address``, or its default (see the option)."""
    if options.get("page-address"):
        return list(options["page-address"])
    box = _ip((options.get("host-box") or "").rpartition(":")[0])
    if box and not ipaddress.ip_address(box).is_unspecified:
        return [box]
    match = re.search(r"interface=([^:]+|\[[^\]]+\])", options.get("http") or "")
    http = _ip(match.group(1)) if match else None
    if http and not ipaddress.ip_address(http).is_unspecified:
        return [http]
    return [own_address()]


class NamesFrontEnd:
    """The zone, its DNS server and the dyndns2 resource of one server."""

    def __init__(self, options: Any, service: Any, reactor: Any) -> None:
        self.reactor = reactor
        self.service = service
        self.domain = options["domain"]
        self.listen = parse_dns(options["dns"])
        self.enabled = self.listen is not None
        self.page = page_addresses(options)
        self.names = NameCache(reactor, lambda label: defer.ensureDeferred(
            service.resolve(label)), unknown_ttl=min(30.0, options["dns-ttl"]))
        service.name_observers.append(self.names.forget)
        self.zone = PresenceZone(self.domain, service.hub, self.names, self.page,
                                 options["dns-ttl"])
        self.factory = ZoneServerFactory(self.zone, reactor)
        self.sources = Sources(service, reactor, options["alive"])
        self.resource = UpdateResource(service, self.sources, self.domain)
        #: the TCP port bound together with the UDP one (``--dns HOST:0``)
        self.tcp_port: Any = None

    def mount(self, root: Any) -> None:
        """``/nic/update`` on the site's root resource."""
        root.mount(b"nic", self.resource)

    def services(self, udp_label: str, tcp_label: str, ready: Ready) -> List[Service]:
        return [DnsUDPService(self, udp_label, ready), DnsTCPService(self, tcp_label, ready)]



class _DnsListener(Listener):
    option = "dns"

    def __init__(self, front: NamesFrontEnd, label: str, ready: Optional[Ready]) -> None:
        self.front = front
        self.label = label
        self.ready = ready
        self.value = f"{front.listen[0]}:{front.listen[1]}" if front.listen else ""

    def listening(self, port: Any) -> None:
        host = port.getHost()
        log.info("DNS for {domain} listening on {what} {host}:{port}",
                 domain=self.front.domain, what=self.what, host=host.host, port=host.port)
        if self.ready is not None:
            self.ready(self.label, f"{host.host}:{host.port}")


class DnsUDPService(_DnsListener):
    """The UDP port.  Port 0 picks a free port that is free for TCP too:
    the TCP port is then bound here, on the same number."""

    what = "UDP"

    def bind(self) -> Any:
        front = self.front
        interface, port = front.listen
        if port:
            return front.reactor.listenUDP(port, QueryDatagrams(controller=front.factory),
                                           interface=interface)
        for _ in range(PICK_TRIES):
            udp = front.reactor.listenUDP(0, QueryDatagrams(controller=front.factory),
                                          interface=interface)
            try:
                front.tcp_port = front.reactor.listenTCP(
                    udp.getHost().port, front.factory.tcp(), interface=interface)
            except CannotListenError:
                udp.stopListening()
                continue
            return udp
        raise CannotListenError(interface, 0, "no port free for both UDP and TCP")


class DnsTCPService(_DnsListener):
    what = "TCP"

    def bind(self) -> Any:
        front = self.front
        interface, port = front.listen
        if front.tcp_port is not None:   # bound with the UDP port (port 0)
            bound, front.tcp_port = front.tcp_port, None
            return bound
        return front.reactor.listenTCP(port, front.factory.tcp(), interface=interface)

    def stopService(self) -> Any:
        for conn in list(self.front.factory.connections):
            conn.transport.loseConnection()
        return super().stopService()
