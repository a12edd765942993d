"""The WML 1.1 pages: every deck is valid against the WML 1.1 DTD shipped in
tests/wml/ (checked with lxml, nothing fetched), under 1,400 bytes, ASCII,
with all text escaped; long lists paginate; and the routes under /wml/
(login, one-time links, buddy list, chat, message box) behave, errors
included."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from helpers import BASE, logged_errors  # noqa: F401
from presence.core import frames
from presence.wireless import decks, wml
from presence.wireless.gateway import LINK_TTL
from presence.wireless.keys import proof_for
from test_wireless_support import Net

DTD = etree.DTD(str(Path(__file__).parent / "wml" / "wml_1.1.dtd"))
PARSER = etree.XMLParser(load_dtd=False, no_network=True, resolve_entities=False)


def valid(data: bytes) -> etree._Element:
    """Assert ``data`` is a good deck; return its root."""
    assert len(data) < 1400, f"deck of {len(data)} bytes"
    data.decode("ascii")
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE wml PUBLIC '
                           b'"-//WAPFORUM//DTD WML 1.1//EN"')
    root = etree.fromstring(data, PARSER)
    assert DTD.validate(root), DTD.error_log.filter_from_errors()
    return root


def texts(root) -> str:
    return "".join(root.itertext())


# -- the shipped DTD itself ----------------------------------------------------------

def test_the_dtd_rejects_what_wml_1_1_does_not_have():
    bad = [
        b"<wml><card><p><pre>x</pre></p></card></wml>",           # pre is WML 1.2
        b"<wml><card><p><a>no href</a></p></card></wml>",
        b"<wml><card><p><input/></p></card></wml>",                # name required
        b"<wml><card><p><go href='/'/></p></card></wml>",         # go only in tasks
        b"<wml><card><p><script/></p></card></wml>",
        b"<wml><card><p>x</p><do><go href='/'/></do></card></wml>",  # do needs type
        b"<wml><p>x</p></wml>",
    ]
    for doc in bad:
        assert not DTD.validate(etree.fromstring(doc, PARSER)), doc
    good = (b"<wml><card id='a' title='t'><onevent type='onenterforward'><refresh>"
            b"<setvar name='x' value=''/></refresh></onevent><do type='accept'><go href='/'"
            b" method='post'><postfield name='a' value='$(x)'/></go></do><p>x<br/>"
            b"<anchor>go<go href='/'/></anchor><input name='x' type='password'/></p></card></wml>")
    assert DTD.validate(etree.fromstring(good, PARSER)), DTD.error_log


# -- escaping ------------------------------------------------------------------------------

HOSTILE = 'a&b <c> "d" \'e\' $(x) $y $$ \x01 ünï 中 😀 ]]> <!-- -->'


def test_text_and_attr_escape_everything():
    assert wml.text("a&b<c>$x") == "a&amp;b&lt;c&gt;$$x"
    assert wml.text("ü中") == "&#252;&#20013;"
    assert wml.text("bell\x07") == "bell "
    assert wml.attr('"\'\n') == "&quot;&#39;&#10;"


def test_hostile_text_stays_text_everywhere():
    for data in (decks.login(HOSTILE), decks.home(HOSTILE, 1), decks.error(HOSTILE, HOSTILE),
                 decks.chat("bob", True, [HOSTILE] * 3, HOSTILE),
                 decks.buddies([(HOSTILE[:20], True)])[0],
                 decks.messages([{"id": 1, "from": "x", "text": HOSTILE, "read": False}])[0],
                 decks.message({"id": 1, "from": "x", "text": HOSTILE, "time": 0})):
        root = valid(data)
        shown = texts(root)
        assert "$(x)" not in data.decode() or "$$(x)" in data.decode()
        assert "<c>" not in data.decode()
        assert root.find(".//script") is None
        if "d" in shown and "ünï" in HOSTILE and "&#252;" in data.decode():
            assert "ünï" in shown  # character references come back as the text


def test_deck_bound_is_enforced():
    with pytest.raises(wml.DeckTooLarge):
        wml.deck(wml.card("c", "t", "x" * 1400))


# -- pagination ----------------------------------------------------------------------

def test_buddies_paginate_and_cover_every_row():
    rows = [(f"user{i:03d}-with-a-rather-long-name", i % 2 == 0) for i in range(200)]
    seen = []
    start = 0
    pages = 0
    while True:
        data, shown = decks.buddies(rows, start)
        root = valid(data)
        links = [a.get("href") for a in root.iter("a")]
        names = [parse_qs(urlsplit(h).query)["with"][0] for h in links if "/wml/chat" in h]
        assert len(names) == shown
        seen += names
        pages += 1
        more = [h for h in links if h.startswith("/wml/buddies")]
        if not more:
            break
        start = int(parse_qs(urlsplit(more[0]).query)["from"][0])
        assert pages < 100
    assert seen == [name for name, _ in rows]
    assert pages > 3


def test_message_list_and_long_message_parts():
    items = [{"id": i, "from": "alice", "text": "x" * 300, "read": i % 3 == 0}
             for i in range(60, 0, -1)]
    data, shown = decks.messages(items)
    valid(data)
    assert 0 < shown < 60
    text = ("word " * 2000).strip() + " " + "中" * 500
    pieces = decks.parts(text)
    assert " ".join(p for p in pieces).replace(" ", "") == text.replace(" ", "")
    for i in range(len(pieces)):
        valid(decks.message({"id": 5, "from": "alice", "text": text, "time": 0}, i))


def test_chat_keeps_the_newest_lines_that_fit():
    lines = [f"alice: line {i} " + "y" * 70 for i in range(40)]
    root = valid(decks.chat("alice", False, lines, "Sent."))
    shown = texts(root)
    assert "line 39" in shown and "line 0 " not in shown
    assert root.find(".//input").get("name") == "msg"
    go = root.find(".//do/go")
    assert go.get("method") == "post" and go.get("href") == "/wml/chat"
    assert {p.get("name"): p.get("value") for p in go.iter("postfield")} == {
        "to": "alice", "msg": "$(msg)"}


# -- the routes ------------------------------------------------------------------------

@pytest.fixture
def net(logged_errors):
    yield Net()
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


class Phone:
    """A WML client keeping the session cookie by hand."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.cookie = ""

    def go(self, method: str, path: str, headers=None, **fields):
        kw = {"headers": {"Cookie": [self.cookie], **(headers or {})}}
        if method == "POST":
            kw["data"] = fields
        elif fields:
            kw["params"] = fields
        r = self.net.call(method, BASE + path, **kw)
        for raw in r.headers.getRawHeaders("set-cookie") or []:
            pair = raw.split(";")[0]
            self.cookie = "" if pair.endswith("=") or "Max-Age=0" in raw else pair
        assert r.header("content-type") == "text/vnd.wap.wml", (r.status, r.body[:200])
        r.root = valid(r.body)
        r.shown = texts(r.root)
        return r


