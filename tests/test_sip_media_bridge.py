"""``presence-sip-bridge --media http`` in memory: the bridge's local UDP
pairs, its SDP rewrites both ways, and the packets carried over HTTP to the
server's media tunnel (``/sip/media``) and a fake relay with the relay's leg
API.  As in test_sip_bridge.py: the real proxy and server, StubTreq, one
Clock; the local UDP ports are fakes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, List, Tuple

import pytest
from treq.testing import StubTreq
from twisted.internet.error import CannotListenError

from helpers import BASE, PASSWORD, logged_errors, world  # noqa: F401  (fixtures)
from media_support import FakeRelay, sip_io
from presence.cli import sip_media
from presence.cli.sip_bridge import SipBridge, build_parser
from presence.sip import media_web
from presence.sip import sdp as sdp_lib
from presence.sip.media_web import MediaTunnel
from presence.sip.mediaframe import decode_all
from presence.sip.message import parse
from presence.sip.proxy import UDP, Hop, SipProxy
from presence.sip.testing import FakeNetwork, answer, invite, request, rtcp_packet, rtp_packet
from presence.sip.web import SipTunnelResource

PHONE = ("127.0.0.1", 5080)
LISTEN = ("127.0.0.1", 5070)
CALLER = Hop(UDP, "198.51.100.7", 5062)
RELAY = "192.0.2.1"


def sdp(host: str, *ports: int, extra: str = "") -> str:
    lines = ["v=0", f"o=- 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    for i, port in enumerate(ports):
        lines += [f"m={'audio' if i == 0 else 'video'} {port} RTP/AVP 0",
                  "a=rtpmap:0 PCMU/8000"]
    return "\r\n".join(lines) + "\r\n" + extra


class FakeMediaPort:
    def __init__(self, udp: "FakeLocalUdp", port: int, protocol) -> None:
        self.udp = udp
        self.port = port
        self.protocol = protocol
        self.written: List[Tuple[bytes, Tuple[str, int]]] = []
        self.closed = False

    def getHost(self):
        return SimpleNamespace(host=LISTEN[0], port=self.port)

    def write(self, data: bytes, addr) -> None:
        assert not self.closed
        self.written.append((data, addr))

    def stopListening(self) -> None:
        self.closed = True
        self.udp.bound.pop(self.port, None)

    def arrive(self, data: bytes, source=("127.0.0.1", 6000)) -> None:
        self.protocol.datagramReceived(data, source)


class FakeLocalUdp:
    """``listenUDP`` for the bridge's local pairs: port 0 takes the next
    free port from 30000; ``busy`` ports cannot be bound."""

    def __init__(self) -> None:
        self.bound: Dict[int, FakeMediaPort] = {}
        self.busy: set = set()
        self.next = 30000

    def __call__(self, port: int, protocol, interface: str = "", maxPacketSize: int = 8192):
        assert interface == LISTEN[0]
        if port == 0:
            while self.next in self.bound or self.next in self.busy:
                self.next += 1
            port = self.next
            self.next += 1
        if port in self.bound or port in self.busy:
            raise CannotListenError(interface, port, "in use")
        bound = self.bound[port] = FakeMediaPort(self, port, protocol)
        return bound


class FakeUDP:
    """The bridge's SIP port."""

    def __init__(self) -> None:
        self.written: list = []

    def write(self, data: bytes, addr) -> None:
        self.written.append((parse(data), addr))

    def getHost(self):
        return SimpleNamespace(host=LISTEN[0], port=LISTEN[1])


