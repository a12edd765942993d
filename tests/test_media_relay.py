"""The media relay's bookkeeping (presence/sip/relay.py) on a Clock and an
in-memory UDP layer: port pairs, latching, forwarding, the sink seam,
closing and the bounds."""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from presence.sip.relay import (
    MAX_STREAMS, RELATCH_IDLE, IMediaSink, IUdpLayer, MediaRelay, NoRoom,
    ReactorUdp, is_rtcp,
)
from presence.sip.testing import FakeUdp, rtcp_packet, rtp_packet

ALICE = ("198.51.100.10", 4000)
BOB = ("203.0.113.20", 6000)


def make(**kw):
    clock, udp = Clock(), FakeUdp()
    kw.setdefault("ports", (20000, 20099))
    relay = MediaRelay(clock, udp, rng=random.Random(1), **kw)
    return clock, udp, relay


def call_with_stream(relay, users=("alice", "bob")):
    call = relay.open_call("c1@x", "tagA", users)
    caller, callee = call.stream(0)
    return call, caller, callee


@implementer(IMediaSink)
class Sink:
    def __init__(self):
        self.got = []

    def send(self, packet, rtcp):
        self.got.append((packet, rtcp))


def test_interfaces():
    assert verifyObject(IUdpLayer, ReactorUdp(None))
    assert verifyObject(IMediaSink, Sink())


def test_a_stream_opens_an_even_odd_port_pair_per_side_within_the_range():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    for leg in (caller, callee):
        assert leg.rtp_port % 2 == 0 and leg.rtcp_port == leg.rtp_port + 1
        assert 20000 <= leg.rtp_port < leg.rtcp_port <= 20099
        assert relay.leg_for(leg.rtp_port) is leg and relay.leg_for(leg.rtcp_port) is leg
        assert leg.rtp_port in udp.bound and leg.rtcp_port in udp.bound
    assert caller.rtp_port != callee.rtp_port
    assert (caller.user, callee.user) == ("alice", "bob")
    assert call.stream(0) == (caller, callee)  # opened once
    assert relay.leg_for(20001 if caller.rtp_port != 20000 else 20003) in (None, caller, callee)
    assert relay.stats()["port_pairs_in_use"] == 2


def test_latching_and_forwarding_both_ways_from_the_other_legs_port():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    # nothing is known of bob yet: alice's packet has no destination
    udp.arrive(caller.rtp_port, rtp_packet(1), ALICE)
    assert udp.take() == [] and relay.counters["dropped_no_destination"] == 1
    assert caller.latched[0] == ALICE
    udp.arrive(callee.rtp_port, rtp_packet(2), BOB)
    assert udp.take() == [(caller.rtp_port, rtp_packet(2), ALICE)]
    udp.arrive(caller.rtp_port, rtp_packet(3), ALICE)
    assert udp.take() == [(callee.rtp_port, rtp_packet(3), BOB)]
    # RTCP on the RTCP ports, latched separately
    udp.arrive(callee.rtcp_port, rtcp_packet(), (BOB[0], 6001))
    assert udp.take() == [(caller.rtcp_port, rtcp_packet(), (ALICE[0], ALICE[1] + 1))]
    udp.arrive(caller.rtcp_port, rtcp_packet(), (ALICE[0], 4011))
    assert udp.take() == [(callee.rtcp_port, rtcp_packet(), (BOB[0], 6001))]
    assert caller.received == 3 and callee.sent == 2


def test_until_latched_a_side_gets_packets_at_the_address_its_sdp_named():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    callee.expect(BOB, (BOB[0], 6001), False)
    udp.arrive(caller.rtp_port, rtp_packet(1), ALICE)
    udp.arrive(caller.rtcp_port, rtcp_packet(), (ALICE[0], 4001))
    assert udp.take() == [(callee.rtp_port, rtp_packet(1), BOB),
                          (callee.rtcp_port, rtcp_packet(), (BOB[0], 6001))]
    # bob's NAT: his packets come from elsewhere; from now on they go there
    udp.arrive(callee.rtp_port, rtp_packet(2), ("203.0.113.99", 31000))
    udp.take()
    udp.arrive(caller.rtp_port, rtp_packet(3), ALICE)
    assert udp.take() == [(callee.rtp_port, rtp_packet(3), ("203.0.113.99", 31000))]


def test_packets_from_another_source_are_dropped_and_counted():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    udp.arrive(callee.rtp_port, rtp_packet(1), BOB)
    udp.arrive(caller.rtp_port, rtp_packet(1), ALICE)
    udp.take()
    udp.arrive(caller.rtp_port, rtp_packet(9), ("192.0.2.66", 1234))
    assert udp.take() == [] and relay.counters["dropped_foreign"] == 1
    assert caller.latched[0] == ALICE


