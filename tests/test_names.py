"""Unit tests of the name service (spec section 10, presence/names/): the zone
on twisted.names objects and dyndns2 updates, on a Clock, with no sockets.

The zone is asked through the twisted.names server factory with a
``dns.Message`` and a fake protocol that keeps what would be sent, so the
answers checked are whole DNS responses (rcode, AA bit, sections), as a
resolver would get them.
"""

from __future__ import annotations

import base64
from typing import Any, List, Optional

import pytest
from twisted.internet import defer
from twisted.names import dns, error

from presence.names.dyndns import Sources, UpdateResource
from presence.names.zone import NameCache, PresenceZone, ZoneServerFactory

from helpers import PASSWORD, World, result_of

DOMAIN = "example.org"
PAGE = ["192.0.2.80", "2001:db8::80"]


class FakeProtocol:
    def __init__(self) -> None:
        self.sent: List[dns.Message] = []

    def writeMessage(self, message: dns.Message, address: Any = None) -> None:
        self.sent.append(message)


class Names:
    """A World (server in memory) with the zone, its DNS factory and dyndns2."""

    def __init__(self, alive: float = 300.0, **kw: Any) -> None:
        self.w = World(linger=0, **kw)
        service = self.w.service
        self.lookups: List[str] = []

        def lookup(label: str) -> defer.Deferred:
            self.lookups.append(label)
            return defer.ensureDeferred(service.resolve(label))

        self.cache = NameCache(self.w.clock, lookup)
        self.zone = PresenceZone(DOMAIN, self.w.hub, self.cache, PAGE, ttl=60)
        self.factory = ZoneServerFactory(self.zone, self.w.clock, source_rate=50)
        self.sources = Sources(service, self.w.clock, alive)
        self.resource = UpdateResource(service, self.sources, DOMAIN)
        self.w.site.resource.mount(b"nic", self.resource)
        self.proto = FakeProtocol()

    def ask(self, name: str, qtype: int = dns.A, cls: int = dns.IN,
            source: Optional[tuple] = ("198.51.100.1", 5353)) -> Optional[dns.Message]:
        message = dns.Message(id=7, recDes=1)
        message.queries = [dns.Query(name, qtype, cls)]
        before = len(self.proto.sent)
        self.factory.messageReceived(message, self.proto, source)
        return self.proto.sent[-1] if len(self.proto.sent) > before else None

    def update(self, query: str, user: str = "alice", password: str = PASSWORD,
               auth: bool = True):
        headers = {}
        if auth:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers = {"Authorization": "Basic " + token}
        return self.w.browser().request("GET", "/nic/update?" + query, headers=headers)


def addresses(reply: dns.Message) -> List[str]:
    return sorted(rr.payload.dottedQuad() if rr.type == dns.A else
                  __import__("socket").inet_ntop(__import__("socket").AF_INET6,
                                                 rr.payload.address)
                  for rr in reply.answers if rr.type in (dns.A, dns.AAAA))


def txt(reply: dns.Message) -> List[bytes]:
    return [b"".join(rr.payload.data) for rr in reply.answers if rr.type == dns.TXT]


@pytest.fixture
def n() -> Names:
    return Names()


# -- the zone ---------------------------------------------------------------------------

def test_an_online_user_answers_their_heartbeat_address_and_the_page_when_offline(n):
    alice = n.w.user("alice")
    reply = n.ask("alice.example.org")
    assert reply.rCode == dns.OK and reply.auth and not reply.recAv
    # logged in but no heartbeat held yet: offline, the page host
    assert addresses(reply) == ["192.0.2.80"]
    hb = alice.heartbeat()
    ip = n.w.hub.address_of("alice")
    assert ip and addresses(n.ask("alice.example.org")) == [ip]
    assert txt(n.ask("alice.example.org", dns.TXT)) == [b"presence=online"]
    assert n.ask("ALICE.Example.Org.").answers[0].ttl == 60
    hb.drop()
    n.w.sweep()
    # linger 0: offline the moment the heartbeat ends; the same query, no rebuild
    assert addresses(n.ask("alice.example.org")) == ["192.0.2.80"]
    assert addresses(n.ask("alice.example.org", dns.AAAA)) == ["2001:db8::80"]
    assert txt(n.ask("alice.example.org", dns.TXT)) == [b"presence=offline"]