def server_and_bridge(world, tunnel_of=None) -> SimpleNamespace:
    """The proxy and /sip (with the media tunnel ``tunnel_of(world)`` if
    given), bob registered, and his bridge with ``--media http`` logged in."""
    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    tunnel = tunnel_of(world) if tunnel_of is not None else None
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy, tunnel))
    assert world.register("bob").status == 201
    stub = StubTreq(world.site.resource)
    udp = FakeLocalUdp()
    bridge = SipBridge(world.clock, LISTEN, PHONE, BASE, "bob", PASSWORD, http=stub,
                       media="http", listen_udp=udp)
    bridge.transport = FakeUDP()
    bridge.start()
    stub.flush()
    r = SimpleNamespace(world=world, net=net, proxy=proxy, tunnel=tunnel, bridge=bridge,
                        stub=stub, udp=udp, clock=world.clock)
    sip_io(r, PHONE)
    return r


@pytest.fixture
def rig(world):
    relay = FakeRelay()
    r = server_and_bridge(world, lambda w: MediaTunnel(w.service, relay, w.clock))
    r.relay = relay
    r.bob_leg = relay.add(40000, "bob")
    r.net_leg = relay.add(40002, "")
    relay.pair(r.bob_leg, r.net_leg)
    yield r
    r.bridge.stop()
    r.proxy.stop()


def relayed_call(rig):
    """Carol calls bob; the INVITE reaches bob with the relay's SDP (as the
    proxy's relay rewrites it); the phone answers with its own SDP."""
    inv = invite("sip:bob@example.org", body=sdp(RELAY, 40000))
    rig.proxy.received(inv.to_bytes(), CALLER)
    rig.network_gets()
    [at_phone] = rig.phone_gets()
    rig.phone_sends(answer(at_phone, 200, contact="<sip:phone@127.0.0.1:5080>",
                           body=sdp("127.0.0.1", 6000)))
    [ok] = [m for m in rig.network_gets() if getattr(m, "code", 0) == 200]
    return inv, at_phone, ok


def sdp_media(body: bytes):
    """``(address, port)`` of each m= line."""
    return [(m.address, m.port) for m in sdp_lib.parse(body).media]


def test_a_relayed_call_gets_local_ports_and_its_media_goes_over_http(rig):
    inv, at_phone, ok = relayed_call(rig)
    # the phone was offered the bridge's local pair, not the relay
    [(host, local)] = sdp_media(at_phone.body)
    assert host == "127.0.0.1" and local in rig.udp.bound and local + 1 in rig.udp.bound
    # the server gets the relay's own leg back, never the phone's address
    assert sdp_media(ok.body) == [(RELAY, 40000)]
    assert b"127.0.0.1" not in ok.body  # o= too
    assert rig.bob_leg.sinks, "the bridge holds the leg's stream"
    rtp_port, rtcp_port = rig.udp.bound[local], rig.udp.bound[local + 1]
    # network -> relay -> HTTP stream -> the phone's SDP address
    rig.net_leg.inject(rtp_packet(1), False)
    rig.stub.flush()
    assert rtp_port.written == [(rtp_packet(1), ("127.0.0.1", 6000))]
    rig.net_leg.inject(rtcp_packet(), True)
    rig.stub.flush()
    assert rtcp_port.written == [(rtcp_packet(), ("127.0.0.1", 6001))]
    # the phone's RTP (from another port than its SDP said): posted, and latched
    rtp_port.arrive(rtp_packet(7), ("127.0.0.1", 6100))
    rtcp_port.arrive(rtcp_packet(), ("127.0.0.1", 6101))
    rig.stub.flush()
    assert rig.bob_leg.injected == [(rtp_packet(7), False), (rtcp_packet(), True)]
    assert rig.net_leg.udp_out == [(rtp_packet(7), False), (rtcp_packet(), True)]
    rig.net_leg.inject(rtp_packet(2), False)
    rig.stub.flush()
    assert rtp_port.written[-1] == (rtp_packet(2), ("127.0.0.1", 6100))
    # carol hangs up: the pair closes and the stream ends
    dialog = dict(to_uri="sip:bob@example.org", to_tag="callee1", call_id=inv.call_id,
                  extra=(("Route", "<sip:192.0.2.1:5060;lr>"),))
    from presence.sip.message import NameAddr
    contact = str(NameAddr.parse(ok.get("contact")).sip_uri())
    rig.proxy.received(request("BYE", contact, cseq=2, **dialog).to_bytes(), CALLER)
    assert [m.method for m in rig.phone_gets()] == ["BYE"]
    rig.stub.flush()  # the stream's connection closes
    assert rtp_port.closed and rtcp_port.closed and rig.udp.bound == {}
    assert rig.bridge.media.calls == {} and rig.bob_leg.sinks == []
    assert rig.tunnel.stats()["streams"] == 0


