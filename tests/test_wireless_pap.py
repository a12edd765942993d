"""WAP push the PAP 2.0 way (issue 16): a PAP client written from the PAP
2.0 examples sends multipart/related pushes (control entity + content) of
Service Indications (text, and binary made by ``xml2wbxml``) and Service
Loadings to several receivers; result notifications and
deliver-before/after timestamps are honoured, and the handset emulator
shows each kind."""

from __future__ import annotations

import html
import os
import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import logged_errors  # noqa: F401
from presence.cli.handset import sms_line
from presence.wireless import pap, si, wbxml
from test_wireless_operator import attach, poll
from test_wireless_support import PASSWORD, SIM, USER, Net, Receiver

BOB = "+15550001"
CAROL = "+15550002"
DATA = os.path.join(os.path.dirname(__file__), "data", "pap")
BOUNDARY = "asdlfkjiurwghasf"


@pytest.fixture
def net(logged_errors):
    n = Net()
    n.trust_any_handset()
    n.record_reports()
    n.receiver = Receiver()
    n.router.add("app.test", n.receiver)
    yield n
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def read(name: str) -> bytes:
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def control(push_id="p1", numbers=(BOB,), notify=None, before=None, after=None) -> bytes:
    doc = read("control.xml").decode()
    addresses = "\n    ".join(f'<address address-value="WAPPUSH={n}/TYPE=PLMN@ppg.example.com"/>'
                               for n in numbers)
    delivery = " ".join(f'{name}="{pap.stamp(t)}"' for name, t in
                        (("deliver-before-timestamp", before),
                         ("deliver-after-timestamp", after)) if t is not None)
    doc = doc.replace("PUSH_ID", push_id).replace("ADDRESSES", addresses)
    doc = doc.replace("DELIVERY", delivery)
    doc = doc.replace(' ppg-notify-requested-to="NOTIFY"',
                      f' ppg-notify-requested-to="{notify}"' if notify else "")
    return doc.encode()


def multipart(ctrl: bytes, ctype: str, content: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Type: application/xml\r\n\r\n".encode() + ctrl
            + f"\r\n--{BOUNDARY}\r\nContent-Type: {ctype}\r\n"
              "Content-Transfer-Encoding: binary\r\n\r\n".encode()
            + content + f"\r\n--{BOUNDARY}--\r\n".encode())


def push(net, body: bytes, ctype=None):
    return net.call("POST", f"{SIM}/wappush", data=body, auth=(USER, PASSWORD), headers={
        "Content-Type": [ctype or f'multipart/related; boundary={BOUNDARY};'
                                  ' type="application/xml"']})


def result(r) -> tuple:
    found = re.search(r'<response-result code="(\d+)" desc="([^"]*)"', r.text)
    return r.status, int(found.group(1)), html.unescape(found.group(2))


def xml2wbxml(require_program, tmp_path, name: str) -> bytes:
    program = require_program("xml2wbxml")
    out = tmp_path / (name + ".wbxml")
    subprocess.run([program, "-o", str(out), os.path.join(DATA, name)], check=True,
                   capture_output=True, timeout=30)
    return out.read_bytes()


def test_si_text_push_to_several_receivers(net):
    attach(net)
    attach(net, CAROL)
    r = push(net, multipart(control(numbers=(BOB, CAROL, "00" + BOB[1:])),
                            "text/vnd.wap.si", read("si.xml")))
    status, code, desc = result(r)
    assert (status, code) == (202, 1001) and 'push-id="p1"' in r.text
    assert desc == f"Accepted for processing: queued for {BOB} {CAROL}"
    for number in (BOB, CAROL):
        [m] = poll(net, number)
        assert (m["content"], m["href"], m["si_id"], m["action"], m["text"]) == (
            "si", "http://www.xyz.com/email/123/abc.wml", "x1", "signal-high",
            "You have 4 new emails")


def test_binary_si_made_by_xml2wbxml(net, require_program, tmp_path):
    attach(net)
    binary = xml2wbxml(require_program, tmp_path, "si.xml")
    assert binary[:2] == b"\x03\x05"     # WBXML 1.3, SI 1.0
    assert si.parse(wbxml.decode(binary, wbxml.SI)) == si.parse(read("si.xml"))
    r = push(net, multipart(control(), "application/vnd.wap.sic", binary))
    assert result(r)[:2] == (202, 1001)
    [m] = poll(net)
    assert (m["href"], m["text"]) == ("http://www.xyz.com/email/123/abc.wml",
                                      "You have 4 new emails")


@pytest.mark.parametrize("binary", [False, True])
def test_service_loading(net, require_program, tmp_path, binary):
    attach(net)
    doc = xml2wbxml(require_program, tmp_path, "sl.xml") if binary else read("sl.xml")
    ctype = "application/vnd.wap.slc" if binary else "text/vnd.wap.sl"
    assert result(push(net, multipart(control(), ctype, doc)))[:2] == (202, 1001)
    [m] = poll(net)
    assert (m["content"], m["href"], m["action"]) == (
        "sl", "https://www.example.org/a.wml", "execute-high")


def test_result_notification_delivered_and_expired(net):
    attach(net)
    attach(net, CAROL)
    net.sim.detach(CAROL)
    now = net.clock.seconds()
    r = push(net, multipart(control(numbers=(BOB, CAROL), notify="http://app.test/n",
                                    before=now + 30), "text/vnd.wap.si", read("si.xml")))
    assert result(r)[:2] == (202, 1001)
    [m] = poll(net)
    poll(net, after=m["seq"])                # bob's handset acknowledges it
    net.router.flush()
    [(method, _, ctype, body)] = net.receiver.seen
    assert method == "POST"
    assert ctype.startswith(b"application/xml")
    assert b'<resultnotification-message push-id="p1"' in body
    assert b'message-state="delivered" code="1000"' in body
    assert f'address-value="WAPPUSH={BOB}/TYPE=PLMN@ppg.example.com"'.encode() in body
    net.clock.advance(30)                    # carol's is past deliver-before
    net.router.flush()
    assert len(net.receiver.seen) == 2
    body = net.receiver.seen[1][3]
    assert b'message-state="expired" code="4000"' in body and CAROL.encode() in body
    assert poll(net, CAROL) == []