def test_the_zone_follows_presence_without_reading_the_directory_again(n):
    alice = n.w.user("alice")
    n.ask("alice.example.org")
    looked = len(n.lookups)
    for _ in range(3):
        hb = alice.heartbeat()
        assert txt(n.ask("alice.example.org", dns.TXT)) == [b"presence=online"]
        hb.drop()
        n.w.sweep()
        assert txt(n.ask("alice.example.org", dns.TXT)) == [b"presence=offline"]
    assert len(n.lookups) == looked


def test_unknown_names_are_nxdomain_with_the_soa_and_other_types_nodata(n):
    n.w.user("alice")
    for name in ("nobody.example.org", "a.b.example.org", "-x-.example.org"):
        reply = n.ask(name)
        assert reply.rCode == dns.ENAME and reply.auth and not reply.answers, name
        assert [rr.type for rr in reply.authority] == [dns.SOA]
    nodata = n.ask("alice.example.org", dns.MX)
    assert nodata.rCode == dns.OK and nodata.auth and not nodata.answers
    assert [rr.type for rr in nodata.authority] == [dns.SOA]
    assert nodata.authority[0].payload.minimum == 60


def test_outside_the_zone_and_other_classes_are_refused_and_nothing_recurses(n):
    for name, cls in (("example.com", dns.IN), ("alice.example.org.evil", dns.IN),
                      ("notexample.org", dns.IN), ("alice.example.org", dns.CH)):
        reply = n.ask(name, cls=cls)
        assert reply.rCode == dns.EREFUSED and not reply.answers and not reply.auth, name
        assert not reply.recAv


def test_the_apex_has_soa_ns_with_glue_and_the_page_host(n):
    soa = n.ask("example.org", dns.SOA)
    assert soa.auth and soa.answers[0].payload.mname.name == b"ns.example.org"
    ns = n.ask("example.org", dns.NS)
    assert [rr.payload.name.name for rr in ns.answers] == [b"ns.example.org"]
    assert sorted(rr.type for rr in ns.additional) == [dns.A, dns.AAAA]
    assert addresses(n.ask("example.org")) == ["192.0.2.80"]
    assert addresses(n.ask("ns.example.org")) == ["192.0.2.80"]
    assert n.ask("ns.example.org", dns.TXT).answers == []


def test_aliases_that_are_labels_and_groups_have_names(n):
    alice = n.w.user("alice")
    assert alice.post("/api/aliases", alias="ally").status == 201
    assert alice.post("/api/aliases", alias="+491701234567").status == 201
    assert alice.post("/api/groups", name="climbers").status == 201
    hb = alice.heartbeat()
    ip = n.w.hub.address_of("alice")
    assert addresses(n.ask("ally.example.org")) == [ip]
    assert txt(n.ask("ally.example.org", dns.TXT)) == [b"presence=online"]
    assert addresses(n.ask("climbers.example.org")) == ["192.0.2.80"]
    assert n.ask("+491701234567.example.org").rCode == dns.ENAME
    hb.drop()


def test_a_new_name_answers_at_once_after_a_miss(n):
    n.w.service.name_observers.append(n.cache.forget)   # as NamesFrontEnd does
    assert n.ask("bob.example.org").rCode == dns.ENAME
    assert n.w.register("bob").status == 201
    assert n.ask("bob.example.org").rCode == dns.OK
    alice = n.w.user("alice")
    for name, call, field in (("ally", "/api/aliases", "alias"),
                              ("climbers", "/api/groups", "name")):
        assert n.ask(f"{name}.example.org").rCode == dns.ENAME
        assert alice.post(call, **{field: name}).status == 201
        assert n.ask(f"{name}.example.org").rCode == dns.OK