def test_packets_wait_for_the_post_in_flight_and_go_in_one_batch():
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock
    posts = []

    def post_body(path, body, ctype):
        posts.append((path, body, ctype, Deferred()))
        return posts[-1][3]

    client = SimpleNamespace(post_body=post_body, session=None, base_url=BASE)
    media = sip_media.MediaTunnelClient(Clock(), client, LISTEN[0], PHONE[0],
                                        listen_udp=FakeLocalUdp())
    call = sip_media.MediaCall(media, "c1")
    pair = sip_media.MediaPair(call, 0, RELAY, 40000)
    for seq in range(1, 4):
        pair.from_phone(rtp_packet(seq), ("127.0.0.1", 6000), False)
    assert [(p[0], p[2]) for p in posts] == [("/sip/media/40000",
                                              "application/x-presence-media")]
    assert decode_all(posts[0][1]) == [(rtp_packet(1), False)] and pair.posting
    posts[0][3].callback(None)
    assert decode_all(posts[1][1]) == [(rtp_packet(2), False), (rtp_packet(3), False)]
    # at most MAX_WAITING wait; the oldest are dropped (late audio is no audio)
    for seq in range(10, 10 + sip_media.MAX_WAITING + 5):
        pair.from_phone(rtp_packet(seq), ("127.0.0.1", 6000), False)
    assert media.counters["media_dropped"] == 5
    posts[1][3].errback(Exception("HTTP 429"))  # a failed post: the next goes on
    sent = decode_all(posts[2][1])
    assert len(sent) == sip_media.MAX_WAITING and sent[0] == (rtp_packet(15), False)
    assert media.counters["post_failed"] == 1
    pair.close()


def test_media_only_from_the_phones_host_and_of_sane_size(rig):
    relayed_call(rig)
    rtp_port = min(rig.udp.bound.values(), key=lambda p: p.port)
    rtp_port.arrive(rtp_packet(1), ("10.9.9.9", 6000))
    rtp_port.arrive(b"x" * 1501, ("127.0.0.1", 6000))
    rig.stub.flush()
    assert rig.bob_leg.injected == []
    assert rig.bridge.media.counters["foreign_media"] == 1
    assert rig.bridge.media.counters["bad_media"] == 1


def test_the_phone_calls_out_and_the_answer_brings_the_local_ports(rig):
    rig.proxy.outbound = "public"
    inv = invite("sip:uas@93.184.216.9:5090", via_host="127.0.0.1", via_port=5080,
                 from_uri="sip:bob@example.org", contact="<sip:phone@127.0.0.1:5080>",
                 body=sdp("127.0.0.1", 6000))
    rig.phone_sends(inv)
    rig.phone_gets()
    [out] = rig.network_gets()
    assert sdp_media(out.body) == [("127.0.0.1", 6000)]  # no legs known yet: as it is
    uas = Hop(UDP, "93.184.216.9", 5090)
    rig.proxy.received(answer(out, 183, body=sdp(RELAY, 40000)).to_bytes(), uas)
    rig.proxy.received(answer(out, 200, contact="<sip:uas@93.184.216.9:5090>",
                              body=sdp(RELAY, 40000)).to_bytes(), uas)
    early, ok = rig.phone_gets()
    assert sdp_media(early.body) == sdp_media(ok.body)  # one pair for both
    [(_, local)] = sdp_media(ok.body)
    assert len(rig.udp.bound) == 2
    rig.net_leg.inject(rtp_packet(1), False)
    rig.stub.flush()
    # towards the address of the phone's offer, on the phone's host
    assert rig.udp.bound[local].written == [(rtp_packet(1), ("127.0.0.1", 6000))]
    # the phone hangs up
    rig.phone_sends(request("BYE", "sip:uas@93.184.216.9:5090", via_host="127.0.0.1",
                            via_port=5080, call_id=inv.call_id, to_tag="callee1", cseq=2,
                            from_uri="sip:bob@example.org"))
    assert rig.udp.bound == {} and rig.bridge.media.calls == {}


