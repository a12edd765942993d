"""The pages (spec section 6), in memory.

The real resource tree with the pages mounted as ``makeService`` mounts them
(``make_site(..., default=pages.resource(), mounts=pages.mounts())``), a
``Clock``, a real SQLite directory and inline hashing, driven through
``treq.testing.StubTreq``.  Redirects are not followed, so that each test sees
the status and ``Location`` the server gives.  Each :class:`Visitor` is one
browser with its own cookie jar.

The ``world`` fixture fails a test if the server logged an error: bad input
must give a page with a fitting status, never a logged failure.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any, Dict, List, Optional
from urllib.parse import urlencode

import pytest
import treq

from helpers import (  # noqa: F401  (logged_errors: a fixture)
    BASE, PASSWORD, Browser, Reply, World, logged_errors, raw_request, result_of,
)
from presence.pages import Pages
from presence.service import RESERVED
from presence.web.site import make_site

DOMAIN = "presence.example"
HOSTILE = '<script>alert("x")</script>&"\''


# -- the world and its visitors -----------------------------------------------------

class PagesWorld(World):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.pages = Pages(self.service, domain=DOMAIN)
        self.site = make_site(self.service, self.config.keepalive, reactor=self.clock,
                              mounts=self.pages.mounts(), default=self.pages.resource())

    def visitor(self) -> "Visitor":
        return Visitor(self)


class Element:
    def __init__(self, tag: str, attrs: Dict[str, Optional[str]]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.text = ""

    def __getitem__(self, name: str) -> Optional[str]:
        return self.attrs[name]

    def get(self, name: str) -> Optional[str]:
        return self.attrs.get(name)

    def __repr__(self) -> str:
        return f"<{self.tag} {self.attrs} {self.text[:40]!r}>"


class Page(HTMLParser):
    """A parsed HTML answer: elements with their attributes and text."""

    VOID = {"br", "input", "meta", "link", "img", "hr"}

    def __init__(self, body: bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: List[Element] = []
        self._open: List[Element] = []
        self.text = ""
        self.feed(body.decode("utf-8"))

    def handle_starttag(self, tag, attrs):
        e = Element(tag, dict(attrs))
        self.elements.append(e)
        if tag not in self.VOID:
            self._open.append(e)

    def handle_startendtag(self, tag, attrs):
        self.elements.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        self.text += data
        for e in self._open:
            e.text += data

    def find(self, tag: Optional[str] = None, **attrs: str) -> List[Element]:
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.elements
                if (tag is None or e.tag == tag)
                and all(e.attrs.get(k) == v for k, v in want.items())]

    def one(self, tag: Optional[str] = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, found)
        return found[0]

    def rows(self) -> Dict[str, Element]:
        return {e["data-user"]: e for e in self.elements
                if e.tag == "li" and "data-user" in e.attrs}

    def options(self, user: str) -> Dict[str, Element]:
        """The options of ``user``'s row by ``data-action``."""
        out = {}
        inside = False
        for e in self.elements:
            if e.tag == "li" and "data-user" in e.attrs:
                inside = e["data-user"] == user
            elif inside and "data-action" in e.attrs:
                out[e["data-action"]] = e
        return out


class Visitor:
    """One browser: a cookie jar, redirects not followed."""

    def __init__(self, world: PagesWorld) -> None:
        from treq.testing import StubTreq
        self.world = world
        self.stub = StubTreq(world.site.resource)

    def request(self, method: str, path: str, data: Any = None,
                headers: Optional[Dict[str, Any]] = None) -> Reply:
        d = self.stub.request(method, BASE + path, data=data, headers=headers,
                              allow_redirects=False)
        self.stub.flush()
        response = result_of(d)
        body = result_of(treq.content(response))
        return Reply(response.code, response.headers, body)

    def get(self, path: str, **params: str) -> Reply:
        if params:
            path += "?" + urlencode(params)
        return self.request("GET", path)

    def post(self, path: str, **data: str) -> Reply:
        return self.request("POST", path, data=data)

    def page(self, path: str, status: int = 200, **params: str) -> Page:
        reply = self.get(path, **params)
        assert reply.status == status, (reply.status, reply.body[:500])
        assert reply.header("content-type") == "text/html; charset=utf-8"
        return Page(reply.body)

    def login(self, name: str, password: str = PASSWORD) -> Reply:
        reply = self.post("/login", username=name, password=password, next="/home")
        assert reply.status == 303, (reply.status, reply.body[:300])
        return reply

    def guest(self) -> str:
        reply = self.post("/api/guest")
        assert reply.status == 200, reply.body
        return reply.json["username"]

    def session(self):
        """The hub session this browser's cookie names."""
        reply = self.get("/api/session")
        assert reply.status == 200, reply.body
        name = reply.json["user"]
        sessions = self.world.hub.users.user(name).sessions
        return [s for s in sessions if s.login_time == reply.json["login_time"]][-1]