def test_without_the_observer_a_miss_is_kept_for_the_negative_time(n):
    assert n.ask("bob.example.org").rCode == dns.ENAME
    n.w.register("bob")
    assert n.ask("bob.example.org").rCode == dns.ENAME
    n.w.advance(30)
    assert n.ask("bob.example.org").rCode == dns.OK


def test_garbage_and_responses_are_counted_and_dropped_without_a_log_line(n):
    from twisted.logger import globalLogPublisher
    from presence.names.zone import QueryDatagrams

    class Transport:
        def __init__(self):
            self.sent = []

        def write(self, data, addr=None):
            self.sent.append(data)

    proto = QueryDatagrams(controller=n.factory)
    proto.transport = Transport()
    proto.startProtocol()
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        response = dns.Message(id=9, answer=1)
        response.queries = [dns.Query("x.example.org", dns.A)]
        for data in (b"\x00" * 3, b"\xff" * 40, response.toStr()):
            proto.datagramReceived(data, ("198.51.100.7", 53))
        assert n.factory.malformed == 3 and proto.transport.sent == []
        # no question (the count says five, none follows): REFUSED
        proto.datagramReceived(b"\x12\x34\x01\x00\x00\x05" + b"\x00" * 6, ("198.51.100.7", 53))
        refused = dns.Message()
        refused.fromStr(proto.transport.sent.pop())
        assert refused.rCode == dns.EREFUSED
        query = dns.Message(id=10)
        query.queries = [dns.Query("example.org", dns.SOA)]
        proto.datagramReceived(query.toStr(), ("198.51.100.7", 53))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events == []
    answer = dns.Message()
    answer.fromStr(proto.transport.sent[0])
    assert answer.id == 10 and answer.answers[0].type == dns.SOA


def test_a_source_past_its_rate_is_not_answered(n):
    answered = sum(n.ask("nobody.example.org") is not None for _ in range(150))
    assert answered == 100     # a burst of two seconds' worth, then silence
    assert n.factory.dropped == 50
    assert n.ask("nobody.example.org", source=("198.51.100.2", 1)) is not None
    n.w.advance(1)
    assert n.ask("nobody.example.org") is not None


def test_look_ups_of_unknown_labels_are_bounded_and_shared():
    waiting: List[defer.Deferred] = []
    clock = World().clock
    cache = NameCache(clock, lambda label: waiting.append(defer.Deferred()) or waiting[-1],
                      inflight=2)
    first, again = cache.fetch("a"), cache.fetch("a")
    cache.fetch("b")
    assert len(waiting) == 2
    over: List[Any] = []
    cache.fetch("c").addErrback(over.append)
    assert over and over[0].check(error.DNSServerError)
    waiting[0].callback(("user", "a"))
    assert result_of(first) == result_of(again) == ("user", "a")
    assert cache.get("a") == ("user", "a")


def test_the_zone_is_a_twisted_names_resolver(n):
    n.w.user("alice")
    answers, authority, additional = result_of(n.zone.lookupText("alice.example.org"))
    assert b"".join(answers[0].payload.data) == b"presence=offline"
    assert result_of(n.zone.lookupAddress("nobody.example.org").addErrback(
        lambda f: f.trap(error.AuthoritativeDomainError) and "nx")) == "nx"
    assert result_of(n.zone.lookupAddress("example.com").addErrback(
        lambda f: f.trap(error.DNSQueryRefusedError) and "refused")) == "refused"


# -- dyndns2 ------------------------------------------------------------------------------