@pytest.mark.parametrize("how", ["cancel", "busy", "idle", "call ended at the server"])
def test_the_pairs_close_when_the_call_ends_unanswered_or_silent(rig, how):
    inv = invite("sip:bob@example.org", body=sdp(RELAY, 40000))
    rig.proxy.received(inv.to_bytes(), CALLER)
    rig.network_gets()
    [at_phone] = rig.phone_gets()
    assert len(rig.udp.bound) == 2
    if how == "cancel":
        rig.proxy.received(request("CANCEL", "sip:bob@example.org", call_id=inv.call_id,
                                   branch_id=inv.top_via().branch).to_bytes(), CALLER)
        rig.phone_gets()
    elif how == "busy":
        rig.phone_sends(answer(at_phone, 486))
    elif how == "idle":
        rig.phone_sends(answer(at_phone, 180))
        rig.clock.advance(sip_media.IDLE_TIMEOUT - 1)
        assert len(rig.udp.bound) == 2
        rig.clock.advance(2)
    else:
        rig.bob_leg.close()
        rig.clock.advance(media_web.KEEPALIVE_EVERY)  # the server ends the stream
        rig.stub.flush()
        rig.clock.advance(sip_media.REATTACH)  # the bridge asks again: 404
    rig.stub.flush()
    assert rig.udp.bound == {}, how
    assert rig.bridge.media.calls == {}
    assert rig.tunnel.stats()["streams"] == 0


def test_a_dropped_stream_is_attached_again(rig):
    relayed_call(rig)
    [stream] = rig.tunnel.streams.values()
    stream.end()  # e.g. a proxy between cut it
    rig.stub.flush()
    assert rig.bob_leg.sinks == []
    rig.clock.advance(sip_media.REATTACH)
    rig.stub.flush()
    assert len(rig.bob_leg.sinks) == 1 and rig.tunnel.counters["attached"] == 2


def test_a_port_pair_is_found_when_the_next_port_is_taken(rig):
    rig.udp.busy.add(30001)
    relayed_call(rig)
    assert sorted(rig.udp.bound) == [30002, 30003]


def test_the_bridge_stops_its_media(rig):
    relayed_call(rig)
    rig.bridge.stop()
    assert rig.udp.bound == {} and rig.bridge.media.calls == {}


def test_without_media_http_the_sdp_passes_untouched(world):
    bridge = SipBridge(world.clock, LISTEN, PHONE, BASE, "bob", PASSWORD,
                       http=StubTreq(world.site.resource))
    assert bridge.media is None
    with pytest.raises(ValueError, match="media must be udp or http"):
        SipBridge(world.clock, LISTEN, PHONE, BASE, "bob", PASSWORD, media="rtp")


def test_the_media_option():
    parser = build_parser()
    assert parser.parse_args(["--user", "bob"]).media == "udp"
    assert parser.parse_args(["--user", "bob", "--media", "http"]).media == "http"
    with pytest.raises(SystemExit):
        parser.parse_args(["--user", "bob", "--media", "auto"])
    assert "--media" in parser.format_help()


