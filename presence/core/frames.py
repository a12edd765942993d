"""The ``msg ...`` frames and their event-stream encoding.

A frame is text: a first line ``msg <kind> <args...>`` (words separated by
single spaces) and optional payload lines.  On the heartbeat it travels as one
server-sent event::

    id: 7
    data: msg chat alice 3f2a9c
    data: hello
    data: second line of the text

(an empty line ends the event).  The id is per session and is added when the
frame enters a session's mailbox, so one :class:`Frame` object (and its
encoded ``data:`` block, built once) is shared by every recipient.

A keep-alive is the single byte ``\\n``: an empty line outside an event, which
event-stream parsers ignore.
"""

from __future__ import annotations

import re
from typing import Iterable

KEEPALIVE = b"\n"
_SURROGATE = re.compile("[\ud800-\udfff]")

class Frame:
    """One immutable frame.  ``kind`` is the word after ``msg``."""

    __slots__ = ("kind", "args", "payload", "_data", "repaired")

    def __init__(self, kind: str, args: Iterable[str] = (), payload: str = "") -> None:
        self.kind = kind
        self.args = tuple(args)
        self.payload = payload
        self._data: bytes | None = None
        #: true once :meth:`data` could not encode the frame as it is: it
        #: carries U+FFFD in place of what is not text (a lone surrogate),
        #: or, for a frame whose parts are not text at all, is ``msg
        #: invalid``.  (1: repaired; 2: and reported, see
        #: :meth:`repair_to_report`.)
        self.repaired = 0

    def repair_to_report(self) -> bool:
        """True once (to the first caller) after the frame was repaired: the
        writer that sees it logs it, once, however many sessions share it."""
        if self.repaired == 1:
            self.repaired = 2
            return True
        return False

    @property
    def is_chat(self) -> bool:
        return self.kind == "chat"

    @property
    def text(self) -> str:
        head = " ".join(("msg", self.kind) + self.args)
        if self.payload:
            return head + "\n" + self.payload
        return head

    def data(self) -> bytes:
        """The ``data:`` lines and the blank line that ends the event.

        Never raises: a frame that cannot be written as it is (built by a
        front-end that let a lone surrogate through, or with parts that are
        not text) is written repaired (see :attr:`repaired`), so that one
        bad frame never stops the frames after it on a heartbeat."""
        if self._data is None:
            try:
                text = self.text
            except TypeError:
                text = "msg invalid " + "".join(c for c in str(self.kind) if c.isalnum())[:32]
                self.repaired = 1
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            # every line after "data: ", each ended by \n; a blank line ends it
            lines = "data: " + text.replace("\n", "\ndata: ") + "\n\n"
            try:
                self._data = lines.encode("utf-8")
            except UnicodeEncodeError:
                self._data = _SURROGATE.sub("\ufffd", lines).encode("utf-8")
                self.repaired = 1
        return self._data

    def event(self, ident: int) -> bytes:
        """The whole server-sent event for this frame with id ``ident``."""
        return b"id: %d\n" % ident + self.data()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.kind, self.args, self.payload) == (other.kind, other.args, other.payload)

    def __hash__(self) -> int:
        return hash((self.kind, self.args, self.payload))

    def __repr__(self) -> str:
        return f"Frame({self.text!r})"


def update(state: str, user: str, text: str = "") -> Frame:
    """``msg update <state> <user>``: ``state`` is the wire word
    (``online``, ``away``, ``busy``, ``offline``, or ``address``; see
    :func:`presence.core.states.wire`) and ``text``, the user's status text,
    is the payload (the frame's second line) when set."""
    return Frame("update", (state, user), text)


def updates(changes: Iterable[tuple]) -> Frame:
    """``msg updates`` + one ``<state> <user>`` line per ``(user, state)``
    of ``changes``: the bundled presence changes of one window (a heartbeat
    with ``bundle=1``; status text is not carried, see docs/protocol.md)."""
    return Frame("updates", (), "\n".join(f"{state} {user}" for user, state in changes))


def refresh(group: str) -> Frame:
    return Frame("refresh", (group,))


def init_chat(peer: str) -> Frame:
    return Frame("initChat", (peer,))


def chat(sender: str, msgid: str, text: str) -> Frame:
    return Frame("chat", (sender, msgid), text)


def message(sender: str) -> Frame:
    return Frame("message", (sender,))


def notice(text: str) -> Frame:
    """``msg notice`` + the text: a notice from the server's operator."""
    return Frame("notice", (), text)


def bye(reason: str) -> Frame:
    return Frame("bye", (reason,))


def sipreq(method: str, txid: str, text: str) -> Frame:
    """``msg sipreq <METHOD> <txid>`` + the SIP request, lines joined by ``\\n``."""
    return Frame("sipreq", (method, txid), text)


def sipresp(code: int, txid: str, text: str) -> Frame:
    """``msg sipresp <code> <txid>`` + the SIP response, lines joined by ``\\n``."""
    return Frame("sipresp", (str(code), txid), text)


def wireless_unavailable(user: str) -> Frame:
    """``msg wireless unavailable <user>``: a text to ``user``'s handset
    could not be delivered."""
    return Frame("wireless", ("unavailable", user))


def parse(text: str) -> Frame:
    """Parse frame text (as carried in ``data:`` lines, joined by ``\\n``)."""
    head, _, payload = text.partition("\n")
    words = head.split(" ")
    if len(words) < 2 or words[0] != "msg" or not words[1]:
        raise ValueError(f"not a frame: {head[:60]!r}")
    return Frame(words[1], words[2:], payload)
