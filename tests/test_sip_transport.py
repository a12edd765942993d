"""SIP over UDP and TCP (``presence.sip.transport``) on in-memory transports:
``StringTransport`` for TCP connections, a recording port for UDP, a
``MemoryReactorClock`` for outbound connections and idle timers.  The last
tests run the real proxy behind the real protocols."""

from __future__ import annotations

from typing import List, Tuple

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from helpers import logged_errors, world  # noqa: F401  (fixtures)
from presence.sip import proxy as proxy_mod
from presence.sip import transport as transport_mod
from presence.sip.message import ParseError, parse
from presence.sip.proxy import TCP, UDP, Hop, SipProxy
from presence.sip.testing import invite, request
from presence.sip.transport import (
    SipDatagramProtocol, SipNetwork, SipStreamFactory, SipStreamProtocol,
)


class RecordingUDP:
    def __init__(self) -> None:
        self.written: List[Tuple[bytes, tuple]] = []

    def write(self, data: bytes, addr: tuple) -> None:
        self.written.append((data, addr))


def connect(network: SipNetwork, peer=("198.51.100.7", 40000)):
    proto = SipStreamFactory(network).buildProtocol(IPv4Address("TCP", *peer))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "192.0.2.1", 5060),
                                peerAddress=IPv4Address("TCP", *peer))
    proto.makeConnection(transport)
    return proto, transport


@pytest.fixture
def net():
    network = SipNetwork(Clock(), 5060)
    network.got = []
    network.rejected = []
    network.receiver = lambda data, hop: network.got.append((data, hop))
    network.rejecter = lambda error, hop: network.rejected.append((error, hop))
    return network


def test_tcp_messages_are_framed_by_content_length(net):
    proto, transport = connect(net)
    one = invite("sip:bob@example.org", transport="TCP").to_bytes()
    two = request("OPTIONS", "sip:example.org", transport="TCP").to_bytes()
    stream = one + two
    for i in range(0, len(stream), 100):
        proto.dataReceived(stream[i:i + 100])
    assert [d for d, _ in net.got] == [one, two]
    hop = net.got[0][1]
    assert (hop.transport, hop.host, hop.port, hop.conn) == (TCP, "198.51.100.7", 40000, proto)
    assert net.connections[("198.51.100.7", 40000)] is proto


def test_tcp_keepalive_ping_gets_a_pong(net):
    proto, transport = connect(net)
    proto.dataReceived(b"\r\n\r\n")
    assert transport.value() == b"\r\n"
    assert net.got == []


def test_tcp_without_content_length_is_rejected_and_closed(net):
    proto, transport = connect(net)
    data = invite("sip:bob@example.org").to_bytes().replace(b"Content-Length", b"X-Length")
    proto.dataReceived(data)
    [(error, hop)] = net.rejected
    assert error.status == 400 and "Content-Length" in error.reason
    assert transport.disconnecting


def test_tcp_huge_header_section_is_513_and_closed(net):
    proto, transport = connect(net)
    proto.dataReceived(b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKa"
                       b"\r\nX-Big: " + b"a" * 20000)
    [(error, hop)] = net.rejected
    assert error.status == 513 and transport.disconnecting


def test_idle_tcp_connections_are_closed(net):
    proto, transport = connect(net)
    net.reactor.advance(transport_mod.IDLE_TIMEOUT - 1)
    proto.dataReceived(b"\r\n\r\n")
    net.reactor.advance(transport_mod.IDLE_TIMEOUT - 1)
    assert not transport.disconnecting
    net.reactor.advance(2)
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionRefusedError()))
    assert net.connections == {} and net.connections_all == set()


def test_connection_bound(net, monkeypatch):
    monkeypatch.setattr(transport_mod, "MAX_CONNECTIONS", 1)
    connect(net)
    assert SipStreamFactory(net).buildProtocol(IPv4Address("TCP", "1.2.3.4", 1)) is None