def register(net, name, wireless=None):
    extra = {"wireless": wireless} if wireless else {}
    assert net.world.register(name, **extra).status == 201


def test_home_without_a_session_is_the_login_card(net):
    r = Phone(net).go("GET", "/wml/")
    assert r.status == 200 and r.root.find(".//input[@name='u']") is not None


def test_login_home_buddies_logout(net):
    register(net, "bob")
    register(net, "alice")
    alice = net.world.login("alice")
    alice.post("/api/contacts", contact="bob")
    alice.heartbeat()
    phone = Phone(net)
    assert phone.go("POST", "/wml/login", username="alice", password="wrong").status == 401
    r = phone.go("POST", "/wml/login", username="alice", password="correct horse")
    assert r.status == 200 and "Hello alice" in r.shown and "Messages (0 unread)" in r.shown
    assert phone.cookie.startswith("presence_session=")
    r = phone.go("GET", "/wml/buddies")
    assert "bob off" in r.shown
    # logging out is a state change: never on GET
    assert phone.go("GET", "/wml/logout").status == 405
    assert phone.go("GET", "/wml/buddies").status == 200
    r = phone.go("GET", "/wml/")
    [go] = [g for g in r.root.iter("go") if g.get("href") == "/wml/logout"]
    assert go.get("method") == "post"
    assert phone.go("POST", "/wml/logout").status == 200
    assert phone.go("GET", "/wml/buddies").status == 403


def test_login_without_fields(net):
    assert Phone(net).go("POST", "/wml/login").status == 400


def test_no_session_no_pages(net):
    phone = Phone(net)
    for path in ("/wml/buddies", "/wml/chat?with=x", "/wml/messages", "/wml/messages/1"):
        r = phone.go("GET", path)
        assert r.status == 403, path
        assert r.root.find(".//a").get("href") == "/wml/login"


def login(net, name):
    phone = Phone(net)
    assert phone.go("POST", "/wml/login", username=name, password="correct horse").status == 200
    return phone


def test_chat_both_ways(net):
    register(net, "alice")
    register(net, "bob")
    alice = net.world.login("alice")
    hb = alice.heartbeat()
    bob = login(net, "bob")
    r = bob.go("GET", "/wml/chat", **{"with": "alice"})
    assert "alice is online" in r.shown
    r = bob.go("POST", "/wml/chat", to="alice", msg="hi <alice> & $(all)")
    assert r.status == 200 and "Sent." in r.shown
    assert hb.heads()[-1].startswith("msg chat bob ")
    assert hb.events()[-1].text.split("\n", 1)[1] == "hi <alice> & $(all)"
    # a handset holding its heartbeat is online: chat text reaches its session
    sid = bob.cookie.split("=", 1)[1]
    bob_hb = net.world.browser().heartbeat(me="bob", id=sid)
    alice.post("/chat", to="bob", msg="hello bob $$")
    assert bob_hb.heads()[-1].startswith("msg chat alice ")
    r = bob.go("GET", "/wml/chat", **{"with": "alice"})
    assert "alice: hello bob $$" in r.shown   # $$ in the deck is a literal $


