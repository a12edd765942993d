"""SMS user data the way an SMSC cuts it: data codings, user data headers
(UDH) and concatenation.

One SMS carries 140 octets of user data.  A user data header (its first
octet, the UDHL, is the length of the rest) takes its octets first; what is
left holds the payload in the message's coding:

* ``gsm7`` (Kannel ``coding=0``): GSM 03.38 septets, 160 without a header;
  a character of the extension table costs two septets; with a header the
  septets start at the next septet boundary (``160 - ceil(8 * udh / 7)``);
* ``8bit`` (``coding=1``): octets, ``140 - udh``;
* ``ucs2`` (``coding=2``): UTF-16 units of two octets, ``(140 - udh) // 2``.

A payload that does not fit one SMS is split into parts that each carry the
concatenation element (IE ``00``, length 3: reference, total, sequence) in
their header, after the sender's own elements: 153 septets, 134 octets or
67 units without a header of the sender's.  A split never cuts an escape
sequence or a surrogate pair.  :func:`reassemble` is the handset's side.
"""

from __future__ import annotations

import binascii
import re
from urllib.parse import unquote_to_bytes
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from presence.wireless.numbers import GSM7_BASIC, GSM7_EXTENSION, is_gsm7

OCTETS = 140
#: Kannel's coding numbers (sendsms ``coding``) and ours
KANNEL_CODING = {0: "gsm7", 1: "8bit", 2: "ucs2"}
CONCAT_IE = 0x00
CONCAT16_IE = 0x08
PORT8_IE = 0x04
PORT16_IE = 0x05
_HEX = re.compile(rb"(?:[0-9A-Fa-f]{2})+\Z")

Payload = Union[str, bytes]


class UdhError(ValueError):
    """A user data header Kannel would refuse; the text is Kannel's."""


def udh_bytes(raw: bytes) -> bytes:
    """The header from a sendsms ``udh`` value: URL-decoded bytes as Kannel
    takes them, or the same written in hex (as ``X-Kannel-UDH`` and the XML
    ``<udh>`` carry it) or still URL-encoded (as Kannel's own POST writes
    ``X-Kannel-UDH``).  Kannel's checks: the first octet is the length of
    the rest, and the whole fits an SMS."""
    data = raw
    if _HEX.match(raw) and (len(raw) < 2 or raw[0] != len(raw) - 1):
        data = binascii.unhexlify(raw)
    elif b"%" in raw and (not raw or raw[0] != len(raw) - 1):
        data = unquote_to_bytes(raw)  # URL-encoded, as Kannel's own POST writes it
    if not data or len(data) != data[0] + 1:
        raise UdhError("UDH field misformed, rejected")
    if len(data) > OCTETS:
        raise UdhError("UDH field is too long, rejected")
    return data


def elements(udh: bytes) -> List[Tuple[int, bytes]]:
    """The information elements of a header (UDHL first); a truncated
    element ends the list."""
    out: List[Tuple[int, bytes]] = []
    i = 1
    while i + 1 < len(udh):
        iei, length = udh[i], udh[i + 1]
        value = udh[i + 2:i + 2 + length]
        if len(value) < length:
            break
        out.append((iei, value))
        i += 2 + length
    return out


def ports(udh: bytes) -> Optional[Dict[str, int]]:
    """Application port addressing (IE 05: 16-bit, IE 04: 8-bit), if any."""
    for iei, value in elements(udh):
        if iei == PORT16_IE and len(value) == 4:
            return {"dst": int.from_bytes(value[:2], "big"),
                    "src": int.from_bytes(value[2:], "big")}
        if iei == PORT8_IE and len(value) == 2:
            return {"dst": value[0], "src": value[1]}
    return None