def test_garbage_never_latches_nor_goes_anywhere():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    callee.expect(BOB, None, False)
    for junk in (b"", b"hello world!", b"\x00" * 40, b"\x80\x00"):
        udp.arrive(caller.rtp_port, junk, ("192.0.2.66", 1))
    assert udp.take() == [] and caller.latched == [None, None]
    assert relay.counters["dropped_invalid"] == 4


def test_relatching_after_a_new_sdp_or_after_the_source_fell_silent():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    udp.arrive(caller.rtp_port, rtp_packet(1), ALICE)
    moved = ("198.51.100.11", 4100)
    udp.arrive(caller.rtp_port, rtp_packet(2), moved)
    assert caller.latched[0] == ALICE
    caller.expect(moved, None, False)  # alice's re-INVITE
    udp.arrive(caller.rtp_port, rtp_packet(3), moved)
    assert caller.latched[0] == moved
    udp.arrive(caller.rtp_port, rtp_packet(4), ALICE)
    assert caller.latched[0] == moved  # only once per SDP
    clock.advance(RELATCH_IDLE)
    udp.arrive(caller.rtp_port, rtp_packet(5), ALICE)
    assert caller.latched[0] == ALICE
    # a new SDP, and the latched source goes on sending: no stranger may
    # take the leg over afterwards
    caller.expect(ALICE, None, False)
    udp.arrive(caller.rtp_port, rtp_packet(6), ALICE)
    udp.arrive(caller.rtp_port, rtp_packet(7), ("192.0.2.66", 1234))
    assert caller.latched[0] == ALICE


def test_rtcp_mux_rtcp_on_the_rtp_port_goes_to_the_rtp_address_of_a_muxing_side():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    caller.expect(ALICE, None, True)
    callee.expect(BOB, None, True)
    udp.arrive(caller.rtp_port, rtcp_packet(), ALICE)
    assert udp.take() == [(callee.rtp_port, rtcp_packet(), BOB)]
    assert is_rtcp(rtcp_packet()) and not is_rtcp(rtp_packet())


@pytest.mark.parametrize("muxed", [False, True])
def test_a_sink_takes_the_packets_of_its_side_and_inject_sends_from_it(muxed):
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    callee.expect(BOB, None, muxed)
    sink = Sink()
    caller.attach(sink)
    caller.attach(sink)
    udp.arrive(callee.rtp_port, rtp_packet(1), BOB)
    if muxed:
        udp.arrive(callee.rtp_port, rtcp_packet(), BOB)
    else:
        udp.arrive(callee.rtcp_port, rtcp_packet(), (BOB[0], 6001))
    assert sink.got == [(rtp_packet(1), False), (rtcp_packet(), True)]
    assert udp.take() == []
    caller.inject(rtp_packet(2), False)
    caller.inject(rtcp_packet(), True)
    rtcp_to = (callee.rtp_port, BOB) if muxed else (callee.rtcp_port, (BOB[0], 6001))
    # (the callee latched its RTCP source, or muxes it on the RTP port)
    assert udp.take() == [(callee.rtp_port, rtp_packet(2), BOB),
                          (rtcp_to[0], rtcp_packet(), rtcp_to[1])]
    caller.detach(sink)
    udp.arrive(callee.rtp_port, rtp_packet(3), BOB)
    assert len(sink.got) == 2
    caller.attach(sink)
    relay.close(call, "bye")
    assert caller.closed and callee.closed and caller.sinks == []
    udp.take()
    caller.inject(rtp_packet(4), False)
    callee.datagram(rtp_packet(5), BOB, 0)
    assert udp.take() == [] and len(sink.got) == 2


def test_closing_frees_the_ports_and_late_packets_go_nowhere():
    clock, udp, relay = make()
    call, caller, callee = call_with_stream(relay)
    ports = [caller.rtp_port, caller.rtcp_port, callee.rtp_port, callee.rtcp_port]
    relay.close(call, "bye")
    relay.close(call, "bye")
    assert udp.bound == {} and relay.calls == {}
    assert all(relay.leg_for(p) is None for p in ports)
    assert relay.counters["closed_bye"] == 1
    caller.datagram(rtp_packet(1), ALICE, 0)
    assert udp.take() == []
    assert relay.stats()["port_pairs_free"] == relay.capacity
    with pytest.raises(NoRoom):
        call.stream(1)


def test_find_by_either_tag():
    clock, udp, relay = make()
    call = relay.open_call("c1@x", "tagA", ("alice", ""))
    assert relay.find("c1@x", "tagA", "tagB") is call
    assert relay.find("c1@x", "tagB", "tagA") is call
    assert relay.find("c1@x", "tagB", None) is None
    assert relay.find(None, "tagA") is None
    assert relay.open_call("c1@x", "tagA", ("alice", "")) is call


