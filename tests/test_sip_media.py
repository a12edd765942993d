"""The SDP rewrite for relayed calls: presence/sip/sdp.py on its own, then
the proxy with a MediaAnchor (presence/sip/media.py) on the in-memory
server of test_sip_proxy: which calls get relay ports, the SDP each side
receives, latching and forwarding through the legs the SDP named, and the
ports closed at BYE, CANCEL, a rejection and the bounds (503)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from helpers import logged_errors, world  # noqa: F401  (fixtures)
from presence.sip import sdp as sdplib
from presence.sip.media import MediaAnchor
from presence.sip.message import NameAddr
from presence.sip.proxy import SipProxy
from presence.sip.relay import MediaRelay
from presence.sip.testing import (
    FakeNetwork, FakeUdp, answer, invite, request, rtp_packet,
)
from presence.sip.web import SipTunnelResource
from test_sip_proxy import CALLER, Tunnel, codes

RELAY = "192.0.2.1"

OFFER = (
    "v=0\r\n"
    "o=carol 2890844526 2890844526 IN IP4 198.51.100.7\r\n"
    "s=-\r\n"
    "c=IN IP4 198.51.100.7\r\n"
    "t=0 0\r\n"
    "m=audio 49170 RTP/AVP 0 8\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtcp:49171\r\n"
    "a=candidate:1 1 UDP 2130706431 10.0.0.5 49170 typ host\r\n"
    "a=ice-ufrag:abcd\r\n"
    "m=video 51372 RTP/AVP 99\r\n"
    "c=IN IP4 198.51.100.8\r\n"
    "a=rtpmap:99 H264/90000\r\n"
    "a=rtcp-mux\r\n"
)

ANSWER = (
    "v=0\n"
    "o=bob 1 1 IN IP4 127.0.0.1\n"
    "s=-\n"
    "c=IN IP4 127.0.0.1\n"
    "t=0 0\n"
    "m=audio 6000 RTP/AVP 0\n"
    "m=video 6002 RTP/AVP 99\n"
    "a=rtcp-mux\n"
).replace("\n", "\r\n")  # (a phone's CRLF: the tunnel's Content-Length counts them)
ANSWER_LF = ANSWER.replace("\r\n", "\n")


# -- SDP ------------------------------------------------------------------------

def test_parse_reads_each_m_line_and_where_its_side_receives():
    sdp = sdplib.parse(OFFER.encode())
    audio, video = sdp.media
    assert (audio.kind, audio.rtp_address(), audio.rtcp_address(), audio.mux) == (
        "audio", ("198.51.100.7", 49170), ("198.51.100.7", 49171), False)
    assert (video.kind, video.rtp_address(), video.rtcp_address(), video.mux) == (
        "video", ("198.51.100.8", 51372), ("198.51.100.8", 51373), True)
    lf = sdplib.parse(ANSWER_LF.encode())
    assert [m.port for m in lf.media] == [6000, 6002]


@pytest.mark.parametrize("body", [b"", b"hello", b"v=0\r\nm=audio x RTP/AVP 0\r\n",
                                  b"v=0\r\nc=IN IP4\r\n", b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
                                  b"v=0\r\nc=XX IP4 1.2.3.4\r\n"])
def test_parse_refuses_what_is_not_sdp(body):
    with pytest.raises(ValueError):
        sdplib.parse(body)


def test_rewrite_points_every_line_at_the_relay_and_drops_ice():
    sdp = sdplib.parse(OFFER.encode())
    out = sdplib.rewrite(sdp, RELAY, [30000, 30010]).decode()
    assert out == (
        "v=0\r\n"
        f"o=carol 2890844526 2890844526 IN IP4 {RELAY}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {RELAY}\r\n"
        "t=0 0\r\n"
        "m=audio 30000 RTP/AVP 0 8\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        f"a=rtcp:30001 IN IP4 {RELAY}\r\n"
        "m=video 30010 RTP/AVP 99\r\n"
        f"c=IN IP4 {RELAY}\r\n"
        "a=rtpmap:99 H264/90000\r\n"
        "a=rtcp-mux\r\n"
    )
    # the same SDP gives the same text (its o= version stays right)
    assert sdplib.rewrite(sdplib.parse(OFFER.encode()), RELAY, [30000, 30010]).decode() == out


def test_rewrite_disables_streams_without_ports_and_keeps_holds_and_zero_ports():
    body = ("v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
            "m=audio 4000 RTP/AVP 0\r\nm=video 0 RTP/AVP 99\r\nm=audio 4004 RTP/AVP 0\r\n")
    out = sdplib.rewrite(sdplib.parse(body.encode()), RELAY, [30000, None]).decode()
    assert "c=IN IP4 0.0.0.0\r\n" in out
    assert "m=audio 30000 RTP/AVP 0\r\nm=video 0 RTP/AVP 99\r\nm=audio 0 RTP/AVP 0\r\n" in out


# -- the proxy with the relay -------------------------------------------------------

@pytest.fixture
def sip(world):
    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    udp = FakeUdp()
    relay = MediaRelay(world.clock, udp, ports=(20000, 20099), max_calls=3,
                       rng=random.Random(3))
    proxy.media = MediaAnchor(relay, lambda hop: RELAY, net.is_local)
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy))
    ns = SimpleNamespace(world=world, net=net, proxy=proxy, clock=world.clock, udp=udp,
                         relay=relay)
    ns.send = lambda message, hop=CALLER: proxy.received(message.to_bytes(), hop)
    ns.sent = lambda: net.take()
    ns.tunnel = lambda name: Tunnel(world, name)
    yield ns
    proxy.stop()
    relay.stop()


def ports_of(message):
    sdp = sdplib.parse(message.body)
    return [m.port for m in sdp.media]


def network_call_to_bob(sip):
    """A caller on the network INVITEs bob (a tunnel session) with OFFER:
    bob's tunnel, the INVITE, the copy bob got and the relayed call."""
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org", body=OFFER)
    sip.send(inv)
    sip.sent()
    fwd = bob.one().message
    [call] = sip.relay.calls.values()
    return bob, inv, fwd, call


