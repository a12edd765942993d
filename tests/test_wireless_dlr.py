"""Delivery reports as Kannel sends them (issue 16): every escape Kannel
documents filled in a dlr-url, empty where the simulator has no value and
never left as the literal escape, ``%Q`` turning ``00`` into ``+``, and the
events in Kannel's order - fetched over HTTP by the simulator from a
receiver (a twisted.web resource reached through real request parsing)."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest

from helpers import logged_errors  # noqa: F401
from presence.wireless import dlr
from test_wireless_support import PASSWORD, SIM, USER, Net, Receiver

BOB = "+15550001"
ESCAPES = "dpPqQTtAabkIFincCmMOuBoDRfvVsSr"


@pytest.fixture
def net(logged_errors):
    n = Net()
    n.trust_any_handset()
    n.receiver = Receiver()
    n.router.add("app.test", n.receiver)
    yield n
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def reports(net) -> list:
    net.router.flush()
    return [parse_qs(urlsplit(uri).query, keep_blank_values=True)
            for _, uri, _, _ in net.receiver.seen]


def template(*letters: str) -> str:
    return "http://app.test/dlr?" + "&".join(f"{c}=%{c}" for c in letters)


def test_every_escape_has_its_value_in_kannels_event_order(net):
    net.clock.advance(1_767_312_245 - net.clock.seconds())
    url = template(*ESCAPES) + "&meta=%#smpp#tag#&pct=%%&unknown=%Z"
    fields = {"username": USER, "password": PASSWORD, "to": BOB, "from": "0044777",
              "text": "hello *big* world", "coding": "2", "mclass": "1", "mwi": "-1",
              "validity": "10", "account": "acct-1",
              "binfo": "bill 7", "meta-data": "?smpp?tag=v1&x=2", "smsc": "sim2",
              "dlr-mask": "31", "dlr-url": url}
    net.get(f"{SIM}/handset/{BOB}/poll", wait="0")   # known to the network ...
    net.sim.detach(BOB)                               # ... but switched off
    r = net.call("GET", f"{SIM}/cgi-bin/sendsms?" + urlencode(fields)
                 + "&udh=%06%05%04%0B%84%23%F0")
    assert r.status == 202, r.text
    # not attached yet: delivered to the SMSC (8), queued on it (4) ...
    net.router.flush()
    net.clock.advance(30)
    polled = net.get(f"{SIM}/handset/{BOB}/poll", wait="0").json["messages"]
    [m] = polled
    net.get(f"{SIM}/handset/{BOB}/poll", after=str(m["seq"]), wait="0")
    got = reports(net)
    # ... then delivered to the phone (1): Kannel's order
    assert [q["d"] for q in got] == [["8"], ["4"], ["1"]]
    first, _, last = got
    start = 1_767_312_245
    expect = {
        "p": BOB, "q": BOB, "P": "0044777", "Q": "+44777",
        "I": m["id"], "F": m["id"], "i": "sim2", "n": USER,
        "c": "2", "C": "UTF-16BE", "m": "1", "M": "", "O": "25",
        "B": "bill 7", "o": "acct-1", "D": "?smpp?tag=v1&x=2", "R": url, "f": "",
        "V": "", "meta": "v1", "pct": "%", "unknown": "%Z",
    }
    for key, value in expect.items():
        assert first[key] == [value], key
    raw = net.receiver.seen[0][1]
    assert "u=%06%05%04%0B%84%23%F0&" in raw          # the UDH's bytes, URL-encoded
    assert first["T"] == [str(start)] and last["T"] == [str(start + 30)]
    assert first["t"] == [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))]
    assert "&t=2026-01-02+00:04:05&" in raw                # Kannel's '+', not %20
    assert first["A"] == ["ACK/"] and first["k"] == ["ACK/"] and first["b"] == ["ACK/"]
    assert first["v"] == ["10"] and last["v"] == ["9"]
    assert last["A"][0].startswith(f"id:{m['id']} sub:001 dlvrd:001")
    assert last["A"][0].endswith("stat:DELIVRD err:000 text:hello *big* world")
    assert last["k"] == [last["A"][0].split()[0]]
    assert last["s"] == ["sub:001"] and last["S"] == ["sub:001"]
    assert last["a"] == [last["A"][0]]
    assert last["r"][0] == " ".join(last["A"][0].split()[2:])
    for q in got:  # never a literal escape of Kannel's
        for c in ESCAPES:
            assert not q[c][0].startswith("%" + c), (c, q[c])


def test_unknown_subscriber_reports_8_then_2(net):
    r = net.call("GET", f"{SIM}/cgi-bin/sendsms?" + urlencode({
        "username": USER, "password": PASSWORD, "to": "+15559999", "text": "x",
        "dlr-mask": "31", "dlr-url": template("d", "A", "m", "o", "B", "D", "u", "v")}))
    assert r.status == 202
    got = reports(net)
    assert [q["d"] for q in got] == [["8"], ["2"]]
    assert "stat:UNDELIV err:001" in got[1]["A"][0]
    # nothing given: empty, not Kannel's -1 and not the escape
    assert all(got[1][c] == [""] for c in "moBDuv")


def test_dcs_values():
    assert dlr.dcs("gsm7") == 0 and dlr.dcs("8bit") == 4 and dlr.dcs("ucs2") == 8
    assert dlr.dcs("gsm7", mclass=0) == 0x10 and dlr.dcs("ucs2", mclass=1) == 0x19
    assert dlr.dcs("8bit", alt_dcs=1, mclass=1) == 0xF5
    assert dlr.dcs("gsm7", mwi=0) == 0xD8 and dlr.dcs("gsm7", mwi=4) == 0xC0


def test_q_normalises_00_and_meta_parameters():
    values = dlr.values_for(1, "0015550001", "00447", 0, "", "i", "u", "gsm7")
    assert dlr.expand("%q %Q %p", values) == "%2B15550001 %2B447 0015550001"
    values["D"] = "?smpp?a=1&b=x%20y?http?c=3"
    assert dlr.expand("%#smpp#b#|%#http#c#|%#smpp#zz#|%#bad", values) == "x%20y|3||%#bad"
    assert quote("+") == "%2B"
