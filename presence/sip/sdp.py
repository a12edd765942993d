"""SDP (RFC 4566) as far as the media relay needs it: where each ``m=``
line's side receives, and the rewrite that points a side at the relay.

:func:`parse` reads a body into :class:`Sdp` (its lines kept as they came)
with one :class:`Media` per ``m=`` line: the connection address in effect
(media-level ``c=``, else the session's), the RTP port, the RTCP address
(``a=rtcp:`` RFC 3605, else port + 1) and whether ``a=rtcp-mux`` (RFC 5761)
is asked for.  :func:`rewrite` gives the text to send on: ``o=`` and every
``c=`` name the relay's address (a hold's ``0.0.0.0`` stays), each ``m=``
port is the relay leg's RTP port (``None``: the stream is disabled, port
``0``; a port ``0`` stays ``0``), ``a=rtcp:`` names the leg's RTCP port,
and ICE lines (``a=candidate`` and the like) are dropped so that media
takes the relay's address and not a candidate around it.  The ``o=``
session version is kept: the rewrite is a function of the SDP and of the
legs, which do not change within a call, so an unchanged SDP stays
unchanged and a changed one carries its author's new version.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

#: ICE attributes (RFC 8839) dropped by the rewrite
ICE_ATTRIBUTES = ("candidate", "remote-candidates", "ice-ufrag", "ice-pwd", "ice-options",
                  "ice-lite", "ice-mismatch", "end-of-candidates", "ice-pacing")
HOLD = ("0.0.0.0", "::")


class Media:
    """One ``m=`` line and what its side said about it."""

    __slots__ = ("index", "kind", "port", "address", "rtcp", "mux")

    def __init__(self, index: int, kind: str, port: int) -> None:
        self.index = index
        self.kind = kind
        self.port = port
        self.address: Optional[str] = None
        #: ``(address or None, port)`` of ``a=rtcp``, else None
        self.rtcp: Optional[Tuple[Optional[str], int]] = None
        self.mux = False

    @property
    def enabled(self) -> bool:
        return self.port != 0

    def rtp_address(self) -> Optional[Tuple[str, int]]:
        if not self.enabled or self.address is None or self.address in HOLD:
            return None
        return (self.address, self.port)

    def rtcp_address(self) -> Optional[Tuple[str, int]]:
        rtp = self.rtp_address()
        if rtp is None:
            return None
        if self.rtcp is not None:
            return (self.rtcp[0] or rtp[0], self.rtcp[1])
        return (rtp[0], rtp[1] + 1)


class Sdp:
    def __init__(self, lines: List[str], media: List[Media]) -> None:
        self.lines = lines
        self.media = media


def _connection_address(value: str) -> Optional[str]:
    """``IN IP4 192.0.2.1`` -> ``192.0.2.1`` (a multicast TTL dropped)."""
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise ValueError(f"bad connection line c={value}")
    return parts[2].split("/", 1)[0]


def parse(body: bytes) -> Sdp:
    """The SDP in ``body``; raises ValueError when it is none."""
    text = body.decode("utf-8")
    lines = [line for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[0].startswith("v="):
        raise ValueError("not SDP: no v= line first")
    session_address: Optional[str] = None
    media: List[Media] = []
    for line in lines:
        kind, _, value = line.partition("=")
        if kind == "m":
            parts = value.split()
            if len(parts) < 3 or not parts[1].split("/", 1)[0].isdigit():
                raise ValueError(f"bad media line m={value}")
            port = int(parts[1].split("/", 1)[0])
            if port > 65535:
                raise ValueError(f"bad port in m={value}")
            item = Media(len(media), parts[0], port)
            item.address = session_address
            media.append(item)
        elif kind == "c":
            address = _connection_address(value)
            if media:
                media[-1].address = address
            else:
                session_address = address
        elif kind == "a" and media:
            if value == "rtcp-mux":
                media[-1].mux = True
            elif value.startswith("rtcp:"):
                parts = value[5:].split()
                if parts and parts[0].isdigit() and 0 < int(parts[0]) <= 65535:
                    address = parts[3] if len(parts) >= 4 else None
                    media[-1].rtcp = (address, int(parts[0]))
    return Sdp(lines, media)


def rewrite(sdp: Sdp, address: str, ports: Sequence[Optional[int]]) -> bytes:
    """The SDP to send on: see the module docstring.  ``ports[i]`` is the
    relay's RTP port for ``m=`` line ``i`` (None or missing: disabled)."""
    out: List[str] = []
    index = -1
    family = "IP6" if ":" in address else "IP4"
    for line in sdp.lines:
        kind, _, value = line.partition("=")
        if kind == "o":
            parts = value.split()
            if len(parts) == 6:
                parts[4], parts[5] = family, address
                line = "o=" + " ".join(parts)
        elif kind == "c":
            if _connection_address(value) not in HOLD:
                line = f"c=IN {family} {address}"
        elif kind == "m":
            index += 1
            parts = value.split()
            port = ports[index] if index < len(ports) else None
            if sdp.media[index].port != 0:
                parts[1] = str(port if port is not None else 0)
                line = "m=" + " ".join(parts)
        elif kind == "a":
            name = value.split(":", 1)[0]
            if name in ICE_ATTRIBUTES:
                continue
            if name == "rtcp" and index >= 0:
                port = ports[index] if index < len(ports) else None
                if port is not None:
                    line = f"a=rtcp:{port + 1} IN {family} {address}"
        out.append(line)
    return ("\r\n".join(out) + "\r\n").encode("utf-8")