@pytest.mark.parametrize("fields, status", [
    ({"to": "alice", "msg": ""}, 400),
    ({"to": "alice", "msg": "x" * 4097}, 413),
    ({"to": "nobody", "msg": "x"}, 404),
    ({"msg": "x"}, 400),
])
def test_chat_errors(net, fields, status):
    register(net, "alice")
    register(net, "bob")
    assert login(net, "bob").go("POST", "/wml/chat", **fields).status == status


def test_chat_to_an_offline_user_is_kept(net):
    register(net, "alice")
    register(net, "bob")
    r = login(net, "bob").go("POST", "/wml/chat", to="alice", msg="later")
    assert "alice is offline: kept in their box." in r.shown
    assert net.world.store.messages("alice").result[0]["text"] == "later"


def test_message_box(net):
    register(net, "alice")
    register(net, "bob")
    for i in range(30):
        net.world.browser().post("/api/messages", to="bob", text=f"note {i} " + "z" * 50)
        net.clock.advance(3)  # anonymous messages are rate-limited
    bob = login(net, "bob")
    r = bob.go("GET", "/wml/")
    assert "Messages (30 unread)" in r.shown
    r = bob.go("GET", "/wml/messages")
    first = r.root.find(".//a").get("href")
    assert first.startswith("/wml/messages/")
    more = [a.get("href") for a in r.root.iter("a") if "from=" in a.get("href")]
    assert more, "30 messages do not fit one deck"
    assert bob.go("GET", more[0]).status == 200
    r = bob.go("GET", first)
    assert "note 29" in r.shown and "From anonymous" in r.shown
    assert "Messages (29 unread)" in bob.go("GET", "/wml/").shown
    assert bob.go("GET", "/wml/messages/999999").status == 404
    assert bob.go("GET", "/wml/messages/x").status == 400
    assert bob.go("GET", "/wml/messages", **{"from": "-1"}).status == 400


def test_guests_have_no_book_or_box(net):
    phone = Phone(net)
    guest = net.world.guest()
    phone.cookie = f"presence_session={guest.session}"
    assert "Guests have no buddy list" in phone.go("GET", "/wml/buddies").shown
    assert "Guests have no message box" in phone.go("GET", "/wml/messages").shown
    assert "Log out" in phone.go("GET", "/wml/").shown


def test_unknown_wml_page_is_a_deck(net):
    r = Phone(net).go("GET", "/wml/nowhere")
    assert r.status == 404


# -- one-time links -------------------------------------------------------------------

BOB_PHONE, CAROL_PHONE = "+15550001", "+15550002"


def linked(net):
    """alice, and bob with a handset and its secret; a link for bob."""
    register(net, "alice")
    register(net, "bob", BOB_PHONE)
    net.handset("bob", BOB_PHONE)
    return net.gateway.issue("bob", "alice", BOB_PHONE)


def proof(net, token, number=BOB_PHONE):
    return {"X-Handset-Proof": [proof_for(net.secrets[number], token)]}


def test_a_link_opens_a_wml_session_once_with_the_handsets_proof(net):
    token = linked(net)
    phone = Phone(net)
    r = phone.go("GET", f"/wml/t/{token}", headers=proof(net, token))
    assert r.status == 200 and "alice wants to chat." in r.shown
    assert r.root.find("card").get("title") == "Chat alice"
    session = net.world.hub.session(phone.cookie.split("=", 1)[1])
    assert session.user.name == "bob" and session.scope == "wml"
    assert [f.text for _, f in session.mailbox.pending()] == [frames.init_chat("alice").text]
    # used up: a second opening, even with the proof, is refused
    again = Phone(net).go("GET", f"/wml/t/{token}", headers=proof(net, token))
    assert again.status == 410 and again.root.find(".//a") is not None
    assert Phone(net).go("GET", "/wml/t/never-issued").status == 404


def test_a_link_without_the_handsets_proof_is_refused_and_not_used_up(net):
    token = linked(net)
    register(net, "carol", CAROL_PHONE)
    net.handset("carol", CAROL_PHONE)
    stranger = Phone(net)
    assert stranger.go("GET", f"/wml/t/{token}").status == 403
    assert not stranger.cookie
    # another handset's credentials do not open it either
    r = stranger.go("GET", f"/wml/t/{token}", headers=proof(net, token, CAROL_PHONE))
    assert r.status == 403 and not stranger.cookie
    # the right handset still can
    assert Phone(net).go("GET", f"/wml/t/{token}", headers=proof(net, token)).status == 200