def test_a_call_from_the_network_is_relayed_both_ways(sip):
    bob, inv, fwd, call = network_call_to_bob(sip)
    (a_caller, a_callee), (v_caller, v_callee) = call.streams
    assert call.users == ("", "bob")
    assert a_callee.user == "bob" and a_caller.user == ""
    # bob gets the legs that face him, and no ICE candidate around the relay
    assert ports_of(fwd) == [a_callee.rtp_port, v_callee.rtp_port]
    text = fwd.body.decode()
    assert f"c=IN IP4 {RELAY}" in text and "198.51.100" not in text
    assert "candidate" not in text and "ice-ufrag" not in text
    assert int(fwd.get("content-length")) == len(fwd.body)
    # the caller's SDP: where the relay sends to carol before she latched
    assert a_caller.expected == [("198.51.100.7", 49170), ("198.51.100.7", 49171)]
    assert v_caller.mux
    private = ANSWER.replace("127.0.0.1", "10.1.2.3")
    bob.ok(answer(fwd, 183, body=private))
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>", body=private))
    early, final = [m for m, _ in sip.sent() if m.code > 100]
    for m in (early, final):
        assert ports_of(m) == [a_caller.rtp_port, v_caller.rtp_port]
        assert "10.1.2.3" not in m.body.decode()
    assert early.body == final.body
    assert call.answered
    # bob's SDP named a private address that is not his session's: not
    # where the relay sends before he latched
    assert a_callee.expected == [None, None] and v_callee.mux
    # carol's packet waits for bob; bob's reaches carol; then both ways
    sip.udp.arrive(a_caller.rtp_port, rtp_packet(1), ("198.51.100.7", 49170))
    assert sip.udp.take() == []
    # (bob's NAT: his RTP comes from his tunnel session's address, 127.0.0.1
    # here, on a port of its own)
    sip.udp.arrive(a_callee.rtp_port, rtp_packet(2), ("127.0.0.1", 7000))
    assert sip.udp.take() == [(a_caller.rtp_port, rtp_packet(2), ("198.51.100.7", 49170))]
    sip.udp.arrive(a_caller.rtp_port, rtp_packet(3), ("198.51.100.7", 49170))
    assert sip.udp.take() == [(a_callee.rtp_port, rtp_packet(3), ("127.0.0.1", 7000))]
    # BYE closes the ports
    contact = NameAddr.parse(final.get("contact")).sip_uri()
    rr = f"<sip:{RELAY}:5060;lr>"
    sip.send(request("BYE", str(contact), cseq=2, call_id=inv.call_id,
                     to_uri="sip:bob@example.org", to_tag="callee1", extra=(("Route", rr),)))
    assert bob.one().what == "BYE"
    assert sip.relay.calls == {} and sip.udp.bound == {}
    assert sip.relay.counters["closed_bye"] == 1


