"""
Incremental ``text/event-stream`` parsing and presence frame parsing.

This module does no I/O. It is shared by the console client, the SIP bridge
and the handset emulator, which all hold a heartbeat (``GET /jchat``) and read
its body as it arrives.

The wire format (see ``docs/client.md`` and the protocol, section 3)::

    id: 7
    data: msg chat alice 12
    data: hello there
    <empty line>

Each event is a block of ``field: value`` lines ended by an empty line.
``data`` lines are joined with ``"\\n"``; lines starting with ``:`` are
comments; a line end is ``\\r\\n``, ``\\n`` or a lone ``\\r``. A lone ``\\n``
between events (the server's keep-alive byte) is an empty line with no data
buffered, so it dispatches nothing. Bytes may be split across chunks at any
boundary, including inside a UTF-8 sequence or between ``\\r`` and ``\\n``.

The parser follows the WHATWG "server-sent events" interpretation rules,
except that an event's ``id`` is the ``id`` field of its own block (``None``
when the block had none) rather than the last id carried forward; the carried
value is available as :attr:`EventStreamParser.last_event_id`.

A frame (the ``data`` of one event) is ``msg <kind> <args...>`` on its first
line, words separated by single spaces, followed by payload lines;
:func:`parse_frame` splits it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "Event",
    "EventStreamParser",
    "EventStreamError",
    "Frame",
    "FrameError",
    "encode_event",
    "parse_frame",
]

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class EventStreamError(ValueError):
    """
    The stream cannot be parsed further (a line exceeds the configured limit).
    """


@dataclass(frozen=True)
class Event:
    """
    One dispatched event.

    @ivar id: the value of the ``id`` field in this event's block, or ``None``
        when the block carried none.
    @ivar data: the ``data`` lines joined with ``"\\n"``.
    @ivar event: the ``event`` field (``"message"`` when absent).
    @ivar retry: the ``retry`` field in milliseconds, when present and valid.
    """

    id: str | None
    data: str
    event: str = "message"
    retry: int | None = None


class EventStreamParser:
    """
    Incremental ``text/event-stream`` parser: feed it bytes as they arrive and
    it returns the events completed by them.

    @ivar last_event_id: the last ``id`` seen on the stream (carried across
        events, as a browser's ``EventSource`` does), or ``None``.
    """

    def __init__(self, max_line_length: int = 1 << 20) -> None:
        """
        @param max_line_length: the longest line (in bytes) accepted; a longer
            one raises L{EventStreamError} so that a broken peer cannot make
            the buffer grow without bound.
        """
        self.max_line_length = max_line_length
        self.last_event_id: str | None = None
        self._buffer = b""
        self._started = False
        self._skip_lf = False
        self._data: list[str] = []
        self._has_data = False
        self._id: str | None = None
        self._event: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """
        Parse C{chunk} (any number of bytes, possibly none) and return the
        events completed by it, in order.

        @raise EventStreamError: when a line exceeds C{max_line_length}.
        """
        if not chunk:
            return []
        if self._skip_lf:
            # The previous chunk ended in "\r": a "\n" starting this one
            # belongs to the same line end.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buffer + chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buffer = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        events: list[Event] = []
        pos = 0
        for match in _LINE_END.finditer(buf):
            line = buf[pos : match.start()]
            pos = match.end()
            if match.group() == b"\r" and pos == len(buf):
                self._skip_lf = True
            self._check_length(len(line))
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        self._buffer = buf[pos:]
        self._check_length(len(self._buffer))
        return events

    def _check_length(self, length: int) -> None:
        if length > self.max_line_length:
            raise EventStreamError(
                f"event-stream line longer than {self.max_line_length} bytes"
            )

    def _line(self, line: str) -> Event | None:
        """
        Interpret one complete line; return the event it dispatches, if any.
        """
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "id":
            if "\x00" not in value:
                self._id = value
                self.last_event_id = value
        elif field == "event":
            self._event = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        event: Event | None = None
        if self._has_data:
            event = Event(
                id=self._id,
                data="\n".join(self._data),
                event=self._event or "message",
                retry=self._retry,
            )
        self._data = []
        self._has_data = False
        self._id = None
        self._event = None
        self._retry = None
        return event


def encode_event(data: str, id: int | str | None = None) -> bytes:
    """
    Encode one event the way the server writes it: an ``id`` line (when
    given), one ``data:`` line per line of C{data}, then an empty line.
    """
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend("data: " + part for part in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


class FrameError(ValueError):
    """
    The text is not a presence frame (``msg <kind> ...``).
    """


class Frame(NamedTuple):
    """
    A presence frame split into its parts.

    @ivar kind: the word after ``msg`` (``chat``, ``update``, ``bye``...).
    @ivar args: the remaining words of the first line.
    @ivar payload: the lines after the first, joined with ``"\\n"`` (empty
        when there are none).
    """

    kind: str
    args: tuple[str, ...]
    payload: str


def parse_frame(text: str) -> Frame:
    """
    Split a frame ``msg <kind> <args...>`` + payload lines.

    >>> parse_frame("msg chat alice 7\\nhello")
    Frame(kind='chat', args=('alice', '7'), payload='hello')

    @raise FrameError: if the first line is not ``msg <kind> ...``.
    """
    first, _, payload = text.partition("\n")
    words = first.split(" ")
    if len(words) < 2 or words[0] != "msg" or not words[1]:
        raise FrameError(f"not a presence frame: {first[:80]!r}")
    return Frame(kind=words[1], args=tuple(words[2:]), payload=payload)