@pytest.fixture
def world(logged_errors):
    w = PagesWorld()
    yield w
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def html_headers_ok(reply: Reply) -> None:
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert reply.header("cache-control") == "no-store"
    assert "script-src 'self'" in reply.header("content-security-policy")
    assert reply.header("x-content-type-options") == "nosniff"


def no_markup_from(body: bytes, hostile: str = HOSTILE) -> None:
    text = body.decode("utf-8")
    assert "<script>alert" not in text
    assert hostile not in text


# -- the redirector ------------------------------------------------------------------

def test_a_name_redirects_to_its_communications_page(world):
    world.register("alice")
    v = world.visitor()
    for path in ("/alice", "/people/alice", "/u/alice", "/ALICE", "/x/Alice"):
        reply = v.get(path)
        assert reply.status == 301, (path, reply.status)
        assert reply.header("location") == "/call?name=alice", path


def test_aliases_and_groups_redirect_to_the_canonical_name(world):
    alice = world.user("alice")
    assert alice.post("/api/aliases", alias="+4930123456").status == 201
    assert alice.post("/api/aliases", alias="alice@example.com").status == 201
    assert alice.post("/api/aliases", alias="ally").status == 201
    assert alice.post("/api/groups", name="friends").status == 201
    v = world.visitor()
    for path in ("/+4930123456", "/tel/+4930123456", "/alice@example.com",
                 "/mail/alice%40example.com", "/ally", "/x/ally"):
        reply = v.get(path)
        assert (reply.status, reply.header("location")) == (301, "/call?name=alice"), path
    assert v.get("/friends").header("location") == "/call?name=friends"
    assert v.get("/g/friends").header("location") == "/call?name=friends"
    # /call with an alias also lands on the canonical page
    reply = v.get("/call", name="ally")
    assert (reply.status, reply.header("location")) == (301, "/call?name=alice")


def test_an_unknown_name_gives_a_helpful_404_page(world):
    v = world.visitor()
    reply = v.get("/nobody")
    assert reply.status == 404
    html_headers_ok(reply)
    page = Page(reply.body)
    assert "nobody" in page.text
    assert page.find("form", action="/call")  # try another name
    assert page.find("a", href="/register")
    assert v.get("/somewhere/nobody").status == 404
    assert v.get("/call", name="nobody").status == 404


@pytest.mark.parametrize("segment", sorted(RESERVED - {"api", "chat", "initchat", "ack"}))
def test_reserved_first_segments_are_never_names(world, segment):
    world.register("alice")
    v = world.visitor()
    reply = v.get(f"/{segment}/alice")
    assert reply.status != 301, segment
    assert reply.header("location") is None


def test_reserved_words_alone_never_redirect(world):
    v = world.visitor()
    for segment in ("favicon.ico", "robots.txt", "wml", "sip", "nic", "guest", "anonymous"):
        reply = v.get("/" + segment)
        assert reply.status == 404, segment


def test_deeper_paths_and_other_methods(world):
    world.register("alice")
    v = world.visitor()
    reply = v.get("/a/b/alice")
    assert reply.status == 404
    html_headers_ok(reply)
    reply = v.post("/alice")
    assert reply.status == 405
    html_headers_ok(reply)


# -- the communications page of a user ---------------------------------------------

def test_the_page_of_an_offline_user(world):
    world.register("alice", phone="+49 (30) 1234-5", wireless="+491701234567")
    v = world.visitor()
    reply = v.get("/call", name="alice")
    assert reply.status == 200
    html_headers_ok(reply)
    page = Page(reply.body)
    rows = page.rows()
    assert list(rows) == ["alice"]
    assert rows["alice"]["data-presence"] == "offline"
    options = page.options("alice")
    assert "disabled" in options["chat"].attrs
    assert "href" not in options["call"].attrs
    assert options["call"]["aria-disabled"] == "true"
    assert options["call"]["data-href"] == f"sip:alice@{DOMAIN}"
    assert options["tel"]["href"] == "tel:+493012345"
    assert options["message"]["href"] == "#message"
    assert "text" in options
    form = page.one("form", id="message-form")
    assert form["action"] == "/messages"
    live = page.one("main", id="live")
    assert (live["data-live"], live["data-name"], live["data-me"]) == ("call", "alice", "")
    assert page.find("script", src="/static/presence.js")


