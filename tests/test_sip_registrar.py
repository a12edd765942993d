"""The registrar of the proxy's domain (``presence.sip.registrar``) in memory:
digest against the directory's HA1, bindings on the world's Clock, a
registered phone as a presence source, calls forked to bindings, and REGISTER
through the tunnel (what ``presence-sip-bridge`` relays)."""

from __future__ import annotations

from typing import Optional

import pytest

from helpers import PASSWORD, World, logged_errors, result_of, world  # noqa: F401  (fixtures)
from presence.sip.message import Request, Response, parse
from presence.sip.proxy import TCP, UDP, Hop
from presence.sip.testing import answer, branch, invite, request
from test_sip_digest import answer_challenge, params_of
from test_sip_proxy import Tunnel, codes, sip  # noqa: F401  (fixture)

PHONE = Hop(UDP, "198.51.100.20", 5070)
CONTACT = "<sip:alice@198.51.100.20:5070>"


def register(uri: str = "sip:example.org", user: str = "alice", *, cseq: int = 1,
             call_id: str = "reg1@phone", contact: Optional[str] = CONTACT,
             expires: Optional[str] = None, to_host: str = "example.org") -> Request:
    extra = (("Expires", expires),) if expires is not None else ()
    return request("REGISTER", uri, via_host=PHONE.host, via_port=PHONE.port,
                   from_uri=f"sip:{user}@{to_host}", to_uri=f"sip:{user}@{to_host}",
                   call_id=call_id, cseq=cseq, contact=contact, extra=extra)


def signed(req: Request, challenge: Response, *, password: str = PASSWORD,
           user: Optional[str] = None, nc: int = 1, which: int = 0) -> Request:
    """``req`` again as a new transaction (CSeq + 1, new branch) with digest
    credentials answering ``challenge``."""
    value = challenge.get_all("www-authenticate")[which]
    user = user or _user_of(req)
    out = answer_challenge(req, value, user=user, password=password, nc=nc)
    out.set("via", out.values("via")[0].split(";branch=")[0] + f";branch={branch()};rport")
    number, method = out.cseq
    out.set("cseq", f"{number + 1} {method}")
    return out


def _user_of(req: Request) -> str:
    return req.get("to").split("sip:")[1].split("@")[0]


class Phone:
    """A softphone at ``hop`` registering at the proxy over the fake network."""

    def __init__(self, sip, hop: Hop = PHONE, user: str = "alice",
                 password: str = PASSWORD) -> None:
        self.sip, self.hop, self.user, self.password = sip, hop, user, password
        self.cseq = 0

    def send(self, req: Request) -> Response:
        self.sip.send(req, self.hop)
        out = [m for m, _ in self.sip.sent() if isinstance(m, Response)]
        assert len(out) == 1, out
        return out[0]

    def register(self, expect: int = 200, password: Optional[str] = None, **kw) -> Response:
        self.cseq += 2
        kw.setdefault("user", self.user)
        req = register(cseq=self.cseq, **kw)
        first = self.send(req)
        assert first.code == 401, (first.code, first.reason)
        final = self.send(signed(req, first, password=password or self.password,
                                 which=1))      # SHA-256
        assert final.code == expect, (final.code, final.reason)
        return final


def proxy_for(world, domain: str):
    """A proxy for ``domain`` over a fake network, made after the world's
    users (the ``sip`` fixture's is made before them)."""
    from types import SimpleNamespace
    from test_sip_proxy import FakeNetwork, SipProxy
    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, domain)
    return SimpleNamespace(world=world, net=net, proxy=proxy, clock=world.clock,
                           send=lambda m, hop=PHONE: proxy.received(m.to_bytes(), hop),
                           sent=lambda: net.take())


def contacts_of(response: Response):
    return response.values("contact")


