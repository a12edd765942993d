"""Wireless end to end on the real ``twistd -n presence`` (spec section 8):
the SMS / WAP push simulator runs on its own ``--smsc`` port; the real
``presence-handset`` emulator attaches a number; a PC user texts the
handset, the push link logs the handset's user in, and the two chat both
ways; a detached handset turns into ``msg wireless unavailable``; a
Kannel-style ``sendsms`` caller gets its delivery reports; bad input gets
its documented errors and breaks nothing.

Waits are for conditions (a frame, a status, a line of output, a report)
with deadlines; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import http.server
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from presence_harness import Api, User, expect, login, register

pytestmark = pytest.mark.integration

VALIDITY = 3
DTD_PATH = Path(__file__).parent.parent / "wml" / "wml_1.1.dtd"


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "smsc_validity": VALIDITY,
            "smsc_user": "kannel", "smsc_password": "Pw-smsc-secret",
            "dlr_allow": "127.0.0.1"}


AUTH = {"username": "kannel", "password": "Pw-smsc-secret"}


def new_number() -> str:
    return "+1555" + str(secrets.randbelow(10 ** 7)).zfill(7)


@pytest.fixture
def sim(server) -> Api:
    assert server.smsc_port, "the ready line names no smsc= port"
    return Api(server.host, server.smsc_port)


def until(check, timeout: float, what: str, interval: float = 0.05):
    """Poll ``check()`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # polling interval of a condition wait
    raise AssertionError("loop bound")


@dataclass
class Handset:
    """A registered user's handset number and its secret."""

    user: User
    number: str
    secret: str

    @property
    def path(self) -> str:
        return "/handset/" + urllib.parse.quote(self.number)

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.secret}"}


def new_handset(api: Api, prefix: str = "h") -> Handset:
    """Register a user with a handset number and issue its secret."""
    from presence_harness import unique_name

    number = new_number()
    user = login(api, register(api, unique_name(prefix), wireless=number))
    r = expect(api.post("/api/wireless/secret", form=user.auth), 201)
    assert r.json()["number"] == number
    return Handset(user, number, r.json()["secret"])


def hs_get(sim: Api, hs: Handset, what: str = "poll", **query) -> "object":
    return sim.get(hs.path + ("/" + what if what else ""), query=query or None,
                   headers=hs.headers)


def hs_post(sim: Api, hs: Handset, what: str, **form) -> "object":
    return sim.post(f"{hs.path}/{what}", form=form, headers=hs.headers)


def handset_status(sim: Api, hs: Handset) -> dict:
    return expect(hs_get(sim, hs, ""), 200).json()


def start_handset(server, hs: Handset, script: str, tmp_path: Path) -> tuple:
    number = hs.number
    path = tmp_path / f"script-{number[1:]}.txt"
    path.write_text(script)
    secret = tmp_path / f"secret-{number[1:]}"
    secret.write_text(hs.secret + "\n")
    secret.chmod(0o600)
    out = tmp_path / f"handset-{number[1:]}.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "presence.cli.handset",
         "--smsc", f"http://{server.host}:{server.smsc_port}", "--number", number,
         "--secret-file", str(secret),
         "--server", server.base, "--script", str(path), "--wait", "5"],
        stdout=open(out, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, out


def text_handset(api: Api, user, to: str):
    return api.post("/api/wireless/text", form={**user.auth, "to": to})


# -- PC to handset, and back ----------------------------------------------------------

SCRIPT = """\
# bob's handset: wait for the link, the PC user's line, then answer
wait-for "msg initChat {alice}" 30
wait-for "^  hi bob, this is the pc$" 30
reply hello {alice}, this is the handset
wait-for "^Sent\\.$" 30
quit
"""


def test_pc_user_texts_a_handset_and_they_chat(api, sim, server, make_user, heartbeats,
                                               tmp_path):
    hs = new_handset(api, "bob")
    bob = hs.user
    alice = make_user("alice")
    alice_hb = heartbeats(alice)
    proc, out = start_handset(server, hs, SCRIPT.format(alice=alice.name), tmp_path)
    try:
        until(lambda: handset_status(sim, hs)["attached"], 20, "the handset to attach")
        r = text_handset(api, alice, bob.name)
        assert (r.status, r.json()) == (202, {"status": "sent"}), r
        # delivered to the phone: the sender is told
        alice_hb.wait_for(f"msg initChat {bob.name}", timeout=20)
        # the handset opened the link and holds its heartbeat: bob is online
        until(lambda: api.get(f"/api/presence/{bob.name}").json().get("online"), 20,
              "bob online from his handset")
        r = expect(api.post("/chat", form={**alice.auth, "to": bob.name,
                                           "msg": "hi bob, this is the pc"}), 202)
        assert r.json()["delivered"] == "online"
        f = alice_hb.wait_for(lambda f: f.kind == "chat" and f.words[2] == bob.name,
                              timeout=30)
        assert f.payload == f"hello {alice.name}, this is the handset"
        assert proc.wait(timeout=30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    shown = out.read_text()
    assert f"<< PUSH from 7777: {alice.name} wants to chat <{server.base}/wml/t/" in shown
    assert f"== Chat {alice.name} ==" in shown
    assert f"* holding the heartbeat of {bob.name}" in shown
    # the link was for one use only: even with the handset's proof
    link = re.search(r"<(http://\S+/wml/t/\S+)>", shown).group(1)
    again = open_link(api, link, hs)
    assert again.status == 410 and again.content_type == "text/vnd.wap.wml"
    # the handset's secret never reached the command line, the output or the log
    assert hs.secret not in shown and hs.secret not in server.output()


def open_link(api: Api, link: str, hs: Handset | None):
    from presence.wireless.keys import proof_for

    path = urllib.parse.urlsplit(link).path
    headers = None
    if hs is not None:
        headers = {"X-Handset-Proof": proof_for(hs.secret, path.rsplit("/", 1)[1])}
    return api.get(path, headers=headers)


def test_detached_handset_gives_wireless_unavailable(api, sim, make_user, heartbeats):
    hs = new_handset(api, "bob")
    bob = hs.user
    alice = make_user("alice")
    alice_hb = heartbeats(alice)
    expect(hs_get(sim, hs, wait=0), 200)                        # on the network once
    expect(hs_post(sim, hs, "detach"), 204)                     # then switched off
    assert handset_status(sim, hs)["attached"] is False
    sent = time.monotonic()
    assert text_handset(api, alice, bob.name).status == 202
    f = alice_hb.wait_for(f"msg wireless unavailable {bob.name}", timeout=VALIDITY + 15)
    assert f.received_at - sent >= VALIDITY - 0.5   # after the validity period


def test_a_number_never_seen_fails_at_once(api, make_user, heartbeats):
    bob = register(api, wireless=new_number())
    alice = make_user("alice")
    alice_hb = heartbeats(alice)
    assert text_handset(api, alice, bob.name).status == 202
    alice_hb.wait_for(f"msg wireless unavailable {bob.name}", timeout=VALIDITY)


# -- a Kannel client and its delivery reports ---------------------------------------------

class Reports:
    """A small HTTP server in the test that records delivery reports."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, tag: str) -> str:
        return (f"http://127.0.0.1:{self.port}/dlr?tag={tag}&type=%d&to=%p&from=%P"
                f"&time=%T&answer=%A")

    def wait(self, count: int, timeout: float) -> list:
        until(lambda: len(self.seen) >= count, timeout, f"{count} delivery report(s)")
        return [dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(p).query))
                for p in self.seen]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def reports():
    r = Reports()
    yield r
    r.close()


def test_kannel_sendsms_with_dlr_url_gets_its_delivery_report(api, sim, reports):
    hs = new_handset(api)
    number = hs.number
    expect(hs_get(sim, hs, wait=0), 200)
    r = sim.get("/cgi-bin/sendsms", query={**AUTH, "from": "12345", "to": number,
                                           "text": "your code is 4711", "dlr-mask": "3",
                                           "dlr-url": reports.url("ok")})
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    messages = expect(hs_get(sim, hs, wait=5), 200).json()["messages"]
    assert [(m["from"], m["text"]) for m in messages] == [("12345", "your code is 4711")]
    assert reports.seen == []            # handed to the phone, not yet acknowledged
    expect(hs_get(sim, hs, after=messages[0]["seq"], wait=0), 200)
    [report] = reports.wait(1, 10)
    assert report["tag"] == "ok" and report["type"] == "1"
    assert report["to"] == number and report["from"] == "12345"
    assert "stat:DELIVRD" in report["answer"]
    assert abs(int(report["time"]) - time.time()) < 60


def test_kannel_sendsms_to_a_switched_off_handset_reports_failure(api, sim, reports):
    hs = new_handset(api)
    number = hs.number
    expect(hs_get(sim, hs, wait=0), 200)
    expect(hs_post(sim, hs, "detach"), 204)
    r = sim.post("/cgi-bin/sendsms", form={**AUTH, "to": number, "text": "anyone?",
                                           "dlr-mask": "2", "dlr-url": reports.url("off")})
    assert r.status == 202
    [report] = reports.wait(1, VALIDITY + 15)
    assert report["type"] == "2" and "stat:EXPIRED" in report["answer"]


# -- bad input on the real server ---------------------------------------------------------

BOMB = ('<?xml version="1.0"?><!DOCTYPE si [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
        '<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;"><!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;">]>'
        '<si><indication href="http://h/">&e;&e;&e;&e;&e;&e;&e;&e;</indication></si>')


def test_bad_input_gets_documented_errors(api, sim, server, make_user):
    hs = new_handset(api)
    number = hs.number
    expect(hs_get(sim, hs, wait=0), 200)
    cases = [
        (sim.get("/cgi-bin/sendsms", query={"to": number, "text": "x"}),
         403, "Authorization failed for sendsms"),
        (sim.get("/cgi-bin/sendsms", query={**AUTH, "text": "x"}),
         400, "Missing receiver number, rejected"),
        (sim.get("/cgi-bin/sendsms", query={**AUTH, "to": "not-a-number", "text": "x"}),
         400, "Number(s) has/have been denied by white- and/or black-lists."),
        (sim.get("/cgi-bin/sendsms", query={**AUTH, "to": number, "text": "x" * 2000}),
         400, None),
    ]
    for r, status, text in cases:
        assert r.status == status, r
        if text:
            assert r.text == text
    for doc, code in ((BOMB, 2000), ("<si><indication", 2000)):
        r = sim.post("/wappush", query={**AUTH, "to": number}, body=doc,
                     headers={"Content-Type": "text/vnd.wap.si"})
        assert r.status == 400 and f'code="{code}"' in r.text, r
    r = sim.post("/wappush", query={**AUTH, "to": "nobody"}, body="<si/>",
                 headers={"Content-Type": "text/vnd.wap.si"})
    assert r.status == 400 and 'code="2002"' in r.text
    expect(hs_get(sim, hs, wait="x"), 400)
    expect(sim.get("/handset/bob/poll"), 400)
    # nothing reached the handset, and both servers still answer
    assert expect(hs_get(sim, hs, wait=0), 200).json()["messages"] == []
    alice = make_user("alice")
    nohandset = make_user("carol")
    assert text_handset(api, alice, "nobody-at-all").status == 404
    assert text_handset(api, alice, nohandset.name).status == 404
    r = api.post("/api/wireless/text", form={"me": alice.name, "id": "forged", "to": "x"})
    assert r.status == 403
    assert api.get("/wml/t/never-issued").status == 404
    assert server.running


def test_wml_pages_are_valid_wml_1_1(api, make_user):
    from lxml import etree

    dtd = etree.DTD(str(DTD_PATH))
    parser = etree.XMLParser(load_dtd=False, no_network=True, resolve_entities=False)
    user = make_user("wap")
    for path, cookie in (("/wml/", None), ("/wml/login", None), ("/wml/", user.session),
                         ("/wml/buddies", user.session), ("/wml/messages", user.session),
                         ("/wml/chat?with=" + user.name, user.session),
                         ("/wml/nowhere", None)):
        headers = {"Cookie": f"presence_session={cookie}"} if cookie else None
        r = api.get(path, headers=headers)
        assert r.content_type == "text/vnd.wap.wml", (path, r)
        assert len(r.body) < 1400, path
        assert dtd.validate(etree.fromstring(r.body, parser)), (path, dtd.error_log)


# -- a hostile network ------------------------------------------------------------------

def pushed_link(api, sim, alice, hs: Handset) -> str:
    """alice texts ``hs``; the handset polls (with its secret) and gets the link."""
    expect(hs_get(sim, hs, wait=0), 200)
    expect(text_handset(api, alice, hs.user.name), 202)
    messages = expect(hs_get(sim, hs, wait=5), 200).json()["messages"]
    [push] = [m for m in messages if m["type"] == "push"]
    expect(hs_get(sim, hs, after=push["seq"], wait=0), 200)
    return push["href"]


def test_without_the_secret_nobody_reads_a_handset_and_numbers_do_not_show(api, sim,
                                                                           make_user):
    victim = new_handset(api, "victim")
    alice = make_user("alice")
    pushed = expect(hs_get(sim, victim, wait=0), 200)
    expect(text_handset(api, alice, victim.user.name), 202)
    unknown = Handset(victim.user, new_number(), "")
    tries = {"none": {}, "wrong": {"Authorization": "Bearer " + "x" * 32},
             "other": {"Authorization": f"Bearer {new_handset(api).secret}"}}
    answers = []
    for name, headers in tries.items():
        for hs in (victim, unknown):
            r = sim.get(hs.path + "/poll", query={"wait": 0}, headers=headers)
            answers.append((r.status, r.body))
            assert b"wml/t" not in r.body and b"wants to chat" not in r.body
    assert set(answers) == {(403, answers[0][1])}, answers
    # the push is still waiting for the real handset
    messages = expect(hs_get(sim, victim, wait=5), 200).json()["messages"]
    assert [m["type"] for m in messages] == ["push"], (pushed, messages)
    # similar answer times for a registered and an unknown number (other
    # numbers than the victim's: guesses are throttled per address and number)
    known, unknown = new_handset(api), Handset(victim.user, new_number(), "")
    times = {"known": [], "unknown": []}
    for _ in range(9):
        for key, hs in (("known", known), ("unknown", unknown)):
            times[key].append(sim.get(hs.path + "/poll", query={"wait": 0}).elapsed)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    assert abs(median["known"] - median["unknown"]) < 0.05, median


def test_a_push_link_needs_its_handset_works_once_and_is_limited_to_wml(api, sim, make_user):
    bob = new_handset(api, "bob")
    carol = new_handset(api, "carol")
    alice = make_user("alice")
    link = pushed_link(api, sim, alice, bob)
    # without proof, or with another handset's credentials: refused, not used up
    assert open_link(api, link, None).status == 403
    assert open_link(api, link, carol).status == 403
    r = open_link(api, link, bob)
    assert r.status == 200 and r.content_type == "text/vnd.wap.wml"
    assert f"{alice.name} wants to chat." in r.text
    assert "presence_session=" in (r.headers.get("Set-Cookie") or "")
    sid = r.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert open_link(api, link, bob).status == 410            # used twice: refused
    # the session is limited to the wireless pages
    cookie = {"Cookie": f"presence_session={sid}"}
    auth = {"me": bob.user.name, "id": sid}
    for path, form in (("/api/aliases", {"alias": "taken-over"}),
                       ("/api/groups", {"name": "takeover-group"}),
                       ("/api/contacts", {"contact": alice.name}),
                       ("/api/wireless/secret", {}),
                       ("/chat", {"to": alice.name, "msg": "x"})):
        assert api.post(path, form={**auth, **form}).status == 403, path
        assert api.post(path, form=form, headers=cookie).status == 403, path
    assert api.get("/api/session", query=auth).status == 403
    assert expect(api.get("/api/wireless/session", headers=cookie), 200).json()["user"] \
        == bob.user.name
    r = api.post("/wml/chat", form={"to": alice.name, "msg": "from the link"}, headers=cookie)
    assert r.status == 200 and "Sent." in r.text or "offline" in r.text
    assert api.get("/wml/logout", headers=cookie).status == 405   # a state change: POST only
    assert api.get("/wml/buddies", headers=cookie).status == 200
    assert api.post("/wml/logout", headers=cookie).status == 200
    assert api.get("/wml/buddies", headers=cookie).status == 403


def test_dlr_urls_off_the_allow_list_are_refused_and_never_fetched(api, sim, reports):
    hs = new_handset(api)
    expect(hs_get(sim, hs, wait=0), 200)
    for url in ("http://10.0.0.1/dlr?s=%d", "http://169.254.169.254/latest/meta-data/",
                "http://not-on-the-list.example/dlr", f"http://localhost:{reports.port}/x"):
        r = sim.get("/cgi-bin/sendsms", query={**AUTH, "to": hs.number, "text": "x",
                                               "dlr-mask": "31", "dlr-url": url})
        assert r.status == 400 and "not on the operator's list (--dlr-allow)" in r.text, r
    assert reports.seen == []
    assert expect(hs_get(sim, hs, wait=0), 200).json()["messages"] == []


def test_text_that_is_not_unicode_is_refused(api, sim, make_user):
    hs = new_handset(api)
    expect(hs_get(sim, hs, wait=0), 200)
    for query in ("text=%ED%B0%80", "text=%FF", "text=%DC%00&charset=utf-16be"):
        r = sim.get("/cgi-bin/sendsms?" + urllib.parse.urlencode(AUTH) +
                    "&to=" + urllib.parse.quote(hs.number) + "&" + query)
        assert r.status == 400, (query, r)
    r = sim.post(hs.path + "/send", body=b"to=7777&text=%40x+%ED%B0%80", headers={
        **hs.headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 400
    r = api.post("/wml/chat", body=b'{"to": "x", "msg": "\\udc00"}', headers={
        "Content-Type": "application/json", "Cookie": f"presence_session={hs.user.session}"})
    assert r.status == 400 and r.content_type == "text/vnd.wap.wml"
    assert expect(hs_get(sim, hs, wait=0), 200).json()["messages"] == []


def test_safe_defaults_and_short_lived_links(server_factory, tmp_path):
    """No --smsc-password: a random one in a 0600 file, never logged; the
    default presence/presence is refused and wrong passwords are throttled;
    a push link expires (--wml-link-ttl)."""
    s = server_factory.start(keepalive=5, poll=1, linger=2, wml_link_ttl=1)
    api, sim = s.api(), Api(s.host, s.smsc_port)
    path = s.data_dir / "smsc-password"
    password = path.read_text().strip()
    assert len(password) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert str(path) in s.output() and password not in s.output()
    statuses = [sim.get("/cgi-bin/sendsms", query={"username": "presence", "password": p,
                                                  "to": "+15550001", "text": "x"}).status
                for p in ["presence"] + [f"guess{i}" for i in range(11)]]
    assert statuses[:10] == [403] * 10 and set(statuses[10:]) == {429}, statuses
    # the server's own texts still work (another address would too)
    alice = login(api, register(api))
    hs = new_handset(api)
    link = pushed_link(api, sim, alice, hs)
    until(lambda: open_link(api, link, hs).status == 410, 10, "the link to expire")