def test_no_phone_and_no_handset_no_such_options(world):
    world.register("bob")
    page = world.visitor().page("/call", name="bob")
    assert set(page.options("bob")) == {"chat", "call", "message"}


def test_the_page_of_an_online_user(world):
    alice = world.user("alice")
    hb = alice.heartbeat()
    assert not hb.finished
    page = world.visitor().page("/call", name="alice")
    assert page.rows()["alice"]["data-presence"] == "online"
    options = page.options("alice")
    assert "disabled" not in options["chat"].attrs
    assert options["call"]["href"] == f"sip:alice@{DOMAIN}"


def test_opening_the_page_of_an_offline_user_counts_a_hit(world):
    world.register("alice")
    v = world.visitor()
    v.page("/call", name="alice")
    assert v.get("/alice").status == 301  # the redirect alone is no hit
    v.page("/call", name="alice")
    alice = world.login("alice")
    assert alice.get("/api/welcome").json["hits_while_offline"] == 2
    # online now: opening the page counts nothing
    alice.heartbeat()
    v.page("/call", name="alice")
    assert result_of(world.store.get_user("alice"))["hits_offline"] == 0


def test_opening_your_own_page_is_no_hit(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    v.page("/call", name="alice")  # no heartbeat yet: offline
    assert result_of(world.store.get_user("alice"))["hits_offline"] == 0


def test_a_logged_in_visitor_is_named_on_the_page(world):
    world.register("alice")
    world.register("bob")
    v = world.visitor()
    v.login("bob")
    page = v.page("/call", name="alice")
    assert page.one("main", id="live")["data-me"] == "bob"
    assert page.one("main", id="live")["data-guest"] == "0"
    assert page.find("a", href="/home")


# -- groups ---------------------------------------------------------------------------

def test_the_page_of_a_group_has_a_row_per_member(world):
    alice = world.user("alice")
    bob = world.user("bob")
    assert alice.post("/api/groups", name="friends").status == 201
    assert bob.post("/api/groups/friends/join").status == 204
    bob.heartbeat()
    page = world.visitor().page("/call", name="friends")
    rows = page.rows()
    assert {k: v["data-presence"] for k, v in rows.items()} == {
        "alice": "offline", "bob": "online"}
    # member rows link to the member's own page (and its message form)
    assert page.options("alice")["message"]["href"] == "/call?name=alice#message"
    assert page.one("main", id="live")["data-kind"] == "group"


def test_a_protected_group_asks_for_its_password(world):
    alice = world.user("alice")
    bob = world.user("bob")
    assert alice.post("/api/groups", name="club", password="club-secret").status == 201
    assert bob.post("/api/groups/club/join", password="club-secret").status == 204
    v = world.visitor()
    reply = v.get("/call", name="club")
    assert reply.status == 401
    page = Page(reply.body)
    assert not page.rows()
    assert "alice" not in reply.body.decode() and "bob" not in reply.body.decode()
    form = page.one("form", action="/call")
    assert form["method"] == "post"
    # a wrong password is refused, still without a member name
    reply = v.post("/call", name="club", password="wrong")
    assert reply.status == 403
    body = reply.body.decode()
    assert "alice" not in body and "bob" not in body and "wrong" in body.lower()
    assert "club-secret" not in body
    # the right one opens it (the visitor gets a guest session for it)
    reply = v.post("/call", name="club", password="club-secret")
    assert (reply.status, reply.header("location")) == (303, "/call?name=club")
    page = v.page("/call", name="club")
    assert set(page.rows()) == {"alice", "bob"}
    # and the live part may watch it with that session
    live = v.post("/call/live", name="club")
    assert live.status == 200
    assert set(Page(live.body).rows()) == {"alice", "bob"}
    # another visitor still has to give it
    assert world.visitor().get("/call", name="club").status == 401
    assert world.visitor().post("/call/live", name="club").status == 401


def test_a_member_sees_a_protected_group_without_its_password(world):
    alice = world.user("alice")
    assert alice.post("/api/groups", name="club", password="club-secret").status == 201
    v = world.visitor()
    v.login("alice")
    assert set(v.page("/call", name="club").rows()) == {"alice"}


def test_wrong_group_passwords_are_rate_limited(world):
    alice = world.user("alice")
    assert alice.post("/api/groups", name="club", password="club-secret").status == 201
    v = world.visitor()
    statuses = [v.post("/call", name="club", password=f"guess{i}").status for i in range(12)]
    assert statuses[:10] == [403] * 10
    assert statuses[-1] == 429


def test_password_form_for_an_unknown_group(world):
    v = world.visitor()
    assert v.post("/call", name="nothing", password="x").status == 404
    assert v.post("/call", password="x").status == 400


# -- /call/live: what the page script calls --------------------------------------------

def test_call_live_makes_the_visitors_session_watch_the_user(world):
    world.register("alice")
    v = world.visitor()
    guest = v.guest()
    reply = v.post("/call/live", name="alice")
    assert reply.status == 200
    assert reply.header("x-presence-watching") == "1"
    assert list(Page(reply.body).rows()) == ["alice"]
    session = v.session()
    assert session.user.name == guest
    assert session.active == "alice"
    # and so the guest's heartbeat hears alice come online
    b = Browser(world)
    b.stub = v.stub
    heartbeat = b.heartbeat(me=guest)
    alice = world.login("alice")
    alice.heartbeat()
    assert "msg update online alice" in heartbeat.heads()


def test_call_live_without_a_session_only_answers_the_rows(world):
    world.register("alice")
    reply = world.visitor().post("/call/live", name="alice")
    assert reply.status == 200
    assert reply.header("x-presence-watching") == "0"


def test_call_live_bad_input(world):
    v = world.visitor()
    assert v.post("/call/live").status == 400
    reply = v.post("/call/live", name=HOSTILE)
    assert reply.status == 404
    assert reply.header("content-type").startswith("text/plain")
    reply = v.request("POST", "/call/live?name=%ff")
    assert reply.status == 400


# -- leaving a message ---------------------------------------------------------------

def test_leave_a_message_with_the_form(world):
    world.register("alice")
    v = world.visitor()
    reply = v.post("/messages", to="alice", text="call me back " + HOSTILE)
    assert reply.status == 303
    assert reply.header("location") == "/messages/left?to=alice"
    page = v.page("/messages/left", to="alice")
    assert "alice" in page.text
    alice = world.login("alice")
    box = alice.get("/api/messages").json
    assert box["messages"][0]["text"] == "call me back " + HOSTILE
    assert box["messages"][0]["from"] == "anonymous"


def test_leave_a_message_as_a_guest_names_the_guest(world):
    world.register("alice")
    v = world.visitor()
    guest = v.guest()
    assert v.post("/messages", to="alice", text="hi").status == 303
    alice = world.login("alice")
    assert alice.get("/api/messages").json["messages"][0]["from"] == guest


@pytest.mark.parametrize("data,status", [
    ({"to": "alice", "text": ""}, 400),
    ({"to": "alice"}, 400),
    ({"to": "nobody", "text": "hi"}, 404),
    ({"text": "hi"}, 400),
    ({"to": "alice", "text": "x" * 5000}, 413),
])
def test_leave_a_message_bad_input(world, data, status):
    world.register("alice")
    reply = world.visitor().post("/messages", **data)
    assert reply.status == status
    html_headers_ok(reply)
    assert Page(reply.body).find("main")


# -- login, registration, logout ------------------------------------------------------

def test_login_sets_the_session_cookie(world):
    world.register("alice")
    v = world.visitor()
    reply = v.post("/login", username="Alice ", password=PASSWORD, next="/settings")
    assert reply.status == 303
    assert reply.header("location") == "/settings"
    cookie = reply.header("set-cookie")
    assert cookie.startswith("presence_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    # the cookie is the session for the API and the pages
    assert v.get("/api/welcome").status == 200
    assert v.get("/home").status == 200


def test_wrong_login_shows_the_form_again(world):
    world.register("alice")
    v = world.visitor()
    reply = v.post("/login", username="alice", password="not-the-password")
    assert reply.status == 401
    html_headers_ok(reply)
    assert reply.header("set-cookie") is None
    assert b"not-the-password" not in reply.body
    page = Page(reply.body)
    assert page.one("input", name="username")["value"] == "alice"
    assert "Wrong username or password" in page.text
    reply = v.post("/login", username=HOSTILE, password="x")
    assert reply.status == 401
    no_markup_from(reply.body)


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "home",
                                    "/\\evil", ""])