def test_register_is_challenged_then_200_with_the_binding_and_the_user_is_online(sip):
    sip.world.user("alice")
    sip.world.service.logout(sip.world.hub.sessions_of("alice")[0])
    assert not sip.world.hub.is_online("alice")
    phone = Phone(sip)
    req = register()
    first = phone.send(req)
    assert first.code == 401 and first.get("to").count("tag=") == 1
    algs = [params_of(v)["algorithm"] for v in first.get_all("www-authenticate")]
    assert algs == ["MD5", "SHA-256"]
    ok = phone.send(signed(req, first, which=0))  # MD5 (what SIPp answers)
    assert ok.code == 200
    assert contacts_of(ok) == ["<sip:alice@198.51.100.20:5070>;expires=3600"]
    assert sip.world.hub.is_online("alice")
    source = sip.world.hub.sessions_of("alice")[0]
    assert source.scope == "sip"
    assert sip.proxy.stats()["bindings"] == 1


def test_a_watcher_hears_the_registered_user_online_then_offline(sip):
    sip.world.user("alice")
    bob = sip.world.user("bob")
    bob.post("/api/contacts", contact="alice")
    alice_session = sip.world.hub.sessions_of("alice")[0]
    sip.world.service.logout(alice_session)
    hb = bob.heartbeat()
    Phone(sip).register()
    phone = Phone(sip)
    phone.cseq = 10
    req = register(cseq=11, contact="*", expires="0")
    first = phone.send(req)
    assert phone.send(signed(req, first)).code == 200
    heads = [e.head for e in hb.events() if "alice" in e.head]
    assert heads == ["msg update online alice", "msg update offline alice"]
    assert not sip.world.hub.is_online("alice")


