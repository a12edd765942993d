"""``twistd presence`` and the name service: its options and its listeners
(no sockets: a MemoryReactorClock records the listens)."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage

from presence import tap
from presence.names.frontend import page_addresses, parse_dns
from presence.names.zone import QueryDatagrams, ZoneServerFactory


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


@pytest.mark.parametrize("value, parsed", [
    ("none", None), ("0", None), ("off", None), ("5353", ("", 5353)),
    ("127.0.0.1:53", ("127.0.0.1", 53)), ("[::1]:5353", ("::1", 5353)),
    ("udp:5353:interface=0.0.0.0", ("0.0.0.0", 5353)), ("tcp:5300", ("", 5300)),
    ("127.0.0.1:0", ("127.0.0.1", 0)), ("udp:0:interface=::1", ("::1", 0)),
])
def test_dns_endpoints(value, parsed):
    assert parse_dns(value) == parsed
    assert parse("--dns", value)["dns"] == value


@pytest.mark.parametrize("bad", ["65536", "x", "localhost:53", "udp:53:backlog=5",
                                 "127.0.0.1:65536", "tcp:abc", "[::1]:"])
def test_bad_dns_endpoints_are_usage_errors(bad):
    with pytest.raises(usage.UsageError, match="dns"):
        parse("--dns", bad)


@pytest.mark.parametrize("args", [["--dns-ttl", "0"], ["--dns-ttl", "86401"],
                                  ["--alive", "0"], ["--alive", "-3"],
                                  ["--page-address", "example.org"], ["--page-address", ","]])
def test_bad_names_options_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_defaults_and_the_page_address():
    o = parse()
    assert (o["dns"], o["dns-ttl"], o["alive"], o["page-address"]) == ("none", 60, 300.0, None)
    assert parse("--page-address", "192.0.2.1, 2001:db8::1")["page-address"] == [
        "192.0.2.1", "2001:db8::1"]
    assert page_addresses(parse("--page-address", "192.0.2.1")) == ["192.0.2.1"]
    assert page_addresses(parse("--host-box", "198.51.100.3:8080")) == ["198.51.100.3"]
    assert page_addresses(parse("--http", "tcp:8080:interface=203.0.113.9")) == ["203.0.113.9"]
    fallback = page_addresses(parse("--http", "tcp:8080:interface=0.0.0.0"))
    assert len(fallback) == 1


class UDPPort:
    def __init__(self, port: int, interface: str) -> None:
        self.port, self.interface = port, interface

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self) -> None:
        pass


class Reactor(MemoryReactorClock):
    """MemoryReactorClock, which records TCP listens, recording UDP ones too."""

    def __init__(self) -> None:
        super().__init__()
        self.udpServers: list = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        return UDPPort(port, interface)


def build(tmp_path, *args: str):
    options = parse("--http", "tcp:18081:interface=127.0.0.1", "--data", str(tmp_path / "d"),
                    "--hash-cost", "1", "--smsc", "none", "--sip", "0", "--admin", "none", *args)
    reactor = Reactor()
    return tap.makeService(options, reactor=reactor), reactor


def test_dns_listens_on_udp_and_tcp_and_is_in_the_ready_line(tmp_path):
    top, reactor = build(tmp_path, "--dns", "127.0.0.1:5353", "--domain", "example.org")
    with capturedLogs() as events:
        top.startService()
    try:
        (port, proto, interface, _), = reactor.udpServers
        assert (port, interface) == (5353, "127.0.0.1") and isinstance(proto, QueryDatagrams)
        assert isinstance(proto.controller, ZoneServerFactory)
        dns_tcp = [s for s in reactor.tcpServers if s[0] == 5353]
        assert len(dns_tcp) == 1 and dns_tcp[0][3] == "127.0.0.1"
        ready = [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]
        assert len(ready) == 1 and "dns-udp=" in ready[0] and "dns-tcp=" in ready[0]
    finally:
        top.stopService()


def test_without_dns_nothing_more_listens_but_nic_update_is_served(tmp_path):
    top, reactor = build(tmp_path)
    top.startService()
    try:
        assert reactor.udpServers == [] and len(reactor.tcpServers) == 1
        site = reactor.tcpServers[0][1]
        assert b"nic" in site.resource.routes
    finally:
        top.stopService()