def test_login_never_redirects_off_site(world, target):
    world.register("alice")
    reply = world.visitor().post("/login", username="alice", password=PASSWORD, next=target)
    assert (reply.status, reply.header("location")) == (303, "/home")


def test_login_from_another_site_is_refused(world):
    world.register("alice")
    v = world.visitor()
    reply = v.request("POST", "/login", data={"username": "alice", "password": PASSWORD},
                      headers={"Origin": ["http://evil.example"]})
    assert reply.status == 403
    reply = v.request("POST", "/login", data={"username": "alice", "password": PASSWORD},
                      headers={"Origin": ["http://presence.test"]})
    assert reply.status == 303


def test_login_replaces_the_browsers_guest_session(world):
    world.register("alice")
    v = world.visitor()
    guest = v.guest()
    v.login("alice")
    assert world.hub.users.user(guest) is None


def test_register_logs_in_and_keeps_the_profile(world):
    v = world.visitor()
    reply = v.post("/register", username="carol", password=PASSWORD, password2=PASSWORD,
                   email="carol@example.com", phone="+1 555 0100", wireless="+15550100")
    assert (reply.status, reply.header("location")) == (303, "/home")
    assert v.get("/home").status == 200
    user = result_of(world.store.get_user("carol"))
    assert (user["email"], user["phone"], user["wireless"]) == (
        "carol@example.com", "+1 555 0100", "+15550100")


