"""SIP presence (``presence.sip.presence_server``) in memory: SUBSCRIBE and
NOTIFY with PIDF, on a real in-memory server (``World``), the proxy on a
:class:`~presence.sip.testing.FakeNetwork`, tunnel users with real
heartbeats and ``POST /sip``, one ``Clock`` for every timer."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace
from typing import List, Optional

import pytest

from helpers import logged_errors, result_of, world  # noqa: F401  (fixtures)
from presence.sip import presence_server as ps
from presence.sip.digest import DigestAuth, expected_response, ha1
from presence.sip.message import NameAddr, Request, Response, Via
from presence.sip.presence_server import PIDF, SipPresence, pidf
from presence.sip.proxy import TCP, UDP, Hop, SipProxy
from presence.sip.testing import FakeNetwork, answer, request
from presence.sip.web import SipTunnelResource
from test_sip_proxy import Tunnel

CALLER = Hop(UDP, "198.51.100.7", 5062)
NS = {"p": "urn:ietf:params:xml:ns:pidf", "rpid": "urn:ietf:params:xml:ns:pidf:rpid"}
SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def sp(world):
    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    presence = SipPresence(world.service, proxy, world.clock)
    proxy.presence = presence
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy))
    ns = SimpleNamespace(world=world, net=net, proxy=proxy, presence=presence,
                         clock=world.clock)

    def send(message, hop: Hop = CALLER) -> None:
        proxy.received(message.to_bytes(), hop)

    def sent() -> List[Request]:
        return [m for m, _ in net.take()]

    ns.send, ns.sent = send, sent
    ns.tunnel = lambda name: Tunnel(world, name)
    yield ns
    proxy.stop()


def subscribe(uri: str = "sip:bob@example.org", *, expires: Optional[str] = "600",
              event: Optional[str] = "presence", extra=(), **kw) -> Request:
    headers = list(extra)
    if event is not None:
        headers.append(("Event", event))
    if expires is not None:
        headers.append(("Expires", expires))
    kw.setdefault("via_host", "127.0.0.1")
    kw.setdefault("via_port", 5080)
    return request("SUBSCRIBE", uri, extra=tuple(headers), **kw)


def in_dialog(first: Request, ok: Response, *, expires: str = "600", cseq: int = 2,
              **kw) -> Request:
    """A refresh of the subscription ``first`` made (``ok`` its 200)."""
    contact = NameAddr.parse(ok.get("contact")).uri
    return subscribe(contact, expires=expires, call_id=first.call_id, cseq=cseq,
                     to_uri="sip:bob@example.org", to_tag=NameAddr.parse(ok.get("to")).param(
                         "tag"), **kw)


def basic(body: bytes) -> str:
    return ET.fromstring(body).find("p:tuple/p:status/p:basic", NS).text


def note(body: bytes) -> str:
    return ET.fromstring(body).find("p:tuple/p:note", NS).text


class Watcher:
    """A tunnel user who subscribes (alice) and reads the answers."""

    def __init__(self, sp, name: str = "alice") -> None:
        self.sp = sp
        self.t = sp.tunnel(name)

    def subscribe(self, req: Request):
        self.t.ok(req)
        return self.frames()

    def frames(self):
        return self.t.frames()

    def answer(self, frame, code: int = 200) -> None:
        self.t.ok(answer(frame.message, code, record_route=False))


def test_a_session_subscribes_gets_200_then_notify_open_and_each_change(sp):
    bob = sp.tunnel("bob")
    alice = Watcher(sp)
    first = subscribe()
    ok, notify = alice.subscribe(first)
    assert (ok.kind, ok.what) == ("sipresp", "200")
    assert ok.message.get("expires") == "600"
    assert ok.message.get("allow-events") == "presence"
    contact = NameAddr.parse(ok.message.get("contact")).sip_uri()
    assert (contact.user, contact.host) == ("bob", "example.org")
    assert (notify.kind, notify.what) == ("sipreq", "NOTIFY")
    n = notify.message
    assert n.uri == "sip:carol@198.51.100.7:5062"  # the subscriber's Contact
    assert n.get("subscription-state") == "active;expires=600"
    assert n.get("event") == "presence" and n.get("content-type") == PIDF
    assert n.call_id == first.call_id
    assert n.tag("to") == "ft1" and n.tag("from") == ok.message.tag("to")
    assert basic(n.body) == "open" and note(n.body) == "Available"
    assert ET.fromstring(n.body).get("entity") == "sip:bob@example.org"
    assert Via.parse(n.values("via")[0]).branch == notify.txid
    alice.answer(notify)
    assert sp.sent() == []  # nothing went to the network, nothing relayed to bob
    assert bob.frames() == []
    # bob goes away: a NOTIFY with the note and the RPID activity
    assert bob.user.post("/api/status", state="away", text="at lunch").status == 200
    sp.clock.advance(0)
    [away] = alice.frames()
    assert basic(away.message.body) == "open"
    assert note(away.message.body) == "Away: at lunch"
    assert ET.fromstring(away.message.body).find(".//rpid:activities/rpid:away", NS) is not None
    assert away.message.cseq[0] == n.cseq[0] + 1
    alice.answer(away)
    bob.user.post("/api/logout")
    sp.clock.advance(0)
    [closed] = alice.frames()
    assert basic(closed.message.body) == "closed"
    assert closed.message.get("subscription-state").startswith("active;expires=")
    alice.answer(closed)


def test_refresh_and_unsubscribe_in_the_dialog(sp):
    sp.tunnel("bob")
    alice = Watcher(sp)
    first = subscribe()
    ok, notify = alice.subscribe(first)
    alice.answer(notify)
    sp.clock.advance(100)
    ok2, notify2 = alice.subscribe(in_dialog(first, ok.message, expires="300"))
    assert ok2.what == "200" and ok2.message.get("expires") == "300"
    assert notify2.message.get("subscription-state") == "active;expires=300"
    alice.answer(notify2)
    ok3, final = alice.subscribe(in_dialog(first, ok.message, expires="0", cseq=3))
    assert ok3.what == "200" and ok3.message.get("expires") == "0"
    assert final.message.get("subscription-state") == "terminated;reason=timeout"
    alice.answer(final)
    assert sp.presence.subs == {} and sp.presence.by_subscriber == {}
    # ended: a refresh is 481 and bob's changes notify nobody
    [gone] = alice.subscribe(in_dialog(first, ok.message, cseq=4))
    assert gone.what == "481"


def test_expiry_sends_a_final_notify(sp):
    sp.tunnel("bob")
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe(expires="60"))
    alice.answer(notify)
    sp.clock.advance(60)
    [final] = alice.frames()
    assert final.message.get("subscription-state") == "terminated;reason=timeout"
    assert basic(final.message.body) == "open"
    alice.answer(final)
    assert sp.presence.subs == {}


def test_a_fetch_is_one_terminated_notify(sp):
    alice = Watcher(sp)
    sp.world.register("bob")
    ok, notify = alice.subscribe(subscribe(expires="0"))
    assert ok.what == "200" and ok.message.get("expires") == "0"
    assert notify.message.get("subscription-state") == "terminated;reason=timeout"
    assert basic(notify.message.body) == "closed"  # bob is offline, not unknown
    assert sp.presence.subs == {}


def test_subscribing_to_oneself_is_answered_and_never_relayed(sp):
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe("sip:alice@example.org"))
    assert (ok.what, notify.what) == ("200", "NOTIFY")
    assert basic(notify.message.body) == "open"
    assert not any(f.kind == "sipreq" and f.what == "SUBSCRIBE" for f in alice.frames())
    assert sp.sent() == []


def test_unknown_event_is_489_with_allow_events(sp):
    sp.tunnel("bob")
    alice = Watcher(sp)
    for event in ("message-summary", "dialog", None):
        [bad] = alice.subscribe(subscribe(event=event))
        assert bad.what == "489"
        assert bad.message.get("allow-events") == "presence"
    assert sp.presence.subs == {}


def test_unknown_user_404_bad_expires_423_400_and_accept_406(sp):
    alice = Watcher(sp)
    sp.world.register("bob")
    [unknown] = alice.subscribe(subscribe("sip:nobody@example.org"))
    assert unknown.what == "404"
    [brief] = alice.subscribe(subscribe(expires="10"))
    assert brief.what == "423" and brief.message.get("min-expires") == "60"
    [garbage] = alice.subscribe(subscribe(expires="soon"))
    assert garbage.what == "400"
    [text_only] = alice.subscribe(subscribe(extra=(("Accept", "text/plain"),)))
    assert text_only.what == "406" and text_only.message.get("accept") == PIDF
    ok, notify = alice.subscribe(subscribe(expires="86400",
                                           extra=(("Accept", "application/pidf+xml"),)))
    assert ok.message.get("expires") == str(ps.MAX_EXPIRES)


def test_subscriptions_are_bounded_per_subscriber_and_in_all(sp):
    sp.presence.max_per_subscriber = 2
    sp.world.register("bob")
    alice = Watcher(sp)
    for _ in range(2):
        ok, _notify = alice.subscribe(subscribe())
        assert ok.what == "200"
    [third] = alice.subscribe(subscribe())
    assert third.what == "403" and "at most 2" in third.message.reason
    sp.presence.max_subscriptions = 2
    carol = Watcher(sp, "carol")
    [full] = carol.subscribe(subscribe())
    assert full.what == "503" and full.message.get("retry-after")
    # a fetch keeps nothing: it is always answered
    ok, _notify = carol.subscribe(subscribe(expires="0"))
    assert ok.what == "200"


def test_another_session_of_the_subscriber_may_refresh_not_another_user(sp):
    sp.tunnel("bob")
    alice = Watcher(sp)
    first = subscribe()
    ok, notify = alice.subscribe(first)
    carol = Watcher(sp, "carol")
    [refused] = carol.subscribe(in_dialog(first, ok.message))
    assert refused.what == "403"


def test_the_subscribers_session_ending_drops_the_subscription(sp):
    bob = sp.tunnel("bob")
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe())
    alice.answer(notify)
    alice.t.user.post("/api/logout")
    bob.user.post("/api/status", state="busy")
    sp.clock.advance(0)
    assert sp.presence.subs == {}
    assert sp.presence.counters["dropped_session_ended"] == 1


def test_a_notify_unanswered_by_a_session_drops_the_subscription_after_timer_f(sp):
    sp.tunnel("bob")
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe())
    sp.clock.advance(31)
    assert alice.frames() == []  # the tunnel is reliable: no retransmission
    sp.clock.advance(1)
    assert sp.presence.subs == {}
    assert sp.presence.counters["dropped_timeout"] == 1


def test_a_481_to_notify_drops_the_subscription(sp):
    bob = sp.tunnel("bob")
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe())
    alice.answer(notify, 481)
    assert sp.presence.subs == {}
    bob.user.post("/api/status", state="away")
    sp.clock.advance(0)
    assert alice.frames() == []


def test_changes_while_a_notify_is_outstanding_go_once_answered(sp):
    bob = sp.tunnel("bob")
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe())
    bob.user.post("/api/status", state="away")
    sp.clock.advance(0)
    bob.user.post("/api/status", state="busy")
    sp.clock.advance(0)
    assert alice.frames() == []
    alice.answer(notify)
    [latest] = alice.frames()
    assert note(latest.message.body) == "Busy"


# -- subscribers on the network: digest -------------------------------------------


def with_auth(sp, users=("carol",)):
    ha1s = {u: ha1("MD5", u, "example.org", "pw-" + u) for u in users}
    auth = DigestAuth("example.org", lambda u, r, a: ha1s.get(u) if a == "MD5" else None,
                      sp.clock, SECRET)
    sp.presence.auth = auth
    return auth


def authorized(req: Request, challenge: Response, user: str = "carol",
               password: Optional[str] = None, nc: str = "00000001") -> Request:
    value = [v for v in challenge.get_all("www-authenticate") if "MD5" in v][0]
    nonce = value.split('nonce="')[1].split('"')[0]
    digest = ha1("MD5", user, "example.org", password or "pw-" + user)
    response = expected_response("MD5", digest, req.method, req.uri, nonce, nc, "c0ffee")
    copy = req.copy()
    copy.set_top_via(Via.parse(str(req.top_via()).replace(req.top_via().branch,
                                                          "z9hG4bKauth" + nc)))
    number, method = req.cseq
    copy.set("cseq", f"{number + 1} {method}")
    copy.add("Authorization",
             f'Digest username="{user}", realm="example.org", nonce="{nonce}", '
             f'uri="{req.uri}", response="{response}", algorithm=MD5, qop=auth, '
             f'nc={nc}, cnonce="c0ffee"')
    return copy


def net_subscribe(**kw) -> Request:
    return subscribe(via_host="198.51.100.7", via_port=5062, **kw)


def test_the_network_may_not_subscribe_without_digest_configured(sp):
    sp.world.register("bob")
    sp.send(net_subscribe())
    [refused] = sp.sent()
    assert refused.code == 403


def test_a_phone_subscribes_with_digest_and_notifies_are_retransmitted_over_udp(sp):
    with_auth(sp)
    bob = sp.tunnel("bob")
    first = net_subscribe()
    sp.send(first)
    [challenge] = sp.sent()
    assert challenge.code == 401
    assert sorted(v.split("algorithm=")[1].split(",")[0]
                  for v in challenge.get_all("www-authenticate")) == ["MD5", "SHA-256"]
    sp.send(authorized(first, challenge, password="wrong"))
    [again] = sp.sent()
    assert again.code == 401
    sp.send(authorized(first, challenge, nc="00000002"))
    ok, notify = sp.sent()
    assert ok.code == 200 and notify.method == "NOTIFY"
    assert basic(notify.body) == "open"
    # retransmitted (timer E) until answered
    sp.clock.advance(0.5)
    assert [m.method for m in sp.sent()] == ["NOTIFY"]
    sp.clock.advance(1.0)
    assert [m.method for m in sp.sent()] == ["NOTIFY"]
    sp.send(answer(notify, 200, record_route=False))
    sp.clock.advance(10)
    assert sp.sent() == []
    # the next change is not answered: given up after timer F, subscription gone
    bob.user.post("/api/status", state="away")
    sp.clock.advance(0)
    [away] = sp.sent()
    assert note(away.body) == "Away"
    sp.clock.advance(ps.TIMER_B)
    assert all(m.method == "NOTIFY" for m in sp.sent())
    assert sp.presence.subs == {}
    assert sp.presence.counters["dropped_timeout"] == 1


def test_notifies_to_the_network_go_where_the_subscribe_came_from(sp):
    with_auth(sp)
    sp.world.register("bob")
    source = Hop(UDP, "203.0.113.9", 40000)
    first = net_subscribe(contact="<sip:carol@10.1.2.3:5060>")
    sp.send(first, source)
    [challenge] = sp.net.take()
    assert challenge[1].host == "203.0.113.9"
    sp.send(authorized(first, challenge[0]), source)
    (ok, ok_hop), (notify, hop) = sp.net.take()
    assert notify.uri == "sip:carol@10.1.2.3:5060"
    assert (hop.transport, hop.host, hop.port) == (UDP, "203.0.113.9", 40000)
    assert basic(notify.body) == "closed"


def test_a_notify_over_a_closed_tcp_connection_drops_the_subscription(sp):
    with_auth(sp)
    bob = sp.tunnel("bob")
    conn = SimpleNamespace(connected_=True)
    source = Hop(TCP, "203.0.113.9", 40001, conn=conn)
    first = net_subscribe()
    sp.send(first, source)
    [challenge] = sp.sent()
    sp.send(authorized(first, challenge), source)
    ok, notify = sp.sent()
    sp.send(answer(notify, 200, record_route=False), source)
    conn.connected_ = False
    bob.user.post("/api/status", state="away")
    sp.clock.advance(0)
    assert sp.sent() == [] and sp.presence.subs == {}
    assert sp.presence.counters["dropped_unreachable"] == 1


def test_stop_sends_deactivated(sp):
    sp.tunnel("bob")
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe())
    alice.answer(notify)
    sp.presence.stop()
    [final] = alice.frames()
    assert final.message.get("subscription-state") == "terminated;reason=deactivated"
    assert sp.presence.subs == {} and sp.presence.notifies == {}


def test_options_names_the_presence_event(sp):
    sp.send(request("OPTIONS", "sip:example.org"))
    [ok] = sp.sent()
    assert ok.get("allow-events") == "presence"


# -- the PIDF itself -----------------------------------------------------------------


@pytest.mark.parametrize("state,text,want_basic,want_note", [
    ("available", "", "open", "Available"),
    ("available", "in the lab", "open", "in the lab"),
    ("away", "", "open", "Away"),
    ("busy", "on a call <b>&", "open", "Busy: on a call <b>&"),
    ("offline", "stale", "closed", "Offline"),
])
def test_pidf_documents(state, text, want_basic, want_note):
    body = pidf('sip:b"ob@example.org', state, text)
    root = ET.fromstring(body)
    assert root.tag == "{urn:ietf:params:xml:ns:pidf}presence"
    assert root.get("entity") == 'sip:b"ob@example.org'
    assert basic(body) == want_basic and note(body) == want_note
    activity = root.find(".//rpid:activities", NS)
    assert (activity is not None) == (state in ("away", "busy"))


def test_a_watched_guest_logging_out_ends_the_subscription_with_noresource(sp):
    guest = sp.world.guest()
    Tunnel(sp.world, guest.name, user=guest)  # the guest holds a heartbeat: online
    alice = Watcher(sp)
    ok, notify = alice.subscribe(subscribe(f"sip:{guest.name}@example.org"))
    assert basic(notify.message.body) == "open"
    alice.answer(notify)
    guest.post("/api/logout")
    sp.clock.advance(0)
    [final] = alice.frames()
    assert final.message.get("subscription-state") == "terminated;reason=noresource"
    assert basic(final.message.body) == "closed"
    alice.answer(final)
    assert sp.presence.subs == {}


# -- an attacker on the network ------------------------------------------------------


def test_wrong_subscribe_digests_spend_the_login_allowance_of_the_address(sp):
    """SUBSCRIBE is no password oracle beside login: its wrong digests count
    as failed logins of the source address, and past the allowance even
    the right password is 403 until it refills."""
    with_auth(sp)
    sp.world.register("bob")
    source = Hop(UDP, "203.0.113.50", 40000)
    first = net_subscribe()
    sp.send(first, source)
    [challenge] = sp.sent()
    codes = []
    for n in range(1, 13):
        sp.send(authorized(first, challenge, password="guess", nc=f"{n:08x}"), source)
        codes += [m.code for m in sp.sent()]
    assert codes[0] == 401 and codes[-1] == 403
    sp.send(authorized(first, challenge, nc="00000020"), source)
    [refused] = sp.sent()
    assert refused.code == 403 and "too many" in refused.reason
    assert sp.presence.subs == {}


def test_a_nonce_is_good_only_from_the_address_it_was_sent_to(sp):
    """A user with an account cannot fetch a nonce at their own address and
    then SUBSCRIBE from a spoofed UDP source: the NOTIFYs (retransmitted,
    and one per change of up to 64 subscriptions) would flood the victim."""
    with_auth(sp)
    sp.world.register("bob")
    mine = Hop(UDP, "203.0.113.9", 40000)
    victim = Hop(UDP, "192.0.2.66", 5060)
    first = net_subscribe()
    sp.send(first, mine)
    [challenge] = sp.sent()
    sp.send(authorized(first, challenge), victim)
    [(again, hop)] = sp.net.take()
    assert again.code == 401 and "stale=true" in again.get("www-authenticate")
    assert hop.host == victim.host
    assert sp.presence.subs == {}
    sp.send(authorized(first, challenge, nc="00000002"), mine)
    ok, notify = sp.sent()
    assert ok.code == 200 and notify.method == "NOTIFY"


def test_a_locked_account_may_not_subscribe(sp):
    """An operator's lock (after a compromise, say) holds for SIP presence
    as for login and REGISTER."""
    with_auth(sp)
    sp.world.register("bob")
    sp.world.register("carol")
    assert result_of(sp.world.store.set_locked("carol", True))
    first = net_subscribe()
    sp.send(first)
    [challenge] = sp.sent()
    sp.send(authorized(first, challenge))
    [refused] = sp.sent()
    assert refused.code == 403 and "locked" in refused.reason
    assert sp.presence.subs == {}


def test_malformed_credentials_are_400_with_a_short_reason(sp):
    """The reason of a 400 for broken credentials does not echo a long
    parameter name back (a reflected, amplified answer to a forged source)."""
    with_auth(sp)
    sp.world.register("bob")
    req = net_subscribe(extra=(("Authorization",
                                'Digest realm="example.org", ' + "x" * 5000),))
    sp.send(req)
    [refused] = sp.sent()
    assert refused.code == 400 and len(refused.reason) < 160


def test_guessing_one_account_from_many_addresses_is_bounded(sp):
    """The account's allowance too, as for a password login."""
    with_auth(sp)
    sp.world.register("bob")
    for n in range(25):
        source = Hop(UDP, f"203.0.113.{n + 1}", 40000)
        first = net_subscribe()
        sp.send(first, source)
        [challenge] = sp.sent()
        sp.send(authorized(first, challenge, password=f"guess{n}", nc=f"{n + 1:08x}"),
                source)
        sp.sent()
    source = Hop(UDP, "198.18.0.1", 40000)
    first = net_subscribe(call_id="last@phone")
    sp.send(first, source)
    [challenge] = sp.sent()
    sp.send(authorized(first, challenge, nc="000000ff"), source)
    [refused] = sp.sent()
    assert refused.code == 403 and "too many" in refused.reason
