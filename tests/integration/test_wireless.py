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
from pathlib import Path

import pytest

from presence_harness import Api, expect, register

pytestmark = pytest.mark.integration

VALIDITY = 3
DTD_PATH = Path(__file__).parent.parent / "wml" / "wml_1.1.dtd"


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "smsc_validity": VALIDITY,
            "smsc_user": "kannel", "smsc_password": "Pw-smsc-secret"}


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


def handset_status(sim: Api, number: str) -> dict:
    return expect(sim.get("/handset/" + urllib.parse.quote(number)), 200).json()


def start_handset(server, number: str, script: str, tmp_path: Path) -> tuple:
    path = tmp_path / f"script-{number[1:]}.txt"
    path.write_text(script)
    out = tmp_path / f"handset-{number[1:]}.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "presence.cli.handset",
         "--smsc", f"http://{server.host}:{server.smsc_port}", "--number", number,
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
    number = new_number()
    bob = register(api, wireless=number)
    alice = make_user("alice")
    alice_hb = heartbeats(alice)
    proc, out = start_handset(server, number, SCRIPT.format(alice=alice.name), tmp_path)
    try:
        until(lambda: handset_status(sim, number)["attached"], 20, "the handset to attach")
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
    # the link was for one use only
    link = re.search(r"<(http://\S+/wml/t/\S+)>", shown).group(1)
    again = api.get(urllib.parse.urlsplit(link).path)
    assert again.status == 410 and again.content_type == "text/vnd.wap.wml"


def test_detached_handset_gives_wireless_unavailable(api, sim, make_user, heartbeats):
    number = new_number()
    bob = register(api, wireless=number)
    alice = make_user("alice")
    alice_hb = heartbeats(alice)
    q = "/handset/" + urllib.parse.quote(number)
    expect(sim.get(q + "/poll", query={"wait": 0}), 200)       # on the network once
    expect(sim.post(q + "/detach"), 204)                        # then switched off
    assert handset_status(sim, number)["attached"] is False
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
    number = new_number()
    q = "/handset/" + urllib.parse.quote(number)
    expect(sim.get(q + "/poll", query={"wait": 0}), 200)
    r = sim.get("/cgi-bin/sendsms", query={**AUTH, "from": "12345", "to": number,
                                           "text": "your code is 4711", "dlr-mask": "3",
                                           "dlr-url": reports.url("ok")})
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    messages = expect(sim.get(q + "/poll", query={"wait": 5}), 200).json()["messages"]
    assert [(m["from"], m["text"]) for m in messages] == [("12345", "your code is 4711")]
    assert reports.seen == []            # handed to the phone, not yet acknowledged
    expect(sim.get(q + "/poll", query={"after": messages[0]["seq"], "wait": 0}), 200)
    [report] = reports.wait(1, 10)
    assert report["tag"] == "ok" and report["type"] == "1"
    assert report["to"] == number and report["from"] == "12345"
    assert "stat:DELIVRD" in report["answer"]
    assert abs(int(report["time"]) - time.time()) < 60


def test_kannel_sendsms_to_a_switched_off_handset_reports_failure(api, sim, reports):
    number = new_number()
    q = "/handset/" + urllib.parse.quote(number)
    expect(sim.get(q + "/poll", query={"wait": 0}), 200)
    expect(sim.post(q + "/detach"), 204)
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
    number = new_number()
    q = "/handset/" + urllib.parse.quote(number)
    expect(sim.get(q + "/poll", query={"wait": 0}), 200)
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
    expect(sim.get(q + "/poll", query={"wait": "x"}), 400)
    expect(sim.get("/handset/bob/poll"), 400)
    # nothing reached the handset, and both servers still answer
    assert expect(sim.get(q + "/poll", query={"wait": 0}), 200).json()["messages"] == []
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
    for path, cookie in (("/wml/", None), ("/wml/login", None),
                         ("/wml/buddies", user.session), ("/wml/messages", user.session),
                         ("/wml/chat?with=" + user.name, user.session),
                         ("/wml/nowhere", None)):
        headers = {"Cookie": f"presence_session={cookie}"} if cookie else None
        r = api.get(path, headers=headers)
        assert r.content_type == "text/vnd.wap.wml", (path, r)
        assert len(r.body) < 1400, path
        assert dtd.validate(etree.fromstring(r.body, parser)), (path, dtd.error_log)
