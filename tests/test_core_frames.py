"""Tier-1 unit tests of L{presence.core.frames}: the ``msg ...`` frame text
(spec section 3, the frames table) and its server-sent-event encoding.

The encoded bytes are read back with a small decoder written from the
WHATWG event-stream rules (lines end with CRLF, CR or LF; ``data:`` values
are joined with LF; an empty line dispatches), so the tests check what a
browser's ``EventSource`` would see, not how the module builds the bytes.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence.core import frames
from presence.core.frames import KEEPALIVE, Frame, parse


def decode_stream(stream: bytes) -> List[Tuple[Optional[str], str]]:
    """(last event id, data) of every event dispatched by ``stream``."""
    text = stream.decode("utf-8")
    lines = re.split(r"\r\n|\r|\n", text)
    events: List[Tuple[Optional[str], str]] = []
    data: List[str] = []
    ident: Optional[str] = None
    for line in lines[:-1]:  # the part after the last line end is incomplete
        if line == "":
            if data:
                events.append((ident, "\n".join(data)))
            data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "id":
            ident = value
    return events


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- frame text -------------------------------------------------------------

@pytest.mark.parametrize("frame, text", [
    (frames.update("online", "bob"), "msg update online bob"),
    (frames.update("offline", "bob"), "msg update offline bob"),
    (frames.update("address", "bob"), "msg update address bob"),
    (frames.refresh("friends"), "msg refresh friends"),
    (frames.init_chat("carol"), "msg initChat carol"),
    (frames.chat("alice", "3f2a9c", "hello"), "msg chat alice 3f2a9c\nhello"),
    (frames.message("alice"), "msg message alice"),
    (frames.bye("logout"), "msg bye logout"),
    (frames.bye("replaced"), "msg bye replaced"),
    (Frame("sipresp", ("200", "tx1"), "SIP/2.0 200 OK\nVia: x"),
     "msg sipresp 200 tx1\nSIP/2.0 200 OK\nVia: x"),
])
def test_frame_text(frame: Frame, text: str) -> None:
    assert frame.text == text


def test_only_chat_frames_are_chat() -> None:
    assert frames.chat("alice", "1", "hi").is_chat
    for frame in (frames.update("online", "bob"), frames.refresh("g"), frames.message("a"),
                  frames.bye("logout"), frames.init_chat("b")):
        assert not frame.is_chat


def test_frames_compare_by_content() -> None:
    assert Frame("update", ["online", "bob"]) == frames.update("online", "bob")
    assert frames.update("online", "bob") != frames.update("offline", "bob")
    assert frames.chat("a", "1", "x") != frames.chat("a", "1", "y")
    assert len({frames.refresh("g"), frames.refresh("g"), frames.refresh("h")}) == 2


# -- event-stream encoding ----------------------------------------------------

def test_single_line_event_bytes() -> None:
    assert frames.update("online", "bob").event(7) == (
        b"id: 7\ndata: msg update online bob\n\n")


def test_multi_line_payload_is_one_data_line_per_line() -> None:
    frame = frames.chat("alice", "3f2a9c", "hello\nsecond line of the text")
    assert frame.event(7) == (
        b"id: 7\n"
        b"data: msg chat alice 3f2a9c\n"
        b"data: hello\n"
        b"data: second line of the text\n"
        b"\n")
    assert decode_stream(frame.event(7)) == [("7", frame.text)]


def test_empty_and_trailing_payload_lines_survive() -> None:
    frame = frames.chat("alice", "1", "a\n\nb\n")
    assert decode_stream(frame.event(1)) == [("1", "msg chat alice 1\na\n\nb\n")]


@pytest.mark.parametrize("payload, lines", [
    ("a\r\nb", ["a", "b"]),
    ("a\rb", ["a", "b"]),
    ("a\r\nb\rc\nd", ["a", "b", "c", "d"]),
    ("a\r\r\nb", ["a", "", "b"]),           # CR then CRLF: two line ends
    ("a\n\rb", ["a", "", "b"]),             # LF then CR: two line ends
    ("INVITE sip:b@x SIP/2.0\r\nVia: y\r\n\r\n", ["INVITE sip:b@x SIP/2.0", "Via: y", "", ""]),
])
def test_cr_and_crlf_become_lf(payload: str, lines: List[str]) -> None:
    frame = Frame("sipreq", ("INVITE", "t1"), payload)
    data = frame.data()
    assert b"\r" not in data
    assert data == b"".join(b"data: " + line.encode() + b"\n"
                            for line in ["msg sipreq INVITE t1", *lines]) + b"\n"
    assert decode_stream(frame.event(3)) == [("3", "\n".join(["msg sipreq INVITE t1", *lines]))]


def test_utf8_encoding() -> None:
    text = "h\u00e9llo \u2713 \U0001F600 \u65e5\u672c"
    frame = frames.chat("j\u00fcrgen", "9", text)
    event = frame.event(2)
    assert "data: msg chat j\u00fcrgen 9\n".encode("utf-8") in event
    assert ("data: " + text + "\n").encode("utf-8") in event
    assert decode_stream(event) == [("2", "msg chat j\u00fcrgen 9\n" + text)]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_only_cr_and_lf_end_lines(char: str) -> None:
    # str.splitlines() would break on these; an event-stream parser does not.
    frame = frames.chat("alice", "1", f"a{char}b")
    data = frame.data()
    assert data == ("data: msg chat alice 1\ndata: a" + char + "b\n\n").encode("utf-8")


def test_event_ids_and_shared_data() -> None:
    frame = frames.update("offline", "bob")
    one, twelve = frame.event(1), frame.event(12)
    assert one.startswith(b"id: 1\n") and twelve.startswith(b"id: 12\n")
    assert one[len(b"id: 1\n"):] == twelve[len(b"id: 12\n"):] == frame.data()


def test_keepalive_is_one_newline_ignored_by_parsers() -> None:
    assert KEEPALIVE == b"\n"
    a, b = frames.update("online", "bob"), frames.chat("bob", "5", "hi\nthere")
    stream = KEEPALIVE + a.event(1) + KEEPALIVE + KEEPALIVE + b.event(2) + KEEPALIVE
    assert decode_stream(stream) == [("1", a.text), ("2", b.text)]


# -- parse --------------------------------------------------------------------

@pytest.mark.parametrize("frame", [
    frames.update("online", "bob"),
    frames.refresh("friends"),
    frames.bye("expired"),
    Frame("bye"),
    frames.chat("alice", "m1", "one line"),
    frames.chat("alice", "m2", "two\nlines"),
    frames.chat("alice", "m3", "\nstarts empty"),
    frames.chat("alice", "m4", "ends empty\n"),
    frames.chat("alice", "m5", "msg bye logout"),
    Frame("sipresp", ("180", "tx"), "SIP/2.0 180 Ringing\nCSeq: 1 INVITE"),
])
def test_parse_round_trip(frame: Frame) -> None:
    again = parse(frame.text)
    assert again == frame
    assert (again.kind, again.args, again.payload) == (frame.kind, frame.args, frame.payload)
    # and through the wire: event -> decoded data -> frame
    [(_, data)] = decode_stream(frame.event(4))
    assert parse(data) == frame


def test_parse_after_the_wire_normalises_line_ends() -> None:
    frame = Frame("sipreq", ("BYE", "t9"), "BYE sip:x SIP/2.0\r\nCSeq: 2 BYE")
    [(_, data)] = decode_stream(frame.event(1))
    assert parse(data) == Frame("sipreq", ("BYE", "t9"), "BYE sip:x SIP/2.0\nCSeq: 2 BYE")


@pytest.mark.parametrize("text", [
    "",
    "msg",
    "msg ",
    "msg  update online bob",
    "hello world",
    "MSG update online bob",
    " msg update online bob",
    "data: msg update online bob",
    "\nmsg update online bob",
    "msg\nupdate online bob",
])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


_word = st.text(
    alphabet=st.characters(blacklist_characters=" \r\n", blacklist_categories=("Cs",)),
    min_size=1, max_size=12)


@given(kind=_word, args=st.lists(_word, max_size=4), payload=st.text(max_size=60))
def test_wire_round_trip_property(kind: str, args: List[str], payload: str) -> None:
    frame = Frame(kind, args, payload)
    assert parse(frame.text) == frame
    [(ident, data)] = decode_stream(frame.event(99))
    assert ident == "99"
    assert data == normalise(frame.text)
    assert parse(data) == Frame(kind, args, normalise(payload))
