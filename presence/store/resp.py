"""Redis replies (RESP2) read in one pass, for txredisapi's protocols.

txredisapi's own parser (without the optional ``hiredis``) leaves line mode
after every bulk string and resumes it in a later reactor turn (pausing the
connection, ``callLater(0)``, taking it out of and back into epoll): one
reactor turn per bulk string of every reply and every pub/sub message, so
a box's CPU went more to reading Redis than to its chats
(docs/cluster.md, "Speed").  :class:`FastReplies` reads every complete
reply in the data at hand, in one call, and hands each to the protocol
exactly as txredisapi's parser does (status lines as ``str``, errors as
``ResponseError``, integers, bulk strings through ``tryConvertData``,
``None`` for nil, nested lists), the way its ``HiredisProtocol`` does with
hiredis's reader.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

#: buffered bytes already read past which the buffer is compacted
COMPACT = 1 << 16


class Incomplete(Exception):
    """The buffer ends inside a reply: wait for more data."""


class Reader:
    """Complete RESP2 replies from the bytes fed to it: :meth:`gets`
    returns the next one, or False while it is not complete.  ``bulk``
    converts each bulk string, ``error`` makes the value of an error
    reply."""

    def __init__(self, bulk: Callable[[bytes], Any], error: Callable[[str], Any]) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._bulk = bulk
        self._error = error

    def feed(self, data: bytes) -> None:
        self._buf += data

    def gets(self) -> Any:
        if self._pos >= len(self._buf):
            return False
        try:
            reply, end = self._parse(self._pos)
        except Incomplete:
            return False
        self._pos = end
        if end >= len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif end > COMPACT:
            del self._buf[:end]
            self._pos = 0
        return reply

    def _line(self, pos: int) -> Tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise Incomplete()
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> Tuple[Any, int]:
        line, pos = self._line(pos)
        kind, data = line[:1], line[1:]
        if kind == b"$":
            n = int(data)
            if n < 0:
                return None, pos
            end = pos + n
            if len(self._buf) < end + 2:
                raise Incomplete()
            return self._bulk(bytes(self._buf[pos:end])), end + 2
        if kind == b"*":
            n = int(data)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        if kind == b":":
            return int(data), pos
        if kind == b"+":
            return data.decode(), pos
        if kind == b"-":
            text = data.decode()
            return self._error(text[4:] if text[:4] == "ERR" else text), pos
        raise ValueError(f"not a Redis reply: {line[:40]!r}")


class FastReplies:
    """Mixed in before a txredisapi protocol class (its
    ``BaseRedisProtocol`` parser): replies read by :class:`Reader`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import txredisapi
        super().__init__(*args, **kwargs)   # type: ignore[call-arg]
        self._reader = Reader(self.tryConvertData, txredisapi.ResponseError)  # type: ignore

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        if data:
            self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if reply == "QUEUED":
                self.transactions += 1          # type: ignore[attr-defined]
            else:
                reply = self.handleTransactionData(reply)   # type: ignore[attr-defined]
            self.replyReceived(reply)           # type: ignore[attr-defined]
            transport = getattr(self, "transport", None)
            if transport is not None and transport.disconnecting:
                return


def fast_protocol() -> type:
    """txredisapi's command protocol with :class:`FastReplies`."""
    import txredisapi
    return type("FastRedisProtocol", (FastReplies, txredisapi.BaseRedisProtocol), {})