@pytest.mark.parametrize("fields,status", [
    ({"username": "carol", "password": PASSWORD, "password2": "other pass"}, 400),
    ({"username": "Bad Name!", "password": PASSWORD, "password2": PASSWORD}, 400),
    ({"username": "carol", "password": "short", "password2": "short"}, 400),
    ({"username": "alice", "password": PASSWORD, "password2": PASSWORD}, 409),
    ({"username": "api", "password": PASSWORD, "password2": PASSWORD}, 400),
    ({"username": "carol", "password": PASSWORD, "password2": PASSWORD,
      "wireless": "0170 not a number"}, 400),
])
def test_register_bad_input_shows_the_form_again(world, fields, status):
    world.register("alice")
    reply = world.visitor().post("/register", **fields)
    assert reply.status == status
    page = Page(reply.body)
    assert page.one("form", action="/register")
    assert not [e for e in page.find("input", type="password") if e.get("value")]
    assert reply.header("set-cookie") is None


def test_logout(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    session_id = v.session().id
    page = v.page("/logout")
    assert len(page.find("form", action="/logout")) == 2  # the nav and the page
    reply = v.post("/logout")
    assert (reply.status, reply.header("location")) == (303, "/")
    assert world.hub.session(session_id) is None
    assert "Max-Age=0" in reply.header("set-cookie")
    assert (v.get("/home").status, v.get("/home").header("location")) == (
        303, "/login?next=%2Fhome")
    # without a session logout just goes home
    assert v.post("/logout").status == 303
    assert v.get("/logout").status == 303


# -- the home page ---------------------------------------------------------------------

def test_home_needs_a_login(world):
    v = world.visitor()
    reply = v.get("/home")
    assert (reply.status, reply.header("location")) == (303, "/login?next=%2Fhome")
    v.guest()
    assert v.get("/home").status == 303  # a guest has no home page
    assert v.post("/home/live").status == 403


def test_home_shows_welcome_figures_messages_and_contacts(world):
    world.register("alice")
    bob = world.user("bob")
    v = world.visitor()
    v.page("/call", name="alice")
    v.page("/call", name="alice")
    assert v.post("/messages", to="alice", text="first " + HOSTILE).status == 303
    assert bob.post("/api/messages", to="alice", text="second").status == 201
    a = world.visitor()
    a.login("alice")
    assert a.post("/settings/contact-add", contact="bob").status == 303
    bob.heartbeat()
    reply = a.get("/home")
    assert reply.status == 200
    no_markup_from(reply.body)
    page = Page(reply.body)
    assert page.one("dd", id="hits").text == "2"
    assert page.one("dd", id="unread").text == "2"
    messages = page.find("li", class_="message unread")
    assert [m.text.split()[0] for m in messages] == ["bob", "anonymous"]
    assert HOSTILE in page.one("ul", id="messages").text
    assert page.rows()["bob"]["data-presence"] == "online"
    live = page.one("main", id="live")
    assert (live["data-live"], live["data-me"], live["data-kind"]) == ("home", "alice", "book")
    # mark the newest read
    ident = messages[0]["data-id"]
    reply = a.post("/home/read", id=ident)
    assert (reply.status, reply.header("location")) == (303, "/home")
    page = a.page("/home")
    assert page.one("dd", id="unread").text == "1"
    assert len(page.find("li", class_="message unread")) == 1
    assert a.post("/home/read", id="999999").status == 404
    assert a.post("/home/read", id="abc").status == 404


def test_home_live_watches_the_address_book_or_the_chosen_group(world):
    alice_w = world.user("alice")
    assert alice_w.post("/api/groups", name="team").status == 201
    v = world.visitor()
    v.login("alice")
    reply = v.post("/home/live")
    assert reply.status == 200
    assert reply.header("x-presence-home") == "alice"
    assert v.session().active == "~alice"
    assert v.post("/settings/active", group="team", next="/home").header("location") == "/home"
    reply = v.post("/home/live")
    assert reply.header("x-presence-home") == "team"
    assert set(Page(reply.body).rows()) == {"alice"}
    assert v.session().active == "team"
    assert v.page("/home").one("main", id="live")["data-kind"] == "group"
    # a group one is not in cannot be chosen
    bob = world.user("bob")
    assert bob.post("/api/groups", name="other").status == 201
    assert v.post("/settings/active", group="other").status == 404


# -- settings ----------------------------------------------------------------------------

def test_settings_need_a_login(world):
    v = world.visitor()
    assert v.get("/settings").header("location") == "/login?next=%2Fsettings"
    assert v.post("/settings/alias", alias="x").header("location") == "/login?next=%2Fsettings"


def test_settings_profile_shows_on_the_page(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    reply = v.post("/settings/profile", email="a@example.com", phone="+49 30 999",
                   wireless="+491709999")
    assert (reply.status, reply.header("location")) == (303, "/settings?done=profile")
    page = v.page("/settings", done="profile")
    assert "Profile saved." in page.text
    assert page.one("input", name="phone")["value"] == "+49 30 999"
    call = world.visitor().page("/call", name="alice")
    assert call.options("alice")["tel"]["href"] == "tel:+4930999"
    assert "text" in call.options("alice")
    # clearing them takes the options away
    assert v.post("/settings/profile", email="", phone="", wireless="").status == 303
    assert set(world.visitor().page("/call", name="alice").options("alice")) == {
        "chat", "call", "message"}


@pytest.mark.parametrize("fields", [
    {"wireless": "0170-1234"}, {"phone": HOSTILE}, {"email": "no-at-sign"},
    {"phone": "1" * 200},
])
def test_settings_profile_bad_input(world, fields):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    reply = v.post("/settings/profile", **fields)
    assert reply.status == 400
    no_markup_from(reply.body)
    assert Page(reply.body).find("p", class_="notice error")


def test_settings_aliases_groups_and_contacts(world):
    world.register("alice")
    bob = world.user("bob")
    assert bob.post("/api/groups", name="club", password="club-secret").status == 201
    v = world.visitor()
    v.login("alice")
    assert v.post("/settings/alias", alias="Ally").status == 303
    assert v.get("/ally").header("location") == "/call?name=alice"
    assert v.post("/settings/alias", alias="bob").status == 409
    assert v.post("/settings/alias", alias=HOSTILE).status == 400
    assert v.post("/settings/group-create", name="Team", password="").status == 303
    assert v.post("/settings/group-create", name="team").status == 409
    assert v.post("/settings/group-join", name="club", password="nope").status == 403
    assert v.post("/settings/group-join", name="club", password="club-secret").status == 303
    assert v.post("/settings/group-join", name="nothing").status == 404
    assert v.post("/settings/contact-add", contact="bob").status == 303
    assert v.post("/settings/contact-add", contact="nobody").status == 404
    page = v.page("/settings")
    assert page.one("ul", id="aliases").text == "ally"
    groups = page.one("ul", id="groups").text
    assert "club" in groups and "team" in groups
    assert "bob" in page.one("ul", id="contacts").text
    assert v.post("/settings/group-leave", name="club").status == 303
    assert v.post("/settings/group-leave", name="club").status == 404
    assert v.post("/settings/contact-remove", contact="bob").status == 303
    assert v.post("/settings/contact-remove", contact="bob").status == 404
    page = v.page("/settings")
    assert "club" not in page.one("ul", id="groups").text
    assert "bob" not in page.one("ul", id="contacts").text
    assert v.post("/settings/nothing").status == 404


# -- bad input anywhere ------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "/call?name=%ff%fe", "/%ff", "/x/%c3%28", "/login?next=%ff", "/settings?done=%ff",
    "/call?name=" + "a" * 10000, "/" + "b" * 5000, "/call?name=%3Cscript%3E",
    "/call?name=", "/call", "/call?name=%00", "/messages/left?to=%3Cb%3E",
])
def test_bad_addresses_give_a_clear_page(world, target):
    reply = world.visitor().request("GET", target)
    assert reply.status in (301, 303, 400, 404), (target, reply.status)
    if reply.status >= 400:
        html_headers_ok(reply)
        text = reply.body.decode("utf-8")
        assert "Traceback" not in text
        assert "<script>" not in text and "<b>" not in text
        assert len(text) < 20000


