"""The SIP proxy is no open relay and no SSRF tool (issue 11): what a tunnel
user may make it send, what the network may make it send, and the bounds.

Same rig as ``test_sip_proxy.py``: the real in-memory server, ``POST /sip``
through StubTreq, a :class:`~presence.sip.testing.FakeNetwork` recording
every datagram or TCP message the proxy would send, and a ``Clock``.
"""

from __future__ import annotations

import pytest

from helpers import logged_errors, world  # noqa: F401  (fixtures)
from presence.sip import proxy as proxy_mod
from presence.sip.message import NameAddr, Response
from presence.sip.proxy import TCP, UDP, Hop, forbidden_address
from presence.sip.testing import PUBLIC_HOST, answer, invite, request
from test_sip_proxy import CALLER, RR, Tunnel, codes, sip  # noqa: F401  (fixture)

#: how long to let every timer run out (timers B/F/H are 32 s)
ALL_TIMERS = 4 * proxy_mod.TIMER_B


def ua(method: str, uri: str, **kw):
    """A request as a tunnel user's phone sends it (through the bridge)."""
    kw.setdefault("via_host", "127.0.0.1")
    kw.setdefault("via_port", 5080)
    kw.setdefault("from_uri", "sip:bob@example.org")
    kw.setdefault("contact", "<sip:bob@127.0.0.1:5080>")
    if method == "INVITE":
        return invite(uri, **kw)
    return request(method, uri, **kw)


def refused(tunnel: Tunnel, message) -> str:
    """``message`` is taken (``202``) and answered ``403``; the reason."""
    tunnel.ok(message)
    frames = tunnel.frames("sipresp")
    finals = [f for f in frames if f.what != "100"]
    assert [f.what for f in finals] == ["403"], [f.text[:80] for f in frames]
    return finals[0].message.reason