def test_an_update_makes_the_user_online_at_its_address_and_watchers_hear_it(n):
    n.w.user("alice")
    bob = n.w.user("bob")
    assert bob.post("/api/contacts", contact="alice").status == 204
    hb = bob.heartbeat()
    reply = n.update("hostname=alice.example.org&myip=203.0.113.7")
    assert (reply.status, reply.body) == (200, b"good 203.0.113.7")
    assert reply.header("content-type").startswith("text/plain")
    assert "msg update online alice" in hb.heads()
    assert addresses(n.ask("alice.example.org")) == ["203.0.113.7"]
    again = n.update("hostname=alice.example.org&myip=203.0.113.7")
    assert again.body == b"nochg 203.0.113.7"
    moved = n.update("hostname=alice.example.org&myip=2001:db8::7")
    assert moved.body == b"good 2001:db8::7"
    assert addresses(n.ask("alice.example.org", dns.AAAA)) == ["2001:db8::7"]
    assert n.ask("alice.example.org").answers == []       # NODATA for A now
    assert hb.heads().count("msg update offline alice") == 0
    assert hb.heads().count("msg update address alice") == 1


def test_the_alive_loop_turns_the_name_offline_and_tells_watchers(n):
    n.w.user("alice")
    bob = n.w.user("bob")
    bob.post("/api/contacts", contact="alice")
    hb = bob.heartbeat()
    n.update("hostname=alice.example.org&myip=203.0.113.7")
    n.w.advance(299)
    assert n.update("hostname=alice.example.org&myip=203.0.113.7").body.startswith(b"nochg")
    n.w.advance(299)                                      # renewed: still online
    assert n.w.hub.is_online("alice")
    n.w.advance(2)
    assert not n.w.hub.is_online("alice")
    assert hb.heads()[-1] == "msg update offline alice"
    assert addresses(n.ask("alice.example.org")) == ["192.0.2.80"]
    # the next update makes her a source again
    assert n.update("hostname=alice.example.org&myip=203.0.113.7").body.startswith(b"good")


def test_a_heartbeat_keeps_the_user_online_after_the_name_expires(n):
    alice = n.w.user("alice")
    hb = alice.heartbeat()
    n.update("hostname=alice.example.org&myip=203.0.113.7")
    assert addresses(n.ask("alice.example.org")) == ["203.0.113.7"]
    n.w.advance(301)
    assert n.w.hub.is_online("alice")
    assert addresses(n.ask("alice.example.org")) == [n.w.hub.address_of("alice")]
    assert txt(n.ask("alice.example.org", dns.TXT)) == [b"presence=online"]
    hb.drop()


def test_credentials_tokens_and_the_return_codes(n):
    alice = n.w.user("alice")
    n.w.user("carol")
    alice.post("/api/aliases", alias="ally")
    none = n.update("hostname=alice.example.org", auth=False)
    assert none.status == 401 and none.body == b"badauth"
    assert none.header("www-authenticate").startswith("Basic")
    assert n.update("hostname=alice.example.org", password="wrong password").body == b"badauth"
    assert n.update("hostname=alice.example.org", user="nobody").body == b"badauth"
    assert n.update("").body == b"notfqdn"
    several = n.update("hostname=alice.example.org,ally.example.org,carol.example.org,"
                       "alice,alice.example.com&myip=203.0.113.9")
    assert several.body.decode().split("\n") == [
        "good 203.0.113.9", "good 203.0.113.9", "nohost", "notfqdn", "nohost"]
    assert n.update("hostname=" + ",".join(["alice.example.org"] * 21)).body == b"numhost"
    bad_ip = n.update("hostname=alice.example.org&myip=1.2.3")
    assert bad_ip.status == 400
    # myip absent: the request's address
    mine = n.update("hostname=alice.example.org")
    assert mine.body.startswith(b"good ") and mine.body.split()[1] == b"127.0.0.1"
    # an update token works as the password, and only the newest one
    made = alice.post("/api/update-token")
    assert made.status == 201
    token = made.json["token"]
    assert n.update("hostname=alice.example.org", password=token).body.startswith(b"nochg")
    newer = alice.post("/api/update-token").json["token"]
    assert n.update("hostname=alice.example.org", password=token).body == b"badauth"
    assert n.update("hostname=alice.example.org", password=newer).body.startswith(b"nochg")
    assert alice.post("/api/update-token/remove").status == 204
    assert n.update("hostname=alice.example.org", password=newer).body == b"badauth"