def test_deliver_after_holds_the_push(net):
    attach(net)
    now = net.clock.seconds()
    push(net, multipart(control(after=now + 20), "text/vnd.wap.si", read("si.xml")))
    assert poll(net) == []
    net.clock.advance(20)
    assert len(poll(net)) == 1


@pytest.mark.parametrize("body, ctype, code, words", [
    (b"no parts here", None, 2000, "the multipart/related body has no boundary or no parts"),
    (multipart(control(), "text/vnd.wap.si", b"x").split(b"\r\n--" + BOUNDARY.encode()
                                                         + b"\r\nContent-Type: text")[0]
     + b"\r\n--" + BOUNDARY.encode() + b"--\r\n", None, 2000,
     "a PAP push is a control entity and a content entity"),
    (multipart(b"<pap><push-message/></pap>", "text/vnd.wap.si", b"<si/>"), None, 2000,
     "push-id is required"),
    (multipart(control(numbers=()), "text/vnd.wap.si", b"x"), None, 2002, "has no <address>"),
    (multipart(control().replace(b"TYPE=PLMN", b"TYPE=IPv4"), "text/vnd.wap.si", b"x"),
     None, 2002, "address type IPv4 is not supported"),
    (multipart(control(numbers=("bob",)), "text/vnd.wap.si", b"x"), None, 2002,
     "is not a handset number"),
    (multipart(control(), "image/png", b"x"), None, 2000, "must be a Service Indication"),
    (multipart(control(), "application/vnd.wap.sic", b"\x03\x05\x6a\x00\x45\xc6"), None, 3006,
     "Transformation failure: the binary document is truncated"),
    (multipart(control(), "text/vnd.wap.sl", b'<sl href="ftp://x"/>'), None, 2000,
     "href must be an http or https URL"),
    (multipart(control(before=0), "text/vnd.wap.si", si.document("http://h/", "t")), None,
     2000, "the push has expired already"),
    (multipart(control(notify="http://10.0.0.1/x"), "text/vnd.wap.si",
               si.document("http://h/", "t")), None, 2000,
     "ppg-notify-requested-to is not allowed"),
    (multipart(b'<!DOCTYPE pap [<!ENTITY a "b">]><pap>&a;</pap>', "text/vnd.wap.si", b"x"),
     None, 2000, "entity declarations and external references are not allowed"),
])
def test_bad_pushes_get_pap_codes(net, body, ctype, code, words):
    status, got, desc = result(push(net, body, ctype))
    assert (status, got) == (400, code) and words in desc, desc


def test_duplicate_push_id_is_2007(net):
    attach(net)
    body = multipart(control(), "text/vnd.wap.si", read("si.xml"))
    assert result(push(net, body))[1] == 1001
    assert result(push(net, body))[:2] == (400, 2007)


def test_handset_emulator_shows_each_kind(net):
    from urllib.parse import quote

    from twisted.internet import defer

    from presence.cli.handset import HandsetEmulator

    printed: list = []
    phone = HandsetEmulator(net.clock, SIM, BOB, http=net.router, out=printed.append,
                            follow=False, secret="s" + BOB)
    phone.attach()
    net.router.flush()
    sendsms = f"{SIM}/cgi-bin/sendsms?username={USER}&password={PASSWORD}&to=%2B15550001"
    assert net.call("GET", sendsms + "&mclass=0&text=Flash!").status == 202
    assert net.call("GET", sendsms + "&coding=2&text=" + quote("ωμέγα")).status == 202
    assert net.call("GET", sendsms + "&text=" + "z" * 200).status == 202
    assert result(push(net, multipart(control("k1"), "text/vnd.wap.si",
                                      read("si.xml"))))[1] == 1001
    assert result(push(net, multipart(control("k2"), "text/vnd.wap.sl",
                                      read("sl.xml"))))[1] == 1001
    for _ in range(12):
        net.router.flush()
    shown = [line for line in printed if line.startswith("<<")]
    assert shown == [
        "<< FLASH SMS from 7777: Flash!",
        "<< SMS from 7777: ωμέγα  [coding: ucs2]",
        "<< SMS from 7777: " + "z" * 200 + "  [2 parts]",
        "<< PUSH from 7777: You have 4 new emails <http://www.xyz.com/email/123/abc.wml>",
        "<< PUSH SL from 7777: <https://www.example.org/a.wml> (execute-high)",
    ]
    defer.ensureDeferred(phone.stop())
    net.router.flush()
    assert sms_line({"type": "sms", "from": "1", "data": "00ff", "coding": "8bit",
                     "ports": {"dst": 2948, "src": 0}}) == \
        "<< SMS from 1: 00ff  [coding: 8bit, port 2948]"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=120), where=st.sampled_from(["control", "content", "body"]),
       ctype=st.sampled_from(["text/vnd.wap.si", "application/vnd.wap.sic",
                              "text/vnd.wap.sl", "application/vnd.wap.slc"]))
def test_no_push_body_is_a_server_error(net, junk, where, ctype):
    if where == "control":
        body = multipart(junk, ctype, read("si.xml"))
    elif where == "content":
        body = multipart(control(push_id="f" + junk.hex()[:60]), ctype, junk)
    else:
        body = junk
    r = push(net, body)
    assert r.status in (202, 400), r.text