def test_unanswered_calls_close_after_the_ring_timeout_answered_ones_after_silence():
    clock, udp, relay = make(timeout=30.0, ring_timeout=100.0)
    ringing = relay.open_call("ring@x", "t1", ("alice", "bob"))
    ringing.stream(0)
    talking = relay.open_call("talk@x", "t2", ("alice", "bob"))
    a, b = talking.stream(0)
    talking.answer()
    for _ in range(60):  # 60 s of media keeps it open
        clock.advance(1)
        udp.arrive(a.rtp_port, rtp_packet(1), ALICE)
    assert not talking.closed and not ringing.closed
    clock.advance(30)
    assert talking.closed and relay.counters["closed_timeout"] == 1
    clock.advance(10)
    assert ringing.closed and relay.counters["closed_unanswered"] == 1
    assert relay.calls == {} and udp.bound == {}
    assert not clock.getDelayedCalls()  # no sweep without calls


def test_foreign_packets_do_not_keep_a_call_alive():
    clock, udp, relay = make(timeout=30.0)
    call, caller, callee = call_with_stream(relay)
    call.answer()
    udp.arrive(caller.rtp_port, rtp_packet(1), ALICE)
    for _ in range(int(RELATCH_IDLE) - 1):
        clock.advance(1)
        udp.arrive(caller.rtp_port, rtp_packet(1), ("192.0.2.66", 9))
    assert call.last_media == 0 and caller.latched[0] == ALICE


def test_bounds_calls_ports_and_streams():
    clock, udp, relay = make(ports=(20000, 20009), max_calls=3)
    # 10 ports: 5 pairs, two legs a stream: two streams, the third fails
    first = relay.open_call("a", "t", ("alice", "bob"))
    first.stream(0)
    second = relay.open_call("b", "t", ("alice", "bob"))
    second.stream(0)
    third = relay.open_call("c", "t", ("alice", "bob"))
    with pytest.raises(NoRoom):
        third.stream(0)
    assert len(udp.bound) == 8  # the half-opened stream gave its pair back
    with pytest.raises(NoRoom):
        relay.open_call("d", "t", ("alice", "bob"))
    assert relay.counters["refused_calls"] == 1 and relay.counters["refused_ports"] == 1
    relay.close(first, "bye")
    third.stream(0)
    with pytest.raises(NoRoom):
        third.stream(MAX_STREAMS)


def test_busy_ports_are_skipped():
    clock, udp, relay = make(ports=(20000, 20009))
    udp.busy = {20000, 20003, 20004}
    call = relay.open_call("a", "t", ("alice", "bob"))
    caller, callee = call.stream(0)
    assert {caller.rtp_port, callee.rtp_port} == {20006, 20008}
    assert relay.counters["ports_busy"] >= 3
    relay.close(call, "bye")
    assert udp.bound == {}


def test_stop_closes_everything_and_the_sweep():
    clock, udp, relay = make()
    call_with_stream(relay)
    relay.stop()
    assert udp.bound == {} and not clock.getDelayedCalls()


def test_the_range_is_checked():
    with pytest.raises(ValueError):
        MediaRelay(Clock(), FakeUdp(), ports=(80, 90))
    with pytest.raises(ValueError):
        MediaRelay(Clock(), FakeUdp(), ports=(30000, 30000))


def test_the_reactor_front_end_on_real_loopback_udp():
    """ReactorUdp binds, receives and sends (on the real reactor's API, but
    driven without running it: a MemoryReactor has no UDP)."""
    from twisted.internet.testing import MemoryReactor
    from twisted.internet.error import CannotListenError
    from presence.sip.relay import PortBusy

    class Reactor(MemoryReactor):
        def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
            if port == 20002:
                raise CannotListenError(interface, port, OSError("in use"))
            from twisted.internet.testing import StringTransport
            transport = StringTransport()
            transport.written = []
            transport.write = lambda data, addr: transport.written.append((data, addr))
            protocol.makeConnection(transport)
            self.udp_ports.append((port, protocol, transport))

            class Port:
                stopped = False

                def stopListening(self):
                    Port.stopped = True
            return Port()

    reactor = Reactor()
    reactor.udp_ports = []
    layer = ReactorUdp(reactor, "127.0.0.1")
    got = []
    port = layer.open(20000, lambda data, src: got.append((data, src)))
    _, protocol, transport = reactor.udp_ports[0]
    protocol.datagramReceived(b"x", ("127.0.0.1", 5))
    assert got == [(b"x", ("127.0.0.1", 5))]
    port.send(b"y", ("127.0.0.1", 6))
    assert transport.written == [(b"y", ("127.0.0.1", 6))]
    port.close()
    with pytest.raises(PortBusy):
        layer.open(20002, lambda data, src: None)
