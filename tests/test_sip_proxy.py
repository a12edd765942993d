"""The SIP proxy core (``presence.sip.proxy``) in memory.

The proxy runs on a real in-memory presence server (``World``: hub, service,
SQLite directory, the HTTP site through StubTreq) with ``POST /sip``
mounted, a :class:`~presence.sip.testing.FakeNetwork` that records what would
go out over UDP/TCP, and the world's ``Clock`` for every timer.  Tunnel users
hold a real heartbeat and answer with real ``POST /sip`` requests.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import List, Optional

import pytest

from helpers import World, logged_errors, world  # noqa: F401  (fixtures)
from presence.sip import proxy as proxy_mod
from presence.sip.message import MAX_MESSAGE, NameAddr, Request, Response, SipURI, Via, parse
from presence.sip.proxy import TCP, UDP, Hop, SipProxy
from presence.sip.testing import SDP, FakeNetwork, answer, branch, invite, request
from presence.sip.web import SipTunnelResource

CALLER = Hop(UDP, "198.51.100.7", 5062)
#: an outside user agent at a public address (--sip-outbound public)
UAS = "93.184.216.9"
ME = "192.0.2.1"
RR = f"<sip:{ME}:5060;lr>"


class Tunnel:
    """A tunnel user: a held heartbeat and ``POST /sip``."""

    def __init__(self, world: World, name: str, user=None) -> None:
        self.world = world
        self.user = user or world.user(name)
        self.hb = self.user.heartbeat()
        self.seen = 0

    def frames(self, kind: Optional[str] = None) -> List[SimpleNamespace]:
        """The SIP frames that arrived since the last call."""
        events = self.hb.events()
        new, self.seen = events[self.seen:], len(events)
        out = []
        for e in new:
            words = e.head.split(" ")
            if words[1] not in ("sipreq", "sipresp"):
                continue
            payload = e.text.split("\n", 1)[1]
            message = parse(payload.replace("\n", "\r\n").encode("utf-8"))
            out.append(SimpleNamespace(kind=words[1], what=words[2], txid=words[3],
                                       message=message, text=e.text, id=e.id))
        return [f for f in out if kind is None or f.kind == kind]

    def one(self, kind: str = "sipreq") -> SimpleNamespace:
        frames = self.frames(kind)
        assert len(frames) == 1, [f.text.split("\n", 1)[0] for f in frames]
        return frames[0]

    def post(self, message, **params):
        body = message.to_text().encode("utf-8") if not isinstance(message, bytes) else message
        return self.user.browser.request(
            "POST", "/sip", params={**self.user.creds, **params}, body=body,
            headers={"Content-Type": "message/sip"})

    def ok(self, message) -> dict:
        reply = self.post(message)
        assert reply.status == 202, (reply.status, reply.body)
        return reply.json


@pytest.fixture
def sip(world):
    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy))
    ns = SimpleNamespace(world=world, net=net, proxy=proxy, clock=world.clock)

    def send(message, hop: Hop = CALLER) -> None:
        proxy.received(message.to_bytes() if not isinstance(message, bytes) else message, hop)

    def sent(n: Optional[int] = None):
        out = net.take()
        if n is not None:
            assert len(out) == n, [(m, h) for m, h in out]
        return out

    ns.send = send
    ns.sent = sent
    ns.tunnel = lambda name: Tunnel(world, name)
    yield ns
    proxy.stop()


def codes(sent) -> List[int]:
    return [m.code for m, _ in sent if isinstance(m, Response)]


# -- an outside caller calls a tunnel user ---------------------------------------------

def test_invite_reaches_every_session_as_a_frame(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    trying = sip.sent(1)[0]
    assert trying[0].code == 100 and trying[1].host == "198.51.100.7"
    frame = bob.one()
    assert frame.what == "INVITE"
    fwd = frame.message
    top = Via.parse(fwd.values("via")[0])
    assert top.sent_by == ("example.org", 5060)
    assert top.branch == frame.txid and frame.txid.startswith("z9hG4bK")
    caller_via = Via.parse(fwd.values("via")[1])
    assert caller_via.param("rport") == "5062" and caller_via.param("received") == "198.51.100.7"
    assert fwd.get("record-route") == RR
    assert fwd.get("max-forwards") == "69"
    assert fwd.body == SDP.encode()
    assert frame.text.startswith(f"msg sipreq INVITE {frame.txid}\nINVITE sip:bob@example.org")


def test_full_call_through_the_tunnel(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    sip.sent()
    fwd = bob.one().message
    assert bob.ok(answer(fwd, 180, contact="<sip:bob@127.0.0.1:5080>"))["txid"]
    ok = answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080;transport=udp>", body=SDP)
    bob.ok(ok)
    ringing, final = [m for m, _ in sip.sent(2)]
    assert (ringing.code, final.code) == (180, 200)
    for m in (ringing, final):
        [via] = m.values("via")
        assert via == inv.get("via").replace(";rport", ";rport=5062;received=198.51.100.7")
        assert m.get("record-route") == RR
    contact = NameAddr.parse(final.get("contact")).sip_uri()
    assert (contact.host, contact.port, contact.user) == (ME, 5060, "bob")
    assert contact.param("tun") and contact.param("transport") is None
    assert final.body == SDP.encode()
    # the caller's ACK and BYE come back through the Record-Route to that session
    dialog = dict(uri=str(contact), to_uri="sip:bob@example.org", to_tag="callee1",
                  call_id=inv.call_id, extra=(("Route", RR),))
    sip.send(request("ACK", cseq=1, **dialog))
    ack = bob.one()
    assert ack.what == "ACK" and ack.message.get("route") is None
    assert ack.message.uri == str(contact)
    sip.send(request("BYE", cseq=2, **dialog))
    bye = bob.one()
    assert bye.what == "BYE" and sip.sent() == []
    bob.ok(answer(bye.message, 200))
    assert codes(sip.sent(1)) == [200]


def test_the_tunnel_user_hangs_up(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    sip.sent()
    fwd = bob.one().message
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>"))
    sip.sent()
    # bob's phone: route set from the Record-Route, target the caller's Contact
    bye = request("BYE", "sip:carol@198.51.100.7:5062", via_host="127.0.0.1", via_port=5080,
                  from_uri="sip:bob@example.org", from_tag="callee1",
                  to_uri="sip:carol@example.net", to_tag="ft1", call_id=inv.call_id,
                  cseq=1, extra=(("Route", RR),))
    txid = bob.ok(bye)["txid"]
    assert txid == bye.top_via().branch
    out, hop = sip.sent(1)[0]
    assert out.method == "BYE" and (hop.host, hop.port, hop.transport) == (
        "198.51.100.7", 5062, UDP)
    assert out.get("route") is None and out.get("max-forwards") == "69"
    assert Via.parse(out.values("via")[0]).sent_by == (ME, 5060)
    sip.send(answer(out, 200))
    resp = bob.one("sipresp")
    assert (resp.what, resp.txid) == ("200", txid)
    assert resp.message.values("via") == bye.values("via")


def test_unknown_user_is_404_and_offline_user_is_480(sip, world):
    # known before a 100 Trying is due: the final goes alone
    sip.send(invite("sip:nobody@example.org"))
    assert codes(sip.sent()) == [404]
    world.register("carl")
    sip.send(invite("sip:carl@example.org"))
    assert codes(sip.sent()) == [480]
    gone = world.user("gone")
    gone.post("/api/logout")
    sip.send(request("OPTIONS", "sip:gone@example.org"))
    assert codes(sip.sent()) == [480]


def test_aliases_and_our_address_reach_the_user(sip, world):
    bob = sip.tunnel("bob")
    assert bob.user.post("/api/aliases", alias="+15550100").status == 201
    sip.send(invite("sip:+15550100@example.org"))
    assert bob.one().what == "INVITE"
    sip.send(invite(f"sip:bob@{ME}:5060"))
    assert bob.one().what == "INVITE"
    sip.send(invite(f"sip:bob@{ME}"))  # port 5060 implied
    assert bob.one().what == "INVITE"


def test_max_forwards(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org", max_forwards=0))
    out = sip.sent(1)[0][0]
    assert out.code == 483 and "tag=" in out.get("to")
    assert bob.frames() == []
    sip.send(invite("sip:bob@example.org", max_forwards=None))
    assert bob.one().message.get("max-forwards") == "70"


def test_loop_is_482_and_a_spiral_is_not(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    fwd = bob.one().message
    # the forwarded request comes back to us through another hop, unchanged: a loop
    looped = fwd.copy()
    looped.prepend("Via", f"SIP/2.0/UDP 203.0.113.9;branch={branch()}")
    sip.send(looped, Hop(UDP, "203.0.113.9", 5060))
    assert codes(sip.sent()) == [482]
    spiral = fwd.copy()
    spiral.prepend("Via", f"SIP/2.0/UDP 203.0.113.9;branch={branch()}")
    spiral.uri = "sip:bob@192.0.2.1"  # retargeted: processing differs, not a loop
    sip.send(spiral, Hop(UDP, "203.0.113.9", 5060))
    assert codes(sip.sent()) == [100]
    assert bob.one().what == "INVITE"


def test_proxy_require_is_420(sip):
    sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org", extra=(("Proxy-Require", "foo, bar"),)))
    out = sip.sent(1)[0][0]
    assert out.code == 420 and out.get("unsupported") == "foo, bar"


@pytest.mark.parametrize("uri, code", [
    ("tel:+15550100", 416), ("sips:bob@example.org", 416),
    ("sip:bob@elsewhere.example", 403), ("sip:bob@example.org:5070", 403),
    ("sip:bob@10.9.8.7", 403),
])
def test_not_an_open_relay(sip, uri, code):
    bob = sip.tunnel("bob")
    req = request("MESSAGE", uri, to_uri="sip:bob@example.org", body="hi")
    sip.send(req)
    assert codes(sip.sent()) == [code]
    assert bob.frames() == []


def test_a_route_to_elsewhere_from_outside_is_403(sip):
    sip.tunnel("bob")
    sip.send(request("MESSAGE", "sip:bob@example.org", extra=(
        ("Route", f"{RR}, <sip:10.1.1.1;lr>"),)))
    assert codes(sip.sent()) == [403]


def test_options_and_register_for_the_proxy_itself(sip):
    sip.send(request("OPTIONS", "sip:example.org"))
    out = sip.sent(1)[0][0]
    assert out.code == 200 and "INVITE" in out.get("allow")
    assert "REGISTER" in out.get("allow")
    sip.send(request("REGISTER", "sip:example.org", to_uri="sip:bob@example.org"))
    out = sip.sent(1)[0][0]
    assert out.code == 401 and "Digest" in out.get("www-authenticate")  # the registrar's
    sip.send(request("SUBSCRIBE", "sip:example.org", to_uri="sip:bob@example.org"))
    out = sip.sent(1)[0][0]
    assert out.code == 405 and out.get("allow") == "OPTIONS"


def test_unknown_methods_are_forwarded_and_answered_by_the_user(sip):
    bob = sip.tunnel("bob")
    sip.send(request("FROBNICATE", "sip:bob@example.org"))
    frame = bob.one()
    assert frame.what == "FROBNICATE" and frame.message.get("record-route") == RR
    bob.ok(answer(frame.message, 501))
    assert codes(sip.sent()) == [501]


def test_malformed_requests_get_400_at_the_source_and_garbage_nothing(sip):
    sip.tunnel("bob")
    bad = invite("sip:bob@example.org").to_bytes().replace(b"CSeq: 1 INVITE", b"CSeq: x")
    sip.send(bad, Hop(UDP, "203.0.113.5", 7000))
    out, hop = sip.sent(1)[0]
    assert out.code == 400 and "CSeq" in out.reason and (hop.host, hop.port) == (
        "203.0.113.5", 7000)
    for junk in (b"\x00\x01garbage", b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n", b"",
                 b"SIP/2.0 200 OK\r\n\r\n", b"INVITE sip:x SIP/2.0\r\n"):
        sip.send(junk)
    assert sip.sent() == []
    assert sip.proxy.counters["malformed"] >= 4


def test_wrong_content_length_and_huge_headers(sip):
    sip.tunnel("bob")
    short = invite("sip:bob@example.org").to_bytes().replace(
        b"Content-Length: %d" % len(SDP), b"Content-Length: 9999")
    sip.send(short)
    assert codes(sip.sent()) == [400]
    huge = invite("sip:bob@example.org", extra=(("X-Big", "x" * MAX_MESSAGE),))
    sip.send(huge)
    assert codes(sip.sent()) == [513]


def test_non_text_body_is_415_for_the_tunnel(sip):
    bob = sip.tunnel("bob")
    req = invite("sip:bob@example.org")
    req.body = b"\xff\xfe\x00binary"
    sip.send(req)
    assert codes(sip.sent()) == [100, 415]
    assert bob.frames() == []


# -- transactions ------------------------------------------------------------------------

def test_retransmitted_invite_gets_the_last_response_again(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    assert codes(sip.sent()) == [100]
    sip.send(inv)
    assert codes(sip.sent()) == [100]
    assert len(bob.frames()) == 1


def test_non_2xx_final_is_retransmitted_until_the_ack(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    sip.sent()
    bob.ok(answer(bob.one().message, 486))
    assert codes(sip.sent()) == [486]
    sip.clock.advance(0.5)
    assert codes(sip.sent()) == [486]   # timer G
    sip.clock.advance(1.0)
    assert codes(sip.sent()) == [486]
    ack = request("ACK", "sip:bob@example.org", call_id=inv.call_id, to_tag="x",
                  branch_id=inv.top_via().branch)
    sip.send(ack)
    sip.clock.advance(10)
    assert sip.sent() == []
    assert bob.frames() == []  # the ACK of a non-2xx stays here (hop by hop)
    sip.clock.advance(40)
    assert sip.proxy.stats()["server_transactions"] == 0
    assert sip.proxy.stats()["client_transactions"] == 0


def test_no_answer_from_the_session_is_408_after_timer_b(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    bob.one()
    sip.clock.advance(proxy_mod.TIMER_B - 0.1)
    assert sip.sent() == []
    sip.clock.advance(0.2)
    assert codes(sip.sent()) == [408]


def test_ringing_too_long_is_cancelled_by_timer_c(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    fwd = bob.one()
    bob.ok(answer(fwd.message, 180))
    assert codes(sip.sent()) == [180]
    sip.clock.advance(proxy_mod.TIMER_C + 0.1)
    cancel = bob.one()
    assert (cancel.what, cancel.txid) == ("CANCEL", fwd.txid)
    sip.clock.advance(proxy_mod.TIMER_B + 0.1)
    assert codes(sip.sent()) == [408]


def test_cancel_reaches_the_session_and_487_goes_back(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    sip.sent()
    fwd = bob.one()
    bob.ok(answer(fwd.message, 180))
    sip.sent()
    cancel = request("CANCEL", "sip:bob@example.org", call_id=inv.call_id,
                     branch_id=inv.top_via().branch)
    sip.send(cancel)
    ok = sip.sent(1)[0][0]
    assert ok.code == 200 and ok.cseq == (1, "CANCEL")
    c = bob.one()
    assert (c.what, c.txid) == ("CANCEL", fwd.txid)
    assert c.message.cseq == (1, "CANCEL") and c.message.values("via") == [
        fwd.message.values("via")[0]]
    bob.ok(answer(c.message, 200))
    assert sip.sent() == []  # the 200 of our CANCEL stays here
    bob.ok(answer(fwd.message, 487))
    assert codes(sip.sent()) == [487]


def test_cancel_without_a_transaction_is_481(sip):
    sip.send(request("CANCEL", "sip:bob@example.org"))
    assert codes(sip.sent()) == [481]


def test_forking_to_every_session(sip, world):
    first = sip.tunnel("bob")
    second = Tunnel(world, "bob", world.login("bob"))
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    sip.sent()
    a, b = first.one(), second.one()
    assert a.txid != b.txid
    first.ok(answer(a.message, 486))
    assert codes(sip.sent()) == []   # wait for the other branch
    second.ok(answer(b.message, 180))
    second.ok(answer(b.message, 200, contact="<sip:bob@10.0.0.2>"))
    assert codes(sip.sent()) == [180, 200]
    assert first.frames() == []  # that branch was done already: no CANCEL


def test_a_2xx_cancels_the_other_branches(sip, world):
    first = sip.tunnel("bob")
    second = Tunnel(world, "bob", world.login("bob"))
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    a, b = first.one(), second.one()
    second.ok(answer(b.message, 200, contact="<sip:bob@10.0.0.2>"))
    assert codes(sip.sent()) == [200]
    c = first.one()
    assert (c.what, c.txid) == ("CANCEL", a.txid)


def test_best_final_response_is_chosen(sip, world):
    first = sip.tunnel("bob")
    second = Tunnel(world, "bob", world.login("bob"))
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    a, b = first.one(), second.one()
    first.ok(answer(a.message, 503))
    second.ok(answer(b.message, 486))
    assert codes(sip.sent()) == [486]


def test_503_from_the_only_branch_becomes_500(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    bob.ok(answer(bob.one().message, 503))
    assert codes(sip.sent()) == [500]


def test_transactions_are_cleaned_up(sip):
    bob = sip.tunnel("bob")
    for _ in range(30):
        inv = invite("sip:bob@example.org")
        sip.send(inv)
        fwd = bob.one().message
        bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>"))
        sip.send(request("BYE", "sip:bob@example.org", call_id=inv.call_id, cseq=2,
                         to_tag="callee1"))
        bob.ok(answer(bob.one().message, 200))
    sip.sent()
    assert sip.proxy.stats()["server_transactions"] > 0
    sip.clock.advance(proxy_mod.TIMER_B + 1)
    stats = sip.proxy.stats()
    assert stats["server_transactions"] == 0 and stats["client_transactions"] == 0
    assert not sip.clock.getDelayedCalls() or all(
        "Timers" not in repr(c.func) for c in sip.clock.getDelayedCalls())


def test_transaction_bound_gives_503(sip, monkeypatch):
    sip.tunnel("bob")
    monkeypatch.setattr(proxy_mod, "MAX_TRANSACTIONS", 4)
    for _ in range(2):
        sip.send(invite("sip:bob@example.org"))
    sip.sent()
    sip.send(invite("sip:bob@example.org"))
    out = sip.sent(1)[0][0]
    assert out.code == 503 and out.get("retry-after") == "5"


def test_stale_contact_token(sip, world):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    bob.ok(answer(bob.one().message, 200, contact="<sip:bob@127.0.0.1:5080>"))
    contact = NameAddr.parse(sip.sent()[-1][0].get("contact")).uri
    bob.user.post("/api/logout")
    sip.send(request("BYE", contact, to_tag="callee1", extra=(("Route", RR),)))
    assert codes(sip.sent()) == [481]
    sip.send(request("MESSAGE", contact, body="hi"))
    assert codes(sip.sent()) == [404]


# -- the tunnel user calls out ----------------------------------------------------------------

def test_tunnel_user_calls_an_outside_address(sip):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    bob = sip.tunnel("bob")
    inv = invite(f"sip:uas@{UAS}:5090", via_host="127.0.0.1", via_port=5080,
                 from_uri="sip:bob@example.org", contact="<sip:bob@127.0.0.1:5080>")
    txid = bob.ok(inv)["txid"]
    trying = bob.one("sipresp")
    assert (trying.what, trying.txid) == ("100", txid)
    out, hop = sip.sent(1)[0]
    assert (hop.host, hop.port, hop.transport) == (UAS, 5090, UDP)
    assert out.get("record-route") == RR and out.get("max-forwards") == "69"
    contact = NameAddr.parse(out.get("contact")).sip_uri()
    assert (contact.host, contact.port) == (ME, 5060) and contact.param("tun")
    # no answer yet: timer A retransmits over UDP
    sip.clock.advance(0.5)
    assert [m.method for m, _ in sip.sent()] == ["INVITE"]
    sip.send(answer(out, 180), Hop(UDP, UAS, 5090))
    sip.send(answer(out, 200, contact=f"<sip:uas@{UAS}:5090>", body=SDP),
             Hop(UDP, UAS, 5090))
    got = bob.frames("sipresp")
    assert [(f.what, f.txid) for f in got] == [("180", txid), ("200", txid)]
    assert got[1].message.values("via") == inv.values("via")
    assert got[1].message.get("record-route") == RR
    sip.clock.advance(5)
    assert sip.sent() == []  # no retransmission after the provisional
    ack = request("ACK", f"sip:uas@{UAS}:5090", via_host="127.0.0.1", via_port=5080,
                  call_id=inv.call_id, to_tag="callee1", extra=(("Route", RR),))
    bob.ok(ack)
    out, hop = sip.sent(1)[0]
    assert out.method == "ACK" and hop.port == 5090 and out.get("route") is None


def test_outside_non_2xx_is_acked_by_the_proxy(sip):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    bob = sip.tunnel("bob")
    inv = invite(f"sip:uas@{UAS}:5090", via_host="127.0.0.1", via_port=5080)
    bob.ok(inv)
    out = sip.sent(1)[0][0]
    sip.send(answer(out, 486), Hop(UDP, UAS, 5090))
    ack, hop = sip.sent(1)[0]
    assert ack.method == "ACK" and ack.top_via().branch == out.top_via().branch
    assert "tag=callee1" in ack.get("to")
    assert [f.what for f in bob.frames("sipresp")] == ["100", "486"]
    # the phone's own ACK of the 486 (same branch as its INVITE) is absorbed
    bob.ok(request("ACK", inv.uri, via_host="127.0.0.1", via_port=5080, call_id=inv.call_id,
                   to_tag="callee1", branch_id=inv.top_via().branch))
    assert sip.sent() == []


def test_unreachable_tcp_destination_is_503(sip):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    bob = sip.tunnel("bob")
    sip.net.unreachable.add((UAS, 5090))
    bob.ok(invite(f"sip:uas@{UAS}:5090;transport=tcp", via_host="127.0.0.1"))
    assert [f.what for f in bob.frames("sipresp")] == ["100", "500"]


def test_tunnel_to_tunnel_call(sip, world):
    alice = sip.tunnel("alice")
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org", via_host="127.0.0.1", via_port=5070,
                 from_uri="sip:alice@example.org", contact="<sip:alice@127.0.0.1:5070>")
    txid = alice.ok(inv)["txid"]
    assert alice.one("sipresp").what == "100"
    fwd = bob.one()
    contact = NameAddr.parse(fwd.message.get("contact")).sip_uri()
    assert contact.host == "example.org" and contact.param("tun")
    bob.ok(answer(fwd.message, 200, contact="<sip:bob@127.0.0.1:5080>"))
    final = alice.one("sipresp")
    assert (final.what, final.txid) == ("200", txid)
    bob_contact = NameAddr.parse(final.message.get("contact")).uri
    rr = final.message.get("record-route")
    assert rr == "<sip:example.org:5060;lr>"
    alice.ok(request("ACK", bob_contact, via_host="127.0.0.1", via_port=5070,
                     call_id=inv.call_id, to_tag="callee1", extra=(("Route", rr),)))
    assert bob.one().what == "ACK"
    bye = request("BYE", bob_contact, via_host="127.0.0.1", via_port=5070, cseq=2,
                  call_id=inv.call_id, to_tag="callee1", extra=(("Route", rr),))
    bye_txid = alice.ok(bye)["txid"]
    b = bob.one()
    assert b.what == "BYE"
    bob.ok(answer(b.message, 200))
    done = alice.one("sipresp")
    assert (done.what, done.txid) == ("200", bye_txid)
    assert sip.sent() == []  # nothing went over the network


def test_tunnel_requests_get_sip_errors_as_frames(sip, world):
    alice = sip.tunnel("alice")
    alice.ok(invite("sip:nobody@example.org", via_host="127.0.0.1"))
    assert [f.what for f in alice.frames("sipresp")] == ["404"]
    alice.ok(invite("sip:bob@example.org", via_host="127.0.0.1", max_forwards=0))
    assert [f.what for f in alice.frames("sipresp")] == ["483"]


def test_retransmitted_tunnel_request_is_absorbed(sip):
    alice = sip.tunnel("alice")
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org", via_host="127.0.0.1")
    alice.ok(inv)
    alice.ok(inv)
    assert [f.what for f in alice.frames("sipresp")] == ["100", "100"]
    assert len(bob.frames()) == 1


# -- POST /sip errors ----------------------------------------------------------------------------

def test_post_sip_refuses_bad_sessions_and_bodies(sip, world):
    bob = sip.tunnel("bob")
    alice = sip.tunnel("alice")
    text = invite("sip:alice@example.org", via_host="127.0.0.1").to_text().encode()
    b = bob.user.browser

    def post(params, body=text, ctype="message/sip"):
        return b.request("POST", "/sip", params=params, body=body,
                         headers={"Content-Type": ctype})

    r = post({"me": "bob", "id": "x" * 30})
    assert r.status == 403 and r.error
    r = post({"me": "alice", "id": bob.user.session})
    assert r.status == 403
    r = post(bob.user.creds, ctype="text/plain")
    assert r.status == 415 and "message/sip" in r.error
    r = post(bob.user.creds, body=b"not sip at all")
    assert r.status == 400 and "not a valid SIP message" in r.error
    r = post(bob.user.creds, body=b"")
    assert r.status == 400
    r = post(bob.user.creds, body=text.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"))
    assert r.status == 400 and "CSeq" in r.error
    r = post(bob.user.creds, body=text + b"x" * MAX_MESSAGE)
    assert r.status == 413
    r = b.request("GET", "/sip", params=bob.user.creds)
    assert r.status == 405 and r.header("allow") == "POST"
    r = b.request("POST", "/sip/extra", params=bob.user.creds, body=text,
                  headers={"Content-Type": "message/sip"})
    assert r.status == 404
    assert alice.frames() == []


def test_a_response_must_match_a_transaction_of_that_session(sip, world):
    bob = sip.tunnel("bob")
    mallory = sip.tunnel("mallory")
    sip.send(invite("sip:bob@example.org"))
    sip.sent()
    fwd = bob.one().message
    r = mallory.post(answer(fwd, 200))
    assert r.status == 404 and "transaction" in r.error
    r = bob.post(answer(request("INVITE", "sip:x@y"), 200))
    assert r.status == 404
    assert sip.sent() == []


def test_post_sip_acknowledges_frames(sip):
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org"))
    frame = bob.one()
    bob.ok(answer(frame.message, 180))
    session = bob.user.hub_session
    assert session.mailbox.pending()
    reply = bob.post(answer(frame.message, 183), ack=str(frame.id))
    assert reply.status == 202
    assert all(ident > frame.id for ident, _ in session.mailbox.pending())


def test_tcp_record_route_and_responses_go_back_on_the_connection(sip):
    bob = sip.tunnel("bob")
    conn = object()
    hop = Hop(TCP, "198.51.100.7", 40000, conn=conn)
    sip.send(invite("sip:bob@example.org", transport="TCP"), hop)
    trying, back = sip.sent(1)[0]
    assert back.conn is conn and back.transport == TCP
    fwd = bob.one().message
    assert fwd.get("record-route") == f"<sip:{ME}:5060;transport=tcp;lr>"
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>"))
    out, back = sip.sent(1)[0]
    assert out.code == 200 and back.conn is conn
    # the in-dialog request names us with transport=tcp in its Route: still us
    bye = request("BYE", NameAddr.parse(out.get("contact")).uri, transport="TCP",
                  to_tag="callee1", extra=(("Route", fwd.get("record-route")),))
    sip.send(bye, hop)
    assert bob.one().what == "BYE"


def test_uri_helpers_used_by_the_proxy():
    proxy = SipProxy(SimpleNamespace(hub=None), FakeNetwork(), None, "Example.ORG")
    assert proxy.is_me("example.org", None) and proxy.is_me("EXAMPLE.org", 5060)
    assert not proxy.is_me("example.org", 5070)
    assert proxy.is_me(ME, None) and proxy.is_me("127.0.0.1", 5060)
    assert not proxy.is_me("10.0.0.1", 5060)
    assert SipURI.parse("sip:bob@example.org").user == "bob"
    assert isinstance(Request("X", "sip:a"), Request)


# -- fuzzing the proxy -------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from presence.errors import ClientError  # noqa: E402

_RIG: dict = {}


def _fuzz_rig() -> dict:
    if not _RIG:
        w = World()
        net = FakeNetwork()
        proxy = SipProxy(w.service, net, w.clock, "example.org")
        w.site.resource.mount(b"sip", SipTunnelResource(w.service, proxy))
        bob = Tunnel(w, "bob")
        _RIG.update(world=w, net=net, proxy=proxy, bob=bob)
    return _RIG


_SEEDS = [
    invite("sip:bob@example.org").to_bytes(),
    request("BYE", "sip:bob@192.0.2.1:5060;tun=x", to_tag="t", extra=(("Route", RR),)).to_bytes(),
    request("CANCEL", "sip:bob@example.org").to_bytes(),
    request("ACK", "sip:bob@example.org", to_tag="t").to_bytes(),
    request("OPTIONS", "sip:example.org").to_bytes(),
    answer(invite("sip:bob@example.org"), 200).to_bytes(),
    request("REGISTER", "sip:example.org", to_uri="sip:bob@example.org", extra=(
        ("Expires", "60"), ("Authorization", 'Digest username="bob", realm="example.org",'
                            ' nonce="bm9uY2U", uri="sip:example.org", response="00",'
                            ' qop=auth, nc=00000001, cnonce="c", algorithm=MD5'))).to_bytes(),
]
_TOKENS = [b"\r\n", b"\n", b":", b";", b",", b"<", b">", b"@", b" ", b"0", b"70", b"-1",
           b"sip:", b"z9hG4bK", b"SIP/2.0", b"\x00", b"\xff", b"[::1]", b"Route: <sip:a;lr>\r\n",
           b"Max-Forwards: 0\r\n", b"Content-Length: 999\r\n", b"tun=", b"lr", b"INVITE",
           b"CANCEL", b"ACK", b"REGISTER", b"Contact: *\r\n", b"Expires: 0\r\n", b'"',
           b"expires=", b"Authorization: Digest ", b"\\"]


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 12))
        insert = draw(st.sampled_from(_TOKENS) | st.binary(max_size=8))
        data[at:at + cut] = insert
    return bytes(data)


@settings(max_examples=int(__import__("os").environ.get("SIP_FUZZ_EXAMPLES", "300")),
          deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzz_the_proxy_with_broken_messages(data):
    """Whatever arrives, from the network or the tunnel: no exception, no
    error logged, and whatever goes out is a SIP message."""
    from twisted.logger import LogLevel, globalLogPublisher

    rig = _fuzz_rig()
    errors = []

    def observe(event):
        if event.get("log_level") is not None and event["log_level"] >= LogLevel.error:
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        rig["proxy"].received(data, CALLER)
        rig["proxy"].received(data, Hop(TCP, "198.51.100.8", 40001, conn=object()))
        try:
            rig["proxy"].from_session(rig["bob"].user.hub_session, data)
        except ClientError:
            pass
        rig["world"].clock.advance(40)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not errors, [e.get("log_format") for e in errors]
    for message, hop in rig["net"].take():
        assert message is not None
    rig["bob"].frames()


def test_a_non_invite_with_only_a_provisional_times_out(sip):
    bob = sip.tunnel("bob")
    sip.send(request("MESSAGE", "sip:bob@example.org", body="hello"))
    frame = bob.one()
    bob.ok(answer(frame.message, 183))
    assert codes(sip.sent()) == [183]
    sip.clock.advance(proxy_mod.TIMER_B + 0.1)
    assert codes(sip.sent()) == [408]


def _to_tag(message) -> Optional[str]:
    return NameAddr.parse(message.get("to")).param("tag")


def test_responses_made_by_the_proxy_get_a_random_to_tag_and_100_none(sip):
    sip.tunnel("bob")
    tags = []
    for _ in range(2):
        sip.send(request("OPTIONS", "sip:nobody@example.org"))
        [(out, _)] = sip.sent(1)
        assert out.code == 404
        tags.append(_to_tag(out))
    sip.send(invite("sip:bob@example.org"))
    trying = [m for m, _ in sip.sent() if m.code == 100]
    assert trying and _to_tag(trying[0]) is None
    assert tags[0] and tags[1] and tags[0] != tags[1] and len(tags[0]) == 10


def test_a_response_with_no_via_left_after_ours_is_dropped(sip):
    # RFC 3261 16.7 step 3, from the network: an outside UAS answers with
    # only the proxy's Via
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    bob = sip.tunnel("bob")
    bob.ok(request("OPTIONS", f"sip:uas@{UAS}:5090", via_host="127.0.0.1", via_port=5080))
    bob.frames()
    out = sip.sent(1)[0][0]
    lone = answer(out, 200)
    lone.set_values("via", out.values("via")[:1])
    sip.send(lone, Hop(UDP, UAS, 5090))
    assert bob.frames("sipresp") == []
    assert sip.proxy.counters["responses_no_via"] == 1
    sip.send(answer(out, 200), Hop(UDP, UAS, 5090))  # the true answer still goes
    assert [f.what for f in bob.frames("sipresp")] == ["200"]


def test_a_session_response_with_no_via_left_is_400_and_goes_nowhere(sip):
    bob = sip.tunnel("bob")
    sip.send(request("OPTIONS", "sip:bob@example.org"))
    fwd = bob.one().message
    lone = answer(fwd, 200)
    lone.set_values("via", fwd.values("via")[:1])
    reply = bob.post(lone)
    assert reply.status == 400 and "no Via below the proxy's" in reply.json["error"]
    assert sip.sent() == []
    bob.ok(answer(fwd, 200))
    assert codes(sip.sent(1)) == [200]