def test_hostile_names_are_escaped_and_cut(world):
    v = world.visitor()
    reply = v.get("/call", name=HOSTILE * 50)
    assert reply.status == 404
    no_markup_from(reply.body)
    assert "&lt;script&gt;" in reply.body.decode()


def test_non_utf8_form_body(world):
    world.register("alice")
    reply = world.visitor().request(
        "POST", "/messages", data=b"to=alice&text=%ff%fe",
        headers={"Content-Type": ["application/x-www-form-urlencoded"]})
    assert reply.status == 400
    html_headers_ok(reply)


def test_an_expired_cookie_is_a_visitor_without_session(world):
    world.register("alice")
    v = world.visitor()
    v.guest()
    session = v.session()
    world.service.logout(session)
    page = v.page("/call", name="alice")
    assert page.one("main", id="live")["data-me"] == ""
    assert v.post("/call/live", name="alice").header("x-presence-watching") == "0"


def test_raw_requests_with_garbage(world):
    world.register("alice")
    for target in ("/%ff%fe%fd", "/call?name=%ff&name=%fe", "/alice?%ff=%ff"):
        status, headers, body = raw_request(world.site, "GET", target)
        assert status in (301, 400, 404), (target, status)
        assert b"Traceback" not in body
    status, headers, body = raw_request(world.site, "GET", "/", headers={"Host": "\xff"})
    assert status in (200, 400)


