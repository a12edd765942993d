"""``/sip/media/<port>``: the media tunnel's endpoints against a fake relay
with the relay's leg API (tests/media_support.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List

import pytest
import treq

from helpers import BASE, logged_errors, result_of, world  # noqa: F401  (fixtures)
from media_support import FakeRelay
from presence.sip import media_web
from presence.sip.media_web import MAX_POST, MediaTunnel
from presence.sip.mediaframe import CONTENT_TYPE, KEEPALIVE, FrameDecoder, encode
from presence.sip.proxy import SipProxy
from presence.sip.testing import FakeNetwork
from presence.sip.web import SipTunnelResource

RTP = bytes([0x80, 0x00, 0x00, 0x01]) + b"\x00" * 8 + b"a" * 160


class Stream:
    """A held GET /sip/media/<port> as the bridge sees it."""

    def __init__(self, user, port: int, **extra: Any) -> None:
        self.browser = user.browser
        before = set(self.browser.stub._agent._pumps)
        d = self.browser.stub.request("GET", f"{BASE}/sip/media/{port}",
                                      params={**user.creds, **extra})
        new = set(self.browser.stub._agent._pumps) - before
        self.pump = new.pop() if len(new) == 1 else None
        self.browser.flush()
        self.response = result_of(d)
        self.status = self.response.code
        self.decoder = FrameDecoder()
        self.packets: List[Any] = []
        self.raw = b""
        self.ended = False
        if self.status == 200:
            treq.collect(self.response, self._got).addBoth(self._end)
        else:
            self.raw = result_of(treq.content(self.response))
        self.browser.flush()

    def _got(self, data: bytes) -> None:
        self.packets += self.decoder.feed(data)

    def _end(self, _: Any) -> None:
        self.ended = True

    def got(self) -> List[Any]:
        self.browser.flush()
        out, self.packets = self.packets, []
        return out

    def is_ended(self) -> bool:
        self.browser.flush()
        return self.ended


@pytest.fixture
def tun(world):
    relay = FakeRelay()
    tunnel = MediaTunnel(world.service, relay, world.clock)
    proxy = SipProxy(world.service, FakeNetwork(), world.clock, "example.org")
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy, tunnel))
    bob = world.user("bob")
    carol = world.user("carol")
    bob_leg = relay.add(40000, "bob")
    net_leg = relay.add(40002, "")
    relay.pair(bob_leg, net_leg)

    def post(user, port, body: bytes, ctype: bytes = CONTENT_TYPE, **extra):
        return user.browser.request("POST", f"/sip/media/{port}",
                                    params={**user.creds, **extra}, body=body,
                                    headers={"Content-Type": [ctype]})

    yield SimpleNamespace(world=world, relay=relay, tunnel=tunnel, bob=bob, carol=carol,
                          bob_leg=bob_leg, net_leg=net_leg, post=post)
    proxy.stop()


def test_the_held_stream_carries_what_the_relay_sends_towards_the_user(tun):
    s = Stream(tun.bob, 40000)
    assert s.status == 200
    assert s.response.headers.getRawHeaders("content-type") == [CONTENT_TYPE.decode()]
    assert tun.bob_leg.sinks, "attached"
    tun.bob_leg.towards(RTP)
    tun.bob_leg.towards(b"\x81\xc8rtcp", rtcp=True)
    assert s.got() == [(RTP, False), (b"\x81\xc8rtcp", True)]
    assert tun.bob_leg.udp_out == []
    # the RTCP port names the same leg; a new stream replaces the old one
    s2 = Stream(tun.bob, 40001)
    assert s2.status == 200 and s.is_ended()
    tun.bob_leg.towards(RTP)
    assert s2.got() == [(RTP, False)] and s.got() == []
    assert tun.tunnel.stats()["streams"] == 1


def test_posted_frames_are_injected_into_the_leg(tun):
    body = encode(RTP) + KEEPALIVE + encode(b"\x81\xc9rr", rtcp=True)
    reply = tun.post(tun.bob, 40000, body)
    assert reply.status == 204, reply.body
    assert tun.bob_leg.injected == [(RTP, False), (b"\x81\xc9rr", True)]
    # and the relay forwarded them out of the other leg (UDP to the network)
    assert tun.net_leg.udp_out == [(RTP, False), (b"\x81\xc9rr", True)]


def test_only_the_user_the_leg_faces_may_attach_or_inject(tun):
    assert Stream(tun.carol, 40000).status == 403
    reply = tun.post(tun.carol, 40000, encode(RTP))
    assert reply.status == 403 and "not a leg of your calls" in reply.json["error"]
    assert Stream(tun.bob, 40002).status == 403  # the network side's leg
    assert tun.bob_leg.injected == [] and tun.bob_leg.sinks == []
    # no session, a wrong one, another user's name
    assert Stream(tun.bob, 40000, id="nope").status == 403
    assert tun.post(tun.bob, 40000, encode(RTP), me="carol").status == 403


def test_unknown_ports_and_bad_paths(tun):
    s = Stream(tun.bob, 41000)
    assert s.status == 404 and b"no call's media at relay port 41000" in s.raw
    for path in ("/sip/media/0", "/sip/media/99999", "/sip/media/x1"):
        reply = tun.bob.get(path)
        assert reply.status == 400 and "relay port" in reply.json["error"], path
    assert tun.bob.get("/sip/media/40000/more").status == 404
    assert tun.bob.get("/sip/media").status == 404
    reply = tun.bob.browser.request("PUT", "/sip/media/40000", params=tun.bob.creds)
    assert reply.status == 405 and reply.header("allow") == "GET, POST"
    tun.bob_leg.close()
    assert Stream(tun.bob, 40000).status == 404


def test_broken_or_foreign_bodies_are_refused_with_the_reason(tun):
    reply = tun.post(tun.bob, 40000, encode(RTP)[:-3])
    assert reply.status == 400
    assert "not valid media frames" in reply.json["error"]
    assert "truncated" in reply.json["error"]
    assert tun.post(tun.bob, 40000, encode(RTP), ctype=b"text/plain").status == 415
    big = encode(b"x" * 1500) * (MAX_POST // 1503 + 1)
    reply = tun.post(tun.bob, 40000, big)
    assert reply.status == 413 and "over 16384 bytes" in reply.json["error"]
    assert tun.bob_leg.injected == []


def test_packets_over_the_rate_are_dropped_and_said_so(tun):
    burst = int(media_web.PACKET_RATE * media_web.BURST)
    body = encode(RTP) * 90  # 90 x 175 bytes: under MAX_POST
    taken = 0
    replies = []
    for _ in range(burst // 90 + 1):
        reply = tun.post(tun.bob, 40000, body)
        replies.append(reply.status)
        taken += 90 if reply.status == 204 else reply.json["taken"]
    assert replies[-1] == 429 and set(replies[:-1]) == {204}
    assert taken == burst == len(tun.bob_leg.injected)
    assert tun.post(tun.bob, 40001, encode(RTP)).status == 429  # RTCP port: same budget
    tun.world.advance(1.0)
    assert tun.post(tun.bob, 40000, encode(RTP) * 10).status == 204


def test_a_session_holds_a_bounded_number_of_streams(tun, monkeypatch):
    tun.tunnel.max_streams = 2
    legs = [tun.relay.add(42000 + 2 * i, "bob") for i in range(3)]
    first = [Stream(tun.bob, leg.port) for leg in legs[:2]]
    assert [s.status for s in first] == [200, 200]
    third = Stream(tun.bob, legs[2].port)
    assert third.status == 429 and b"at most 2" in third.raw
    # re-attaching a leg already held is a replacement, not one more
    assert Stream(tun.bob, legs[0].port).status == 200


def test_streams_end_with_the_call_the_session_or_the_client(tun):
    s = Stream(tun.bob, 40000)
    tun.world.advance(media_web.KEEPALIVE_EVERY)
    assert s.got() == [] and s.decoder.keepalives == 1
    tun.bob_leg.close()
    tun.world.advance(media_web.CHECK_EVERY)
    assert s.is_ended() and tun.tunnel.stats()["streams"] == 0
    # the session logs out
    tun.bob_leg.closed = False
    s = Stream(tun.bob, 40000)
    assert tun.bob.post("/api/logout").status == 204
    tun.world.advance(media_web.CHECK_EVERY)
    assert s.is_ended() and tun.bob_leg.sinks == []
    # the client goes away
    carol_leg = tun.relay.add(44000, "carol")
    s = Stream(tun.carol, 44000)
    s.pump.clientIO.abortConnection()
    s.browser.flush()
    assert carol_leg.sinks == [] and tun.tunnel.stats()["streams"] == 0


def test_a_slow_reader_loses_packets_instead_of_queueing_them(tun):
    s = Stream(tun.bob, 40000)
    [stream] = tun.tunnel.streams.values()
    stream.pauseProducing()
    tun.bob_leg.towards(RTP)
    stream.resumeProducing()
    tun.bob_leg.towards(RTP)
    assert s.got() == [(RTP, False)] and stream.dropped == 1


def test_without_a_relay_the_media_path_says_so(world):
    proxy = SipProxy(world.service, FakeNetwork(), world.clock, "example.org")
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy))
    bob = world.user("bob")
    reply = bob.get("/sip/media/40000")
    assert reply.status == 404 and reply.json["error"] == "this server relays no media"
    proxy.stop()


def test_against_the_real_relay(world):
    from presence.sip.relay import CALLEE, CALLER, MediaRelay
    from presence.sip.testing import FakeUdp, rtcp_packet, rtp_packet
    udp = FakeUdp()
    relay = MediaRelay(world.clock, udp, ports=(20000, 20099))
    tunnel = MediaTunnel(world.service, relay, world.clock)
    proxy = SipProxy(world.service, FakeNetwork(), world.clock, "example.org")
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy, tunnel))
    bob = world.user("bob")
    call = relay.open_call("c1@x", "tagA", ("", "bob"))
    network, bobs = call.stream(0)[CALLER], call.stream(0)[CALLEE]
    s = Stream(bob, bobs.rtp_port)
    assert s.status == 200
    carol = ("198.51.100.10", 4000)
    assert udp.arrive(network.rtp_port, rtp_packet(1), carol)
    assert udp.arrive(network.rtcp_port, rtcp_packet(), (carol[0], carol[1] + 1))
    assert s.got() == [(rtp_packet(1), False), (rtcp_packet(), True)]
    assert [sent for sent in udp.take() if sent[0] == bobs.rtp_port] == []
    reply = bob.browser.request("POST", f"/sip/media/{bobs.rtcp_port}", params=bob.creds,
                                body=encode(rtp_packet(2)), headers={"Content-Type":
                                                                      [CONTENT_TYPE]})
    assert reply.status == 204
    assert udp.take() == [(network.rtp_port, rtp_packet(2), carol)]
    assert Stream(world.user("carol"), bobs.rtp_port).status == 403
    assert Stream(bob, network.rtp_port).status == 403  # the network side's leg
    relay.close(call, "bye")
    world.advance(media_web.CHECK_EVERY)
    assert s.is_ended()
    assert Stream(bob, bobs.rtp_port).status == 404
    relay.stop()
    proxy.stop()


def test_with_the_cookie_alone_another_origin_may_not_move_the_media(tun):
    from presence.web.auth import COOKIE
    cookie = {"Cookie": [f"{COOKIE.decode()}={tun.bob.session}"]}
    other = {**cookie, "Origin": ["https://evil.example"]}
    reply = tun.bob.browser.request("GET", "/sip/media/40000", headers=other)
    assert reply.status == 403
    reply = tun.bob.browser.request("POST", "/sip/media/40000", body=encode(RTP),
                                    headers={**other, "Content-Type": [CONTENT_TYPE]})
    assert reply.status == 403 and tun.bob_leg.injected == []
    # the same origin (or no browser at all) with the cookie is the user
    reply = tun.bob.browser.request("POST", "/sip/media/40000", body=encode(RTP),
                                    headers={**cookie, "Content-Type": [CONTENT_TYPE]})
    assert reply.status == 204 and len(tun.bob_leg.injected) == 1


@pytest.mark.parametrize("relay", ["127.0.0.1", "none"])
def test_the_front_end_mounts_the_tunnel_with_its_relay(world, relay):
    from presence.sip.frontend import SipFrontEnd
    front = SipFrontEnd(world.service, world.clock, 5060, "example.org", relay=relay)
    front.mount(world.site.resource)
    bob = world.user("bob")
    reply = bob.get("/sip/media/40000")
    if relay == "none":
        assert front.resource.media is None and reply.status == 404
        assert reply.json["error"] == "this server relays no media"
        assert "media_http_streams" not in front.stats()
    else:
        assert front.resource.media.relay is front.relay
        assert reply.status == 404 and "no call's media" in reply.json["error"]
        assert front.stats()["media_http_streams"] == 0
    front.proxy.stop()


def test_media_posts_that_are_taken_stay_out_of_the_access_log(tun, monkeypatch):
    from twisted.web import server

    from presence.web.http import PresenceSite
    seen = []
    monkeypatch.setattr(server.Site, "log", lambda self, request: seen.append(request))
    assert tun.post(tun.bob, 40000, encode(RTP)).status == 204
    assert tun.post(tun.bob, 40000, b"\x00").status == 400
    # (StubTreq serves through a Site of its own: what PresenceSite would log)
    logged = []
    monkeypatch.setattr(server.Site, "log", lambda self, request: logged.append(request.code))
    site = PresenceSite(tun.world.site.resource, reactor=tun.world.clock)
    for request in seen:
        site.log(request)
    assert [r.code for r in seen] == [204, 400] and logged == [400]
    assert tun.tunnel.counters["injected"] == 1