def test_an_account_the_operator_locked_updates_no_name(n):
    alice = n.w.user("alice")
    token = alice.post("/api/update-token").json["token"]
    n.w.service.store.set_locked("alice", True)
    n.w.clock.advance(0)
    for secret in (PASSWORD, token):
        assert n.update("hostname=alice.example.org", password=secret).body == b"abuse"
    assert not n.w.hub.is_online("alice")
    n.w.service.store.set_locked("alice", False)
    assert n.update("hostname=alice.example.org", password=token).body.startswith(b"good")


def test_wrong_passwords_and_too_many_updates_are_abuse(n):
    n.w.user("alice")
    words = [n.update("hostname=alice.example.org", password="nope nope").body
             for _ in range(12)]
    assert words[0] == b"badauth" and words[-1] == b"abuse"


def test_updating_too_often_is_abuse():
    n = Names()
    n.w.user("alice")
    words = [n.update(f"hostname=alice.example.org&myip=203.0.113.{i % 2 + 1}").body
             for i in range(22)]
    assert words[19].startswith(b"good") and words[20] == b"abuse"
    n.w.advance(40)
    assert n.update("hostname=alice.example.org&myip=203.0.113.5").body.startswith(b"good")


def test_chat_to_a_user_online_by_dyndns_only_goes_to_their_message_box(n):
    alice = n.w.user("alice")
    alice.post("/api/logout")
    bob = n.w.user("bob")
    n.update("hostname=alice.example.org&myip=203.0.113.7")
    reply = bob.post("/chat", to="alice", msg="are you home?")
    assert reply.status == 202
    again = n.w.login("alice")
    box = again.get("/api/messages").json["messages"]
    assert [m["text"] for m in box] == ["are you home?"]


def test_the_source_session_opens_nothing(n):
    n.w.user("alice")
    n.update("hostname=alice.example.org&myip=203.0.113.7")
    source = n.sources.by_user["alice"].session
    reply = n.w.browser().get("/api/messages", me="alice", id=source.id)
    assert reply.status == 403


def test_a_password_change_ends_the_name_until_the_next_update(n):
    alice = n.w.user("alice")
    n.update("hostname=alice.example.org&myip=203.0.113.7")
    reply = alice.post("/api/password", password=PASSWORD, new_password="battery staple")
    assert reply.status in (200, 204)
    assert "alice" not in n.sources.by_user
    assert n.update("hostname=alice.example.org&myip=203.0.113.7").body == b"badauth"
    assert n.update("hostname=alice.example.org&myip=203.0.113.7",
                    password="battery staple").body.startswith(b"good")


def test_a_directory_that_is_down_answers_911_and_logs_one_line(n, monkeypatch):
    from twisted.logger import globalLogPublisher
    from presence.store.interface import StoreUnavailable

    n.w.user("alice")

    def down(*args):
        return defer.fail(StoreUnavailable())
    monkeypatch.setattr(n.w.store, "memberships", down)
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reply = n.update("hostname=alice.example.org&myip=203.0.113.7")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (reply.status, reply.body) == (200, b"911")
    assert not any(e.get("log_failure") for e in events)
    assert not n.w.hub.is_online("alice")


def test_a_password_typed_as_the_username_is_not_logged(n):
    from twisted.logger import formatEvent, globalLogPublisher

    n.w.user("alice")
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert n.update("hostname=alice.example.org", user="My Secret Pw!",
                        password=PASSWORD).body == b"badauth"
        assert n.update("hostname=alice.example.org", user="alice",
                        password="also secret").body == b"badauth"
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(formatEvent(e) for e in events)
    assert "bad credentials for (not a username)" in text
    assert "bad credentials for alice" in text
    assert "My Secret Pw!" not in text and "also secret" not in text