# -- static files -------------------------------------------------------------------------

def test_static_files(world):
    v = world.visitor()
    for name, kind in (("presence.css", "text/css"), ("presence.js", "text/javascript"),
                       ("favicon.svg", "image/svg+xml")):
        reply = v.get("/static/" + name)
        assert reply.status == 200, name
        assert reply.header("content-type").startswith(kind)
        assert reply.header("x-content-type-options") == "nosniff"
        again = v.request("GET", "/static/" + name,
                          headers={"If-None-Match": [reply.header("etag")]})
        assert again.status == 304
    for name in ("", "nothing.js", "../app.py", "%2e%2e/app.py"):
        assert v.get("/static/" + name).status == 404, name


def test_start_page(world):
    v = world.visitor()
    reply = v.get("/")
    assert reply.status == 200
    html_headers_ok(reply)
    page = Page(reply.body)
    assert page.one("form", action="/call")["method"] == "get"
    assert page.find("a", href="/login")
    world.register("alice")
    v.login("alice")
    assert v.page("/").find("a", href="/home")


def test_the_json_api_keeps_its_own_answers(world):
    v = world.visitor()
    reply = v.get("/api/nothing-here")
    assert reply.status == 404 and reply.header("content-type") == "application/json"


# -- cross-site forms (issue 11, item 5) --------------------------------------------------

@pytest.mark.parametrize("headers", [{"Origin": ["http://presence.test:8081"]},
                                     {"Sec-Fetch-Site": ["same-site"]},
                                     {"Origin": ["null"]}])
def test_a_form_from_another_origin_is_refused(world, headers):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    reply = v.request("POST", "/settings/alias", data={"alias": "ally"}, headers=headers)
    assert reply.status == 403
    reply = v.request("POST", "/call/live", data={"name": "alice"}, headers=headers)
    assert reply.status == 403
    reply = v.request("POST", "/logout", data={}, headers=headers)
    assert reply.status == 403
    assert v.get("/api/session").status == 200  # still logged in
    reply = v.request("POST", "/settings/alias", data={"alias": "ally"},
                      headers={"Sec-Fetch-Site": ["same-origin"]})
    assert reply.status == 303


def test_a_form_without_origin_headers_is_taken(world):
    world.register("alice")
    v = world.visitor()
    reply = v.request("POST", "/login", data={"username": "alice", "password": PASSWORD},
                      headers={})
    assert reply.status == 303


# -- resume tokens and the password form (issue 12) ---------------------------------------

def resume_cookie(reply: Reply) -> Optional[str]:
    for line in reply.all_headers("set-cookie"):
        if line.startswith("presence_resume="):
            return line
    return None


def test_login_gives_the_browser_a_resume_cookie_for_api_resume_only(world):
    world.register("alice")
    v = world.visitor()
    cookie = resume_cookie(v.login("alice"))
    token = cookie.split(";")[0].split("=", 1)[1]
    assert len(token) >= 43
    lowered = cookie.lower()
    assert "path=/api/resume" in lowered and "httponly" in lowered
    assert "samesite=strict" in lowered
    assert token.encode() not in v.get("/home").body   # no page carries it


