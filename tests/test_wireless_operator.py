"""The simulator's HTTP face in memory: Kannel's sendsms words and codes,
WAP push with PAP result codes, and the handset API (long-poll, texts,
detach) - over real request parsing and Klein routing (StubTreq)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet import defer

from helpers import logged_errors, result_of  # noqa: F401
from presence.wireless import si
from test_wireless_support import PASSWORD, SIM, USER, Net, Reply

BOB = "+15550001"
CAROL = "+15550002"
AUTH = {"username": USER, "password": PASSWORD}
BEARER = {"Authorization": [f"Bearer s{BOB}"]}


@pytest.fixture
def net(logged_errors):
    n = Net()
    n.trust_any_handset()
    n.record_reports()
    yield n
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def attach(net, number=BOB):
    assert net.get(f"{SIM}/handset/{number}/poll", wait="0").status == 200


def poll(net, number=BOB, after=0) -> list:
    r = net.get(f"{SIM}/handset/{number}/poll", after=str(after), wait="0")
    assert r.status == 200, r.body
    return r.json["messages"]


def sendsms(net, method="GET", **fields) -> Reply:
    if method == "GET":
        return net.get(f"{SIM}/cgi-bin/sendsms", **fields)
    return net.post(f"{SIM}/cgi-bin/sendsms", **fields)


# -- sendsms ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST"])
def test_sendsms_accepts_and_delivers(net, method):
    attach(net)
    r = sendsms(net, method, **AUTH, to=BOB, text="hello bob", **{"from": "12345"})
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    assert r.header("content-type").startswith("text/plain")
    [m] = poll(net)
    assert (m["from"], m["text"], m["type"]) == ("12345", "hello bob", "sms")


def test_sendsms_several_receivers_and_plus_as_space(net):
    attach(net)
    attach(net, CAROL)
    # an unencoded '+' arrives as a space: still the same numbers
    r = net.call("GET", f"{SIM}/cgi-bin/sendsms?username={USER}&password={PASSWORD}"
                        "&to=+15550001+%2B15550002+15550001&text=hi")
    assert r.status == 202
    assert [m["text"] for m in poll(net)] == ["hi"]
    assert [m["text"] for m in poll(net, CAROL)] == ["hi"]


@pytest.mark.parametrize("fields, status, text", [
    ({"to": BOB, "text": "x"}, 403, "Authorization failed for sendsms"),
    ({"username": USER, "password": "wrong", "to": BOB}, 403, "Authorization failed for sendsms"),
    ({"username": "nobody", "password": PASSWORD, "to": BOB}, 403,
     "Authorization failed for sendsms"),
    ({**AUTH, "text": "x"}, 400, "Missing receiver number, rejected"),
    ({**AUTH, "to": "", "text": "x"}, 400, "Empty receiver number not allowed, rejected"),
    ({**AUTH, "to": "alice bob", "text": "x"}, 400,
     "Number(s) has/have been denied by white- and/or black-lists."),
    ({**AUTH, "to": BOB, "dlr-mask": "64"}, 400, "DLR-Mask field misformed, rejected"),
    ({**AUTH, "to": BOB, "dlr-mask": "3", "dlr-url": "ftp://h/"}, 400,
     "DLR-URL field misformed, rejected"),
    ({**AUTH, "to": BOB, "validity": "-5"}, 400, "Validity field misformed, rejected"),
    ({**AUTH, "to": BOB, "from": "<script>"}, 400, "Sender field misformed, rejected"),
    ({**AUTH, "to": BOB, "text": "x", "charset": "no-such-charset"}, 400,
     "Charset or body misformed, rejected"),
])
def test_sendsms_refusals_use_kannel_words(net, fields, status, text):
    r = sendsms(net, **fields)
    assert (r.status, r.text) == (status, text)


def test_auth_comes_before_everything_else(net):
    assert sendsms(net, password="x").status == 403


def test_some_receivers_denied(net):
    attach(net)
    r = sendsms(net, **AUTH, to=f"{BOB} bogus", text="x")
    assert r.status == 202
    assert r.text == "0: Accepted for delivery Denied receivers are: bogus"


def test_too_long_text_is_refused_and_long_text_split(net):
    attach(net)
    r = sendsms(net, **AUTH, to=BOB, text="y" * 1531)
    assert r.status == 400 and "Text too long" in r.text
    r = sendsms(net, **AUTH, to=BOB, text="ж" * 100)
    assert r.status == 202
    [m] = poll(net)
    assert (m["coding"], m["parts"], m["text"]) == ("ucs2", 2, "ж" * 100)


def test_kannel_post_mode_with_headers(net):
    attach(net)
    r = net.call("POST", f"{SIM}/cgi-bin/sendsms", data="body text".encode(),
                 headers={"Content-Type": ["text/plain"], "X-Kannel-Username": [USER],
                          "X-Kannel-Password": [PASSWORD], "X-Kannel-To": [BOB],
                          "X-Kannel-From": ["555"]})
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    [m] = poll(net)
    assert (m["from"], m["text"]) == ("555", "body text")


def test_charset_is_honoured(net):
    attach(net)
    r = net.call("GET", f"{SIM}/cgi-bin/sendsms?username={USER}&password={PASSWORD}"
                        f"&to=%2B15550001&charset=ISO-8859-1&text=caf%E9")
    assert r.status == 202
    assert poll(net)[0]["text"] == "café"


def test_sendsms_delivery_report_escapes(net):
    attach(net)
    url = "http://app.test/dlr?type=%d&to=%p&from=%P&id=%I&ts=%T&ans=%A"
    r = sendsms(net, **AUTH, to=BOB, text="hi", **{"from": "777", "dlr-mask": "1",
                                                   "dlr-url": url})
    assert r.status == 202
    [m] = poll(net)
    assert net.sent == []
    poll(net, after=m["seq"])
    [report] = net.sent
    q = parse_qs(urlsplit(report).query)
    assert q["type"] == ["1"] and q["to"] == [BOB] and q["from"] == ["777"]
    assert q["id"] == [m["id"]] and q["ts"] == [str(int(net.clock.seconds()))]
    assert "stat:DELIVRD" in q["ans"][0]


def test_validity_parameter_in_minutes(net):
    attach(net)
    net.sim.detach(BOB)
    sendsms(net, **AUTH, to=BOB, text="x", validity="1", **{"dlr-mask": "2",
                                                            "dlr-url": "http://a.test/%d"})
    net.clock.advance(59)
    assert net.sent == []
    net.clock.advance(1)
    assert net.sent == ["http://a.test/2"]


# -- WAP push --------------------------------------------------------------------

def wappush(net, document: bytes, ctype="text/vnd.wap.si", **params) -> Reply:
    return net.call("POST", f"{SIM}/wappush", params=params, data=document,
                    headers={"Content-Type": [ctype]})


def pap_code(r: Reply) -> int:
    return int(re.search(r'code="(\d+)"', r.text).group(1))


def test_push_accepted_and_delivered(net):
    attach(net)
    doc = si.document("http://presence.test/wml/t/abc", "alice wants to chat", si_id="r1")
    r = wappush(net, doc, **AUTH, to=BOB, **{"push-id": "p1"})
    assert r.status == 202 and pap_code(r) == 1001
    assert 'push-id="p1"' in r.text and "Accepted for processing" in r.text
    assert r.header("content-type").startswith("application/xml")
    [m] = poll(net)
    assert m["type"] == "push" and m["href"] == "http://presence.test/wml/t/abc"
    assert m["si_id"] == "r1" and m["text"] == "alice wants to chat"


def test_push_as_form_field_and_basic_auth(net):
    attach(net)
    doc = si.document("http://h/x", "t").decode()
    r = net.call("POST", f"{SIM}/wappush", data={"to": BOB, "si": doc},
                 auth=(USER, PASSWORD))
    assert r.status == 202 and pap_code(r) == 1001
    assert len(poll(net)) == 1


BOMB = (b'<?xml version="1.0"?><!DOCTYPE si [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<si><indication href="http://h/">&c;</indication></si>')


@pytest.mark.parametrize("doc, params, status, code", [
    (si.document("http://h/", "t"), {"to": BOB}, 403, 2001),
    (si.document("http://h/", "t"), {**AUTH, "password": "no", "to": BOB}, 403, 2001),
    (si.document("http://h/", "t"), AUTH, 400, 2002),
    (si.document("http://h/", "t"), {**AUTH, "to": "bob"}, 400, 2002),
    (b"", {**AUTH, "to": BOB}, 400, 2000),
    (b"<si><indication", {**AUTH, "to": BOB}, 400, 2000),
    (BOMB, {**AUTH, "to": BOB}, 400, 2000),
    (b'<!DOCTYPE si [<!ENTITY x SYSTEM "file:///etc/passwd">]><si><indication href="http://h/">'
     b"&x;</indication></si>", {**AUTH, "to": BOB}, 400, 2000),
    (b"<si><indication href='http://h/' action='loud'>x</indication></si>",
     {**AUTH, "to": BOB}, 400, 2000),
    (si.document("http://h/", "t", expires=0), {**AUTH, "to": BOB}, 400, 2000),
    (si.document("http://h/", "t"), {**AUTH, "to": BOB, "dlr-url": "gopher://x"}, 400, 2000),
])
def test_push_errors_have_pap_codes(net, doc, params, status, code):
    attach(net)
    r = wappush(net, doc, **params)
    assert (r.status, pap_code(r)) == (status, code), r.text
    assert poll(net) == []


def test_entity_attack_reason_is_given(net):
    r = wappush(net, BOMB, **AUTH, to=BOB)
    assert "entity" in r.text


def test_push_with_a_broken_binary_document_is_refused(net):
    r = wappush(net, b"\x02\x05\x6a", ctype="application/vnd.wap.sic", **AUTH, to=BOB)
    assert (r.status, pap_code(r)) == (400, 3006)
    assert "Transformation failure: the binary document is truncated" in r.text


def test_duplicate_push_id(net):
    attach(net)
    doc = si.document("http://h/", "t")
    assert pap_code(wappush(net, doc, **AUTH, to=BOB, **{"push-id": "same"})) == 1001
    r = wappush(net, doc, **AUTH, to=BOB, **{"push-id": "same"})
    assert (r.status, pap_code(r)) == (400, 2007)


def test_push_to_an_unknown_number_is_accepted_then_reported_failed(net):
    doc = si.document("http://h/", "t")
    r = wappush(net, doc, **AUTH, to=CAROL, **{"dlr-mask": "3",
                                               "dlr-url": "http://a.test/?s=%d"})
    assert pap_code(r) == 1001
    assert net.sent == ["http://a.test/?s=2"]


# -- the handset API ------------------------------------------------------------

def pending(d) -> bool:
    box = []
    d.addBoth(lambda r: (box.append(r), r)[1])
    return not box


def test_long_poll_is_answered_when_a_text_arrives(net):
    d = net.router.request("GET", f"{SIM}/handset/{BOB}/poll?after=0&wait=25",
                           headers=BEARER)
    net.router.flush()
    assert pending(d)
    assert sendsms(net, **AUTH, to=BOB, text="wake up").status == 202
    net.router.flush()
    response = result_of(d)
    body = result_of(net.router.content(response))
    assert response.code == 200 and b"wake up" in body


def test_long_poll_timeout(net):
    d = net.router.request("GET", f"{SIM}/handset/{BOB}/poll?wait=5", headers=BEARER)
    net.router.flush()
    net.clock.advance(5)
    net.router.flush()
    response = result_of(d)
    assert response.code == 200
    assert result_of(net.router.content(response)) == (
        b'{"number": "+15550001", "messages": []}')


def test_handset_send_and_status_and_detach(net):
    attach(net, CAROL)
    r = net.post(f"{SIM}/handset/{BOB}/send", to=CAROL, text="hi carol")
    assert r.status == 202 and r.json["status"] == "accepted"
    assert poll(net, CAROL)[0]["text"] == "hi carol"
    status = net.get(f"{SIM}/handset/{CAROL}").json
    assert status["known"] is True and status["attached"] is True
    assert net.call("POST", f"{SIM}/handset/{CAROL}/detach").status == 204
    assert net.get(f"{SIM}/handset/{CAROL}").json["attached"] is False
    # a handset that proved itself but never attached: nothing to switch off
    assert net.call("POST", f"{SIM}/handset/+19999999/detach").status == 204


@pytest.mark.parametrize("path, method, data, status", [
    ("/handset/bob/poll", "GET", None, 400),
    ("/handset/+15550001/poll?wait=1000", "GET", None, 400),
    ("/handset/+15550001/poll?wait=x", "GET", None, 400),
    ("/handset/+15550001/poll?after=-1", "GET", None, 400),
    ("/handset/+15550001/send", "POST", {"to": "+15550002"}, 400),
    ("/handset/+15550001/send", "POST", {"text": "x"}, 400),
    ("/handset/+15550001/send", "POST", {"to": "+15559999", "text": "x"}, 404),
    ("/handset/+15550001/send", "POST", {"to": "7777", "text": "x"}, 202),
    ("/handset/x/detach", "POST", None, 400),
    ("/nowhere", "GET", None, 404),
    ("/cgi-bin/sendsms", "DELETE", None, 405),
])
def test_handset_api_errors_are_json(net, path, method, data, status):
    r = net.call(method, SIM + path, data=data)
    assert r.status == status, r.body
    if status >= 400:
        assert set(r.json) == {"error"}


def test_index(net):
    r = net.get(SIM + "/")
    assert r.status == 200 and b"simulator" in r.body
