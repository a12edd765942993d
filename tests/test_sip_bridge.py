"""``presence-sip-bridge`` in memory, end to end through the real server code.

The chain: an outside SIP peer (the proxy's ``FakeNetwork``) <-> the proxy
<-> the presence server (``World``: hub, heartbeat, ``POST /sip``) <-> the
bridge's ``HeartbeatClient`` over ``StubTreq`` <-> the bridge <-> the phone
(a fake UDP port: the test reads what the bridge sends it and hands the
bridge what the phone sends).  One ``Clock`` drives every timer.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import List, Tuple

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address

from helpers import BASE, PASSWORD, logged_errors, world  # noqa: F401  (fixtures)
from media_support import sip_io
from presence.cli.sip_bridge import SipBridge, build_parser, parse_address
from presence.sip import proxy as proxy_mod
from presence.sip.message import NameAddr, ParseError, Via, parse
from presence.sip.proxy import UDP, Hop, SipProxy
from presence.sip.testing import SDP, FakeNetwork, answer, invite, request
from presence.sip.web import SipTunnelResource

PHONE = ("127.0.0.1", 5080)
LISTEN = ("127.0.0.1", 5070)
CALLER = Hop(UDP, "198.51.100.7", 5062)
PROXY_RR = "<sip:192.0.2.1:5060;lr>"
BRIDGE_RR = "<sip:127.0.0.1:5070;lr>"


class FakeUDP:
    def __init__(self) -> None:
        self.written: List[Tuple[object, Tuple[str, int]]] = []

    def write(self, data: bytes, addr) -> None:
        try:
            message = parse(data)
        except ParseError as e:  # an answer to a broken request copies its faults
            message = e.partial
        self.written.append((message, addr))

    def getHost(self):
        return IPv4Address("UDP", *LISTEN)


@pytest.fixture
def rig(world):
    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy))
    assert world.register("bob").status == 201
    stub = StubTreq(world.site.resource)
    bridge = SipBridge(world.clock, LISTEN, PHONE, BASE, "bob", PASSWORD, http=stub)
    bridge.transport = FakeUDP()
    bridge.start()
    stub.flush()
    assert bridge.client.connected
    r = SimpleNamespace(world=world, net=net, proxy=proxy, bridge=bridge, stub=stub,
                        clock=world.clock)

    sip_io(r, PHONE)
    yield r
    bridge.stop()
    proxy.stop()


def test_an_outside_call_rings_the_phone_and_completes(rig):
    inv = invite("sip:bob@example.org")
    rig.proxy.received(inv.to_bytes(), CALLER)
    assert [m.code for m in rig.network_gets()] == [100]
    [at_phone] = rig.phone_gets()
    assert at_phone.method == "INVITE"
    assert at_phone.uri == "sip:bob@127.0.0.1:5080"
    vias = [Via.parse(v) for v in at_phone.values("via")]
    assert vias[0].sent_by == LISTEN and vias[0].branch.endswith("-pb")
    assert vias[1].sent_by == ("example.org", 5060)
    assert at_phone.values("record-route") == [BRIDGE_RR, PROXY_RR]
    assert at_phone.get("max-forwards") == "68"
    assert at_phone.body == SDP.encode()
    # the phone answers as a stock phone does: Via and Record-Route copied
    rig.phone_sends(answer(at_phone, 180, contact="<sip:phone@127.0.0.1:5080>"))
    rig.phone_sends(answer(at_phone, 200, contact="<sip:phone@127.0.0.1:5080>", body=SDP))
    ringing, ok = rig.network_gets()
    assert (ringing.code, ok.code) == (180, 200)
    assert ok.values("record-route") == [PROXY_RR]
    assert len(ok.values("via")) == 1
    contact = NameAddr.parse(ok.get("contact")).sip_uri()
    assert contact.host == "192.0.2.1" and contact.user == "phone" and contact.param("tun")
    # the caller's ACK and BYE follow the route set to the phone
    dialog = dict(to_uri="sip:bob@example.org", to_tag="callee1", call_id=inv.call_id,
                  extra=(("Route", PROXY_RR),))
    rig.proxy.received(request("ACK", str(contact), **dialog).to_bytes(), CALLER)
    rig.proxy.received(request("BYE", str(contact), cseq=2, **dialog).to_bytes(), CALLER)
    ack, bye = rig.phone_gets()
    assert (ack.method, bye.method) == ("ACK", "BYE")
    assert bye.uri == "sip:phone@127.0.0.1:5080"
    assert bye.get("route") is None
    rig.phone_sends(answer(bye, 200))
    assert [m.code for m in rig.network_gets()] == [200]
    rig.clock.advance(proxy_mod.TIMER_B + 1)
    assert rig.bridge.pending == {}
    assert rig.proxy.stats()["server_transactions"] == 0


def test_the_phone_calls_out_and_hangs_up(rig):
    rig.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC  # a public UAS
    inv = invite("sip:uas@93.184.216.9:5090", via_host="127.0.0.1", via_port=5080,
                 from_uri="sip:bob@example.org", contact="<sip:phone@127.0.0.1:5080>")
    rig.phone_sends(inv)
    [trying] = rig.phone_gets()
    assert trying.code == 100
    via = Via.parse(trying.get("via"))
    assert via.branch == inv.top_via().branch and via.param("rport") == "5080"
    [out] = rig.network_gets()
    assert out.method == "INVITE" and out.values("record-route") == [PROXY_RR]
    assert NameAddr.parse(out.get("contact")).sip_uri().param("tun")
    uas = Hop(UDP, "93.184.216.9", 5090)
    rig.proxy.received(answer(out, 200, contact="<sip:uas@93.184.216.9:5090>").to_bytes(), uas)
    [ok] = rig.phone_gets()
    assert ok.code == 200
    # the bridge puts itself last: the phone reverses the list, the bridge first
    assert ok.values("record-route") == [PROXY_RR, BRIDGE_RR]
    routes = list(reversed(ok.values("record-route")))
    dialog = dict(via_host="127.0.0.1", via_port=5080, call_id=inv.call_id, to_tag="callee1",
                  from_uri="sip:bob@example.org", extra=(("Route", ", ".join(routes)),))
    rig.phone_sends(request("ACK", "sip:uas@93.184.216.9:5090", **dialog))
    rig.phone_sends(request("BYE", "sip:uas@93.184.216.9:5090", cseq=2, **dialog))
    ack, bye = rig.network_gets()
    assert (ack.method, bye.method) == ("ACK", "BYE")
    assert ack.get("route") is None and bye.get("route") is None
    rig.proxy.received(answer(bye, 200).to_bytes(), uas)
    [done] = rig.phone_gets()
    assert done.code == 200 and done.cseq == (2, "BYE")


def test_cancel_and_the_hop_by_hop_ack(rig):
    inv = invite("sip:bob@example.org")
    rig.proxy.received(inv.to_bytes(), CALLER)
    rig.network_gets()
    [at_phone] = rig.phone_gets()
    rig.phone_sends(answer(at_phone, 180))
    rig.network_gets()
    rig.proxy.received(request("CANCEL", "sip:bob@example.org", call_id=inv.call_id,
                               branch_id=inv.top_via().branch).to_bytes(), CALLER)
    assert [m.code for m in rig.network_gets()] == [200]
    [cancel] = rig.phone_gets()
    assert cancel.method == "CANCEL" and cancel.uri == at_phone.uri
    assert cancel.values("via")[0] == at_phone.values("via")[0]   # matches the INVITE
    rig.phone_sends(answer(cancel, 200))
    rig.phone_sends(answer(at_phone, 487))
    [ack] = rig.phone_gets()
    assert ack.method == "ACK" and ack.values("via") == [at_phone.values("via")[0]]
    assert [m.code for m in rig.network_gets()] == [487]
    # the phone repeats its 487: the bridge ACKs again and posts nothing
    rig.phone_sends(answer(at_phone, 487))
    assert [m.method for m in rig.phone_gets()] == ["ACK"]
    assert rig.network_gets() == []


def test_requests_to_a_silent_phone_are_retransmitted_then_408(rig):
    rig.proxy.received(invite("sip:bob@example.org").to_bytes(), CALLER)
    rig.network_gets()
    assert [m.method for m in rig.phone_gets()] == ["INVITE"]
    rig.clock.advance(0.5)
    assert [m.method for m in rig.phone_gets()] == ["INVITE"]
    rig.clock.advance(1.0)
    assert [m.method for m in rig.phone_gets()] == ["INVITE"]
    rig.clock.advance(40)
    rig.phone_gets()
    assert 408 in [m.code for m in rig.network_gets()]
    assert rig.bridge.pending == {}


def test_garbage_from_the_phone_is_dropped_and_broken_requests_get_400(rig):
    for junk in (b"\x00\x01\x02", b"hello\r\n\r\n", b"\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"):
        rig.phone_sends(junk)
    assert rig.phone_gets() == [] and rig.network_gets() == []
    bad = invite("sip:alice@example.org", via_host="127.0.0.1", via_port=5080).to_bytes()
    rig.phone_sends(bad.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"))
    [reply] = rig.phone_gets()
    assert reply.code == 400
    # a response the bridge did not ask for is dropped
    rig.phone_sends(answer(request("OPTIONS", "sip:x@y"), 200))
    assert rig.network_gets() == []
    assert rig.bridge.counters["malformed"] >= 3


def test_only_the_phones_host_may_send_through_the_bridge(rig):
    """Whatever the bridge takes is sent as the user: a stranger's request
    (another host that can reach the listening port) is dropped."""
    call = invite("sip:alice@example.org", via_host="192.0.2.99", via_port=5080)
    rig.phone_sends(call, source=("192.0.2.99", 5080))
    rig.phone_sends(answer(call, 200), source=("192.0.2.99", 5080))
    assert rig.network_gets() == [] and rig.phone_gets() == []
    assert rig.bridge.counters["foreign"] == 2
    # the phone itself, from another port of its host, is still taken
    rig.phone_sends(invite("sip:alice@example.org", via_host="127.0.0.1", via_port=5099),
                    source=("127.0.0.1", 5099))
    assert [m.code for m in rig.phone_gets()] == [404]  # the server answered it


def _phone_register(rig, password=PASSWORD, contact="<sip:bob@127.0.0.1:5090>",
                    expires="120", cseq=1, source=("127.0.0.1", 5090)):
    """A softphone registers at the bridge with the user's credentials:
    the 401 and the final as the phone sees them."""
    from test_sip_registrar import signed
    req = request("REGISTER", "sip:127.0.0.1:5070", from_uri="sip:bob@127.0.0.1:5070",
                  to_uri="sip:bob@127.0.0.1:5070", contact=contact, call_id="reg@phone",
                  via_host=source[0], via_port=source[1], cseq=cseq,
                  extra=(("Expires", expires),))
    rig.phone_sends(req, source=source)
    [challenge] = _answers(rig)
    assert challenge.code == 401 and "Digest" in challenge.get("www-authenticate")
    rig.phone_sends(signed(req, challenge, password=password, which=1), source=source)
    [final] = _answers(rig)
    return challenge, final


def _answers(rig, tries: int = 50):
    """What reaches the phone once the heartbeat has carried it (its client
    reads on the clock)."""
    for _ in range(tries):
        got = rig.phone_gets()
        if got:
            return got
        rig.clock.advance(0.1)
    return []


def test_a_phone_registers_at_the_bridge_and_calls_reach_its_contact(rig):
    _, wrong = _phone_register(rig, password="not bob's")
    assert wrong.code == 401 and rig.bridge.registration is None
    _, ok = _phone_register(rig, cseq=3)
    assert ok.code == 200
    assert ok.values("contact") == ["<sip:bob@127.0.0.1:5090>;expires=120"]
    assert rig.bridge.registration.address == ("127.0.0.1", 5090)
    rig.proxy.received(invite("sip:bob@example.org").to_bytes(), CALLER)
    rig.network_gets()
    rig.stub.flush()
    [(at_phone, addr)] = rig.bridge.transport.written
    rig.bridge.transport.written.clear()
    assert at_phone.method == "INVITE" and at_phone.uri == "sip:bob@127.0.0.1:5090"
    assert addr == ("127.0.0.1", 5090)
    rig.phone_sends(answer(at_phone, 486), source=("127.0.0.1", 5090))
    assert [m.code for m in rig.network_gets()] == [486]
    rig.phone_gets()
    # re-registration refreshes; past its expiry calls go to --phone again
    rig.clock.advance(100)
    _, ok = _phone_register(rig, cseq=5)
    assert ok.code == 200 and rig.bridge.registration is not None
    rig.clock.advance(121)
    assert rig.bridge.registration is None
    rig.proxy.received(invite("sip:bob@example.org").to_bytes(), CALLER)
    for _ in range(50):
        rig.stub.flush()
        if rig.bridge.transport.written:
            break
        rig.clock.advance(0.1)
    assert [addr for m, addr in rig.bridge.transport.written] == [PHONE]


def test_a_phone_unregisters_at_the_bridge(rig):
    _phone_register(rig)
    _, ok = _phone_register(rig, cseq=3, expires="0")
    assert ok.code == 200 and ok.values("contact") == []
    assert rig.bridge.registration is None


def test_a_request_the_server_refuses_is_answered_to_the_phone(rig, monkeypatch):
    monkeypatch.setattr(proxy_mod, "MAX_MESSAGE", 100)
    rig.phone_sends(invite("sip:alice@example.org", via_host="127.0.0.1", via_port=5080))
    [reply] = rig.phone_gets()
    assert reply.code == 503 and "tunnel" in reply.reason


def test_messages_of_one_call_are_posted_in_order(rig):
    rig.proxy.received(invite("sip:bob@example.org").to_bytes(), CALLER)
    rig.network_gets()
    [at_phone] = rig.phone_gets()
    # three answers at once, before any HTTP moves
    for code in (180, 183, 200):
        rig.bridge.datagram(answer(at_phone, code).to_bytes(), PHONE)
    assert [m.code for m in rig.network_gets()] == [180, 183, 200]


def test_the_bridge_resumes_its_lost_session_with_its_token(rig):
    """Issue 12: the bridge's client gets a session back with the login's
    resume token; the password is not used (it no longer works here)."""
    client = rig.bridge.client
    old = rig.world.hub.session(client.session.session)
    assert client.has_resume_token
    rig.world.store.set_password("bob", "scrypt$1$8$1$00$00")    # no password opens it now
    rig.world.hub.end(old, "expired")
    for _ in range(3):
        rig.clock.advance(1)
        rig.stub.flush()
    assert client.connected and client.session.session != old.id
    assert rig.world.hub.session(client.session.session).user.name == "bob"


def test_command_line():
    args = build_parser().parse_args(["--user", "bob", "--listen", "127.0.0.1:6000",
                                      "--phone", "[::1]:6001"])
    assert args.listen == ("127.0.0.1", 6000) and args.phone == ("::1", 6001)
    assert args.server == "http://127.0.0.1:8080" and args.resume_file is None
    assert build_parser().parse_args(["--user", "bob", "--resume-file", "/tmp/t"]).resume_file \
        == "/tmp/t"
    with pytest.raises(ValueError):
        parse_address("127.0.0.1")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--user", "bob", "--listen", "nowhere"])


# -- fuzzing the bridge ---------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SEEDS = [
    invite("sip:bob@example.org", via_host="127.0.0.1", via_port=5080).to_bytes(),
    answer(invite("sip:bob@example.org", extra=(("Via", "SIP/2.0/UDP 127.0.0.1:5070;"
                                                        "branch=z9hG4bKx-pb"),)), 200).to_bytes(),
    request("BYE", "sip:x@y", extra=(("Route", BRIDGE_RR),)).to_bytes(),
]


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 12))
        data[at:at + cut] = draw(st.binary(max_size=8) | st.sampled_from(
            [b"\r\n", b";", b"<", b">", b":", b"-pb", b"\x00", b"5070", b"Max-Forwards: 0\r\n"]))
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated(), st.sampled_from(["sipreq INVITE z9hG4bKa", "sipresp 200 z9hG4bKa",
                                    "sipreq", "chat x 1"]))
def test_fuzz_the_bridge(data, head):
    """Broken datagrams from the phone and broken frames from the server
    raise nothing out of the bridge."""
    bridge = SipBridge(_Clock(), LISTEN, PHONE, BASE, "bob", "pw", http=object())
    bridge.transport = _Sink()
    bridge.client.post_body = lambda *a, **k: _succeed(None)
    bridge.datagram(data, PHONE)
    bridge.frame(1, f"msg {head}\n" + data.decode("utf-8", "replace"))
    bridge.stop()


class _Sink:
    def write(self, data, addr) -> None:
        pass


def _Clock():
    from twisted.internet.task import Clock
    return Clock()


def _succeed(value):
    from twisted.internet.defer import succeed
    return succeed(value)


def _tag_of(message) -> str:
    return NameAddr.parse(message.get("to")).param("tag")


def test_broken_requests_get_the_reason_phrase_of_their_status_and_a_random_tag(rig):
    good = invite("sip:alice@example.org", via_host="127.0.0.1", via_port=5080).to_bytes()
    rig.phone_sends(good.replace(b"INVITE sip:alice@example.org SIP/2.0",
                                 b"INVITE sip:alice@example.org SIP/3.0"))
    [wrong_version] = rig.phone_gets()
    assert wrong_version.code == 505
    assert wrong_version.reason.startswith("SIP Version not supported")
    head, _, body = good.partition(b"\r\n\r\n")
    many = head + b"".join(b"\r\nX-Filler-%d: x" % i for i in range(200)) + b"\r\n\r\n" + body
    rig.phone_sends(many)
    [too_large] = rig.phone_gets()
    assert too_large.code == 513 and too_large.reason.startswith("Message Too Large")
    rig.phone_sends(good.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"))
    [bad] = rig.phone_gets()
    assert bad.code == 400 and bad.reason.startswith("Bad Request")
    tags = {_tag_of(m) for m in (wrong_version, too_large, bad)}
    assert len(tags) == 3 and "pb" not in tags
    assert all(len(t) == 10 for t in tags)


def test_the_bridges_own_responses_to_the_server_get_random_to_tags(rig):
    tags = []
    for _ in range(2):
        rig.proxy.received(request("OPTIONS", "sip:bob@example.org").to_bytes(), CALLER)
        rig.phone_gets()
        rig.clock.advance(32)  # the phone is silent: the bridge answers 408
        [timeout] = [m for m in rig.network_gets() if m.code == 408]
        tags.append(_tag_of(timeout))
    assert tags[0] != tags[1] and "pb" not in tags


def test_a_response_with_only_the_bridges_via_is_dropped(rig):
    rig.proxy.received(request("OPTIONS", "sip:bob@example.org").to_bytes(), CALLER)
    [at_phone] = rig.phone_gets()
    reply = answer(at_phone, 200)
    reply.set_values("via", at_phone.values("via")[:1])
    rig.phone_sends(reply)
    assert rig.network_gets() == []
    assert rig.bridge.counters["no_via_left"] == 1
    rig.phone_sends(answer(at_phone, 200))  # the real answer still gets through
    assert [m.code for m in rig.network_gets()] == [200]


def test_a_listen_port_in_use_ends_the_bridge_with_one_clear_line(capsys):
    import socket

    from presence.cli import sip_bridge
    from twisted.internet.error import CannotListenError

    class Reactor:
        def listenUDP(self, port, protocol, interface="", maxPacketSize=0):
            raise CannotListenError(interface, port, socket.error(98, "Address already in use"))

        def addSystemEventTrigger(self, *a):
            pass

        def callLater(self, *a, **kw):  # pragma: no cover - nothing runs
            raise AssertionError("no timer expected")

    args = build_parser().parse_args(["--user", "bob", "--listen", "127.0.0.1:5070"])
    coro = sip_bridge._run(Reactor(), args, "pw")
    with pytest.raises(SystemExit) as stopped:
        coro.send(None)
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "cannot listen on --listen 127.0.0.1:5070" in err and "in use" in err
