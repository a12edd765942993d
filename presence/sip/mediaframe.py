"""The framing of RTP and RTCP packets carried over HTTP between
``presence-sip-bridge`` and the server's media relay (``docs/calls.md``,
"Media over HTTP").

Each packet is one frame::

    +--------+--------+--------+-------------------------+
    |  length (2, BE) | flags  |  packet (length bytes)  |
    +--------+--------+--------+-------------------------+

* ``length``: the packet's size in bytes, 1 to :data:`MAX_PACKET`;
* ``flags``: bit 0 (``0x01``) set for RTCP, clear for RTP; the other bits
  are reserved and must be 0;
* a frame with ``length`` 0 and ``flags`` 0 is a keep-alive: no packet.

The same frames travel both ways: as the chunked body of the held ``GET``
(towards the bridge) and as the body of each ``POST`` (from the bridge, one
or more whole frames).  Pure: no I/O.
"""

from __future__ import annotations

import struct
from typing import List, Tuple

#: the Content-Type of a body of frames
CONTENT_TYPE = b"application/x-presence-media"
#: the largest packet a frame carries (an Ethernet MTU; RTP over UDP never
#: needs more on the paths the bridge serves)
MAX_PACKET = 1500
#: flag bit: the packet is RTCP
RTCP = 0x01
HEADER = 3
#: a keep-alive frame (length 0, no flags)
KEEPALIVE = b"\x00\x00\x00"

#: the error of a server without a media relay, for any path under /sip/media
NO_RELAY = "this server relays no media"

_HEAD = struct.Struct("!HB")

Packet = Tuple[bytes, bool]  # (packet, rtcp)


class MediaFrameError(ValueError):
    """Bytes that are no valid frames; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(packet: bytes, rtcp: bool = False) -> bytes:
    """One frame for ``packet``; :class:`MediaFrameError` if it is empty or
    larger than :data:`MAX_PACKET`."""
    if not packet:
        raise MediaFrameError("an empty packet cannot be framed (length 0 is the keep-alive)")
    if len(packet) > MAX_PACKET:
        raise MediaFrameError(f"a packet of {len(packet)} bytes is over the {MAX_PACKET}"
                              " bytes a frame may carry")
    return _HEAD.pack(len(packet), RTCP if rtcp else 0) + packet


def _head(data: bytes, at: int) -> Tuple[int, bool]:
    length, flags = _HEAD.unpack_from(data, at)
    if flags & ~RTCP:
        raise MediaFrameError(f"frame at byte {at}: reserved flag bits set ({flags:#04x})")
    if length > MAX_PACKET:
        raise MediaFrameError(f"frame at byte {at}: a packet of {length} bytes is over the"
                              f" {MAX_PACKET} bytes allowed")
    if length == 0 and flags:
        raise MediaFrameError(f"frame at byte {at}: an empty frame with flags set")
    return length, bool(flags & RTCP)


def decode_all(data: bytes) -> List[Packet]:
    """Every packet of a body of whole frames (keep-alives skipped);
    :class:`MediaFrameError` on a bad or truncated frame (nothing is
    returned then: a broken body is refused whole)."""
    out: List[Packet] = []
    at, end = 0, len(data)
    while at < end:
        if end - at < HEADER:
            raise MediaFrameError(f"truncated frame header at byte {at}")
        length, rtcp = _head(data, at)
        start = at + HEADER
        if end - start < length:
            raise MediaFrameError(f"frame at byte {at} is truncated: {length} bytes"
                                  f" announced, {end - start} present")
        if length:
            out.append((data[start:start + length], rtcp))
        at = start + length
    return out


class FrameDecoder:
    """Frames out of a byte stream cut anywhere (a chunked HTTP body): holds
    at most one partial frame (:data:`HEADER` + :data:`MAX_PACKET` bytes)."""

    __slots__ = ("_buffer", "keepalives")

    def __init__(self) -> None:
        self._buffer = b""
        self.keepalives = 0

    def feed(self, data: bytes) -> List[Packet]:
        """The packets completed by ``data``; :class:`MediaFrameError` on a
        bad frame (the stream cannot be resynchronised: drop it)."""
        data = self._buffer + data if self._buffer else data
        out: List[Packet] = []
        at, end = 0, len(data)
        while end - at >= HEADER:
            length, rtcp = _head(data, at)
            start = at + HEADER
            if end - start < length:
                break
            if length:
                out.append((data[start:start + length], rtcp))
            else:
                self.keepalives += 1
            at = start + length
        self._buffer = data[at:]
        return out

    @property
    def pending(self) -> int:
        """Bytes of a partial frame held."""
        return len(self._buffer)
