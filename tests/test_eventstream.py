"""
Unit tests for L{presence.client.eventstream}: the incremental event-stream
parser and the frame splitter.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.client.eventstream import (
    Event,
    EventStreamError,
    EventStreamParser,
    Frame,
    FrameError,
    encode_event,
    parse_frame,
)


def feed_all(chunks: list[bytes], parser: EventStreamParser | None = None) -> list[Event]:
    parser = parser or EventStreamParser()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def test_single_event() -> None:
    events = feed_all([b"id: 1\ndata: msg update online bob\n\n"])
    assert events == [Event(id="1", data="msg update online bob")]


def test_multiline_data_is_joined_with_newlines() -> None:
    events = feed_all([b"id: 7\ndata: msg chat alice 3\ndata: hello\ndata: \ndata: there\n\n"])
    assert events == [Event(id="7", data="msg chat alice 3\nhello\n\nthere")]


def test_nothing_until_the_empty_line() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\ndata: msg bye logout\n") == []
    assert parser.feed(b"\n") == [Event(id="1", data="msg bye logout")]


def test_keepalive_bytes_dispatch_nothing() -> None:
    stream = b"\n\nid: 1\ndata: a\n\n\n\n\nid: 2\ndata: b\n\n\n"
    assert feed_all([stream]) == [Event(id="1", data="a"), Event(id="2", data="b")]
    # One byte at a time as well, as keep-alives really arrive.
    assert feed_all([bytes([b]) for b in stream]) == [Event(id="1", data="a"), Event(id="2", data="b")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_line_ends(eol: bytes) -> None:
    stream = eol.join([b"id: 4", b"data: x", b"data: y", b"", b"id: 5", b"data: z", b"", b""])
    assert feed_all([stream]) == [Event(id="4", data="x\ny"), Event(id="5", data="z")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # "\r" ends one chunk and "\n" starts the next: one line end, not two
    # (two would dispatch the event early, before its data line).
    events = feed_all([b"id: 1\r", b"\ndata: a\r", b"\n\r", b"\n"])
    assert events == [Event(id="1", data="a")]


def test_lone_cr_at_chunk_end_is_a_line_end() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\rdata: a\r\r") == [Event(id="1", data="a")]
    assert parser.feed(b"data: b\r\r") == [Event(id=None, data="b")]


def test_comments_are_ignored() -> None:
    events = feed_all([b": hello\nid: 1\n:another\ndata: a\n\n:tail\n\n"])
    assert events == [Event(id="1", data="a")]


def test_field_forms() -> None:
    # No space after the colon, a field without a colon, unknown fields.
    events = feed_all([b"id:9\ndata:x\ndata\nfoo: bar\nevent: ping\nretry: 1500\n\n"])
    assert events == [Event(id="9", data="x\n", event="ping", retry=1500)]


def test_only_one_leading_space_is_removed() -> None:
    assert feed_all([b"data:   indented\n\n"]) == [Event(id=None, data="  indented")]


def test_event_without_data_is_not_dispatched_but_id_is_kept() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 3\n\n") == []
    assert parser.last_event_id == "3"
    assert parser.feed(b"data: x\n\n") == [Event(id=None, data="x")]
    assert parser.last_event_id == "3"


def test_id_with_nul_is_ignored() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\x002\ndata: x\n\n") == [Event(id=None, data="x")]
    assert parser.last_event_id is None


def test_utf8_split_inside_a_character() -> None:
    raw = "id: 1\ndata: msg chat bob 1\ndata: h\u00e9llo \u2603 \U0001f600\n\n".encode()
    cut = raw.index(b"\xe2") + 1  # inside the snowman
    assert feed_all([raw[:cut], raw[cut:]]) == [
        Event(id="1", data="msg chat bob 1\nh\u00e9llo \u2603 \U0001f600")
    ]


def test_invalid_utf8_is_replaced() -> None:
    assert feed_all([b"data: a\xffb\n\n"]) == [Event(id=None, data="a\ufffdb")]


def test_bom_at_start_is_skipped_even_when_split() -> None:
    assert feed_all([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [Event(id=None, data="x")]


def test_empty_chunks() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"data: x\n") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n") == [Event(id=None, data="x")]


def test_overlong_line_raises() -> None:
    parser = EventStreamParser(max_line_length=10)
    parser.feed(b"data: 1234")
    with pytest.raises(EventStreamError):
        parser.feed(b"567890\n")
    with pytest.raises(EventStreamError):
        EventStreamParser(max_line_length=10).feed(b"data: 12345678901234")


def test_encode_event() -> None:
    assert encode_event("msg chat a 1\nhi", id=5) == b"id: 5\ndata: msg chat a 1\ndata: hi\n\n"
    assert encode_event("x") == b"data: x\n\n"


def test_parse_frame() -> None:
    assert parse_frame("msg chat alice 12\nhello\nthere") == Frame("chat", ("alice", "12"), "hello\nthere")
    assert parse_frame("msg update online bob") == Frame("update", ("online", "bob"), "")
    assert parse_frame("msg bye") == Frame("bye", (), "")
    kind, args, payload = parse_frame("msg sipreq INVITE z9hG4bK1\nINVITE sip:bob@x SIP/2.0\nVia: a")
    assert (kind, args) == ("sipreq", ("INVITE", "z9hG4bK1"))
    assert payload.splitlines() == ["INVITE sip:bob@x SIP/2.0", "Via: a"]


@pytest.mark.parametrize("text", ["", "msg", "msg ", "hello world", "MSG chat a"])
def test_parse_frame_rejects(text: str) -> None:
    with pytest.raises(FrameError):
        parse_frame(text)


# -- properties ----------------------------------------------------------------

_line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    max_size=30,
)
_frames = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=10**9),
        st.lists(_line_text, min_size=1, max_size=4).map("\n".join),
    ),
    max_size=8,
)


@st.composite
def _encoded(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """
    A stream as the server writes it: events with ids, keep-alive bytes and
    comments between them, and a line-end style.
    """
    frames = draw(_frames)
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    parts: list[bytes] = []
    for frame_id, text in frames:
        parts.append(b"\n" * draw(st.integers(0, 3)))
        if draw(st.booleans()):
            parts.append(b": comment" + eol)
        parts.append(encode_event(text, id=frame_id).replace(b"\n", eol))
    parts.append(b"\n" * draw(st.integers(0, 2)))
    expected = [Event(id=str(i), data=text) for i, text in frames]
    return b"".join(parts), expected


@st.composite
def _cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(draw(st.sets(st.integers(0, len(data)), max_size=20)))
    chunks, last = [], 0
    for p in points + [len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_events(data: st.DataObject) -> None:
    stream, expected = data.draw(_encoded())
    whole = feed_all([stream])
    assert whole == expected
    chunks = data.draw(_cuts(stream))
    assert feed_all(chunks) == expected
    assert feed_all([bytes([b]) for b in stream]) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_arbitrary_bytes_chunking_is_invariant(raw: bytes, data: st.DataObject) -> None:
    # Even for garbage, how the bytes are split must not change the result.
    chunks = data.draw(_cuts(raw))
    assert feed_all(chunks) == feed_all([raw])
