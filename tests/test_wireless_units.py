"""Pure pieces of the wireless front-end: handset numbers and SMS sizes,
Kannel delivery-report escapes, Service Indication parsing (including the
hostile documents a hardened parser must refuse)."""

from __future__ import annotations

import calendar
import time

import pytest

from presence.wireless import dlr, numbers, si


# -- numbers -------------------------------------------------------------------

@pytest.mark.parametrize("raw, number", [
    ("+15550001", "+15550001"),
    ("15550001", "+15550001"),          # the '+' of an unencoded query became a space
    ("0015550001", "+15550001"),
    ("+1-555-0001", "+15550001"),
    (" +44 ", None),                    # too short after the '+'? 2 digits
    ("+123", "+123"),
    ("+1234567890123456", None),        # 16 digits
    ("+1555000a", None),
    ("", None), ("+", None), ("++1555", None), ("alice", None), ("+١٢٣٤", None),
])
def test_normalize(raw, number):
    assert numbers.normalize(raw) == number


def test_normalize_rejects_non_strings():
    assert numbers.normalize(None) is None  # type: ignore[arg-type]


def test_gsm7_single_and_split():
    assert numbers.split("hello") == ("gsm7", ["hello"])
    assert numbers.split("x" * 160) == ("gsm7", ["x" * 160])
    coding, parts = numbers.split("x" * 161)
    assert coding == "gsm7" and [len(p) for p in parts] == [153, 8]
    assert "".join(parts) == "x" * 161


def test_extension_characters_count_two_and_are_never_cut():
    text = "€" * 80           # 160 septets: one message
    assert numbers.split(text) == ("gsm7", [text])
    coding, parts = numbers.split("a" + "€" * 80)   # 161 septets
    assert coding == "gsm7"
    assert all(sum(2 if c == "€" else 1 for c in p) <= 153 for p in parts)
    assert "".join(parts) == "a" + "€" * 80


def test_ucs2_sizes_and_surrogates():
    assert numbers.split("ж" * 70) == ("ucs2", ["ж" * 70])
    coding, parts = numbers.split("ж" * 71)
    assert coding == "ucs2" and [len(p) for p in parts] == [67, 4]
    emoji = "😀" * 40   # 80 UTF-16 units
    coding, parts = numbers.split(emoji)
    assert coding == "ucs2" and "".join(parts) == emoji
    assert all(len(p.encode("utf-16-le")) // 2 <= 67 for p in parts)


# -- delivery reports ---------------------------------------------------------------

def test_expand_fills_kannel_escapes_url_encoded():
    values = dlr.values_for(1, "+15550001", "7777", 1_700_000_000, "id:x stat:DELIVRD",
                            "abc", "presence", "gsm7")
    url = dlr.expand("http://h/dlr?s=%d&to=%p&from=%P&t=%T&a=%A&i=%I&pct=%%&x=%Z", values)
    assert url == ("http://h/dlr?s=1&to=%2B15550001&from=7777&t=1700000000"
                   "&a=id%3Ax%20stat%3ADELIVRD&i=abc&pct=%&x=%Z")


def test_expand_keeps_a_trailing_percent():
    assert dlr.expand("http://h/a%", {}) == "http://h/a%"


def test_receipts():
    assert dlr.receipt("m1", dlr.SMSC_ACK, 0, 0, "t") == "ACK/"
    ok = dlr.receipt("m1", dlr.DELIVERED, 0, 60, "hello there")
    assert "stat:DELIVRD" in ok and "dlvrd:001" in ok and "id:m1" in ok and "text:hello" in ok
    assert "stat:EXPIRED err:000" in dlr.receipt("m1", dlr.UNDELIVERED, 0, 60, "")
    assert "stat:UNDELIV err:001" in dlr.receipt("m1", dlr.UNDELIVERED, 0, 0, "", error=1)


def test_mask_bounds():
    assert dlr.valid_mask(-1) and dlr.valid_mask(63)
    assert not dlr.valid_mask(64) and not dlr.valid_mask(-2)


# -- Service Indication ----------------------------------------------------------------

GOOD = (b'<?xml version="1.0"?>\n'
        b'<!DOCTYPE si PUBLIC "-//WAPFORUM//DTD SI 1.0//EN" "http://www.wapforum.org/DTD/si.dtd">\n'
        b'<si><indication href="http://h/wml/t/abc" si-id="7" action="signal-high"'
        b' created="2026-01-02T03:04:05Z">alice &amp; co\n wants  to chat</indication></si>')


def test_parse_a_good_document():
    found = si.parse(GOOD)
    assert found.href == "http://h/wml/t/abc"
    assert found.si_id == "7"
    assert found.action == "signal-high"
    assert found.text == "alice & co wants to chat"
    assert found.created == calendar.timegm((2026, 1, 2, 3, 4, 5, 0, 0, 0))


def test_defaults_and_info():
    found = si.parse(b'<si><indication href="https://h/x">hi</indication>'
                     b'<info><item class="a">more</item></info></si>')
    assert found.action == "signal-medium" and found.si_id == "https://h/x"


def test_document_round_trip_escapes_everything():
    doc = si.document('http://h/t?a=1&b="2"', "<b>&'\"x", si_id="r1", created=0, expires=60)
    found = si.parse(doc)
    assert found.href == 'http://h/t?a=1&b="2"'
    assert found.text == "<b>&'\"x"
    assert found.expires == 60.0 and found.created == 0.0


BOMB = (b'<?xml version="1.0"?><!DOCTYPE si [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(b'<!ENTITY %s "%s">' % (b"a" * (i + 2), (b"&" + b"a" * (i + 1) + b";") * 10)
                   for i in range(8))
        + b']><si><indication href="http://h/">&aaaaaaaaa;</indication></si>')


