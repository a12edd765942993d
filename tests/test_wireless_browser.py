"""The handset emulator's WML browser: parsing (hardened), rendering cards
as text, variables, links, ``<go>`` with postfields, history, card events,
cookies and redirects; then driving the real WML pages in memory."""

from __future__ import annotations

from typing import Dict, List, Tuple
from urllib.parse import parse_qsl

import pytest
from twisted.internet import defer
from twisted.web.http_headers import Headers

from helpers import BASE, result_of
from presence.wireless.browser import BrowserError, WMLBrowser, parse_deck, substitute
from test_wireless_support import Net

HEAD = (b'<?xml version="1.0"?>\n<!DOCTYPE wml PUBLIC "-//WAPFORUM//DTD WML 1.1//EN"'
        b' "http://www.wapforum.org/DTD/wml_1.1.xml">\n')


class Resp:
    def __init__(self, code: int, headers: Dict[str, List[str]], body: bytes) -> None:
        self.code = code
        self.headers = Headers({k: v for k, v in headers.items()})
        self.body = body


class FakeHTTP:
    """Answers from a table: (method, url) -> (status, headers, body)."""

    def __init__(self, pages: Dict[Tuple[str, str], tuple]) -> None:
        self.pages = pages
        self.requests: List[dict] = []

    def request(self, method, url, headers=None, data=None, allow_redirects=True, **kw):
        self.requests.append({"method": method, "url": url, "headers": headers or {},
                              "data": data})
        found = self.pages.get((method, url.split("?")[0] if (method, url) not in self.pages
                                else url))
        if found is None:
            return defer.succeed(Resp(404, {"content-type": ["text/plain"]}, b"not here"))
        status, hdrs, body = found
        return defer.succeed(Resp(status, hdrs, body))

    def content(self, response):
        return defer.succeed(response.body)


WML = {"content-type": ["text/vnd.wap.wml"]}


def deck(body: bytes) -> bytes:
    return HEAD + b"<wml>" + body + b"</wml>"


def test_substitute():
    v = {"a": "x y", "b": "1&2"}
    assert substitute("$a-$(a)-$(b:e)-$$-$(nope)", v) == "x y-x y-1%262-$-"
    assert substitute("/p?q=$(a)", v, escape=True) == "/p?q=x%20y"
    assert substitute("$(a:n)", v, escape=True) == "x y"


def test_parse_deck_is_hardened():
    assert parse_deck(deck(b"<card><p>a&nbsp;b</p></card>")).find("card") is not None
    with pytest.raises(BrowserError, match="entities"):
        parse_deck(b'<!DOCTYPE wml [<!ENTITY a "b">]><wml><card><p>&a;</p></card></wml>')
    with pytest.raises(BrowserError, match="well-formed"):
        parse_deck(b"<wml><card>")
    with pytest.raises(BrowserError, match="not a WML deck"):
        parse_deck(b"<html><body/></html>")


def browser_for(pages) -> Tuple[WMLBrowser, FakeHTTP]:
    http = FakeHTTP(pages)
    return WMLBrowser(http), http


def test_render_numbers_links_anchors_inputs_and_softkeys():
    page = deck(b'<card id="c1" title="T &amp; t"><do type="accept" label="OK"><go href="/ok"/></do>'
                b'<p>Hello <b>there</b><br/><a href="/one">One</a> '
                b'<anchor>Two<go href="/two" method="post"><postfield name="v" value="$(v)"/>'
                b'</go></anchor><br/>'
                b'<input name="v" title="Value" value="dflt"/> <input name="pw" type="password"/>'
                b'<br/><img src="/i.png" alt="pic"/><select name="s"><option value="1">A</option>'
                b'<option value="2">B</option></select></p></card>')
    b, http = browser_for({("GET", "http://h/"): (200, WML, page)})
    shown = result_of(defer.ensureDeferred(b.open("http://h/")))
    assert shown.text.splitlines() == [
        "== T & t ==",
        "Hello there",
        "[2]One [3]Two",
        "[Value: dflt] [pw: ]",
        "[pic][s: A | B]",
        "(1) OK",
    ]
    assert [a.label for a in shown.actions] == ["OK", "One", "Two"]
    b.set("pw", "secret")
    assert "[pw: ******]" in b.page().text


def test_go_post_with_postfields_and_variables():
    form = deck(b'<card><p><input name="msg"/><anchor>Send<go method="post" href="/send?x=$(msg)">'
                b'<postfield name="to" value="alice"/><postfield name="msg" value="$(msg)"/>'
                b'<setvar name="after" value="yes"/></go></anchor></p></card>')
    done = deck(b'<card title="Done"><p>ok $(after)</p></card>')
    b, http = browser_for({("GET", "http://h/f"): (200, WML, form),
                           ("POST", "http://h/send"): (200, WML, done)})
    result_of(defer.ensureDeferred(b.open("http://h/f")))
    b.set("msg", "hi & bye")
    page = result_of(defer.ensureDeferred(b.follow(1)))
    last = http.requests[-1]
    assert last["method"] == "POST" and last["url"] == "http://h/send?x=hi%20%26%20bye"
    assert parse_qsl(last["data"].decode()) == [("to", "alice"), ("msg", "hi & bye")]
    assert last["headers"]["Content-Type"] == ["application/x-www-form-urlencoded"]
    assert page.text == "== Done ==\nok yes"


