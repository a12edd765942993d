"""Invitations by e-mail, in memory (docs/invites.md): the message builder,
the tokens and their expiry on a Clock, the outbox's retries with a fake
smarthost, twisted.mail's ESMTP client against a scripted SMTP server, the
badge, and the routes through StubTreq."""

from __future__ import annotations

import email
import email.policy
import struct
import zlib
from typing import Any, List

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from helpers import World, result_of
from presence.errors import BadRequest, Forbidden, TooMany
from presence.invite import badge
from presence.invite.mail import Links, build_invitation, check_address, check_note
from presence.invite.outbox import Outbox, backoff, endpoint_host, smtp_sender
from presence.invite.service import Invitations
from presence.invite.store import InviteStore
from presence.invite.web import InviteWeb
from presence.pages import Pages
from presence.store.sqlite import run_now

LINKS = Links(page="http://p.test/i/TOKEN", badge_svg="http://p.test/badge/TOKEN.svg",
              badge_png="http://p.test/badge/TOKEN.png",
              unsubscribe="http://p.test/i/u/UNSUB")


def parse(data: bytes) -> Any:
    return email.message_from_bytes(data, policy=email.policy.default)


# -- the message -------------------------------------------------------------------

def test_the_mail_has_a_text_and_an_html_part_naming_the_inviter_and_the_note():
    msg = build_invitation("alice", "bob@example.org", "presence@p.test",
                           'Come & see <b>this</b> "now"', LINKS, "available", "at work",
                           "p.test", now=1_000_000.0)
    back = parse(msg.as_bytes())
    assert back.get_content_type() == "multipart/alternative"
    text = back.get_body(("plain",)).get_content()
    html = back.get_body(("html",)).get_content()
    for part in (text, html):
        assert "alice" in part
    assert 'Come & see <b>this</b> "now"' in text
    assert "Come &amp; see &lt;b&gt;this&lt;/b&gt; &quot;now&quot;" in html
    assert "<b>this</b>" not in html
    # the text part carries the link (for readers that show neither HTML nor images)
    assert LINKS.page in text and LINKS.unsubscribe in text
    assert "When this mail was sent, alice was online (at work)." in text
    assert f'src="{LINKS.badge_png}"' in html and f'href="{LINKS.page}"' in html
    assert back["List-Unsubscribe"] == f"<{LINKS.unsubscribe}>"
    assert back["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert back["To"] == "bob@example.org"
    assert back["From"].addresses[0].addr_spec == "presence@p.test"
    assert "alice" in back["Subject"]


@pytest.mark.parametrize("bad", [
    "bob@example.org\r\nBcc: eve@evil.test", "bob@example.org\nBcc: eve@evil.test",
    "bob@example.org\rX: y", "bob@example.org\x00", "bob@exa\tmple.org",
])
def test_a_header_injection_in_the_address_is_refused(bad):
    with pytest.raises(BadRequest, match="header injection"):
        check_address(bad)


@pytest.mark.parametrize("bad", [
    "", "bob", "bob@", "@example.org", "bob@localhost", "bob@example.123",
    "Bob <bob@example.org>", "bob@example.org, eve@evil.test", "bob@ex ample.org",
    "bób@example.org", "a" * 65 + "@example.org", "bob@-example.org", 42, None,
])
def test_what_is_not_one_address_is_refused(bad):
    with pytest.raises(BadRequest):
        check_address(bad)


def test_an_address_keeps_its_local_part_and_lower_cases_its_domain():
    assert check_address(" Bob.Smith+chat@Example.ORG ") == "Bob.Smith+chat@example.org"


@pytest.mark.parametrize("bad", ["hi\r\nBcc: eve@evil.test", "line one\nline two", "a\rb",
                                 "x\u2028y", "nul\x00", "x" * 501])
def test_a_note_with_a_line_break_or_too_long_is_refused(bad):
    with pytest.raises(BadRequest):
        check_note(bad)


def test_a_hostile_note_cannot_add_a_header():
    # what passed the checks cannot reach the headers: the note is body text only
    note = check_note("Bcc: eve@evil.test")
    back = parse(build_invitation("alice", "bob@example.org", "presence@p.test", note,
                                  LINKS).as_bytes())
    assert back["Bcc"] is None
    assert back.get_all("To") == ["bob@example.org"]


# -- the world: a service, the invitation store, the outbox --------------------------------

class FakeSmarthost:
    """``send`` for the outbox: answers as told (down, refusing, up)."""

    def __init__(self) -> None:
        self.up = True
        self.received: List[tuple] = []
        self.attempts = 0
        self.pending: List[defer.Deferred] = []
        self.hold = False

    def send(self, to: str, data: bytes) -> defer.Deferred:
        self.attempts += 1
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.pending.append(d)
            d.addCallback(lambda _: self.received.append((to, data)))
            return d
        if not self.up:
            return defer.fail(ConnectionRefusedError("smarthost down"))
        self.received.append((to, data))
        return defer.succeed(None)


class InviteWorld(World):
    def __init__(self, tmp_path, smarthost: Any = None, ttl: float = 3600.0,
                 per_day: int = 50) -> None:
        super().__init__()
        self.invites = InviteStore(":memory:", runner=run_now)
        self.smarthost = smarthost
        self.outbox = Outbox(str(tmp_path / "outbox"), self.invites, self.clock,
                             smarthost.send if smarthost else None)
        result_of(self.outbox.start())
        self.invitations = Invitations(self.service, self.invites, self.outbox,
                                       "presence@p.test", ttl=ttl, per_day=per_day,
                                       site="p.test", base="http://p.test")
        self.pages = Pages(self.service, "p.test")
        self.pages.invitations = self.invitations
        InviteWeb(self.invitations, self.pages).mount(self.site.resource)
        self.site.resource.default = self.pages.resource()
        self.folder = tmp_path / "outbox"

    def token(self, ident: int) -> str:
        data = self.mail(ident)
        text = parse(data).get_body(("plain",)).get_content()
        return text.split("http://p.test/i/")[1].split()[0]

    def mail(self, ident: int) -> bytes:
        for where in ("", "sent", "failed"):
            path = self.folder / where / f"{ident}.eml"
            if path.exists():
                return path.read_bytes()
        raise AssertionError(f"no mail {ident}")


def test_without_a_smarthost_the_mail_is_written_to_the_outbox(tmp_path):
    w = InviteWorld(tmp_path)
    alice = w.user("alice")
    r = alice.post("/api/invite", email="bob@example.org", note="hello")
    assert r.status == 201, r.body
    assert r.json["queued"] is False and r.json["status"] == "written"
    back = parse((tmp_path / "outbox" / f"{r.json['id']}.eml").read_bytes())
    assert back["To"] == "bob@example.org"
    listed = alice.get("/api/invites").json["invites"]
    assert [(i["email"], i["note"], i["mail"]) for i in listed] == [
        ("bob@example.org", "hello", "written")]


def test_bad_input_gets_400_and_nothing_is_kept(tmp_path):
    w = InviteWorld(tmp_path, FakeSmarthost())
    alice = w.user("alice")
    for data in ({"email": "bob@example.org\r\nBcc: eve@evil.test"},
                 {"email": "bob@example.org", "note": "hi\r\nBcc: eve@evil.test"},
                 {"email": "not an address"}, {}):
        r = alice.post("/api/invite", **data)
        assert r.status == 400, (data, r.body)
        assert r.error
    assert w.smarthost.attempts == 0
    assert alice.get("/api/invites").json["invites"] == []
    assert not list((tmp_path / "outbox").glob("*.eml"))


def test_guests_and_strangers_cannot_invite(tmp_path):
    w = InviteWorld(tmp_path)
    guest = w.guest()
    assert guest.post("/api/invite", email="bob@example.org").status == 403
    assert w.browser().post("/api/invite", email="bob@example.org").status == 403


def test_invitations_per_user_and_day_are_limited(tmp_path):
    w = InviteWorld(tmp_path, per_day=3)
    alice, carol = w.user("alice"), w.user("carol")
    for n in range(3):
        assert alice.post("/api/invite", email=f"b{n}@example.org").status == 201
    r = alice.post("/api/invite", email="b9@example.org")
    assert r.status == 429 and int(r.header("retry-after")) > 0
    assert carol.post("/api/invite", email="b9@example.org").status == 201
    w.advance(86400 / 3 + 1)
    assert alice.post("/api/invite", email="b9@example.org").status == 201


def test_the_smarthost_down_queues_the_mail_and_it_arrives_once_when_it_is_up(tmp_path):
    host = FakeSmarthost()
    host.up = False
    w = InviteWorld(tmp_path, host)
    alice = w.user("alice")
    r = alice.post("/api/invite", email="bob@example.org")
    assert r.status == 202 and r.json["queued"] is True
    ident = r.json["id"]
    assert (tmp_path / "outbox" / f"{ident}.eml").exists()
    assert host.attempts == 1
    w.advance(29)
    assert host.attempts == 1          # backoff: the first retry after 30 s
    w.advance(1)
    assert host.attempts == 2
    w.advance(59)
    assert host.attempts == 2          # then after 60 s
    host.up = True
    w.advance(1)
    assert host.attempts == 3 and len(host.received) == 1
    assert host.received[0][0] == "bob@example.org"
    assert not (tmp_path / "outbox" / f"{ident}.eml").exists()
    assert (tmp_path / "outbox" / "sent" / f"{ident}.eml").exists()
    w.advance(7200)
    assert host.attempts == 3 and len(host.received) == 1
    assert alice.get("/api/invites").json["invites"][0]["mail"] == "sent"


def test_a_slow_smarthost_is_answered_202_and_the_mail_is_sent_once(tmp_path):
    host = FakeSmarthost()
    host.hold = True
    w = InviteWorld(tmp_path, host)
    alice = w.user("alice")
    d = alice.browser.stub.request("POST", "http://presence.test/api/invite",
                                   data={**alice.creds, "email": "bob@example.org"})
    alice.browser.flush()
    w.advance(10)                       # the answer does not wait for the smarthost
    alice.browser.flush()
    assert result_of(d).code == 202
    # the attempt in flight is not repeated, by the timer or a restart of the outbox
    result_of(w.outbox.attempt(1))
    assert host.attempts == 1
    host.pending.pop().callback(None)
    w.advance(3600)
    assert host.attempts == 1 and len(host.received) == 1


def test_a_restarted_outbox_goes_on_with_what_was_queued(tmp_path):
    host = FakeSmarthost()
    host.up = False
    w = InviteWorld(tmp_path, host)
    alice = w.user("alice")
    assert alice.post("/api/invite", email="bob@example.org").status == 202
    w.outbox.stop()
    host.up = True
    again = Outbox(str(tmp_path / "outbox"), w.invites, w.clock, host.send)
    result_of(again.start())
    w.advance(30)
    assert len(host.received) == 1
    w.advance(3600)
    assert len(host.received) == 1


def test_a_mail_no_smarthost_took_before_the_invitation_expired_is_given_up(tmp_path):
    host = FakeSmarthost()
    host.up = False
    w = InviteWorld(tmp_path, host, ttl=600)
    alice = w.user("alice")
    ident = alice.post("/api/invite", email="bob@example.org").json["id"]
    w.advance(4000)
    assert (tmp_path / "outbox" / "failed" / f"{ident}.eml").exists()
    assert alice.get("/api/invites").json["invites"][0]["mail"] == "failed"
    attempts = host.attempts
    w.advance(10000)
    assert host.attempts == attempts


def test_a_mail_the_smarthost_refuses_for_good_is_given_up_after_five_tries(tmp_path):
    from twisted.mail.smtp import SMTPDeliveryError

    class Refusing(FakeSmarthost):
        def send(self, to: str, data: bytes) -> defer.Deferred:
            self.attempts += 1
            return defer.fail(SMTPDeliveryError(550, b"no such mailbox"))
    host = Refusing()
    w = InviteWorld(tmp_path, host, ttl=30 * 86400)
    alice = w.user("alice")
    ident = alice.post("/api/invite", email="nobody@example.org").json["id"]
    for _ in range(100):
        w.advance(60)
    assert host.attempts == 5
    assert (tmp_path / "outbox" / "failed" / f"{ident}.eml").exists()
    assert alice.get("/api/invites").json["invites"][0]["mail"] == "failed"
    w.advance(86400)
    assert host.attempts == 5


def test_backoff_doubles_up_to_an_hour():
    assert [backoff(n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert backoff(50) == 3600


# -- tokens, badge, link ------------------------------------------------------------

def test_tokens_are_long_random_and_expire(tmp_path):
    w = InviteWorld(tmp_path, ttl=3600)
    alice = w.user("alice")
    ident = alice.post("/api/invite", email="bob@example.org").json["id"]
    token = w.token(ident)
    assert len(token) >= 32          # 24 random bytes: 192 bits
    other = w.token(alice.post("/api/invite", email="carol@example.org").json["id"])
    assert other != token
    b = w.browser()
    assert b.get(f"/badge/{token}.svg").status == 200
    w.advance(3599)
    assert b.get(f"/badge/{token}.svg").status == 200
    w.advance(1)
    r = b.get(f"/badge/{token}.svg")
    assert r.status == 404 and b"alice" not in r.body
    page = b.get(f"/i/{token}")
    assert page.status == 404 and b"alice" not in page.body
    assert alice.get("/api/invites").json["invites"][1]["expired"] is True


class FakeHub:
    """The seam ``state_of`` as the presence states make it: away with a text."""

    def __init__(self, hub: Any, state: Any) -> None:
        self._hub = hub
        self._state = state

    def state_of(self, name: str) -> Any:
        return self._state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hub, name)


def test_the_badge_shows_the_state_now_without_caching_and_counts_opens(tmp_path):
    w = InviteWorld(tmp_path)
    alice = w.user("alice")
    token = w.token(alice.post("/api/invite", email="bob@example.org").json["id"])
    b = w.browser()
    r = b.get(f"/badge/{token}.svg")
    assert r.header("content-type") == "image/svg+xml"
    assert "no-store" in r.header("cache-control")
    assert b"alice" in r.body and b"offline" in r.body
    hb = alice.heartbeat()
    assert b"online" in b.get(f"/badge/{token}.svg").body
    png = b.get(f"/badge/{token}.png")
    assert png.header("content-type") == "image/png" and png.body[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no-store" in png.header("cache-control")
    # the states' half of the seam: whatever state_of answers is shown
    w.invitations.hub = FakeHub(w.hub, ("away", "back at <3> & later"))
    away = b.get(f"/badge/{token}.svg").body
    assert b"away" in away and b"back at &lt;3&gt; &amp; later" in away
    assert b"<3>" not in away
    assert alice.get("/api/invites").json["invites"][0]["opens"] == 4
    hb.response  # held until the end of the test


def _pixels(data: bytes) -> bytes:
    """The raw RGB rows of one of our PNGs (an independent reading)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + chunk) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            size = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert size == (badge.WIDTH, badge.HEIGHT)
    assert len(raw) == badge.HEIGHT * (1 + 3 * badge.WIDTH)
    return raw


def test_the_png_badge_is_a_valid_png_whose_dot_has_the_state_colour():
    for state, colour in badge.COLOURS.items():
        raw = _pixels(badge.png("alice", state, "ünïcode text"))
        row = raw[20 * (1 + 3 * badge.WIDTH):21 * (1 + 3 * badge.WIDTH)]
        assert tuple(row[1 + 3 * 18:1 + 3 * 18 + 3]) == colour
    assert badge.png("alice", "available") != badge.png("alice", "offline")


def test_the_link_opens_a_guest_chat_and_tells_the_inviter(tmp_path):
    w = InviteWorld(tmp_path)
    alice = w.user("alice")
    token = w.token(alice.post("/api/invite", email="bob@example.org").json["id"])
    hb = alice.heartbeat()
    visitor = w.browser()
    page = visitor.get(f"/i/{token}")
    assert page.status == 200
    assert page.header("referrer-policy") == "no-referrer"
    assert b'data-user="alice"' in page.body and b"invite-register" in page.body
    guest = page.body.split(b'data-me="')[1].split(b'"')[0].decode()
    assert guest.startswith("guest.")
    assert f"msg initChat {guest}" in hb.heads()
    # and they chat both ways as with any guest
    sid = w.hub.sessions_of(guest)[0].id
    assert visitor.post("/chat", me=guest, id=sid, to="alice", msg="hi alice").status == 202
    assert any(h == f"msg chat {guest}" or h.startswith(f"msg chat {guest} ")
               for h in hb.heads())
    assert alice.post("/chat", to=guest, msg="hello guest").status == 202
    listed = alice.get("/api/invites").json["invites"][0]
    assert listed["clicked"] is not None and listed["accepted"] is None


def test_registering_from_the_link_puts_each_in_the_others_address_book(tmp_path):
    w = InviteWorld(tmp_path)
    alice = w.user("alice")
    token = w.token(alice.post("/api/invite", email="bob@example.org").json["id"])
    visitor = w.browser()
    assert visitor.get(f"/i/{token}").status == 200
    r = visitor.post(f"/i/{token}/register", username="Bob", password="secret-1",
                     password2="secret-1")
    # (StubTreq follows the 303 to the new user's home page)
    assert r.status == 200 and b"Welcome, bob" in r.body, r.body[:300]
    assert b"this is your first visit" in r.body
    assert w.hub.knows("bob")
    assert result_of(w.store.contacts("bob")) == ["alice"]
    assert result_of(w.store.contacts("alice")) == ["bob"]
    listed = alice.get("/api/invites").json["invites"][0]
    assert listed["accepted_by"] == "bob"
    again = w.browser()
    r = again.post(f"/i/{token}/register", username="mallory", password="secret-1",
                   password2="secret-1")
    assert r.status == 409 and b"used to register already" in r.body
    assert not w.hub.knows("mallory")


def test_unsubscribing_refuses_further_invitations_to_that_address(tmp_path):
    w = InviteWorld(tmp_path)
    alice = w.user("alice")
    ident = alice.post("/api/invite", email="bob@example.org").json["id"]
    back = parse(w.mail(ident))
    url = back["List-Unsubscribe"].strip("<>")
    path = url.replace("http://p.test", "")
    b = w.browser()
    form = b.get(path)
    assert form.status == 200 and b"Don't invite me again" in form.body
    assert alice.post("/api/invite", email="bob@example.org").status == 201  # a GET did nothing
    # RFC 8058: the mail provider's one-click POST
    done = b.request("POST", path, body=b"List-Unsubscribe=One-Click",
                     headers={"Content-Type": ["application/x-www-form-urlencoded"]})
    assert done.status == 200
    r = alice.post("/api/invite", email="Bob@Example.org".replace("Bob", "bob"))
    assert r.status == 403 and "not to be invited" in r.error
    assert w.browser().get("/i/u/" + "x" * 32).status == 404


def test_the_service_refuses_in_its_own_words():
    # (the rules behind the routes, without HTTP)
    w = World()
    store = InviteStore(":memory:", runner=run_now)
    inv = Invitations(w.service, store, Outbox("/nonexistent", store, w.clock, None),
                      "presence@p.test", per_day=1)
    guest = w.service.guest("10.0.0.1")
    with pytest.raises(Forbidden):
        result_of(inv.invite(guest, "bob@example.org"))
    with pytest.raises(TooMany):
        inv.per_user.take("alice", w.clock.seconds())
        alice = result_of(w.service.register("alice", "secret-1"))
        session = result_of(w.service.login(alice, "secret-1"))
        result_of(inv.invite(session, "bob@example.org"))


# -- twisted.mail's ESMTP client against a scripted server ------------------------------

def _smtp_conversation(reactor: MemoryReactorClock, replies: dict) -> tuple:
    """Accept the client's connection and answer each command by
    ``replies``; returns (transport, lines the client sent)."""
    host, port, factory = reactor.tcpClients[-1][:3]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    sent: List[bytes] = []
    proto.dataReceived(b"220 fake.test ESMTP\r\n")
    for _ in range(40):
        while transport.producer is not None:   # the mail's body, pulled as TCP would
            transport.producer.resumeProducing()
        out = transport.value()
        transport.clear()
        if not out:
            break
        for line in out.split(b"\r\n"):
            if not line:
                continue
            sent.append(line)
        last = sent[-1]
        word = last.split(b" ")[0].split(b":")[0].upper()
        if sent and sent[-1] == b".":
            word = b"."
        reply = replies.get(word)
        if reply is None:
            continue
        proto.dataReceived(reply)
    return transport, sent


def _send_through(replies: dict, data: bytes = b"Subject: hi\n\nhello\n",
                  endpoint: str = "tcp:host=127.0.0.1:port=2525", *auth: str) -> tuple:
    """One mail through twisted.mail's client to a server answering by
    ``replies``: (the result Deferred, the lines the client sent)."""
    reactor = MemoryReactorClock()
    send = smtp_sender(reactor, endpoint, "presence@p.test", *auth)
    d = send("bob@example.org", data)
    return d, _smtp_conversation(reactor, replies)[1]


def test_the_esmtp_client_hands_the_mail_over_and_reports_success():
    d, sent = _send_through({
        b"EHLO": b"250-fake.test\r\n250 8BITMIME\r\n", b"MAIL": b"250 ok\r\n",
        b"RCPT": b"250 ok\r\n", b"DATA": b"354 go on\r\n", b".": b"250 queued\r\n",
        b"QUIT": b"221 bye\r\n"}, b"Subject: hi\n\nhello\n.leading dot\n")
    assert result_of(d) is not None
    assert b"MAIL FROM:<presence@p.test>" in sent and b"RCPT TO:<bob@example.org>" in sent
    assert b"..leading dot" in sent           # dot-stuffed by twisted.mail


def test_the_esmtp_client_reports_a_refusal_and_a_refused_connection():
    reactor = MemoryReactorClock()
    send = smtp_sender(reactor, "tcp:host=127.0.0.1:port=2525", "presence@p.test")
    d = send("bob@example.org", b"Subject: hi\n\nhello\n")
    _smtp_conversation(reactor, {b"EHLO": b"250 fake.test\r\n",
                                 b"MAIL": b"451 try again later\r\n",
                                 b"QUIT": b"221 bye\r\n", b"RSET": b"250 ok\r\n"})
    failures: List[Failure] = []
    d.addErrback(failures.append)
    assert failures and getattr(failures[0].value, "code", None) == 451
    d2 = send("bob@example.org", b"Subject: hi\n\nhello\n")
    connector = reactor.tcpClients[-1][2]
    connector.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    failures2: List[Failure] = []
    d2.addErrback(failures2.append)
    assert failures2


def test_the_host_of_an_endpoint_names_the_certificate_to_check():
    assert endpoint_host("tcp:host=smtp.example.org:port=587") == "smtp.example.org"
    assert endpoint_host("tcp:smtp.example.org:25") == "smtp.example.org"
    assert endpoint_host("tls:host=mx.example.org:port=465") == "mx.example.org"
    assert endpoint_host("unix:/run/smtp.sock") is None
    assert endpoint_host("unix:path=/run/smtp.sock") is None


def test_with_a_user_the_client_refuses_a_smarthost_without_tls_and_sends_no_password():
    d, sent = _send_through({
        b"EHLO": b"250-fake.test\r\n250 AUTH PLAIN LOGIN\r\n", b"QUIT": b"221 bye\r\n"},
        b"Subject: hi\n\nhello\n", "tcp:host=127.0.0.1:port=2525", "presence",
        "very-secret-password")
    failures: List[Failure] = []
    d.addErrback(failures.append)
    assert failures, "sent over a connection without TLS"
    assert not any(line.startswith(b"AUTH") for line in sent)
    assert not any(b"very-secret-password" in line for line in sent)
    assert not any(line.startswith(b"MAIL") for line in sent)


# -- options ----------------------------------------------------------------------------

def _options(*args: str) -> Any:
    from presence import tap
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_the_options_and_their_defaults(tmp_path):
    o = _options()
    assert o["smtp"] is None and o["invites-per-day"] == 50
    assert o["invite-ttl"] == 30 * 86400 and o["smtp-retry"] == 30
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    o = _options("--smtp", "tls:host=smtp.example.org:port=465", "--smtp-user", "me",
                 "--smtp-password-file", str(secret), "--invite-ttl", "12h",
                 "--smtp-from", "Invites@Example.ORG", "--invite-base",
                 "https://chat.example.org/")
    assert o["invite-ttl"] == 12 * 3600 and o["smtp-from"] == "Invites@example.org"
    assert o["invite-base"] == "https://chat.example.org"


@pytest.mark.parametrize("args", [
    ("--smtp", "nonsense:x"), ("--smtp", "ssl:host=smtp.example.org:port=465"),
    ("--smtp-from", "not an address"), ("--smtp-from", "a@b.org\r\nBcc: x@y.org"),
    ("--invite-ttl", "5s"), ("--invite-ttl", "forever"), ("--invites-per-day", "0"),
    ("--smtp", "tcp:host=h.example:port=25", "--smtp-user", "me"),
    ("--smtp-user", "me", "--smtp-password-file", "/nonexistent/pw"),
    ("--invite-base", "ftp://x.example"), ("--smtp-retry", "0"),
])
def test_bad_options_are_usage_errors(args):
    from twisted.python import usage
    with pytest.raises(usage.UsageError):
        _options(*args)


def test_the_access_log_masks_the_tokens_of_invitations():
    from presence.web.http import mask
    import presence.invite.web  # noqa: F401  (adds its paths)
    assert mask(b"/i/SECRETTOKEN1234567890") == b"/i/***"
    assert mask(b"/i/SECRETTOKEN1234567890/register") == b"/i/***/register"
    assert b"SECRET" not in mask(b"/i/u/SECRETTOKEN1234567890")
    assert mask(b"/badge/SECRETTOKEN1234567890.png") == b"/badge/***"
    assert b"SECRET" not in mask(b"http://p.test/i/SECRETTOKEN1234567890")


class SlowRunner:
    """A store runner whose calls wait until :meth:`pump` (a worker thread
    that has not got to them yet)."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def __call__(self, fn: Any, *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((fn, args, d))
        return d

    def pump(self) -> None:
        while self.calls:
            fn, args, d = self.calls.pop(0)
            try:
                d.callback(fn(*args))
            except Exception:
                d.errback()


def test_two_attempts_at_once_hand_the_mail_over_once(tmp_path):
    # a timer and a first attempt meeting while the store is still busy
    runner = SlowRunner()
    store = InviteStore(":memory:", runner=runner)
    clock = MemoryReactorClock()
    host = FakeSmarthost()
    outbox = Outbox(str(tmp_path / "outbox"), store, clock, host.send)
    added = store.add("t" * 32, "u" * 32, "alice", "bob@example.org", "", 0.0, 3600.0,
                      "queued")
    runner.pump()
    ident = result_of(added)
    put = outbox.put(ident, b"Subject: hi\n\nhello\n")
    runner.pump()
    result_of(put)
    first = defer.ensureDeferred(outbox.attempt(ident))
    second = defer.ensureDeferred(outbox.attempt(ident))
    for _ in range(10):
        runner.pump()
    assert result_of(first) is True and result_of(second) is False
    assert host.attempts == 1 and len(host.received) == 1
    third = defer.ensureDeferred(outbox.attempt(ident))
    runner.pump()
    assert result_of(third) is True and host.attempts == 1


def test_the_client_asks_for_starttls_when_the_smarthost_offers_it():
    d, sent = _send_through({
        b"EHLO": b"250-fake.test\r\n250 STARTTLS\r\n", b"STARTTLS": b"454 not now\r\n",
        b"QUIT": b"221 bye\r\n"}, endpoint="tcp:host=smtp.example.org:port=25")
    d.addErrback(lambda f: None)
    assert b"STARTTLS" in sent
    assert not any(line.startswith(b"MAIL") for line in sent[:sent.index(b"STARTTLS")])