def test_wrong_proofs_void_a_link(net):
    token = linked(net)
    bad = {"X-Handset-Proof": ["0" * 64]}
    assert [Phone(net).go("GET", f"/wml/t/{token}", headers=bad).status
            for _ in range(3)] == [403, 403, 403]
    assert Phone(net).go("GET", f"/wml/t/{token}", headers=proof(net, token)).status == 410


def test_a_link_is_short_lived(net):
    token = linked(net)
    net.clock.advance(LINK_TTL)
    assert Phone(net).go("GET", f"/wml/t/{token}", headers=proof(net, token)).status == 410


def test_a_new_secret_voids_the_old_ones_proofs(net):
    token = linked(net)
    old = proof(net, token)
    net.handset("bob", BOB_PHONE)
    assert Phone(net).go("GET", f"/wml/t/{token}", headers=old).status == 403


def wml_session(net):
    token = linked(net)
    phone = Phone(net)
    assert phone.go("GET", f"/wml/t/{token}", headers=proof(net, token)).status == 200
    return phone, phone.cookie.split("=", 1)[1]


@pytest.mark.parametrize("path, fields", [
    ("/api/aliases", {"alias": "bobby"}),
    ("/api/groups", {"name": "bobs"}),
    ("/api/contacts", {"contact": "alice"}),
    ("/api/wireless/text", {"to": "alice"}),
    ("/api/wireless/secret", {}),
    ("/chat", {"to": "alice", "msg": "hi"}),
    ("/api/logout", {}),
])
def test_a_wml_session_cannot_use_the_json_api(net, path, fields):
    phone, sid = wml_session(net)
    by_cookie = net.call("POST", BASE + path, data=fields, headers={"Cookie": [phone.cookie]})
    by_id = net.call("POST", BASE + path, data={**fields, "me": "bob", "id": sid})
    assert (by_cookie.status, by_id.status) == (403, 403), (by_cookie.body, by_id.body)
    assert net.world.store.aliases("bob").result == []
    assert net.world.store.get_group("bobs").result is None


def test_a_wml_session_holds_its_heartbeat_and_chats_on_the_wml_pages(net):
    phone, sid = wml_session(net)
    assert net.call("GET", BASE + "/api/session", params={"id": sid}).status == 403
    info = net.call("GET", BASE + "/api/wireless/session", headers={"Cookie": [phone.cookie]})
    assert info.status == 200 and info.json["user"] == "bob"
    hub_session = net.world.hub.session(sid)
    alice = net.world.login("alice")
    hb = alice.heartbeat()
    r = phone.go("POST", "/wml/chat", to="alice", msg="from the phone")
    assert r.status == 200
    assert hb.events()[-1].text.endswith("\nfrom the phone")
    # the heartbeat is allowed, and so is acknowledging and ending the session
    assert net.call("POST", BASE + "/api/wireless/ack",
                    data={"me": "bob", "id": sid, "ack": "1"}).status == 204
    assert hub_session.mailbox.pending() == []
    assert net.call("POST", BASE + "/api/wireless/logout",
                    data={"me": "bob", "id": sid}).status == 204
    assert net.world.hub.session(sid) is None


@pytest.mark.parametrize("headers", [
    {"Origin": ["http://evil.test"]},
    {"Sec-Fetch-Site": ["cross-site"]},
    {"Sec-Fetch-Site": ["same-site"]},     # another port of the same host
])
def test_cookie_state_changes_from_another_site_are_refused(net, headers):
    register(net, "alice")
    register(net, "bob", BOB_PHONE)
    bob = net.world.login("bob")
    cookie = {"Cookie": [f"presence_session={bob.session}"], "Host": ["presence.test"]}
    for path, data in (("/wml/chat", {"to": "alice", "msg": "csrf"}), ("/wml/logout", {}),
                       ("/api/wireless/text", {"to": "bob"}), ("/api/wireless/secret", {})):
        r = net.call("POST", BASE + path, data=data, headers={**cookie, **headers})
        assert r.status == 403, (path, r.body)
    assert net.world.hub.session(bob.session) is not None
    # me + id (a non-browser client) and a same-site cookie request still work
    r = net.call("POST", BASE + "/api/wireless/secret", data={"me": "bob", "id": bob.session},
                 headers=headers)
    assert r.status == 201
    r = net.call("POST", BASE + "/wml/chat", data={"to": "alice", "msg": "ok"},
                 headers={**cookie, "Origin": [BASE], "Sec-Fetch-Site": ["same-origin"]})
    assert r.status == 200
