"""Kannel and PAP applications against the real ``twistd -n presence``
(issue 16): ``curl -I`` on a sendsms URL sends nothing; every delivery
report escape reaches a local HTTP receiver with its value; the XML
interface and a PAP 2.0 push of a binary SI made by ``xml2wbxml`` reach a
handset.  Waits are for conditions with deadlines."""

from __future__ import annotations

import subprocess
import urllib.parse
from pathlib import Path

import pytest

from presence_harness import expect
from test_wireless import (AUTH, hs_get, new_handset, reports,  # noqa: F401 (fixtures)
                           server_options, sim)

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "data"
ESCAPES = "dpPqQTtAbkIFincCmMOuBoDRfvV"


def test_head_sends_nothing_and_every_escape_arrives(api, sim, reports):
    hs = new_handset(api)
    expect(hs_get(sim, hs, wait=0), 200)
    url = (f"http://127.0.0.1:{reports.port}/dlr?" + "&".join(f"{c}=%{c}" for c in ESCAPES)
           + "&meta=%#smpp#tag#")
    query = {**AUTH, "to": hs.number, "from": "0044777", "text": "hi there", "coding": "2",
             "mclass": "1", "validity": "10", "account": "acct-1", "binfo": "b7",
             "meta-data": "?smpp?tag=v1", "smsc": "sim2", "dlr-mask": "9", "dlr-url": url}
    r = sim.request("HEAD", "/cgi-bin/sendsms", query=query)
    assert r.status == 405
    assert expect(hs_get(sim, hs, wait=0), 200).json()["messages"] == []
    r = sim.get("/cgi-bin/sendsms", query=query)
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    [m] = expect(hs_get(sim, hs, wait=5), 200).json()["messages"]
    expect(hs_get(sim, hs, after=m["seq"], wait=0), 200)
    reports.wait(2, 10)
    ack, done = [dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(p).query,
                                             keep_blank_values=True))
                 for p in reports.seen]
    assert (ack["d"], done["d"]) == ("8", "1")
    for report in (ack, done):
        assert {k: report[k] for k in "pqPQIFincCmMOBoDRfV"} == {
            "p": hs.number, "q": hs.number, "P": "0044777", "Q": "+44777",
            "I": m["id"], "F": m["id"], "i": "sim2", "n": AUTH["username"], "c": "2",
            "C": "UTF-16BE", "m": "1", "M": "", "O": "25", "B": "b7", "o": "acct-1",
            "D": "?smpp?tag=v1", "R": url, "f": "", "V": ""}
        assert report["meta"] == "v1" and report["v"] in ("9", "10")
        assert report["u"] == "" and report["t"].count(":") == 2
    assert ack["A"] == "ACK/" and "stat:DELIVRD" in done["A"]
    assert not any(v.startswith("%") for r in (ack, done) for v in r.values())


def test_xml_interface_and_a_pap_push_of_binary_si(api, sim, require_program, tmp_path):
    hs = new_handset(api)
    expect(hs_get(sim, hs, wait=0), 200)
    xml = (DATA / "kannel" / "submit.xml").read_text()
    xml = xml.replace("USER", AUTH["username"]).replace("PASSWORD", AUTH["password"])
    xml = xml.replace("+15550001", hs.number).replace(
        "<da><number>+15550002</number></da>", "")
    xml = xml.replace("http://app.test/dlr?t=%d", "")
    r = sim.post("/cgi-bin/sendsms", body=xml, headers={"Content-Type": "text/xml"})
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    [m] = expect(hs_get(sim, hs, wait=5), 200).json()["messages"]
    assert (m["text"], m["coding"], m["flash"], m["account"]) == (
        "Hello from XML", "ucs2", True, "acct-7")
    binary = tmp_path / "si.wbxml"
    subprocess.run([require_program("xml2wbxml"), "-o", str(binary),
                    str(DATA / "pap" / "si.xml")], check=True, capture_output=True,
                   timeout=30)
    control = (DATA / "pap" / "control.xml").read_text()
    control = control.replace("PUSH_ID", "it-" + hs.number[1:]).replace("DELIVERY", "")
    control = control.replace(' ppg-notify-requested-to="NOTIFY"', "").replace(
        "ADDRESSES", f'<address address-value="WAPPUSH={hs.number}/TYPE=PLMN@ppg.test"/>')
    body = (b"--b1\r\nContent-Type: application/xml\r\n\r\n" + control.encode()
            + b"\r\n--b1\r\nContent-Type: application/vnd.wap.sic\r\n\r\n"
            + binary.read_bytes() + b"\r\n--b1--\r\n")
    r = sim.post("/wappush?" + urllib.parse.urlencode(AUTH), body=body, headers={
        "Content-Type": 'multipart/related; boundary=b1; type="application/xml"'})
    assert r.status == 202 and 'code="1001"' in r.text, r.text
    messages = expect(hs_get(sim, hs, after=m["seq"], wait=5), 200).json()["messages"]
    assert [(p["content"], p["href"], p["text"]) for p in messages] == [
        ("si", "http://www.xyz.com/email/123/abc.wml", "You have 4 new emails")]