def _capacity(coding: str, udh_len: int) -> int:
    if coding == "gsm7":
        return (OCTETS * 8 - ((udh_len * 8 + 6) // 7) * 7) // 7
    if coding == "ucs2":
        return (OCTETS - udh_len) // 2
    return OCTETS - udh_len


def _units(payload: Payload, coding: str) -> List[Tuple[Payload, int]]:
    if coding == "8bit":
        assert isinstance(payload, bytes)
        return [(payload[i:i + 1], 1) for i in range(len(payload))]
    assert isinstance(payload, str)
    if coding == "gsm7":
        return [(c, 2 if c in GSM7_EXTENSION else 1) for c in payload]
    return [(c, 2 if ord(c) > 0xFFFF else 1) for c in payload]


def to_gsm7(text: str) -> str:
    """``text`` in the GSM default alphabet: what it lacks becomes ``?``
    (as Kannel converts a ``coding=0`` text)."""
    return "".join(c if c in GSM7_BASIC or c in GSM7_EXTENSION else "?" for c in text)


def auto_coding(text: str) -> str:
    return "gsm7" if is_gsm7(text) else "ucs2"


@dataclass(frozen=True)
class Segment:
    """One SMS on the air: its header and its piece of the payload."""

    udh: bytes
    payload: Payload

    def wire(self, coding: str) -> Dict[str, str]:
        out = {"udh": self.udh.hex()}
        if isinstance(self.payload, bytes):
            out["data"] = self.payload.hex()
        else:
            out["text"] = self.payload
        return out


def split(payload: Payload, coding: str, udh: bytes = b"", ref: int = 0) -> List[Segment]:
    """The SMS that carry ``payload`` (a str for ``gsm7``/``ucs2``, bytes
    for ``8bit``) with the sender's header ``udh`` (may be empty)."""
    units = _units(payload, coding)
    empty: Payload = b"" if coding == "8bit" else ""
    if sum(cost for _, cost in units) <= _capacity(coding, len(udh)):
        return [Segment(udh, payload)]
    # each part's header: the sender's elements and the concatenation element
    room = _capacity(coding, (len(udh) if udh else 1) + 5)
    pieces: List[Payload] = []
    current: List[Payload] = []
    used = 0
    for piece, cost in units:
        if used + cost > room:
            pieces.append(empty.join(current))  # type: ignore[arg-type]
            current, used = [], 0
        current.append(piece)
        used += cost
    if current:
        pieces.append(empty.join(current))  # type: ignore[arg-type]
    total = len(pieces)
    body = udh[1:] if udh else b""
    out = []
    for n, piece in enumerate(pieces, 1):
        rest = body + bytes([CONCAT_IE, 3, ref & 0xFF, total & 0xFF, n & 0xFF])
        out.append(Segment(bytes([len(rest)]) + rest, piece))
    return out


def concat_info(udh: bytes) -> Optional[Tuple[int, int, int]]:
    """``(reference, total, sequence)`` of a part, if its header says so."""
    for iei, value in elements(udh):
        if iei == CONCAT_IE and len(value) == 3:
            return value[0], value[1], value[2]
        if iei == CONCAT16_IE and len(value) == 4:
            return int.from_bytes(value[:2], "big"), value[2], value[3]
    return None


def reassemble(segments: Sequence[Dict[str, str]]) -> Tuple[Payload, bool]:
    """The whole payload from the wire form of a message's segments, in the
    order their concatenation headers give, and whether every part was
    there (a missing or inconsistent part: False, the parts present
    joined)."""
    numbered = []
    complete = True
    for i, seg in enumerate(segments):
        try:
            info = concat_info(bytes.fromhex(seg.get("udh", "")))
        except ValueError:
            info = None
        numbered.append(((info[2] if info else i + 1), seg))
        if info is not None and info[1] != len(segments):
            complete = False
    numbered.sort(key=lambda pair: pair[0])
    if [n for n, _ in numbered] != list(range(1, len(segments) + 1)):
        complete = False
    if any("data" in seg for _, seg in numbered):
        return b"".join(bytes.fromhex(seg.get("data", "")) for _, seg in numbered), complete
    return "".join(seg.get("text", "") for _, seg in numbered), complete
