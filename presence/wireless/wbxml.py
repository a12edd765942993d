"""Binary (WBXML 1.x) Service Indication and Service Loading documents,
decoded with the tokens of their specifications (WAP-167 SI, WAP-168 SL)
back into the XML that :mod:`presence.wireless.si` and
:mod:`presence.wireless.sl` check.

Only what those two documents use is understood: code page 0, inline
strings (``STR_I``), the string table (``STR_T``), ``OPAQUE`` dates
(``created``, ``si-expires``: the digits of ``YYYYMMDDhhmmss`` two to an
octet, trailing zero octets left out), ``ENTITY`` and the attribute value
tokens.  Anything else (an unknown token, a ``LITERAL``, a code page switch,
a truncated document) is refused with :class:`WbxmlError`; the document is
bounded by the caller and the decoder never loops without consuming input.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple
from xml.sax.saxutils import escape, quoteattr

SWITCH_PAGE, END, ENTITY, STR_I, LITERAL, STR_T, OPAQUE = 0x00, 0x01, 0x02, 0x03, 0x04, \
    0x83, 0xC3
MAX_DEPTH = 8

#: public identifiers (WBXML well-known values)
SI_PUBLIC_ID, SL_PUBLIC_ID = 0x05, 0x06

_URL_VALUES = {0x85: ".com/", 0x86: ".edu/", 0x87: ".net/", 0x88: ".org/"}

SI = {
    "root": "si",
    "public": "-//WAPFORUM//DTD SI 1.0//EN",
    "tags": {0x05: "si", 0x06: "indication", 0x07: "info", 0x08: "item"},
    "attrs": {
        0x05: ("action", "signal-none"), 0x06: ("action", "signal-low"),
        0x07: ("action", "signal-medium"), 0x08: ("action", "signal-high"),
        0x09: ("action", "delete"), 0x0A: ("created", ""), 0x0B: ("href", ""),
        0x0C: ("href", "http://"), 0x0D: ("href", "http://www."),
        0x0E: ("href", "https://"), 0x0F: ("href", "https://www."),
        0x10: ("si-expires", ""), 0x11: ("si-id", ""), 0x12: ("class", ""),
    },
    "dates": ("created", "si-expires"),
}
SL = {
    "root": "sl",
    "public": "-//WAPFORUM//DTD SL 1.0//EN",
    "tags": {0x05: "sl"},
    "attrs": {
        0x05: ("action", "execute-low"), 0x06: ("action", "execute-high"),
        0x07: ("action", "cache"), 0x08: ("href", ""), 0x09: ("href", "http://"),
        0x0A: ("href", "http://www."), 0x0B: ("href", "https://"),
        0x0C: ("href", "https://www."),
    },
    "dates": (),
}


class WbxmlError(ValueError):
    """Not a binary document of the expected kind; the text says why."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise WbxmlError("the binary document is truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise WbxmlError("the binary document is truncated")
        return self.data[self.pos]

    def mb_uint(self) -> int:
        value = 0
        for _ in range(5):
            b = self.byte()
            value = (value << 7) | (b & 0x7F)
            if not b & 0x80:
                return value
        raise WbxmlError("a multi-byte integer is too long")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise WbxmlError("the binary document is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise WbxmlError("an inline string is not terminated")
        out = self.data[self.pos:end]
        self.pos = end + 1
        return out


def _table_string(table: bytes, index: int) -> bytes:
    if index >= len(table):
        raise WbxmlError("a string table reference is out of range")
    end = table.find(b"\0", index)
    return table[index:end if end >= 0 else len(table)]


def _date(raw: bytes) -> str:
    digits = raw.hex()
    if not digits.isdigit() or len(raw) > 7:
        raise WbxmlError("an OPAQUE date is not a date")
    digits = (digits + "0" * 14)[:14]
    return (f"{digits[0:4]}-{digits[4:6]}-{digits[6:8]}T{digits[8:10]}:{digits[10:12]}"
            f":{digits[12:14]}Z")


def decode(data: bytes, kind: Dict) -> bytes:
    """The XML (UTF-8) of a binary document of ``kind`` (:data:`SI` or
    :data:`SL`)."""
    r = _Reader(bytes(data))
    version = r.byte()
    if version > 0x03:
        raise WbxmlError("not WBXML 1.0-1.3")
    public = r.mb_uint()
    table_index: Optional[int] = None
    if public == 0:
        table_index = r.mb_uint()
    charset = r.mb_uint() if version > 0 else 0x6A
    if charset not in (0x6A, 0x04, 0x03, 0):  # UTF-8, Latin-1, US-ASCII, unknown
        raise WbxmlError("the binary document's charset is not UTF-8 or ISO-8859-1")
    encoding = "iso-8859-1" if charset == 0x04 else "utf-8"
    table = r.take(r.mb_uint())
    expected = SI_PUBLIC_ID if kind is SI else SL_PUBLIC_ID
    if public == 0:
        name = _table_string(table, table_index or 0).decode("ascii", "replace")
        if name != kind["public"]:
            raise WbxmlError(f"the binary document is not {kind['root'].upper()} 1.0")
    elif public not in (expected, 1):  # 1: unknown public id
        raise WbxmlError(f"the binary document is not {kind['root'].upper()} 1.0")

    def text(b: bytes) -> str:
        try:
            return b.decode(encoding)
        except UnicodeDecodeError:
            raise WbxmlError("a string is not in the document's charset") from None

    def string_token(token: int) -> Optional[str]:
        if token == STR_I:
            return text(r.cstring())
        if token == STR_T:
            return text(_table_string(table, r.mb_uint()))
        if token == ENTITY:
            code = r.mb_uint()
            if code > 0x10FFFF:
                raise WbxmlError("an entity is not a character")
            return chr(code)
        return None

    def attributes() -> List[Tuple[str, str]]:
        out: List[Tuple[str, str]] = []
        while True:
            token = r.byte()
            if token == END:
                return out
            if token not in kind["attrs"]:
                raise WbxmlError(f"unknown attribute token 0x{token:02x}")
            name, value = kind["attrs"][token]
            while r.peek() != END and r.peek() not in kind["attrs"]:
                token = r.byte()
                piece = string_token(token)
                if piece is None and token in _URL_VALUES:
                    piece = _URL_VALUES[token]
                elif piece is None and token == OPAQUE:
                    raw = r.take(r.mb_uint())
                    piece = _date(raw) if name in kind["dates"] else text(raw)
                elif piece is None:
                    raise WbxmlError(f"unknown attribute value token 0x{token:02x}")
                value += piece
            out.append((name, value))

    def element(depth: int) -> str:
        if depth > MAX_DEPTH:
            raise WbxmlError("the binary document nests too deep")
        token = r.byte()
        if token == SWITCH_PAGE or token == LITERAL or (token & 0x3F) not in kind["tags"]:
            raise WbxmlError(f"unknown tag token 0x{token:02x}")
        tag = kind["tags"][token & 0x3F]
        attrs = attributes() if token & 0x80 else []
        start = tag + "".join(f" {n}={quoteattr(v)}" for n, v in attrs)
        if not token & 0x40:
            return f"<{start}/>"
        parts = []
        while True:
            nxt = r.peek()
            if nxt == END:
                r.byte()
                break
            if nxt in (STR_I, STR_T, ENTITY):
                r.byte()
                piece = string_token(nxt)
                parts.append(escape(piece or ""))
            elif nxt == OPAQUE:
                r.byte()
                parts.append(escape(text(r.take(r.mb_uint()))))
            else:
                parts.append(element(depth + 1))
        return f"<{start}>{''.join(parts)}</{tag}>"

    body = element(0)
    if r.pos != len(r.data):
        raise WbxmlError("the binary document has bytes after its end")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode("utf-8")
