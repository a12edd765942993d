"""``--sip PORT`` in ``twistd presence``: the option, the UDP and TCP
listeners in the service tree, the ready line waiting for them, and
``POST /sip`` on the site.  A ``MemoryReactorClock`` records the listens."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage

from helpers import RawConnection, split_response
from presence import tap
from presence.sip.frontend import SipTCPService, SipUDPService
from presence.sip.transport import SipDatagramProtocol, SipStreamFactory


class _UDPPort:
    def __init__(self, port: int, interface: str) -> None:
        self.port = port
        self.interface = interface
        self.stopped = False
        self.written = []

    def getHost(self):
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def write(self, data, addr):
        self.written.append((data, addr))

    def stopListening(self):
        self.stopped = True


class Reactor(MemoryReactorClock):
    """A memory reactor that also records UDP listens."""

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        listening = _UDPPort(port, interface)
        self.udp_ports.append(listening)
        return listening

    def __init__(self) -> None:
        super().__init__()
        self.udpServers = []
        self.udp_ports = []


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_sip_option():
    assert parse()["sip"] == 5060
    assert parse("--sip", "0")["sip"] == 0
    assert parse("--sip", "15060")["sip"] == 15060
    for bad in ("-1", "65536", "sip", "5060.5"):
        with pytest.raises(usage.UsageError):
            parse("--sip", bad)


def test_help_lists_sip(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    assert "--sip=" in capsys.readouterr().out


def start(top) -> None:
    """Start the tree but the directory (its worker threads need a real
    reactor; the SIP front-end does not use it here)."""
    for service in top:
        if not isinstance(service, tap.DirectoryService):
            service.startService()


def stop(top) -> None:
    for service in reversed(list(top)):
        if service.running and not isinstance(service, tap.DirectoryService):
            service.stopService()


@pytest.fixture
def built(tmp_path):
    made = []

    def build(*args: str):
        options = parse("--http", "tcp:18081:interface=127.0.0.1", "--data",
                        str(tmp_path / "data"), "--hash-cost", "1", "--smsc", "none", *args)
        reactor = Reactor()
        top = tap.makeService(options, reactor=reactor)
        made.append(top)
        return top, reactor

    yield build
    for top in made:
        stop(top)


def test_sip_listeners_and_the_ready_line(built):
    top, reactor = built("--sip", "15061", "--domain", "example.org")
    kinds = [type(s) for s in top]
    assert SipUDPService in kinds and SipTCPService in kinds
    with capturedLogs() as events:
        start(top)
    [(port, protocol, interface, size)] = reactor.udpServers
    assert port == 15061 and isinstance(protocol, SipDatagramProtocol) and size == 65535
    sip_tcp = [s for s in reactor.tcpServers if isinstance(s[1], SipStreamFactory)]
    assert [s[0] for s in sip_tcp] == [15061]
    lines = [formatEvent(e) for e in events]
    ready = [line for line in lines if "presence ready" in line]
    assert len(ready) == 1
    assert "sip-udp=0.0.0.0:15061" in ready[0] and "sip-tcp=0.0.0.0:15061" in ready[0]
    # the listeners said so before the ready line
    first_sip = min(i for i, line in enumerate(lines) if "SIP listening" in line)
    assert first_sip < lines.index(ready[0])
    stop(top)
    assert reactor.udp_ports[0].stopped


def test_sip_zero_turns_it_off(built):
    top, reactor = built("--sip", "0")
    assert not any(isinstance(s, (SipUDPService, SipTCPService)) for s in top)
    with capturedLogs() as events:
        start(top)
    assert reactor.udpServers == []
    ready = [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]
    assert "sip-" not in ready[0]
    # and /sip is no endpoint of the site
    site = next(s for s in reactor.tcpServers if s[0] == 18081)[1]
    raw = RawConnection(site).send(b"POST /sip HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                   b"Content-Type: message/sip\r\nConnection: close\r\n\r\n")
    assert split_response(raw)[0] in (404, 405)


def test_post_sip_is_mounted_and_wants_a_session(built):
    top, reactor = built("--sip", "15062")
    start(top)
    site = next(s for s in reactor.tcpServers if s[0] == 18081)[1]
    body = b"OPTIONS sip:x@localhost SIP/2.0\r\n\r\n"
    raw = RawConnection(site).send(
        b"POST /sip?me=bob&id=nope HTTP/1.1\r\nHost: x\r\nContent-Type: message/sip\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    status, headers, _ = split_response(raw)
    assert status == 403 and headers["content-type"] == "application/json"
    # the API's stats carry the proxy's figures
    raw = RawConnection(site).send(b"GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close"
                                   b"\r\n\r\n")
    assert b'"sip"' in raw and b"server_transactions" in raw


def test_sip_abuse_options():
    defaults = parse()
    assert defaults["sip-outbound"] == "none"
    assert defaults["sip-session-rate"] == 20 and defaults["sip-source-rate"] == 50
    options = parse("--sip-outbound", "Public", "--sip-session-rate", "5",
                    "--sip-source-rate", "0.5")
    assert (options["sip-outbound"], options["sip-session-rate"],
            options["sip-source-rate"]) == ("public", 5.0, 0.5)
    for bad in (("--sip-outbound", "all"), ("--sip-session-rate", "0"),
                ("--sip-source-rate", "-3"), ("--sip-source-rate", "lots")):
        with pytest.raises(usage.UsageError):
            parse(*bad)


def test_help_documents_the_sip_abuse_options(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    for name in ("--sip-outbound=", "--sip-session-rate=", "--sip-source-rate="):
        assert name in out


def test_the_proxy_learns_every_listener_of_the_server_and_its_options(built):
    top, reactor = built("--sip", "15063", "--sip-outbound", "public",
                         "--sip-session-rate", "7", "--sip-source-rate", "9")
    proxy = next(s for s in top if isinstance(s, SipUDPService)).front.proxy
    assert proxy.own_listeners == set()
    start(top)
    # the HTTP listener (the memory reactor reports every listen on 0.0.0.0)
    assert ("0.0.0.0", 18081) in proxy.own_listeners
    assert ("0.0.0.0", 15063) in proxy.own_listeners
    assert proxy.forbidden_destination("127.0.0.1", 18081) == "this server's own address"
    assert proxy.outbound == "public"
    assert proxy.session_limiter.rate == 7 and proxy.source_limiter.rate == 9