@pytest.mark.parametrize("doc, why", [
    (b"", "missing"),
    (b"   ", "missing"),
    (b"<si><indication href='http://h/'>x</indication>", "well-formed"),
    (b"<html/>", "root element"),
    (b"<si a='1'><indication href='http://h/'>x</indication></si>", "no attributes"),
    (b"<si>text<indication href='http://h/'>x</indication></si>", "elements only"),
    (b"<si></si>", "one <indication>"),
    (b"<si><info><item class='a'>x</item></info></si>", "one <indication>"),
    (b"<si><indication href='http://h/'>x</indication><indication href='http://h/'>y"
     b"</indication></si>", "at most one"),
    (b"<si><indication href='http://h/' bogus='1'>x</indication></si>", "unknown attribute"),
    (b"<si><indication href='http://h/'><b>x</b></indication></si>", "text only"),
    (b"<si><indication href='http://h/' action='shout'>x</indication></si>", "action"),
    (b"<si><indication>x</indication></si>", "needs an href"),
    (b"<si><indication href='javascript:alert(1)'>x</indication></si>", "http"),
    (b"<si><indication href='http://h/' action='delete'>x</indication></si>", "si-id"),
    (b"<si><indication href='http://h/' created='yesterday'>x</indication></si>", "ISO 8601"),
    (b"<si><indication href='http://h/'>" + b"x" * 600 + b"</indication></si>", "over 512"),
    (b"<si><indication href='http://h/'>" + b"x" * 5000 + b"</indication></si>", "4096 bytes"),
    (BOMB, "entity"),
    (b'<?xml version="1.0"?><!DOCTYPE si [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     b'<si><indication href="http://h/">&x;</indication></si>', "entity"),
    (b'<?xml version="1.0"?><!DOCTYPE si [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd">'
     b' %p;]><si><indication href="http://h/">x</indication></si>', "entity"),
    (b"<si><indication href='http://h/'>&nbsp;</indication></si>", "well-formed"),
    (b"\xff\xfe<\x00s\x00", "well-formed"),
])
def test_bad_documents_are_refused_with_a_reason(doc, why):
    with pytest.raises(si.SIError) as e:
        si.parse(doc)
    assert why in str(e.value)


def test_the_bomb_is_refused_quickly():
    start = time.monotonic()
    with pytest.raises(si.SIError):
        si.parse(BOMB)
    assert time.monotonic() - start < 1.0