def test_one_source_address_cannot_take_every_connection_slot(net, monkeypatch):
    monkeypatch.setattr(transport_mod, "MAX_CONNECTIONS_PER_SOURCE", 3)
    assert transport_mod.MAX_CONNECTIONS_PER_SOURCE < transport_mod.MAX_CONNECTIONS
    flood = [connect(net, ("198.51.100.66", 40000 + i)) for i in range(3)]
    factory = SipStreamFactory(net)
    # that address is at its limit: refused; another address still connects
    assert factory.buildProtocol(IPv4Address("TCP", "198.51.100.66", 40010)) is None
    other, transport = connect(net, ("198.51.100.7", 40000))
    assert other is not None and other.connected_
    other.dataReceived(request("OPTIONS", "sip:example.org", transport="TCP").to_bytes())
    assert len(net.got) == 1
    # a slot of the flooding address frees when one of its connections closes
    flood[0][0].connectionLost(None)
    assert factory.buildProtocol(IPv4Address("TCP", "198.51.100.66", 40011)) is not None
    assert net.per_source == {"198.51.100.66": 2, "198.51.100.7": 1}
    for proto, _ in flood[1:] + [(other, transport)]:
        proto.connectionLost(None)
    assert net.per_source == {}


def test_is_local_knows_every_address_of_this_machine(net):
    assert net.is_local("127.0.0.1") and net.is_local("127.9.9.9") and net.is_local("::1")
    assert net.is_local("0.0.0.0")
    assert not net.is_local("93.184.216.34") and not net.is_local("10.255.255.254")


def test_resolve_gives_every_address_of_a_name():
    from twisted.internet.address import IPv4Address as Addr
    from zope.interface import implementer
    from twisted.internet.interfaces import IHostnameResolver

    @implementer(IHostnameResolver)
    class Resolver:
        def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                            transportSemantics="TCP"):
            receiver.resolutionBegan(None)
            for ip in ("93.184.216.34", "127.0.0.1", "93.184.216.34"):
                receiver.addressResolved(Addr("TCP", ip, portNumber))
            receiver.resolutionComplete()

    reactor = MemoryReactorClock()
    reactor.nameResolver = Resolver()
    got = []
    SipNetwork(reactor, 5060).resolve("evil.example").addCallback(got.append)
    assert got == [["93.184.216.34", "127.0.0.1"]]


def test_a_failing_receiver_breaks_nothing(net):
    def boom(data, hop):
        raise RuntimeError("boom")

    net.receiver = boom
    proto, transport = connect(net)
    udp = SipDatagramProtocol(net)
    with capturedLogs() as events:
        proto.dataReceived(request("OPTIONS", "sip:x@y").to_bytes())
        udp.datagramReceived(b"anything", ("1.2.3.4", 5))
    assert len([e for e in events if e.get("log_failure")]) == 2
    assert not transport.disconnecting


def test_udp_datagrams_and_sending(net):
    udp = SipDatagramProtocol(net)
    udp.datagramReceived(b"OPTIONS", ("203.0.113.5", 5070))
    data, hop = net.got[0]
    assert (hop.transport, hop.host, hop.port) == (UDP, "203.0.113.5", 5070)
    net.udp = RecordingUDP()
    net.send(b"x", Hop(UDP, "203.0.113.5", 5070))
    assert net.udp.written == [(b"x", ("203.0.113.5", 5070))]


def test_tcp_sends_on_the_peers_connection_or_a_new_one():
    reactor = MemoryReactorClock()
    net = SipNetwork(reactor, 5060)
    net.receiver = lambda data, hop: None
    proto, transport = connect(net)
    net.send(b"one", Hop(TCP, "198.51.100.7", 40000, conn=proto))
    net.send(b"two", Hop(TCP, "198.51.100.7", 40000))  # found by address
    assert transport.value() == b"onetwo"
    errors = []
    net.send(b"three", Hop(TCP, "198.51.100.9", 5090), lambda: errors.append(1))
    net.send(b"four", Hop(TCP, "198.51.100.9", 5090), lambda: errors.append(2))
    host, port, factory, _, _ = reactor.tcpClients[0]
    assert (host, port) == ("198.51.100.9", 5090) and len(reactor.tcpClients) == 1
    out = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.9", 5090))
    factory.buildProtocol(None).makeConnection(out)
    assert out.value() == b"threefour"
    assert ("198.51.100.9", 5090) in net.connections
    net.send(b"x", Hop(TCP, "198.51.100.10", 5090), lambda: errors.append(3))
    host, port, factory, _, _ = reactor.tcpClients[1]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    reactor.advance(0)
    assert errors == [3]