def test_go_get_puts_fields_in_the_query():
    form = deck(b'<card><do type="accept"><go href="/s"><postfield name="q" value="a b"/></go></do>'
                b'<p>x</p></card>')
    b, http = browser_for({("GET", "http://h/f"): (200, WML, form),
                           ("GET", "http://h/s"): (200, WML, deck(b"<card><p>r</p></card>"))})
    result_of(defer.ensureDeferred(b.open("http://h/f")))
    result_of(defer.ensureDeferred(b.accept()))
    assert http.requests[-1]["url"] == "http://h/s?q=a+b"


def test_cards_in_one_deck_history_and_events():
    two = deck(b'<card id="a" title="A"><p><a href="#b">to b</a></p></card>'
               b'<card id="b" title="B"><onevent type="onenterforward"><refresh>'
               b'<setvar name="x" value=""/></refresh></onevent>'
               b'<p>x=[$(x)]<anchor>back<prev/></anchor></p></card>')
    b, http = browser_for({("GET", "http://h/d"): (200, WML, two)})
    result_of(defer.ensureDeferred(b.open("http://h/d")))
    b.set("x", "old")
    page = result_of(defer.ensureDeferred(b.follow(1)))
    assert page.text.startswith("== B ==\nx=[]")   # onenterforward cleared it
    assert len(http.requests) == 1                  # same deck: nothing fetched
    page = result_of(defer.ensureDeferred(b.follow(1)))
    assert page.text.startswith("== A ==")


def test_newcontext_clears_variables_and_history():
    b, http = browser_for({
        ("GET", "http://h/1"): (200, WML, deck(b"<card><p>1</p></card>")),
        ("GET", "http://h/2"): (200, WML, deck(b'<card newcontext="true"><p>2</p></card>')),
    })
    result_of(defer.ensureDeferred(b.open("http://h/1")))
    b.set("v", "1")
    result_of(defer.ensureDeferred(b.open("http://h/2")))
    assert b.vars == {} and b.history == []


def test_cookies_kept_sent_and_deleted_and_redirects_followed():
    b, http = browser_for({
        ("GET", "http://h/login"): (302, {"set-cookie": ["s=abc; Path=/; HttpOnly"],
                                          "location": ["/home"]}, b""),
        ("GET", "http://h/home"): (200, WML, deck(b"<card><p>home</p></card>")),
        ("GET", "http://h/out"): (200, {**WML, "set-cookie": ["s=; Max-Age=0"]},
                                  deck(b"<card><p>bye</p></card>")),
    })
    page = result_of(defer.ensureDeferred(b.open("http://h/login")))
    assert page.url == "http://h/home" and b.cookie("http://h/x", "s") == "abc"
    assert http.requests[-1]["headers"]["Cookie"] == ["s=abc"]
    result_of(defer.ensureDeferred(b.open("/out")))
    assert b.cookie("http://h/", "s") is None
    assert b.cookie("http://other/", "s") is None


def test_plain_text_and_errors():
    b, http = browser_for({("GET", "http://h/t"): (200, {"content-type": ["text/plain"]},
                                                  b"just text")})
    page = result_of(defer.ensureDeferred(b.open("http://h/t")))
    assert "just text" in page.text and page.actions == []
    with pytest.raises(BrowserError):
        result_of(defer.ensureDeferred(b.follow(1)))
    with pytest.raises(BrowserError):
        result_of(defer.ensureDeferred(b.accept()))
    with pytest.raises(BrowserError):
        result_of(defer.ensureDeferred(b.open("file:///etc/passwd")))


def test_a_hostile_deck_is_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE wml [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
            b"<wml><card><p>&b;</p></card></wml>")
    b, http = browser_for({("GET", "http://h/b"): (200, WML, bomb)})
    with pytest.raises(BrowserError, match="entities"):
        result_of(defer.ensureDeferred(b.open("http://h/b")))


def test_a_network_failure_is_a_browser_error():
    class Down(FakeHTTP):
        def request(self, *a, **kw):
            return defer.fail(ConnectionRefusedError("no"))

    b = WMLBrowser(Down({}))
    with pytest.raises(BrowserError, match="cannot fetch"):
        result_of(defer.ensureDeferred(b.open("http://h/")))


# -- on the real pages ----------------------------------------------------------------------

def run(net, coro):
    d = defer.ensureDeferred(coro)
    net.router.flush()
    return result_of(d)


def test_the_browser_on_the_real_pages():
    net = Net()
    assert net.world.register("bob").status == 201
    alice = net.world.user("alice")
    alice.post("/api/contacts", contact="bob")
    hb = alice.heartbeat()
    b = WMLBrowser(net.router)
    page = run(net, b.open(BASE + "/wml/"))
    assert page.text.startswith("== Presence ==")
    b.set("u", "bob")
    b.set("pw", "correct horse")
    page = run(net, b.accept())
    assert "Hello bob" in page.text
    assert b.cookie(BASE, "presence_session")
    labels = [a.label for a in page.actions]
    page = run(net, b.follow(labels.index("Buddies") + 1))
    assert page.text.splitlines()[0] == "== Buddies =="   # bob's book is empty
    page = run(net, b.open("/wml/chat?with=alice"))
    assert "alice is online" in page.text
    b.set("msg", "hello from the phone & $(you)")
    page = run(net, b.accept())
    assert "Sent." in page.text
    head, _, payload = hb.events()[-1].text.partition("\n")
    assert head.startswith("msg chat bob ") and payload == "hello from the phone & $(you)"
    assert b.vars["msg"] == ""   # the chat card clears its field on entry
    page = run(net, b.open("/wml/"))
    labels = [a.label for a in page.actions]
    page = run(net, b.follow(labels.index("Log out") + 1))   # <go method="post">
    assert "Logged out." in page.text
    assert b.cookie(BASE, "presence_session") is None