def test_the_default_http_client_sends_small_posts_without_nagle_delay():
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from presence.client.heartbeat import TreqHTTP

    class Transport(StringTransport):
        no_delay = False

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    http = TreqHTTP(MemoryReactorClock())
    protocol = http.pool._factory(lambda p: None, None).buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    assert transport.no_delay


def test_a_hold_the_phones_rtcp_port_and_a_second_stream(rig):
    inv = invite("sip:bob@example.org", body=sdp(RELAY, 40000, 40010))
    rig.relay.add(40010, "bob")
    rig.proxy.received(inv.to_bytes(), CALLER)
    [at_phone] = rig.phone_gets()
    (_, audio), (_, video) = sdp_media(at_phone.body)
    assert sorted(rig.udp.bound) == [audio, audio + 1, video, video + 1]
    # the phone answers with RTCP on a port of its own choice (RFC 3605) and
    # rejects the video: the bridge closes that pair
    answer_sdp = sdp("127.0.0.1", 6000, extra="a=rtcp:6501\r\n").replace(
        "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp:6501",
        "m=audio 6000 RTP/AVP 0\r\na=rtcp:6501\r\na=rtpmap:0 PCMU/8000")
    answer_sdp += "m=video 0 RTP/AVP 96\r\n"
    rig.phone_sends(answer(at_phone, 200, contact="<sip:phone@127.0.0.1:5080>",
                           body=answer_sdp))
    [ok] = [m for m in rig.network_gets() if getattr(m, "code", 0) == 200]
    assert sdp_media(ok.body) == [(RELAY, 40000), (RELAY, 0)]
    assert sorted(rig.udp.bound) == [audio, audio + 1]
    rig.net_leg.inject(rtcp_packet(), True)
    rig.stub.flush()
    assert rig.udp.bound[audio + 1].written == [(rtcp_packet(), ("127.0.0.1", 6501))]
    # a re-INVITE that puts the call on hold keeps the hold address
    hold = invite("sip:bob@example.org", call_id=inv.call_id, cseq=2, to_tag="callee1",
                  body=sdp(RELAY, 40000).replace(f"c=IN IP4 {RELAY}", "c=IN IP4 0.0.0.0"))
    rig.bridge.media.from_server(hold)
    assert sdp_media(hold.body) == [("0.0.0.0", audio)]


def test_rtcp_mux_travels_on_the_rtp_ports(rig):
    inv = invite("sip:bob@example.org", body=sdp(RELAY, 40000, extra="a=rtcp-mux\r\n"))
    rig.proxy.received(inv.to_bytes(), CALLER)
    [at_phone] = rig.phone_gets()
    [(_, local)] = sdp_media(at_phone.body)
    rig.phone_sends(answer(at_phone, 200, contact="<sip:phone@127.0.0.1:5080>",
                           body=sdp("127.0.0.1", 6000, extra="a=rtcp-mux\r\n")))
    rig.net_leg.inject(rtcp_packet(), True)
    rig.stub.flush()
    assert rig.udp.bound[local].written == [(rtcp_packet(), ("127.0.0.1", 6000))]
    assert rig.udp.bound[local + 1].written == []
    rig.udp.bound[local].arrive(rtcp_packet(), ("127.0.0.1", 6000))
    rig.stub.flush()
    assert rig.bob_leg.injected == [(rtcp_packet(), True)]


def test_a_server_without_relay_is_noticed_and_sdp_then_passes_untouched(world):
    r = server_and_bridge(world)  # /sip with no media tunnel
    carol = sdp("198.51.100.7", 7000)
    r.proxy.received(invite("sip:bob@example.org", body=carol).to_bytes(), CALLER)
    r.phone_gets()
    assert r.udp.bound == {} and r.bridge.media.server_has_no_relay
    r.proxy.received(invite("sip:bob@example.org", body=carol).to_bytes(), CALLER)
    [second] = r.phone_gets()
    assert second.body == carol.encode() and r.udp.bound == {}
    r.bridge.stop()
    r.proxy.stop()