def test_the_page_gets_its_session_back_with_the_resume_cookie(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    old = v.session()
    world.hub.end(old, "expired")                       # e.g. a server restart
    assert v.get("/api/session").status == 403
    reply = v.request("POST", "/api/resume", headers={"Sec-Fetch-Site": ["same-origin"]})
    assert reply.status == 200 and reply.json["username"] == "alice"
    assert reply.json["resume"] is None                 # the token stays in the cookie
    assert v.get("/api/session").json["user"] == "alice"
    assert v.get("/home").status == 200
    # from another site the cookie is refused (and SameSite=Strict keeps it home)
    evil = v.request("POST", "/api/resume", headers={"Origin": ["http://evil.example"]})
    assert evil.status == 403


def test_logging_out_of_the_page_revokes_its_resume_token(world):
    world.register("alice")
    v = world.visitor()
    token = resume_cookie(v.login("alice")).split(";")[0].split("=", 1)[1]
    reply = v.post("/logout")
    cleared = resume_cookie(reply)
    assert cleared.startswith("presence_resume=;") and "max-age=0" in cleared.lower()
    assert world.browser().post("/api/resume", token=token).status == 401


def test_the_settings_password_form(world):
    world.register("alice")
    v = world.visitor()
    first = resume_cookie(v.login("alice")).split(";")[0].split("=", 1)[1]
    other = world.visitor()
    other.login("alice")
    page = v.page("/settings")
    form = page.one("form", action="/settings/password")
    assert form["method"] == "post"
    assert page.one("input", name="new_password")["type"] == "password"
    reply = v.post("/settings/password", old_password=PASSWORD,
                   new_password="battery staple", password2="battery staple")
    assert (reply.status, reply.header("location")) == (303, "/settings?done=password")
    fresh = resume_cookie(reply).split(";")[0].split("=", 1)[1]
    assert fresh != first
    assert "Password changed" in v.page("/settings", done="password").text
    assert other.get("/api/session").status == 403       # the other browser: logged out
    assert world.browser().post("/api/resume", token=first).status == 401
    assert world.browser().post("/api/resume", token=fresh).status == 200
    assert world.visitor().post("/login", username="alice",
                                password="battery staple").status == 303


@pytest.mark.parametrize("fields, status, words", [
    ({"old_password": "not it", "new_password": "battery staple",
      "password2": "battery staple"}, 401, "current password is wrong"),
    ({"old_password": PASSWORD, "new_password": "battery staple",
      "password2": "battery stable"}, 400, "differ"),
    ({"old_password": PASSWORD, "new_password": "short", "password2": "short"}, 400,
     "at least 6"),
])
def test_the_password_form_bad_input(world, fields, status, words):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    reply = v.post("/settings/password", **fields)
    assert reply.status == status
    assert Page(reply.body).find("p", class_="notice error")
    assert words in reply.body.decode()
    assert "battery staple" not in reply.body.decode() and PASSWORD not in reply.body.decode()
    assert v.get("/api/session").status == 200


def test_the_password_form_from_another_site_is_refused(world):
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    reply = v.request("POST", "/settings/password", data={
        "old_password": PASSWORD, "new_password": "battery staple",
        "password2": "battery staple"}, headers={"Origin": ["http://evil.example"]})
    assert reply.status == 403
    assert world.visitor().post("/login", username="alice", password=PASSWORD).status == 303


def test_settings_guests_may_call_is_off_until_turned_on(world):
    """The "Calls from guests" card (browser calls, docs/calls.md)."""
    world.register("alice")
    v = world.visitor()
    v.login("alice")
    box = v.page("/settings").one("input", id="f-guest-calls")
    assert box["name"] == "allow" and "checked" not in box.attrs
    reply = v.post("/settings/guest-calls", allow="1")
    assert (reply.status, reply.header("location")) == (303, "/settings?done=guest-calls")
    page = v.page("/settings", done="guest-calls")
    assert "Saved: who may call you in the browser." in page.text
    assert "checked" in page.one("input", id="f-guest-calls").attrs
    assert result_of(world.service.guests_may_call("alice")) is True
    assert v.post("/settings/guest-calls").status == 303   # the box unticked
    assert result_of(world.service.guests_may_call("alice")) is False
    # the Call (PC) option names its peer for the page's script
    assert world.visitor().page("/call", name="alice").options("alice")["call"][
        "data-peer"] == "alice"