def test_local_addresses(net):
    assert net.route_to("127.0.0.1") == "127.0.0.1"
    assert net.local_host(Hop(UDP, "127.0.0.1", 5)) == "127.0.0.1"
    proto, transport = connect(net)
    assert net.local_host(Hop(TCP, "198.51.100.7", 40000, conn=proto)) == "192.0.2.1"
    assert net.is_local("127.0.0.1") and net.is_local("localhost") and net.is_local("127.0.1.1")
    assert not net.is_local("198.51.100.7")
    got = []
    net.resolve("10.1.2.3").addCallback(got.append)
    assert got == [["10.1.2.3"]]


# -- the real proxy behind the real protocols --------------------------------------------------

@pytest.fixture
def wired(world):
    net = SipNetwork(world.clock, 5060)
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    net.receiver, net.rejecter = proxy.received, proxy.reject_malformed
    net.udp = RecordingUDP()
    yield net, proxy
    proxy.stop()


def test_tcp_invites_are_answered_on_the_connection(wired):
    net, proxy = wired
    proto, transport = connect(net)
    # an unknown user: the 404 alone (found before any 100 Trying was due)
    proto.dataReceived(invite("sip:nobody@example.org", transport="TCP").to_bytes())
    raw = transport.value()
    assert parse(raw).code == 404 and raw.count(b"SIP/2.0 ") == 1
    assert "Content-Length: 0" in raw.decode()
    # a slow lookup: 100 Trying after 200 ms, then the 404, on the same stream
    transport.clear()
    slow = defer.Deferred()
    proxy.service.resolve = lambda name: slow
    proto.dataReceived(invite("sip:bob@example.org", transport="TCP").to_bytes())
    assert transport.value() == b""
    net.reactor.advance(proxy_mod.TRYING_DELAY)
    first, rest = transport.value().split(b"\r\n\r\n", 1)
    assert first.startswith(b"SIP/2.0 100 Trying") and rest == b""
    slow.callback(None)
    assert parse(transport.value().split(b"\r\n\r\n", 1)[1]).code == 404


def test_tcp_stream_without_length_gets_400_then_closes(wired):
    net, proxy = wired
    proto, transport = connect(net)
    data = invite("sip:bob@example.org", transport="TCP").to_bytes()
    proto.dataReceived(data.replace(b"Content-Length", b"X-Length"))
    reply = parse(transport.value())
    assert reply.code == 400 and "Content-Length" in reply.reason
    assert transport.disconnecting


def test_udp_request_gets_answered_at_its_rport(wired):
    net, proxy = wired
    SipDatagramProtocol(net).datagramReceived(
        request("OPTIONS", "sip:example.org").to_bytes(), ("203.0.113.5", 41000))
    [(data, addr)] = net.udp.written
    reply = parse(data)
    assert reply.code == 200 and addr == ("203.0.113.5", 41000)
    assert "received=203.0.113.5" in reply.get("via") and "rport=41000" in reply.get("via")


def test_parse_error_type_is_exposed():
    assert issubclass(ParseError, ValueError)
    assert isinstance(SipStreamProtocol(SipNetwork(Clock(), 1)), SipStreamProtocol)


def test_a_tcp_response_after_the_connection_closed_goes_to_the_via(world):
    reactor = MemoryReactorClock()
    net = SipNetwork(reactor, 5060)
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    net.receiver, net.rejecter = proxy.received, proxy.reject_malformed
    bob = world.user("bob")
    hb = bob.heartbeat()
    # a public peer (a private one is not reconnected to: test_sip_relay.py)
    proto, transport = connect(net, ("93.184.216.7", 40000))
    req = request("OPTIONS", "sip:bob@example.org", transport="TCP", via_port=5062)
    proto.dataReceived(req.to_bytes().replace(b";rport", b""))
    frame = [e for e in hb.events() if e.head.startswith("msg sipreq")][0]
    forwarded = parse(frame.text.split("\n", 1)[1].replace("\n", "\r\n").encode())
    proto.connectionLost(Failure(ConnectionRefusedError()))
    from presence.sip.testing import answer
    proxy.from_session(bob.hub_session, answer(forwarded, 200).to_bytes())
    host, port, factory, _, _ = reactor.tcpClients[0]
    # received is the source address; no rport asked: the Via's port
    assert (host, port) == ("93.184.216.7", 5062)
    out = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    factory.buildProtocol(None).makeConnection(out)
    assert parse(out.value()).code == 200
    proxy.stop()
