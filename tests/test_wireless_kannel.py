"""Kannel's sendsms as applications drive it (issue 16): HEAD never sends,
Kannel's words for every refusal, coding 0/1/2 with splitting per coding and
UDH concatenation, the other fields stored and shown, the X-Kannel-* POST
interface and the XML POST interface.  Requests follow the Kannel user
guide's examples (tests/data/kannel/)."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import logged_errors  # noqa: F401
from presence.cli.handset import sms_line
from presence.wireless import sms
from test_wireless_operator import attach, net, poll  # noqa: F401 (net: the fixture)
from test_wireless_support import PASSWORD, SIM, USER

BOB = "+15550001"
CAROL = "+15550002"
AUTH = {"username": USER, "password": PASSWORD}
DATA = os.path.join(os.path.dirname(__file__), "data", "kannel")
#: the user guide's port-addressing header: destination 2948, source 9200
PORT_UDH = "%06%05%04%0B%84%23%F0"


def query(net, qs: str, method="GET"):
    return net.call(method, f"{SIM}/cgi-bin/sendsms?username={USER}&password={PASSWORD}"
                            f"&to=%2B15550001&{qs}")


def test_head_never_sends_a_message(net):
    attach(net)
    r = query(net, "text=hello", method="HEAD")
    assert r.status == 405 and r.header("allow") == "GET, POST"
    assert poll(net) == []
    assert query(net, "text=hello").status == 202
    assert [m["text"] for m in poll(net)] == ["hello"]


@pytest.mark.parametrize("qs, text", [
    ("text=x&udh=%05%00%03", "UDH field misformed, rejected"),
    ("text=x&udh=0500", "UDH field misformed, rejected"),
    ("text=x&udh=" + quote(bytes([141]) + b"\0" * 141), "UDH field is too long, rejected"),
    ("text=x&coding=3", "Coding field misformed, rejected"),
    ("text=x&mclass=4", "MClass field misformed, rejected"),
    ("text=x&mwi=8", "MWI field misformed, rejected"),
    ("text=x&pid=256", "PID field misformed, rejected"),
    ("text=x&alt-dcs=2", "Alt-DCS field misformed, rejected"),
    ("text=x&rpi=3", "RPI field misformed, rejected"),
    ("text=x&compress=2", "Compress field misformed, rejected"),
    ("text=x&priority=4", "Priority field misformed, rejected"),
    ("text=x&validity=-2", "Validity field misformed, rejected"),
    ("text=x&deferred=-2", "Deferred field misformed, rejected"),
    ("text=x&account=a%5Bb%5D", "Account field misformed or too long, rejected"),
    ("text=x&account=" + "a" * 65, "Account field misformed or too long, rejected"),
    ("text=x&meta-data=" + "m" * 1025, "Meta-Data field misformed or too long, rejected"),
    ("text=x&dlr-mask=64", "DLR-Mask field misformed, rejected"),
    ("text=x&dlr-url=htt", "DLR-URL field misformed, rejected"),
])
def test_refusals_in_kannels_words(net, qs, text):
    attach(net)
    r = query(net, qs)
    assert (r.status, r.text) == (400, text)
    assert poll(net) == []


def test_what_kannel_does_not_validate_neither_do_we(net):
    # Kannel reads numbers with sscanf("%d"): no number is "not given"
    attach(net)
    r = query(net, "text=x&dlr-mask=abc&mclass=zz&coding=q")
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    [m] = poll(net)
    assert m["coding"] == "gsm7" and "mclass" not in m


def test_binary_coding_with_port_addressing(net):
    attach(net)
    r = query(net, f"coding=1&udh={PORT_UDH}&text=%01%02%FF%00")
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    [m] = poll(net)
    assert (m["coding"], m["data"], m["udh"]) == ("8bit", "0102ff00", "060504" "0b8423f0")
    assert m["ports"] == {"dst": 2948, "src": 9200}
    assert sms_line(m) == "<< SMS from 7777: 0102ff00  [coding: 8bit, port 2948]"


def test_udh_alone_means_8bit_as_in_kannel(net):
    attach(net)
    assert query(net, f"udh={PORT_UDH}&text=%C3%28").status == 202
    [m] = poll(net)
    assert (m["coding"], m["data"]) == ("8bit", "c328")


@pytest.mark.parametrize("coding, text, parts", [
    ("0", "a" * 160, 1), ("0", "a" * 161, 2), ("0", "€" * 80, 1), ("0", "€" * 81, 2),
    ("0", "a" * 153 * 3, 3), ("0", "a" * (153 * 3 + 1), 4),
    ("2", "ж" * 70, 1), ("2", "ж" * 71, 2), ("2", "ж" * 134, 2), ("2", "ж" * 135, 3),
    ("2", "a" * 70, 1),
])
def test_splitting_counts_septets_or_units(net, coding, text, parts):
    attach(net)
    assert query(net, f"coding={coding}&text={quote(text)}").status == 202
    [m] = poll(net)
    assert m["parts"] == parts
    if parts > 1:
        assert sms.reassemble(m["segments"]) == (text, True)
        infos = [sms.concat_info(bytes.fromhex(s["udh"])) for s in m["segments"]]
        assert [i[1:] for i in infos] == [(parts, n) for n in range(1, parts + 1)]
        assert len({i[0] for i in infos}) == 1
        # no part cuts an escape: a GSM part is at most 153 septets
        for seg in m["segments"]:
            cost = sum(2 if c in "€" else 1 for c in seg["text"])
            assert cost <= (153 if coding == "0" else 67)


def test_octets_split_and_a_header_takes_its_room(net):
    attach(net)
    assert query(net, "coding=1&text=" + "%41" * 140).status == 202
    assert poll(net)[0]["parts"] == 1
    assert query(net, "coding=1&text=" + "%41" * 141).status == 202
    m = poll(net)[1]
    assert m["parts"] == 2 and [len(s["data"]) // 2 for s in m["segments"]] == [134, 7]
    # with the port header (7 octets) GSM text has 152 septets, 146 per part
    assert query(net, f"coding=0&udh={PORT_UDH}&text=" + "b" * 152).status == 202
    assert poll(net)[2]["parts"] == 1
    assert query(net, f"coding=0&udh={PORT_UDH}&text=" + "b" * 153).status == 202
    m = poll(net)[3]
    assert m["parts"] == 2 and [len(s["text"]) for s in m["segments"]] == [146, 7]
    udh = bytes.fromhex(m["segments"][0]["udh"])
    assert udh[0] == len(udh) - 1 and sms.ports(udh) == {"dst": 2948, "src": 9200}
    assert sms_line(m).endswith("[2 parts, port 2948]")


def test_handset_reassembles_parts_in_header_order():
    text = "x" * 153 + "y" * 10
    segments = [s.wire("gsm7") for s in sms.split(text, "gsm7", ref=9)]
    assert sms.reassemble(list(reversed(segments))) == (text, True)
    assert sms.reassemble(segments[:1])[1] is False


def test_gsm_coding_keeps_only_the_alphabet(net):
    attach(net)
    assert query(net, "coding=0&text=" + quote("café αβ {x}")).status == 202
    [m] = poll(net)
    assert (m["coding"], m["text"]) == ("gsm7", "café ?? {x}")


def test_flash_and_every_field_is_stored_and_shown(net):
    attach(net)
    r = query(net, "text=" + quote("привет") + "&coding=2&mclass=0&mwi=1&pid=65&alt-dcs=1"
                   "&validity=30&priority=2&account=acct-1&binfo=cost%3D5"
                   "&meta-data=%3Fsmpp%3Fa%3D1&smsc=sim2&rpi=1&compress=0")
    assert r.status == 202
    [m] = poll(net)
    assert m["text"] == "привет" and m["coding"] == "ucs2" and m["flash"] is True
    assert {k: m[k] for k in ("mclass", "mwi", "pid", "alt-dcs", "validity", "priority",
                              "account", "binfo", "meta-data", "smsc", "rpi", "compress")} \
        == {"mclass": 0, "mwi": 1, "pid": 65, "alt-dcs": 1, "validity": 30, "priority": 2,
            "account": "acct-1", "binfo": "cost=5", "meta-data": "?smpp?a=1",
            "smsc": "sim2", "rpi": 1, "compress": 0}
    assert sms_line(m) == "<< FLASH SMS from 7777: привет  [coding: ucs2]"


def test_deferred_holds_the_message_for_its_minutes(net):
    attach(net)
    r = query(net, "text=later&deferred=2&dlr-mask=31&dlr-url=http%3A%2F%2Fapp.test%2F%25d")
    assert r.status == 202
    assert poll(net) == []
    assert net.sent == ["http://app.test/8", "http://app.test/4"]
    net.clock.advance(119)
    assert poll(net) == []
    net.clock.advance(1)
    [m] = poll(net)
    assert (m["text"], m["deferred"]) == ("later", 2)


def test_deferred_past_the_validity_expires(net):
    # Kannel's validity counts from the submission: due after it, never sent
    attach(net)
    query(net, "text=never&deferred=5&validity=3&dlr-mask=2"
               "&dlr-url=http%3A%2F%2Fapp.test%2F%25d")
    net.clock.advance(179)
    assert net.sent == []
    net.clock.advance(1)
    assert poll(net) == [] and net.sent == ["http://app.test/2"]


def kannel_post(net, body: bytes, ctype: str, **headers):
    h = {"Content-Type": [ctype], "X-Kannel-Username": [USER],
         "X-Kannel-Password": [PASSWORD], "X-Kannel-To": [BOB]}
    h.update({"X-Kannel-" + k.replace("_", "-"): [v] for k, v in headers.items()})
    return net.call("POST", f"{SIM}/cgi-bin/sendsms", data=body, headers=h)


def test_post_interface_takes_every_x_kannel_header(net):
    attach(net)
    r = kannel_post(net, "ωμέγα".encode("utf-16-be"), "text/plain; charset=UTF-16BE",
                    Coding="2", MClass="1", PID="0", Account="acc", Meta_Data="?smpp?x=1",
                    SMSC="sim", Validity="10", Priority="1", BInfo="b", DLR_Mask="3",
                    DLR_URL="http://app.test/d?%d")
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    [m] = poll(net)
    assert (m["text"], m["coding"], m["mclass"], m["account"], m["meta-data"]) == \
        ("ωμέγα", "ucs2", 1, "acc", "?smpp?x=1")
    assert (m["smsc"], m["validity"], m["priority"], m["binfo"]) == ("sim", 10, 1, "b")
    assert sms_line(m) == "<< SMS from 7777: ωμέγα  [coding: ucs2, class 1]"


def test_post_interface_words_for_a_missing_receiver(net):
    r = net.call("POST", f"{SIM}/cgi-bin/sendsms", data=b"x", headers={
        "Content-Type": ["text/plain"], "X-Kannel-Username": [USER],
        "X-Kannel-Password": [PASSWORD]})
    assert (r.status, r.text) == (400, "Missing receiver(s) number(s), rejected")


def test_post_octet_stream_is_8bit_with_a_hex_udh_header(net):
    attach(net)
    r = kannel_post(net, b"\x00\xff\x10", "application/octet-stream", UDH="06050415820000")
    assert r.status == 202
    [m] = poll(net)
    assert (m["coding"], m["data"], m["ports"]) == ("8bit", "00ff10", {"dst": 5506, "src": 0})


@pytest.mark.parametrize("ctype, body, text", [
    ("image/png", b"x", "Invalid content-type"),
    ("text/xml", b"<message><submit>", "Invalid XML body, rejected"),
    ("text/xml", b"<other/>", "Invalid XML body: no <message><submit>, rejected"),
    ("text/xml", b'<!DOCTYPE m [<!ENTITY a "aaaa">]><message><submit><ud>&a;</ud>'
                 b"</submit></message>",
     "Invalid XML body: entities are not accepted, rejected"),
])
def test_post_bodies_refused_clearly(net, ctype, body, text):
    r = net.call("POST", f"{SIM}/cgi-bin/sendsms", data=body,
                 headers={"Content-Type": [ctype]})
    assert (r.status, r.text) == (400, text)


def test_xml_post_interface(net):
    attach(net)
    attach(net, CAROL)
    with open(os.path.join(DATA, "submit.xml"), "rb") as f:
        body = f.read().replace(b"USER", USER.encode()).replace(b"PASSWORD",
                                                                 PASSWORD.encode())
    r = net.call("POST", f"{SIM}/cgi-bin/sendsms", data=body,
                 headers={"Content-Type": ["text/xml"]})
    assert (r.status, r.text) == (202, "0: Accepted for delivery")
    for number in (BOB, CAROL):
        [m] = poll(net, number)
        assert (m["from"], m["text"], m["coding"], m["flash"]) == \
            ("12345", "Hello from XML", "ucs2", True)
        assert (m["pid"], m["validity"], m["account"], m["meta-data"], m["smsc"]) == \
            (65, 5, "acct-7", "?smpp?tag=1", "sim")
    wrong = body.replace(PASSWORD.encode(), b"nope")
    r = net.call("POST", f"{SIM}/cgi-bin/sendsms", data=wrong,
                 headers={"Content-Type": ["text/xml"]})
    assert (r.status, r.text) == (403, "Authorization failed for sendsms")


def test_x_kannel_udh_may_be_url_encoded(net):
    attach(net)
    r = kannel_post(net, b"\x01", "application/octet-stream", UDH="%06%05%04%0B%84%23%F0")
    assert r.status == 202
    assert poll(net)[0]["ports"] == {"dst": 2948, "src": 9200}


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab€{ж😀 "), max_size=700),
       coding=st.sampled_from(["gsm7", "ucs2"]),
       udh=st.sampled_from([b"", bytes.fromhex("0605040b8423f0")]))
def test_split_then_reassemble_is_the_text_and_parts_fit(text, coding, udh):
    if coding == "gsm7":
        text = sms.to_gsm7(text)
    segments = sms.split(text, coding, udh, ref=3)
    wire = [s.wire(coding) for s in segments]
    assert sms.reassemble(wire) == (text, True)
    for seg in segments:
        assert seg.udh == b"" or seg.udh[0] == len(seg.udh) - 1
        if coding == "gsm7":
            septets = sum(2 if c in "€{" else 1 for c in seg.payload)
            assert septets * 7 <= (140 - len(seg.udh)) * 8 - (-len(seg.udh) * 8) % 7
        else:
            assert len(seg.payload.encode("utf-16-be")) + len(seg.udh) <= 140


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_wbxml_decoder_refuses_garbage_cleanly(data):
    from presence.wireless import wbxml

    for kind in (wbxml.SI, wbxml.SL):
        try:
            wbxml.decode(data, kind)
        except wbxml.WbxmlError:
            pass


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, 80), at=st.integers(0, 80), value=st.integers(0, 255))
def test_wbxml_decoder_survives_a_damaged_si(cut, at, value):
    from presence.wireless import si, wbxml

    with open(os.path.join(os.path.dirname(DATA), "pap", "si.wbxml"), "rb") as f:
        good = f.read()
    damaged = bytearray(good[:max(cut, 1)] if cut < len(good) else good)
    if at < len(damaged):
        damaged[at] = value
    try:
        si.parse(wbxml.decode(bytes(damaged), wbxml.SI))
    except (wbxml.WbxmlError, si.SIError):
        pass


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(
    st.sampled_from(["coding", "udh", "mclass", "mwi", "pid", "alt-dcs", "validity",
                     "deferred", "priority", "account", "binfo", "meta-data", "smsc",
                     "text", "charset", "dlr-mask", "rpi", "compress"]),
    st.binary(max_size=40), max_size=6))
def test_no_sendsms_is_a_server_error(net, fields):
    qs = "&".join(f"{k}={quote(v)}" for k, v in fields.items())
    r = query(net, qs)
    assert r.status in (202, 400), r.text


def _examples() -> list:
    with open(os.path.join(DATA, "sendsms-examples.txt"), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    out = []
    for line in lines:
        qs, _, answer = line.partition(" => ")
        status, _, text = answer.partition(" ")
        out.append((qs.replace("USER", USER).replace("PASSWORD", PASSWORD), int(status), text))
    return out


@pytest.mark.parametrize("qs, status, text", _examples())
def test_user_guide_style_requests(net, qs, status, text):
    attach(net)
    r = net.call("GET", f"{SIM}/cgi-bin/sendsms?{qs}")
    assert (r.status, r.text) == (status, text)
    assert len(poll(net)) == (1 if status == 202 and "deferred" not in qs else 0)
