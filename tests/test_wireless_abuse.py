"""What a stranger can throw at the wireless front-end, in memory: wrong
operator passwords are throttled per address; ``dlr-url`` goes only to the
operator's allow-list and this server's own callback, never by redirect,
with a timeout and at most a few calls per message; text that is not
Unicode scalar values is refused with 400 everywhere; the operator
password is never a default and never logged; mobile-originated texts go
through the service's own chat rule."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from helpers import BASE, logged_errors  # noqa: F401
from presence.wireless import dlr, si
from presence.wireless.frontend import PASSWORD_FILE, WirelessFrontEnd, operator_password
from presence.wireless.simulator import MAX_REPORT_FETCHES, Simulator
from test_wireless_operator import net  # noqa: F401  (the simulator alone: a fixture)
from test_wireless_support import PASSWORD, SIM, USER, Net

BOB = "+15550001"
AUTH = {"username": USER, "password": PASSWORD}


def attach(net, number=BOB):
    assert net.get(f"{SIM}/handset/{number}/poll", wait="0").status == 200


# -- wrong operator passwords --------------------------------------------------------

def test_wrong_operator_passwords_are_throttled_then_429(net):
    attach(net)
    answers = [net.get(f"{SIM}/cgi-bin/sendsms", username=USER, password=f"guess{i}",
                       to=BOB, text="x") for i in range(12)]
    assert [(r.status, r.text) for r in answers[:10]] == [
        (403, "Authorization failed for sendsms")] * 10
    assert [r.status for r in answers[10:]] == [429, 429]
    # throttled: even the right password waits (a guess learns nothing)
    assert net.get(f"{SIM}/cgi-bin/sendsms", **AUTH, to=BOB, text="x").status == 429
    r = net.call("POST", f"{SIM}/wappush", params={**AUTH, "to": BOB},
                 data=si.document("http://h/", "t"),
                 headers={"Content-Type": [si.CONTENT_TYPE]})
    assert r.status == 429 and b'code="2001"' in r.body
    net.clock.advance(6)
    assert net.get(f"{SIM}/cgi-bin/sendsms", **AUTH, to=BOB, text="x").status == 202


# -- dlr-url -------------------------------------------------------------------------

@pytest.mark.parametrize("url, host", [
    ("http://10.0.0.1/dlr?s=%d", "10.0.0.1"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://127.0.0.1:6379/", "127.0.0.1"),
    ("http://[::1]:80/x", "::1"),
    ("http://not-listed.example/dlr", "not-listed.example"),
    ("https://APP.test.evil/dlr", "app.test.evil"),
    ("http://presence.test/api/wireless/other", "presence.test"),  # own port, other path
])
def test_a_dlr_url_off_the_allow_list_is_refused_and_never_fetched(net, url, host):
    attach(net)
    r = net.get(f"{SIM}/cgi-bin/sendsms", **AUTH, to=BOB, text="x", **{
        "dlr-mask": "31", "dlr-url": url})
    assert r.status == 400
    assert r.text == (f"DLR-URL not allowed: the host {host} is not on the operator's list"
                      " (--dlr-allow), rejected")
    push = net.call("POST", f"{SIM}/wappush", params={**AUTH, "to": BOB, "dlr-mask": "3",
                                                     "dlr-url": url},
                    data=si.document("http://h/", "t"),
                    headers={"Content-Type": [si.CONTENT_TYPE]})
    assert push.status == 400 and b'code="2000"' in push.body and b"--dlr-allow" in push.body
    assert net.sent == [] and list(net.sim.handsets[BOB].queue) == []


@pytest.mark.parametrize("url, why", [
    ("http://user:pw@app.test/", "a URL with credentials is not called"),
    ("http://app.test:99999/", "it is not a valid URL"),
])
def test_odd_dlr_urls(url, why):
    with pytest.raises(dlr.DlrRefused, match=why):
        dlr.DlrPolicy(["app.test"]).check(url)


def test_listed_hosts_and_this_servers_own_callback_are_called(net):
    attach(net)
    for url in ("http://app.test/dlr?s=%d", "https://App.Test:8443/d?s=%d",
                "http://presence.test/api/wireless/dlr?ref=x&status=%d"):
        r = net.get(f"{SIM}/cgi-bin/sendsms", **AUTH, to=BOB, text="x",
                    **{"dlr-mask": "8", "dlr-url": url})
        assert r.status == 202, r.text
    assert len(net.sent) == 3


def test_a_template_that_expands_to_another_host_is_not_fetched():
    clock = Clock()
    sent = []
    sim = Simulator(clock, fetch=lambda url: (sent.append(url), defer.succeed(200))[1],
                    dlr_policy=dlr.DlrPolicy(["%P.example"]))
    sim.poll(BOB, 0, wait=0)
    # the sender (%P) fills in the host: 169.254.169.254.example is not on the list
    sim.submit("sms", "169.254.169.254", BOB, "x", dlr_mask=8, dlr_url="http://%P.example/")
    assert sent == []


def test_report_calls_per_message_are_capped():
    clock = Clock()
    calls = []

    def failing(url):
        calls.append(url)
        return defer.fail(ConnectionRefusedError("down"))

    sim = Simulator(clock, fetch=failing, dlr_policy=dlr.DlrPolicy(["app.test"]))
    sim.poll(BOB, 0, wait=0)
    sim.detach(BOB)
    # three events (8 accepted, 4 queued, 1 delivered), each tried three times
    m = sim.submit("sms", "7777", BOB, "x", dlr_mask=31, dlr_url="http://app.test/?s=%d")
    sim.poll(BOB, 0, wait=0)
    sim.poll(BOB, m.seq, wait=0)
    for _ in range(5):
        clock.advance(5)
    assert len(calls) == MAX_REPORT_FETCHES and m.fetches == MAX_REPORT_FETCHES


def test_reports_are_fetched_without_redirects_and_with_a_timeout():
    clock = Clock()
    seen = []

    class Http:
        def request(self, method, url, **kw):
            seen.append((method, url, kw))
            return defer.Deferred()   # never answers: the timeout must end it

        def content(self, response):
            return defer.succeed(b"")

    front = WirelessFrontEnd({"smsc": "tcp:0", "smsc-password": "p"}, Net().world.service,
                             clock, http=Http())
    d = defer.ensureDeferred(front._fetch("http://app.test/x"))
    [(method, url, kw)] = seen
    assert kw["allow_redirects"] is False and 0 < kw["timeout"] <= 30
    d.cancel()
    d.addErrback(lambda f: None)
    front.stopService()


# -- text that is not Unicode scalar values ---------------------------------------------

@pytest.mark.parametrize("query", [
    "text=%ED%B0%80",                       # an encoded lone surrogate
    "text=%FF%FE",                          # not UTF-8
    "text=%DC%00&charset=utf-16be",         # a lone surrogate in UTF-16
    "text=%5Cudc00&charset=unicode_escape",  # a codec that makes surrogates
    "text=x&charset=rot13",                 # not a text charset
])
def test_sendsms_refuses_text_that_is_not_unicode(net, query):
    attach(net)
    r = net.call("GET", f"{SIM}/cgi-bin/sendsms?username={USER}&password={PASSWORD}"
                        f"&to=%2B15550001&{query}")
    assert r.status == 400 and r.text in ("Text field misformed, rejected",
                                          "Charset or body misformed, rejected")
    assert list(net.sim.handsets[BOB].queue) == []


def test_kannel_post_mode_refuses_a_broken_body(net):
    attach(net)
    r = net.call("POST", f"{SIM}/cgi-bin/sendsms", data=b"\xed\xb0\x80",
                 headers={"Content-Type": ["text/plain"], "X-Kannel-Username": [USER],
                          "X-Kannel-Password": [PASSWORD], "X-Kannel-To": [BOB]})
    assert r.status == 400


@pytest.mark.parametrize("body", [
    b'<si><indication href="http://h/">&#xDC00;</indication></si>',
    b'<si><indication href="http://h/">\xed\xb0\x80</indication></si>',
])
def test_a_push_with_a_lone_surrogate_is_refused(net, body):
    attach(net)
    r = net.call("POST", f"{SIM}/wappush", params={**AUTH, "to": BOB}, data=body,
                 headers={"Content-Type": [si.CONTENT_TYPE]})
    assert r.status == 400 and b'code="2000"' in r.body


def test_a_handset_text_that_is_not_utf8_is_refused(net):
    attach(net)
    r = net.call("POST", f"{SIM}/handset/{BOB}/send",
                 data=b"to=7777&text=%40alice+%ED%B0%80",
                 headers={"Content-Type": ["application/x-www-form-urlencoded"],
                          "Authorization": [f"Bearer s{BOB}"]})
    assert r.status == 400 and r.json["error"] == "Text field misformed, rejected"


def test_the_simulator_refuses_a_lone_surrogate_from_inside():
    from presence.wireless.simulator import SimulatorError

    sim = Simulator(Clock())
    with pytest.raises(SimulatorError) as e:
        sim.check_text("a\udc00")
    assert e.value.status == 400


def test_wml_forms_and_wireless_json_refuse_a_lone_surrogate(logged_errors):
    n = Net()
    assert n.world.register("bob").status == 201
    bob = n.world.login("bob")
    cookie = {"Cookie": [f"presence_session={bob.session}"]}
    json_body = b'{"to": "bob", "msg": "\\udc00"}'
    r = n.call("POST", BASE + "/wml/chat", data=json_body,
               headers={**cookie, "Content-Type": ["application/json"]})
    assert r.status == 400 and r.header("content-type") == "text/vnd.wap.wml"
    r = n.call("POST", BASE + "/api/wireless/text", data=b'{"to": "\\ud800x"}',
               headers={**cookie, "Content-Type": ["application/json"]})
    assert r.status == 400 and "error" in r.json
    r = n.call("GET", BASE + "/wml/chat?with=%ED%B0%80", headers=cookie)
    assert r.status == 400
    assert not logged_errors


# -- the operator password ---------------------------------------------------------------

def test_without_a_password_a_random_one_is_kept_in_a_private_file(tmp_path):
    data = str(tmp_path / "d")
    with capturedLogs() as events:
        first = operator_password({"data": data})
    path = os.path.join(data, PASSWORD_FILE)
    assert len(first) >= 32 and first != "presence"
    assert os.stat(path).st_mode & 0o777 == 0o600
    logged = "\n".join(formatEvent(e) for e in events)
    assert path in logged and first not in logged
    # the same on the next start; a given one wins
    with capturedLogs() as events:
        assert operator_password({"data": data}) == first
    assert first not in "\n".join(formatEvent(e) for e in events)
    assert operator_password({"data": data, "smsc-password": "given"}) == "given"
    assert operator_password({"data": str(tmp_path / "other")}) != first


# -- mobile-originated texts use the service's chat rule ------------------------------------

def test_a_handset_text_is_a_chat_by_the_services_rule_and_leaves_no_session(logged_errors):
    n = Net()
    assert n.world.register("bob", wireless=BOB).status == 201
    n.handset("bob", BOB)
    alice = n.world.user("alice")
    hb = alice.heartbeat()
    assert n.get(f"{SIM}/handset/{BOB}/poll", wait="0").status == 200
    calls = []
    real = n.world.service.chat

    async def spy(session, to, text, seq=None):
        calls.append((session.user.name, to, text))
        return await real(session, to, text, seq)

    n.world.service.chat = spy
    r = n.post(f"{SIM}/handset/{BOB}/send", to="7777", text="@alice hi from the phone")
    assert r.status == 202
    assert calls == [("bob", "alice", "hi from the phone")]
    assert hb.events()[-1].text.endswith("\nhi from the phone")
    # bob had no session: the one the text was sent with is gone again
    assert n.world.hub.users.user("bob") is None or not n.world.hub.users.user("bob").sessions
    texts = [m["text"] for m in n.get(f"{SIM}/handset/{BOB}/poll", wait="0").json["messages"]]
    assert texts[-1] == "To alice: delivered"
    assert not logged_errors


def test_the_servers_own_texts_go_on_while_its_address_is_throttled(logged_errors):
    n = Net()
    assert n.world.register("bob", wireless=BOB).status == 201
    n.handset("bob", BOB)
    alice = n.world.user("alice")
    for i in range(12):   # from the same (loopback) address as the gateway
        n.get(f"{SIM}/cgi-bin/sendsms", username=USER, password=f"guess{i}", to=BOB, text="x")
    assert n.get(f"{SIM}/cgi-bin/sendsms", **AUTH, to=BOB, text="x").status == 429
    assert n.get(f"{SIM}/handset/{BOB}/poll", wait="0").status == 200
    r = n.post(BASE + "/api/wireless/text", me="alice", id=alice.session, to="bob")
    assert r.status == 202, r.body
    [push] = n.get(f"{SIM}/handset/{BOB}/poll", wait="0").json["messages"]
    assert push["type"] == "push"
    # its credentials travel in HTTP Basic auth, never in a URL
    [(_, url)] = [e for e in n.router.log if "/wappush" in e[1]]
    assert "password" not in url and n.gateway.password not in url
    assert not logged_errors
