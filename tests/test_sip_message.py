"""SIP message parsing and serialising (``presence.sip.message``), with a
hypothesis fuzz of the parser and of the stream framer: whatever the bytes,
the parser returns a message or raises ``ParseError``, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.sip.message import (
    MAX_HEAD, MAX_MESSAGE, NameAddr, ParseError, Request, Response, SipURI, StreamFramer, Via,
    make_response, parse, split_list,
)
from presence.sip.testing import SDP, invite

INVITE = (
    b"INVITE sip:bob@example.org SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@example.org>\r\n"
    b"From: \"Carol, C.\" <sip:carol@example.net>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.net\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:carol@198.51.100.7:5062>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def test_parse_request():
    m = parse(INVITE)
    assert isinstance(m, Request)
    assert m.method == "INVITE" and m.uri == "sip:bob@example.org"
    assert m.body == b"v=0\n"
    assert m.call_id == "a84b4c76e66710@pc33.example.net"
    assert m.cseq == (314159, "INVITE")
    assert m.tag("from") == "1928301774" and m.tag("to") is None
    via = m.top_via()
    assert via.transport == "UDP" and via.sent_by == ("198.51.100.7", 5062)
    assert via.branch == "z9hG4bK776asdhds" and via.param("rport") == ""


def test_round_trip_keeps_fields_and_order():
    m = parse(INVITE)
    assert m.to_bytes() == INVITE


def test_compact_forms_and_folding():
    raw = (b"OPTIONS sip:bob@example.org SIP/2.0\r\n"
           b"v: SIP/2.0/TCP h.example:5060;branch=z9hG4bKa\r\n"
           b"f: <sip:a@b>;tag=x\r\nt: <sip:bob@example.org>\r\n"
           b"i: abc\r\nCSeq: 2\r\n  OPTIONS\r\nl: 0\r\n\r\n")
    m = parse(raw)
    assert m.get("via").startswith("SIP/2.0/TCP") and m.get("Call-ID") == "abc"
    assert m.cseq == (2, "OPTIONS")


def test_bare_lf_line_ends_are_taken():
    m = parse(INVITE.replace(b"\r\n", b"\n").replace(b"Content-Length: 4", b"Content-Length: 4"))
    assert m.method == "INVITE" and m.body == b"v=0\n"


def test_body_is_cut_to_content_length_and_missing_length_means_rest():
    m = parse(INVITE + b"trailing junk")
    assert m.body == b"v=0\n"
    no_length = INVITE.replace(b"Content-Length: 4\r\n", b"")
    assert parse(no_length + b"more").body == b"v=0\nmore"


def test_multibyte_body_is_counted_in_bytes():
    body = "ä€𝄞".encode("utf-8")
    raw = INVITE.replace(b"Content-Length: 4", b"Content-Length: %d" % len(body))
    raw = raw[:raw.index(b"\r\n\r\n") + 4] + body
    assert parse(raw).body == body


def test_response():
    m = parse(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h:1;branch=z9hG4bKx\r\n"
              b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
              b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(m, Response) and m.code == 180 and m.reason == "Ringing"
    assert parse(b"SIP/2.0 200\r\nVia: SIP/2.0/UDP h:1;branch=z9hG4bKx\r\n"
                 b"From: <sip:a@b>\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n").code == 200


@pytest.mark.parametrize("raw, status, why", [
    (b"hello world", 400, "start line"),
    (b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n", 400,
     "truncated"),
    (INVITE.replace(b"Content-Length: 4", b"Content-Length: 40"), 400, "shorter"),
    (INVITE.replace(b"Content-Length: 4", b"Content-Length: four"), 400, "not a number"),
    (INVITE.replace(b"Call-ID: a84b4c76e66710@pc33.example.net\r\n", b""), 400, "Call-ID"),
    (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), 400, "CSeq"),
    (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: many INVITE"), 400, "CSeq"),
    (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: -1"), 400, "Max-Forwards"),
    (INVITE.replace(b"SIP/2.0/UDP 198", b"SIP/3.0/UDP 198"), 400, "Via"),
    (INVITE.replace(b"To: Bob <sip:bob@example.org>", b"To: Bob <sip:bob@example.org"), 400,
     "To"),
    (INVITE.replace(b"INVITE sip:bob@example.org SIP/2.0", b"INVITE sip:bob@example.org SIP/3.0"),
     505, "version"),
    (INVITE.replace(b"INVITE sip:bob", b"INV(ITE sip:bob"), 400, "method"),
    (INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"), 400, "header line"),
    (b"\xff\xfe INVITE", 400, "UTF-8"),
])
def test_bad_messages_raise_parse_error_with_status(raw, status, why):
    with pytest.raises(ParseError) as e:
        parse(raw)
    assert e.value.status == status
    assert why.lower() in e.value.reason.lower()


def test_errors_after_the_start_line_keep_a_partial_message_to_answer():
    with pytest.raises(ParseError) as e:
        parse(INVITE.replace(b"Call-ID: a84b4c76e66710@pc33.example.net\r\n", b""))
    partial = e.value.partial
    assert isinstance(partial, Request) and partial.get("via")
    response = make_response(partial, 400, "Bad Request (missing Call-ID header)", "t")
    assert response.get("from") == partial.get("from") and "tag=t" in response.get("to")


def test_version_error_keeps_the_headers():
    with pytest.raises(ParseError) as e:
        parse(INVITE.replace(b" SIP/2.0\r\n", b" SIP/2.1\r\n", 1))
    assert e.value.status == 505 and e.value.partial.get("via")


def test_huge_messages_are_513():
    huge = INVITE.replace(b"Max-Forwards: 70\r\n",
                          b"Max-Forwards: 70\r\nX-Junk: " + b"a" * MAX_MESSAGE + b"\r\n")
    with pytest.raises(ParseError) as e:
        parse(huge)
    assert e.value.status == 513 and e.value.partial is not None
    many = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + b"X-A: 1\r\n" * 200)
    with pytest.raises(ParseError) as e:
        parse(many)
    assert e.value.status == 513


def test_headers_are_changed_in_place():
    m = parse(INVITE)
    m.prepend("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKmine")
    m.prepend("Record-Route", "<sip:192.0.2.1:5060;lr>")
    assert m.values("via")[0].endswith("z9hG4bKmine")
    assert m.headers[0][0] == "Via"
    assert m.pop_first_value("via").endswith("z9hG4bKmine")
    assert parse(m.to_bytes()).get_all("record-route") == ["<sip:192.0.2.1:5060;lr>"]
    m.set("Max-Forwards", "69")
    assert m.get_all("max-forwards") == ["69"]
    assert [n for n, _ in m.headers].index("Max-Forwards") == 2


def test_list_headers_split_on_commas_outside_quotes_and_brackets():
    assert split_list('"a, b" <sip:x@y;p=1,2>;q=1, <sip:z@w>') == [
        '"a, b" <sip:x@y;p=1,2>;q=1', "<sip:z@w>"]
    m = parse(INVITE.replace(b"Max-Forwards: 70\r\n",
                             b"Max-Forwards: 70\r\nRoute: <sip:a;lr>, <sip:b;lr>\r\n"))
    assert m.values("route") == ["<sip:a;lr>", "<sip:b;lr>"]


def test_via_values():
    via = Via.parse("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKx;rport;received=1.2.3.4")
    assert via.sent_by == ("2001:db8::9", 5070) and via.param("received") == "1.2.3.4"
    assert str(via) == "SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKx;rport;received=1.2.3.4"
    via.set_param("rport", "4000")
    assert str(via).endswith(";rport=4000;received=1.2.3.4")
    assert Via.parse("SIP / 2.0 / TCP host").transport == "TCP"
    for bad in ("SIP/2.0/UDP", "HTTP/1.1/UDP h", "SIP/2.0/UDP h:99999", "SIP/2.0/UDP [::1"):
        with pytest.raises(ValueError):
            Via.parse(bad)


def test_uris_and_addresses():
    uri = SipURI.parse("sip:bob:pw@[::1]:5080;transport=tcp;lr?subject=x")
    assert (uri.user, uri.password, uri.host, uri.port) == ("bob", "pw", "[::1]", 5080)
    assert uri.transport == "TCP" and uri.param("lr") == ""
    assert str(uri) == "sip:bob:pw@[::1]:5080;transport=tcp;lr?subject=x"
    assert SipURI.parse("sip:example.org").user is None
    with pytest.raises(ValueError):
        SipURI.parse("tel:+123")
    a = NameAddr.parse('"Bob \\"B\\" <x>" <sip:bob@h>;tag=7;lr')
    assert a.uri == "sip:bob@h" and a.param("tag") == "7" and a.param("lr") == ""
    assert str(a) == '"Bob \\"B\\" <x>" <sip:bob@h>;tag=7;lr'
    b = NameAddr.parse("sip:bob@h;tag=1")
    assert b.uri == "sip:bob@h" and b.param("tag") == "1"
    assert str(NameAddr.parse("*")) == "*"


def test_frame_text_uses_lf():
    m = invite(body=SDP)
    text = m.to_text()
    assert "\r" not in text and text.startswith("INVITE sip:bob@example.org SIP/2.0\n")
    back = parse(text.replace("\n", "\r\n").encode())
    assert back.body == SDP.encode()


# -- streams --------------------------------------------------------------------------

def test_stream_framer_cuts_messages_at_any_split():
    two = INVITE + b"\r\n\r\n" + INVITE
    for cut in range(0, len(two), 7):
        f = StreamFramer()
        got = f.feed(two[:cut]) + f.feed(two[cut:])
        assert got == [INVITE, INVITE]
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n") == [] and f.pings == 1


def test_stream_framer_needs_content_length():
    f = StreamFramer()
    with pytest.raises(ParseError) as e:
        f.feed(INVITE.replace(b"Content-Length: 4\r\n", b""))
    assert e.value.status == 400 and e.value.partial.method == "INVITE"


def test_stream_framer_bounds_the_header_section_and_the_body():
    f = StreamFramer()
    with pytest.raises(ParseError) as e:
        f.feed(b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nX: "
               + b"a" * (MAX_HEAD + 10))
    assert e.value.status == 513 and e.value.partial.get("via")
    f = StreamFramer()
    with pytest.raises(ParseError) as e:
        f.feed(INVITE.replace(b"Content-Length: 4", b"Content-Length: 999999"))
    assert e.value.status == 513


# -- fuzzing -----------------------------------------------------------------------------

_parts = st.sampled_from([
    b"INVITE ", b"sip:bob@example.org ", b"SIP/2.0", b"\r\n", b"\n", b"\r\n\r\n", b"Via: ",
    b"SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bK1", b"Content-Length: ", b"12", b"-1",
    b"From: <sip:a@b>;tag=1", b"To: <sip:c@d>", b"Call-ID: x", b"CSeq: 1 INVITE", b":", b";",
    b",", b"<", b">", b'"', b" ", b"\t", b"\x00", b"\xff", b"SIP/2.0 200 OK", b"[::1]",
    b"Max-Forwards: 0", b"Route: <sip:a;lr>", b"v: ", b"l: 3",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_parts, max_size=40).map(b"".join) | st.binary(max_size=600))
def test_fuzz_parser_only_raises_parse_error(data):
    try:
        message = parse(data)
    except ParseError as e:
        assert 400 <= e.status <= 599
        if e.partial is not None and isinstance(e.partial, Request) and e.partial.get("via"):
            make_response(e.partial, e.status, None, "t").to_bytes()
        return
    again = parse(message.to_bytes())
    assert again.start_line() == message.start_line() and again.body == message.body


@settings(max_examples=200, deadline=None)
@given(st.lists(_parts | st.binary(max_size=30), max_size=30).map(b"".join),
       st.lists(st.integers(min_value=1, max_value=50), max_size=10))
def test_fuzz_stream_framer(data, cuts):
    f = StreamFramer()
    pos = 0
    try:
        for n in cuts + [len(data)]:
            for message in f.feed(data[pos:pos + n]):
                try:
                    parse(message, stream=True)
                except ParseError:
                    pass
            pos += n
    except ParseError as e:
        assert e.status in (400, 513)