def test_a_tunnel_to_tunnel_call_with_sdp_in_the_ack_and_a_reinvite(sip):
    alice = sip.tunnel("alice")
    bob = sip.tunnel("bob")
    # a delayed offer: no SDP in the INVITE, the offer in the 200, the answer in the ACK
    inv = invite("sip:bob@example.org", via_host="127.0.0.1", via_port=5070, body="",
                 from_uri="sip:alice@example.org", contact="<sip:alice@127.0.0.1:5070>")
    inv.remove("content-type")
    alice.ok(inv)
    fwd = bob.one().message
    [call] = sip.relay.calls.values()
    assert call.users == ("alice", "bob") and call.streams == []
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>", body=ANSWER))
    final = [f for f in alice.frames("sipresp") if f.what == "200"][0].message
    (a_alice, a_bob), (v_alice, v_bob) = call.streams
    assert ports_of(final) == [a_alice.rtp_port, v_alice.rtp_port]
    # the tunnel session's client address (127.0.0.1) is bob's signalling
    # address: his SDP's loopback address is where the relay may send
    assert a_bob.expected[0] == ("127.0.0.1", 6000)
    bob_contact = NameAddr.parse(final.get("contact")).uri
    rr = final.get("record-route")
    ack = request("ACK", bob_contact, via_host="127.0.0.1", via_port=5070,
                  call_id=inv.call_id, to_tag="callee1", extra=(("Route", rr),),
                  body=OFFER.replace("198.51.100.7", "127.0.0.1").replace(
                      "198.51.100.8", "127.0.0.1"))
    alice.ok(ack)
    got = bob.one().message
    assert ports_of(got) == [a_bob.rtp_port, v_bob.rtp_port]
    assert a_alice.expected[0] == ("127.0.0.1", 49170)
    # bob's re-INVITE (from his side) with a new address: his legs re-latch
    sip.udp.arrive(a_bob.rtp_port, rtp_packet(1), ("127.0.0.1", 6000))
    alice_contact = NameAddr.parse(fwd.get("contact")).uri
    reinvite = request("INVITE", alice_contact, via_host="127.0.0.1",
                       via_port=5080, from_uri="sip:bob@example.org", from_tag="callee1",
                       to_uri="sip:alice@example.org", to_tag="ft1", call_id=inv.call_id,
                       cseq=5, body=ANSWER.replace("6000", "6100"),
                       extra=(("Route", fwd.get("record-route")),))
    bob.ok(reinvite)
    re_fwd = alice.one().message
    assert ports_of(re_fwd) == [a_alice.rtp_port, v_alice.rtp_port]
    assert a_bob.expected[0] == ("127.0.0.1", 6100)
    sip.udp.arrive(a_bob.rtp_port, rtp_packet(2), ("127.0.0.1", 6100))
    assert a_bob.latched[0] == ("127.0.0.1", 6100)
    # a non-2xx to the re-INVITE does not end the call
    alice.ok(answer(re_fwd, 488, to_tag="ft1"))
    assert call in sip.relay.calls.values()
    assert sip.net.sent == []  # nothing over the SIP network