def run_timers(sip) -> None:
    """Let every timer run out, stopping at each one when it is due (a timer
    set while the clock advances counts from the clock's new time)."""
    clock = sip.clock
    end = clock.seconds() + ALL_TIMERS
    for _ in range(100_000):
        due = min((c.getTime() for c in clock.getDelayedCalls() if c.active()), default=end)
        if due >= end:
            break
        clock.advance(max(0.0, due - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


def nothing_sent(sip) -> None:
    run_timers(sip)
    assert sip.sent() == []


# -- guests ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["INVITE", "OPTIONS", "MESSAGE", "BYE", "CANCEL"])
def test_a_guest_cannot_make_the_proxy_write_to_a_loopback_redis(sip, world, method):
    """The issue's attack: a guest session, Request-URI a loopback TCP port."""
    guest = Tunnel(world, "", user=world.guest())
    target = "sip:x@127.0.0.1:6379;transport=tcp"
    message = ua(method, target, to_tag="t1" if method == "BYE" else None,
                 body="SET pwned 1\r\n" if method == "MESSAGE" else "")
    assert "guests" in refused(guest, message)
    nothing_sent(sip)


def test_a_guest_cannot_call_a_user_either_but_can_answer_a_call(sip, world):
    guest = Tunnel(world, "", user=world.guest())
    bob = sip.tunnel("bob")
    refused(guest, ua("INVITE", "sip:bob@example.org"))
    assert bob.frames() == []
    # a call to the guest is relayed, and the guest's answers go back
    sip.send(invite(f"sip:{guest.user.name}@example.org"))
    assert codes(sip.sent()) == [100]
    fwd = guest.one().message
    guest.ok(answer(fwd, 200, contact="<sip:guest@127.0.0.1:5080>"))
    assert codes(sip.sent()) == [200]
    # the guest's ACK is dropped without answer (an ACK is never answered)
    guest.ok(request("ACK", "sip:carol@198.51.100.7:5062", call_id=fwd.call_id,
                     to_tag="ft1", from_tag="callee1"))
    assert guest.frames() == [] and sip.sent() == []


# -- registered users: where they may not send ------------------------------------------------

FORBIDDEN = [
    ("sip:x@127.0.0.1:6379;transport=tcp", "loopback"),
    ("sip:x@127.1.2.3:11211", "loopback"),
    ("sip:x@[::1]:5060", "loopback"),
    ("sip:x@[::ffff:127.0.0.1]:6379;transport=tcp", "loopback"),
    ("sip:x@10.0.0.1", "private"),
    ("sip:x@172.16.5.4", "private"),
    ("sip:x@192.168.1.1", "private"),
    ("sip:x@[fd00::1]", "private"),
    ("sip:x@100.64.0.1", "not globally reachable"),
    ("sip:x@169.254.169.254:80;transport=tcp", "link-local"),
    ("sip:x@[fe80::1]", "link-local"),
    ("sip:x@0.0.0.0", "unspecified"),
    ("sip:x@224.0.0.1", "multicast"),
    ("sip:x@255.255.255.255", "private"),
    ("sip:x@240.0.0.1", "private"),
    ("sip:x@93.184.216.34:6379;maddr=127.0.0.1", "loopback"),
]


@pytest.mark.parametrize("uri, why", FORBIDDEN)
def test_a_registered_user_cannot_reach_internal_addresses(sip, uri, why):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC  # even with outside calls allowed
    bob = sip.tunnel("bob")
    for method in ("INVITE", "OPTIONS"):
        assert why in refused(bob, ua(method, uri))
    nothing_sent(sip)


def test_a_name_is_checked_after_resolution(sip):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    sip.net.resolutions["redis.evil.example"] = ["127.0.0.1"]
    sip.net.resolutions["mixed.evil.example"] = [PUBLIC_HOST, "10.0.0.5"]
    bob = sip.tunnel("bob")
    assert "loopback" in refused(bob, ua("INVITE", "sip:x@redis.evil.example:6379"))
    # every address a name resolves to must be allowed, not only the first
    assert "private" in refused(bob, ua("OPTIONS", "sip:x@mixed.evil.example"))
    nothing_sent(sip)
    bob.ok(ua("OPTIONS", "sip:x@public.example"))  # resolves to a public address
    [(out, hop)] = sip.sent()
    assert (hop.host, out.method) == (PUBLIC_HOST, "OPTIONS")


def test_never_to_this_servers_own_ports(sip):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    sip.net.local = "93.184.216.1"  # the server has a public address
    sip.proxy.listening({"http": "0.0.0.0:8080", "smsc": "127.0.0.1:13013",
                         "sip-udp": "0.0.0.0:5060", "sip-tcp": "0.0.0.0:5060"})
    bob = sip.tunnel("bob")
    for uri in ("sip:x@93.184.216.1:8080;transport=tcp",   # its HTTP port
                "sip:x@127.0.0.1:13013;transport=tcp",     # its SMSC port
                "sip:x@93.184.216.1:6379;transport=tcp",   # any port of its own
                "sip:x@example.org:8080;transport=tcp"):   # the domain, another port
        assert "own address" in refused(bob, ua("OPTIONS", uri))
    nothing_sent(sip)


def test_a_route_to_an_internal_address_is_refused_the_same_way(sip):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    bob = sip.tunnel("bob")
    alice = sip.tunnel("alice")
    # a request for a user of the domain, but routed at a loopback port
    routed = ua("INVITE", "sip:alice@example.org",
                extra=(("Route", f"{RR}, <sip:127.0.0.1:6379;transport=tcp;lr>"),))
    assert "loopback" in refused(bob, routed)
    assert "private" in refused(bob, ua("MESSAGE", "sip:alice@example.org", body="hi",
                                        extra=(("Route", "<sip:10.1.1.1;lr>"),)))
    assert alice.frames() == []
    nothing_sent(sip)


def test_outside_addresses_are_off_by_default(sip):
    assert sip.proxy.outbound == proxy_mod.OUTBOUND_NONE
    bob = sip.tunnel("bob")
    reason = refused(bob, ua("INVITE", f"sip:x@{PUBLIC_HOST}"))
    assert "only users of example.org" in reason
    refused(bob, ua("OPTIONS", "sip:x@public.example"))
    nothing_sent(sip)


def test_calls_between_users_of_the_domain_still_work(sip):
    bob = sip.tunnel("bob")
    alice = sip.tunnel("alice")
    inv = ua("INVITE", "sip:alice@example.org")
    txid = bob.ok(inv)["txid"]
    fwd = alice.one().message
    alice.ok(answer(fwd, 200, contact="<sip:alice@127.0.0.1:5090>"))
    assert [f.what for f in bob.frames("sipresp")] == ["100", "200"]
    assert txid
    assert sip.sent() == []


# -- in-dialog requests ------------------------------------------------------------------------

def call_from_outside(sip, bob: Tunnel, caller: Hop = CALLER, contact: str = None):
    """An outside caller at ``caller`` calls bob, bob answers: the INVITE."""
    inv = invite("sip:bob@example.org", via_host=caller.host, via_port=caller.port,
                 transport=caller.transport,
                 contact=contact or f"<sip:carol@{caller.host}:{caller.port}>")
    sip.send(inv, caller)
    fwd = bob.one().message
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>"))
    assert 200 in codes(sip.sent())
    return inv


def bye_to(inv, target: str, cseq: int = 2):
    return ua("BYE", target, from_tag="callee1", to_uri="sip:carol@example.net", to_tag="ft1",
              call_id=inv.call_id, cseq=cseq, extra=(("Route", RR),))


def test_in_dialog_requests_go_to_the_peer_of_the_dialog(sip):
    """The caller is at a private address (198.51.100.0/24 is documentation
    space): bob may still hang up, since the proxy relayed that dialog."""
    bob = sip.tunnel("bob")
    inv = call_from_outside(sip, bob)
    bob.ok(bye_to(inv, "sip:carol@198.51.100.7:5062"))
    [(out, hop)] = sip.sent()
    assert out.method == "BYE" and (hop.host, hop.port) == ("198.51.100.7", 5062)
    sip.send(answer(out, 200), CALLER)
    assert bob.one("sipresp").what == "200"
    # the dialog ended with the 2xx to its BYE: nothing more goes there
    refused(bob, bye_to(inv, "sip:carol@198.51.100.7:5062", cseq=3))
    nothing_sent(sip)


def test_a_dialog_does_not_open_other_internal_addresses(sip):
    """A caller from the network (colluding with a user) names a loopback
    Redis as its Contact: the in-dialog BYE there is refused."""
    bob = sip.tunnel("bob")
    caller = Hop(UDP, "93.184.216.50", 5060)
    inv = call_from_outside(sip, bob, caller, "<sip:x@127.0.0.1:6379;transport=tcp>")
    assert "loopback" in refused(bob, bye_to(inv, "sip:x@127.0.0.1:6379;transport=tcp"))
    # nor other public addresses (a user calling themselves from the network
    # must not get around --sip-outbound none): only the peer it was made with
    for target in ("sip:x@93.184.216.99:25;transport=tcp", "sip:carol@93.184.216.50:5070"):
        assert "not the address this dialog" in refused(bob, bye_to(inv, target))
    # the peer's own address over UDP, its port only: a spoofable source is
    # trusted no further than the very address it sent from
    assert "only users of" in refused(Tunnel(sip.world, "alice"), bye_to(
        inv, "sip:carol@93.184.216.50:5060"))
    nothing_sent(sip)
    bob.ok(bye_to(inv, "sip:carol@93.184.216.50:5060", cseq=4))
    assert [h.host for _, h in sip.sent()] == ["93.184.216.50"]


class Connection:
    """Stands for the TCP connection a peer opened (weakly referenced)."""
    connected_ = True


def test_a_tcp_dialog_peer_is_reached_on_its_own_connection_only(sip):
    """Over TCP the peer's address may be a NAT's or a local proxy's (Docker's
    userland proxy shows every client as its gateway): in-dialog requests go
    on the peer's connection, and no other port of that address is opened."""
    bob = sip.tunnel("bob")
    conn = Connection()
    caller = Hop(TCP, "172.17.0.1", 40000, conn=conn)
    inv = call_from_outside(sip, bob, caller, "<sip:carol@172.17.0.1:5060;transport=tcp>")
    for target in ("sip:carol@172.17.0.1:5060;transport=tcp",
                   "sip:x@172.17.0.1:6379;transport=tcp"):
        bob.ok(bye_to(inv, target))
        [(out, hop)] = sip.sent()
        assert (hop.host, hop.port, hop.conn) == ("172.17.0.1", 40000, conn)
    # once that connection is closed, the address is as private as any
    conn.connected_ = False
    assert "private" in refused(bob, bye_to(inv, "sip:x@172.17.0.1:6379;transport=tcp"))
    nothing_sent(sip)


def test_a_response_over_a_closed_tcp_connection_opens_no_internal_port(sip):
    """RFC 3261 18.2.2 reconnects to the received address and the Via port:
    a caller behind a gateway address must not make the proxy connect to
    another port of it (here 6379) by closing its connection early."""
    bob = sip.tunnel("bob")
    conn = Connection()
    caller = Hop(TCP, "172.17.0.1", 40000, conn=conn)
    inv = invite("sip:bob@example.org", via_host="203.0.113.1", via_port=6379,
                 transport="TCP")
    sip.send(inv.to_bytes().replace(b";rport", b""), caller)  # no rport: the Via's port
    assert [(m.code, h.port, h.conn) for m, h in sip.sent()] == [(100, 6379, conn)]
    conn.connected_ = False
    bob.ok(answer(bob.one().message, 200, contact="<sip:bob@127.0.0.1:5080>"))
    nothing_sent(sip)
    assert sip.proxy.stats()["responses_dropped"] == 1
    # a public address is answered as RFC 3261 says (a new connection)
    public = Hop(TCP, "93.184.216.50", 40001, conn=Connection())
    inv = invite("sip:bob@example.org", via_host="93.184.216.50", via_port=5060,
                 transport="TCP")
    sip.send(inv.to_bytes().replace(b";rport", b""), public)
    public.conn.connected_ = False
    bob.ok(answer(bob.one().message, 200, contact="<sip:bob@127.0.0.1:5080>"))
    assert [(m.code, h.host, h.port) for m, h in sip.sent()] == [
        (100, "93.184.216.50", 5060), (200, "93.184.216.50", 5060)]  # 100: on the connection


def test_with_outbound_public_in_dialog_requests_may_go_to_public_addresses(sip):
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    bob = sip.tunnel("bob")
    inv = call_from_outside(sip, bob, Hop(UDP, "93.184.216.50", 5060))
    bob.ok(bye_to(inv, "sip:carol@93.184.216.51:5060"))
    assert [h.host for _, h in sip.sent()] == ["93.184.216.51"]
    assert "private" in refused(bob, bye_to(inv, "sip:carol@10.0.0.1", cseq=3))


def test_only_sessions_in_the_dialog_may_use_it(sip):
    bob = sip.tunnel("bob")
    alice = sip.tunnel("alice")
    inv = call_from_outside(sip, bob)
    assert "only users of" in refused(alice, bye_to(inv, "sip:carol@198.51.100.7:5062"))
    nothing_sent(sip)


def test_dialogs_are_forgotten_when_idle_and_bounded(sip, monkeypatch):
    bob = sip.tunnel("bob")
    inv = call_from_outside(sip, bob)
    sip.clock.advance(proxy_mod.DIALOG_IDLE + 1)
    sip.sent()
    refused(bob, bye_to(inv, "sip:carol@198.51.100.7:5062"))
    assert sip.proxy.stats()["dialogs"] == 0
    monkeypatch.setattr(sip.proxy.dialogs, "limit", 2)
    for _ in range(5):
        call_from_outside(sip, bob)
    assert sip.proxy.stats()["dialogs"] == 2


def test_the_callers_ack_and_bye_still_reach_the_user(sip):
    bob = sip.tunnel("bob")
    inv = invite("sip:bob@example.org")
    sip.send(inv)
    fwd = bob.one().message
    bob.ok(answer(fwd, 200, contact="<sip:bob@127.0.0.1:5080>"))
    final = [m for m, _ in sip.sent() if isinstance(m, Response) and m.code == 200][0]
    contact = NameAddr.parse(final.get("contact")).uri
    dialog = dict(to_uri="sip:bob@example.org", to_tag="callee1", call_id=inv.call_id,
                  extra=(("Route", RR),))
    sip.send(request("ACK", contact, **dialog))
    sip.send(request("BYE", contact, cseq=2, **dialog))
    assert [f.what for f in bob.frames()] == ["ACK", "BYE"]


# -- datagrams out for one message in ----------------------------------------------------------

def datagrams(sip, hop_host: str = None) -> int:
    run_timers(sip)
    return len([1 for _, hop in sip.sent() if hop_host is None or hop.host == hop_host])


def test_one_datagram_from_the_network_gets_only_what_rfc_3261_requires(sip):
    """Measured before this work: an INVITE refused at once (not a relay,
    or an unknown user) made 12 datagrams (100 Trying, the final and 10
    timer G repeats, to an address that may be forged); now 1, and repeats
    only answer repeats."""
    sip.send(invite("sip:x@elsewhere.example"))
    assert datagrams(sip) == 1
    sip.send(request("OPTIONS", "sip:x@elsewhere.example"))
    assert datagrams(sip) == 1
    # a retransmitted INVITE gets its final again, one for one
    inv = invite("sip:x@elsewhere.example")
    for _ in range(3):
        sip.send(inv)
    assert datagrams(sip) == 3
    # an unknown or an offline user: the final is known before a 100 is due
    # (measured before: 12, as above)
    sip.send(invite("sip:nobody@example.org"))
    assert datagrams(sip) == 1
    # a call the user rejects: 100 Trying, then the final repeated by timer
    # G, which RFC 3261 requires after a provisional and bounds (0.5 s
    # doubling to 4 s, ends at 32 s)
    bob = sip.tunnel("bob")
    for acked in (False, True):
        inv = invite("sip:bob@example.org")
        sip.send(inv)
        bob.ok(answer(bob.one().message, 486))
        if acked:  # a real caller ACKs at once: then nothing more
            sip.send(request("ACK", inv.uri, call_id=inv.call_id, to_tag="callee1",
                             branch_id=inv.top_via().branch))
        assert datagrams(sip) == (2 if acked else 2 + 10)


def test_one_post_gets_at_most_the_rfc_retransmissions_and_none_over_tcp(sip):
    """Measured before: one POST of an OPTIONS to a loopback UDP port made 11
    datagrams (and one to a loopback TCP port wrote it there).  Now: 0 to a forbidden address; to a public one
    (--sip-outbound public) RFC 3261's timer E (11 for a non-INVITE in 32 s)
    and timer A (7 for an INVITE); over TCP exactly one message."""
    bob = sip.tunnel("bob")
    refused(bob, ua("OPTIONS", "sip:x@127.0.0.1:9999"))
    assert datagrams(sip) == 0
    sip.proxy.outbound = proxy_mod.OUTBOUND_PUBLIC
    bob.ok(ua("OPTIONS", f"sip:x@{PUBLIC_HOST}:9999"))
    assert datagrams(sip) == 11
    bob.ok(ua("INVITE", f"sip:x@{PUBLIC_HOST}:9999"))
    assert datagrams(sip) == 7
    bob.ok(ua("OPTIONS", f"sip:x@{PUBLIC_HOST}:9999;transport=tcp"))
    bob.ok(ua("INVITE", f"sip:x@{PUBLIC_HOST}:9999;transport=tcp"))
    sent = sip.sent()
    run_timers(sip)
    sent += sip.sent()
    assert [(m.method, h.transport) for m, h in sent] == [("OPTIONS", TCP), ("INVITE", TCP)]


# -- rate limits --------------------------------------------------------------------------------

def test_post_sip_is_rate_limited_per_session_and_others_are_unaffected(sip):
    bob = sip.tunnel("bob")
    alice = sip.tunnel("alice")
    burst = int(proxy_mod.SESSION_RATE * proxy_mod.BURST)
    statuses = [bob.post(ua("OPTIONS", "sip:nobody@example.org")).status
                for _ in range(burst + 5)]
    assert statuses.count(202) == burst and statuses[burst:] == [429] * 5
    reply = bob.post(ua("OPTIONS", "sip:nobody@example.org"))
    assert reply.status == 429 and "slow down" in reply.json["error"]
    # alice, calling meanwhile, is not affected
    alice.ok(ua("INVITE", "sip:bob@example.org", from_uri="sip:alice@example.org"))
    sip.clock.advance(0)  # the heartbeat writes at the end of the turn
    assert [f.what for f in alice.frames("sipresp")] == ["100"]
    # and bob may send again a second later
    sip.clock.advance(1)
    assert bob.post(ua("OPTIONS", "sip:nobody@example.org")).status == 202


def test_network_messages_are_rate_limited_per_source_address(sip):
    flood = Hop(UDP, "198.51.100.66", 5060)
    burst = int(proxy_mod.SOURCE_RATE * proxy_mod.BURST)
    for _ in range(burst + 50):
        sip.send(request("OPTIONS", "sip:example.org", via_host=flood.host), flood)
    answered = [m for m, hop in sip.sent() if hop.host == flood.host]
    assert len(answered) == burst
    assert sip.proxy.stats()["rate_limited"] == 50
    # a caller from another address is not affected
    bob = sip.tunnel("bob")
    sip.send(invite("sip:bob@example.org"))
    assert codes(sip.sent()) == [100] and bob.one().what == "INVITE"


# -- text that is not Unicode -------------------------------------------------------------------

def test_invalid_utf8_is_a_400_from_the_tunnel_and_from_the_network(sip, logged_errors):
    bob = sip.tunnel("bob")
    good = ua("MESSAGE", "sip:alice@example.org", body="hi").to_bytes()
    surrogate = "\udc00".encode("utf-8", "surrogatepass")   # a lone surrogate, as bytes
    for bad in (good.replace(b"From: <sip:bob", b"From: <sip:b" + surrogate),
                good.replace(b"\r\n\r\nhi", b"\r\n\r\n" + surrogate).replace(
                    b"Content-Length: 2", b"Content-Length: 3"),
                good.replace(b"alice@", b"\xff\xfe@")):
        reply = bob.post(bad)
        assert reply.status == 400 and "UTF-8" in reply.json["error"], reply.body
    # from the network: a SIP 400 to the source, nothing else
    sip.send(request("OPTIONS", "sip:bob@example.org").to_bytes().replace(
        b"From: <sip:carol", b"From: <sip:c" + surrogate))
    [(out, hop)] = sip.sent()
    assert out.code == 400 and "UTF-8" in out.reason and hop.host == CALLER.host
    assert logged_errors == []


def test_forbidden_address_judges_addresses_not_names():
    assert forbidden_address("93.184.216.34") is None
    assert forbidden_address("2606:2800:220:1:248:1893:25c8:1946") is None
    assert forbidden_address("evil.example") == "not an IP address"
    assert forbidden_address("::ffff:10.0.0.1") == "private address"