def test_wrong_password_gets_401_again_and_too_many_get_403(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    req = register()
    first = phone.send(req)
    again = phone.send(signed(req, first, password="not the password"))
    assert again.code == 401 and again.get("www-authenticate")
    assert "stale" not in again.get("www-authenticate")
    for _ in range(12):
        last = phone.send(signed(req, first, password="not the password"))
    assert last.code == 403 and "too many" in last.reason
    # the right password from that address is refused too until it refills
    assert phone.send(signed(req, first, nc=2)).code == 403
    sip.clock.advance(120)
    assert phone.send(signed(req, phone.send(req), nc=1)).code == 200


def test_unknown_user_and_a_user_without_ha1_get_401(sip):
    phone = Phone(sip, user="nobody")
    req = register(user="nobody")
    first = phone.send(req)
    assert phone.send(signed(req, first)).code == 401


def test_a_user_from_before_sip_gets_ha1_at_the_next_login(world):
    world.register("carol")                    # no proxy yet: no realm, no HA1
    ns = proxy_for(world, "example.org")
    proxy = ns.proxy
    try:
        phone = Phone(ns, user="carol")
        req = register(user="carol")
        first = phone.send(req)
        assert phone.send(signed(req, first)).code == 401
        world.login("carol")                   # the server sees the password: backfill
        assert phone.send(signed(req, phone.send(req))).code == 200
    finally:
        proxy.stop()


def test_a_password_change_invalidates_the_old_ha1_and_ends_the_registration(sip):
    alice = sip.world.user("alice")
    phone = Phone(sip)
    phone.register()
    assert sip.proxy.stats()["bindings"] == 1
    reply = alice.post("/api/password", password=PASSWORD, new_password="a new secret!")
    assert reply.status in (200, 204), reply.body
    # the registration's source session ended with the others: bindings gone
    assert sip.proxy.stats()["bindings"] == 0
    phone.register(expect=401)                 # the old password no longer works
    phone.password = "a new secret!"
    phone.register()


def test_a_new_domain_needs_a_new_ha1(world):
    world.user("dave")
    proxy_for(world, "example.org").proxy.stop()
    world.login("dave")                        # HA1 for example.org
    ns = proxy_for(world, "new.example")
    proxy = ns.proxy
    try:
        phone = Phone(ns, user="dave")
        req = register("sip:new.example", user="dave", to_host="new.example")
        first = phone.send(req)
        assert params_of(first.get("www-authenticate"))["realm"] == "new.example"
        assert phone.send(signed(req, first)).code == 401
        world.login("dave")
        assert phone.send(signed(req, phone.send(req))).code == 200
        assert result_of(world.store.sip_ha1("dave", "example.org", "MD5")) is None
    finally:
        proxy.stop()


def test_expires_min_max_and_contact_parameter(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    phone.cseq = 2
    req = register(cseq=3, expires="30")
    first = phone.send(req)
    brief = phone.send(signed(req, first))
    assert brief.code == 423 and brief.get("min-expires") == "60"
    ok = phone.register(expires="7200")
    assert contacts_of(ok) == ["<sip:alice@198.51.100.20:5070>;expires=3600"]
    ok = phone.register(expires="7200", contact=CONTACT + ";expires=120")
    assert contacts_of(ok) == ["<sip:alice@198.51.100.20:5070>;expires=120"]
    sip.clock.advance(20)
    other = "<sip:alice@198.51.100.20:5072>;expires=600"
    ok = phone.register(contact=other)
    assert sorted(contacts_of(ok)) == ["<sip:alice@198.51.100.20:5070>;expires=100",
                                       "<sip:alice@198.51.100.20:5072>;expires=600"]
    req = register(cseq=50, expires="abc")
    assert phone.send(signed(req, phone.send(req))).code == 400


def test_bindings_expire_by_the_clock_and_the_user_goes_offline(sip):
    sip.world.user("alice")
    sip.world.service.logout(sip.world.hub.sessions_of("alice")[0])
    Phone(sip).register(expires="120")
    assert sip.world.hub.is_online("alice")
    sip.clock.advance(119)
    assert sip.world.hub.is_online("alice")
    sip.clock.advance(2)
    assert sip.proxy.stats()["bindings"] == 0
    assert not sip.world.hub.is_online("alice")


def test_reregistration_refreshes_and_expires_zero_removes_one(sip):
    sip.world.user("alice")
    sip.world.service.logout(sip.world.hub.sessions_of("alice")[0])
    phone = Phone(sip)
    phone.register(expires="120")
    sip.clock.advance(100)
    phone.register(expires="120")               # refreshed
    sip.clock.advance(100)
    assert sip.world.hub.is_online("alice")
    ok = phone.register(expires="0")
    assert contacts_of(ok) == []
    assert not sip.world.hub.is_online("alice")


def test_contact_star_removes_all_and_must_go_alone_with_expires_zero(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    phone.register()
    phone.register(contact="<sip:alice@198.51.100.20:5090>")
    assert sip.proxy.stats()["bindings"] == 2
    phone.cseq = 20
    req = register(cseq=21, contact="*")        # no Expires: 0
    assert phone.send(signed(req, phone.send(req))).code == 400
    ok = phone.register(contact="*", expires="0")
    assert contacts_of(ok) == [] and sip.proxy.stats()["bindings"] == 0


def test_a_register_without_contact_lists_the_bindings(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    phone.register()
    ok = phone.register(contact=None)
    assert len(contacts_of(ok)) == 1


def test_out_of_order_register_is_500(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    phone.cseq = 10
    phone.register()                            # CSeq 12 with the same Call-ID
    req = register(cseq=3)
    first = phone.send(req)
    out = signed(req, first)
    out.set("cseq", "5 REGISTER")
    assert phone.send(out).code == 500


def test_bindings_are_bounded_per_user_and_in_total(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    for port in range(6000, 6010):
        phone.register(contact=f"<sip:alice@198.51.100.20:{port}>")
    bad = phone.register(expect=403, contact="<sip:alice@198.51.100.20:7000>")
    assert "at most 10" in bad.reason
    sip.proxy.registrar.total = 10
    sip.world.user("bob")
    assert Phone(sip, user="bob").register(expect=503).get("retry-after")


def test_register_for_another_domain_is_403_and_for_another_aor_host_404(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    out = phone.send(register("sip:elsewhere.net", to_host="elsewhere.net"))
    assert out.code == 403
    req = register(to_host="elsewhere.net")
    assert phone.send(req).code == 404


def test_credentials_of_another_user_are_403_and_malformed_ones_400(sip):
    sip.world.user("alice")
    sip.world.user("bob")
    phone = Phone(sip)
    req = register()
    first = phone.send(req)
    assert phone.send(signed(req, first, user="bob")).code == 403
    bad = register(cseq=9)
    bad.add("Authorization", 'Digest username="alice", realm="example.org", nonce="x')
    out = phone.send(bad)
    assert out.code == 400 and "credentials" in out.reason.lower()


def test_a_stale_nonce_gets_stale_true(sip):
    sip.world.user("alice")
    phone = Phone(sip)
    req = register()
    first = phone.send(req)
    sip.clock.advance(400)
    out = phone.send(signed(req, first))
    assert out.code == 401
    assert all(params_of(v).get("stale") == "true" for v in out.get_all("www-authenticate"))


def test_a_locked_account_may_not_register(sip):
    sip.world.user("alice")
    result_of(sip.world.store.set_locked("alice", True))
    Phone(sip).register(expect=403)


def test_an_invite_reaches_the_registered_phone_at_its_source_address(sip):
    sip.world.user("alice")
    sip.world.service.logout(sip.world.hub.sessions_of("alice")[0])
    source = Hop(UDP, "198.51.100.20", 40000)   # behind a NAT: not the Contact's port
    Phone(sip, hop=source).register()
    inv = invite("sip:alice@example.org")
    sip.send(inv)
    out = sip.sent()
    assert codes(out) == [100]
    fwd, hop = [(m, h) for m, h in out if isinstance(m, Request)][0]
    assert (hop.host, hop.port) == ("198.51.100.20", 40000)
    assert fwd.uri == "sip:alice@198.51.100.20:5070"
    assert fwd.get("record-route") is None      # network to network: not in the dialog
    sip.send(answer(fwd, 200, contact="<sip:alice@198.51.100.20:5070>"), source)
    ok = [m for m, _ in sip.sent() if isinstance(m, Response)]
    assert [m.code for m in ok] == [200]


def test_an_invite_forks_to_tunnel_sessions_and_bindings(sip):
    sip.world.user("alice")
    alice = Tunnel(sip.world, "alice", user=sip.world.login("alice"))
    Phone(sip).register()
    sip.send(invite("sip:alice@example.org"))
    out = sip.sent()
    assert [m.uri for m, _ in out if isinstance(m, Request)] == ["sip:alice@198.51.100.20:5070"]
    assert len(alice.frames("sipreq")) == 1    # the tunnel session's frame
    # the registration's source session is never a branch: one per other session
    branches = sip.proxy.client_txns.values()
    assert sorted(b.hop.transport for b in branches) == ["TUNNEL", "TUNNEL", "UDP"]


def test_a_tcp_binding_whose_connection_closed_is_not_called(sip):
    sip.world.user("alice")
    sip.world.service.logout(sip.world.hub.sessions_of("alice")[0])

    class Conn:
        connected_ = True
    conn = Conn()
    Phone(sip, hop=Hop(TCP, "198.51.100.20", 40001, conn=conn)).register()
    conn.connected_ = False
    sip.send(invite("sip:alice@example.org"))
    assert codes(sip.sent()) == [480]


def test_the_tunnel_relays_a_register_checked_against_the_server(sip):
    bob = sip.tunnel("bob")                    # the bridge's session
    req = request("REGISTER", "sip:127.0.0.1:5070", from_uri="sip:bob@127.0.0.1:5070",
                  to_uri="sip:bob@127.0.0.1:5070", contact="<sip:bob@127.0.0.1:5080>",
                  via_host="127.0.0.1", via_port=5080)
    bob.ok(req)
    first = bob.one("sipresp").message
    assert first.code == 401
    bob.ok(signed(req, first, password="wrong one"))
    assert bob.one("sipresp").message.code == 401
    bob.ok(signed(req, first, nc=2))
    ok = bob.one("sipresp").message
    assert ok.code == 200 and contacts_of(ok) == ["<sip:bob@127.0.0.1:5080>;expires=3600"]
    # no presence source: the bridge's session holds bob online
    assert all(s.scope is None for s in sip.world.hub.sessions_of("bob"))
    # another user's address of record through bob's session: 403
    other = request("REGISTER", "sip:127.0.0.1:5070", from_uri="sip:carol@127.0.0.1",
                    to_uri="sip:carol@127.0.0.1")
    bob.ok(other)
    assert bob.one("sipresp").message.code == 403
    # the binding ends with the session
    sip.world.service.logout(bob.user.session_obj if hasattr(bob.user, "session_obj")
                             else sip.world.hub.session(bob.user.session))
    assert sip.proxy.registrar.network_bindings("bob") == []


def test_register_never_logs_the_credentials(sip, caplog):
    from twisted.logger import globalLogPublisher
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        sip.world.user("alice")
        Phone(sip).register()
        Phone(sip).register(expect=401, password="oops")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    from twisted.logger import formatEvent
    text = " ".join(formatEvent(e) for e in seen)
    ha1 = result_of(sip.world.store.sip_ha1("alice", "example.org", "MD5"))
    assert ha1 not in text and PASSWORD not in text and "response=" not in text


def test_a_nonce_is_good_only_from_the_address_it_was_sent_to(sip):
    """A registration from a spoofed UDP source (a nonce fetched at the
    attacker's own address, their own password) would make the proxy fork
    every INVITE for them to the victim: the nonce is bound to the address
    it was sent to, so that one is challenged again (stale)."""
    sip.world.user("alice")
    phone = Phone(sip)
    req = register()
    first = phone.send(req)
    victim = Phone(sip, hop=Hop(UDP, "192.0.2.66", 5060))
    out = victim.send(signed(req, first))
    assert out.code == 401
    assert all(params_of(v).get("stale") == "true" for v in out.get_all("www-authenticate"))
    assert sip.proxy.stats()["bindings"] == 0
    assert phone.send(signed(req, first, nc=2)).code == 200


def test_a_forged_source_cannot_spend_that_addresses_login_allowance(sip):
    """Wrong digests with a nonce that was not sent to the source (a forged
    UDP source never sees one) are challenged again, not counted: else
    anyone could lock a victim's address out of logging in, and the answer
    (stale or not) would tell a right password from a wrong one."""
    sip.world.user("alice")
    req = register()
    first = Phone(sip).send(req)
    victim = Phone(sip, hop=Hop(UDP, "192.0.2.66", 5060))
    for n in range(1, 16):
        out = victim.send(signed(req, first, password="guess", nc=n))
        assert out.code == 401
        assert all(params_of(v).get("stale") == "true"
                   for v in out.get_all("www-authenticate"))
    victim.register()


def test_guessing_from_many_addresses_spends_the_accounts_allowance(sip):
    """As for a password login: wrong digests for one account from many
    addresses (a botnet, or IPv6 /64s) spend the account's allowance, then
    even the right password from a new address is 403; an address the
    user registered from before keeps its own allowance."""
    sip.world.user("alice")
    own = Phone(sip)
    own.register()   # alice's own phone, from PHONE
    for n in range(25):
        guesser = Phone(sip, hop=Hop(UDP, f"203.0.113.{n + 1}", 5060))
        req = register(cseq=10 + n)
        first = guesser.send(req)
        guesser.send(signed(req, first, password=f"guess{n}"))
    stranger = Phone(sip, hop=Hop(UDP, "198.18.0.1", 5060))
    req = register(cseq=99)
    out = stranger.send(signed(req, stranger.send(req)))
    assert out.code == 403 and "too many" in out.reason
    own.register()