def test_a_cancelled_call_closes_its_ports(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org", body=OFFER)
    sip.send(inv)
    fwd = bob.one()
    bob.ok(answer(fwd.message, 180))
    assert len(sip.udp.bound) == 8
    sip.send(request("CANCEL", "sip:bob@example.org", call_id=inv.call_id,
                     branch_id=inv.top_via().branch))
    assert sip.relay.calls == {} and sip.udp.bound == {}
    assert sip.relay.counters["closed_cancel"] == 1
    bob.ok(answer(bob.one().message, 200))
    bob.ok(answer(fwd.message, 487))
    assert 487 in codes(sip.sent())


def test_a_rejected_call_closes_its_ports(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org", body=OFFER))
    fwd = bob.one()
    assert len(sip.udp.bound) == 8
    bob.ok(answer(fwd.message, 486))
    assert sip.relay.calls == {} and sip.udp.bound == {}
    assert sip.relay.counters["closed_rejected"] == 1


def test_an_unanswered_call_is_closed_when_the_session_never_answers(sip):
    sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org", body=OFFER))
    assert len(sip.relay.calls) == 1
    sip.clock.advance(33)  # timer B: 408 to the caller, the relay closes
    assert 408 in codes(sip.sent())
    assert sip.relay.calls == {} and sip.udp.bound == {}


def test_calls_past_the_bound_get_503_and_are_not_forwarded(sip):
    bob = sip.tunnel("bob")
    for n in range(3):
        sip.send(invite("sip:bob@example.org", body=OFFER, call_id=f"c{n}@x"))
    assert len(bob.frames("sipreq")) == 3
    sip.sent()
    sip.send(invite("sip:bob@example.org", body=OFFER, call_id="c3@x"))
    out = sip.sent()
    assert 503 in codes(out)
    refusal = [m for m, _ in out if m.code == 503][0]
    assert refusal.reason == "Service Unavailable (no media relay ports left)"
    assert refusal.get("retry-after") == "30"
    assert bob.frames("sipreq") == []
    assert sip.proxy.counters["refused_relay"] == 1


def test_port_exhaustion_gives_503_too(sip):
    bob = sip.tunnel("bob")
    small = MediaRelay(sip.clock, sip.udp, ports=(30000, 30005))  # three pairs
    sip.proxy.media = MediaAnchor(small, lambda hop: RELAY, sip.net.is_local)
    # the second stream finds no pair: it is disabled, the call goes on
    sip.send(invite("sip:bob@example.org", body=OFFER, call_id="big@x"))
    assert ports_of(bob.one().message)[1] == 0 and len(sip.udp.bound) == 4
    # no pair for the first stream of the next call: 503
    sip.send(invite("sip:bob@example.org", body=OFFER, call_id="next@x"))
    assert 503 in codes(sip.sent()) and bob.frames("sipreq") == []
    assert len(small.calls) == 1 and len(sip.udp.bound) == 4


def test_a_call_between_two_network_peers_or_without_sdp_gets_no_ports(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:nobody@example.org", body=OFFER))  # 404: never forwarded
    sip.send(request("MESSAGE", "sip:bob@example.org", body="hi"))
    bob.frames()
    assert sip.relay.calls == {}


def test_an_sdp_the_relay_cannot_read_passes_untouched(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org", body="this is no SDP"))
    assert bob.one().message.body == b"this is no SDP"


def test_a_reinvite_after_the_relaying_ended_is_relayed_again(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org", body=OFFER)
    sip.send(inv)
    sip.sent()
    fwd = bob.one().message
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>", body=ANSWER))
    final = [m for m, _ in sip.sent() if m.code == 200][0]
    [call] = sip.relay.calls.values()
    sip.relay.close(call, "timeout")  # say, on hold without RTCP for a minute
    contact = NameAddr.parse(final.get("contact")).sip_uri()
    rr = f"<sip:{RELAY}:5060;lr>"
    sip.send(request("INVITE", str(contact), cseq=3, call_id=inv.call_id, body=OFFER,
                     to_uri="sip:bob@example.org", to_tag="callee1", extra=(("Route", rr),)))
    re_fwd = bob.one().message
    [again] = sip.relay.calls.values()
    assert again is not call and ports_of(re_fwd) == [again.streams[0][1].rtp_port,
                                                      again.streams[1][1].rtp_port]
    bob.ok(answer(re_fwd, 200, to_tag="callee1", body=ANSWER))
    assert again.answered


def test_an_sdp_naming_one_of_the_relays_own_ports_is_never_sent_to(sip):
    # presence-sip-bridge --media http writes the relay's own address and leg
    # port into the phone's SDP; when the bridge runs on the server's machine
    # that address is also the session's: before the side latched (and while
    # its stream reconnects) the relay must not send the other side's media
    # to a port of its own, which would play it back to its sender
    bob, inv, fwd, call = network_call_to_bob(sip)
    (a_caller, a_callee), (v_caller, v_callee) = call.streams
    own = (ANSWER.replace("m=audio 6000", f"m=audio {a_callee.rtp_port}")
           .replace("m=video 6002", f"m=video {v_callee.rtp_port}"))
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>", body=own))
    sip.sent()
    assert a_callee.expected == [None, None] and v_callee.expected[0] is None
    sip.udp.arrive(a_caller.rtp_port, rtp_packet(1), ("198.51.100.7", 49170))
    assert sip.udp.take() == []


# -- the attacker review: reflection, strict latching, the per-user bound ------

def test_before_latching_only_the_signalling_address_is_sent_to(sip):
    # carol's SDP names public media addresses other than her signalling
    # address (a media server; a victim): no destination until she sends,
    # but her first packet from there latches at once
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org", body=OFFER.replace(
        "c=IN IP4 198.51.100.7", "c=IN IP4 93.184.216.44").replace(
        "198.51.100.8", "93.184.216.45")))
    sip.sent()
    fwd = bob.one().message
    [call] = sip.relay.calls.values()
    (a_caller, a_callee), (v_caller, v_callee) = call.streams
    assert a_caller.expected == [None, None] and v_caller.expected == [None, None]
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>", body=ANSWER))
    sip.sent()
    assert a_callee.expected[0] == ("127.0.0.1", 6000)  # bob's session's address
    sip.udp.arrive(a_callee.rtp_port, rtp_packet(1), ("127.0.0.1", 6000))
    assert sip.udp.take() == [] and sip.relay.counters["dropped_no_destination"] == 1
    sip.udp.arrive(a_caller.rtp_port, rtp_packet(1), ("93.184.216.44", 49170))
    sip.udp.arrive(v_caller.rtp_port, rtp_packet(1), ("93.184.216.45", 51372))
    assert a_caller.latched[0] == ("93.184.216.44", 49170)
    assert v_caller.latched[0] == ("93.184.216.45", 51372)
    assert sip.udp.take() == [(a_callee.rtp_port, rtp_packet(1), ("127.0.0.1", 6000)),
                              (v_callee.rtp_port, rtp_packet(1), ("127.0.0.1", 6002))]
    # a stranger's single packet latches nothing
    sip.udp.arrive(a_callee.rtcp_port, rtp_packet(5), ("192.0.2.66", 9))
    assert a_callee.latched[1] is None


def test_a_user_with_too_many_relayed_calls_gets_503(sip):
    from presence.sip.relay import USER_RINGING
    sip.relay.max_calls = 200
    alice = sip.tunnel("alice")
    sip.tunnel("bob")

    def call(n):
        inv = invite("sip:bob@example.org", via_host="127.0.0.1", via_port=5070,
                     body=OFFER, call_id=f"m{n}@x", from_uri="sip:alice@example.org",
                     contact="<sip:alice@127.0.0.1:5070>")
        alice.ok(inv)
        return [f.message for f in alice.frames("sipresp")]

    for n in range(USER_RINGING):
        call(n)
    [refusal] = [m for m in call(USER_RINGING) if m.code >= 300]
    assert refusal.code == 503
    assert refusal.reason == "Service Unavailable (too many relayed calls of this user)"
    assert len(sip.relay.calls) == USER_RINGING
    assert sip.relay.counters["refused_user_ringing"] == 1
    assert sip.proxy.counters["refused_relay"] == 1
