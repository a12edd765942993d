"""The live presence badge of an invitation: an SVG and a PNG of the same
picture, made at the moment the mail reader asks for it.

``inviter · state · status text`` with a dot in the state's colour, 320 x
40 pixels.  The PNG is drawn here with a small bitmap font
(:mod:`presence.invite.font`, DejaVu Sans) and written with ``zlib`` from
the standard library; characters outside printable ASCII are drawn as
``?`` in the PNG (the SVG carries the text as it is, escaped).
"""

from __future__ import annotations

import base64
import struct
import zlib
from functools import lru_cache
from typing import List, Tuple
from xml.sax.saxutils import escape

from presence.invite import font
from presence.invite.mail import STATE_WORDS

WIDTH, HEIGHT = 320, 40
#: the pages' colours (presence.css)
COLOURS = {"available": (0x1f, 0x9d, 0x55), "away": (0xb2, 0x6b, 0x00),
           "busy": (0xc0, 0x39, 0x2b), "offline": (0x9a, 0xa3, 0xaf)}
INK = (0x1d, 0x24, 0x30)
MUTED = (0x66, 0x70, 0x85)
BACK = (0xff, 0xff, 0xff)
LINE = (0xdd, 0xe2, 0xea)
#: the badge of a token that is unknown or expired: it names nobody
EXPIRED = ("", "expired", "this invitation has expired")
MAX_TEXT = 60


def words(state: str) -> str:
    return "online" if state == "available" else STATE_WORDS.get(state, "offline")


def svg(name: str, state: str, text: str = "") -> bytes:
    colour = "#%02x%02x%02x" % COLOURS.get(state, COLOURS["offline"])
    text = text[:MAX_TEXT]
    label = f"{name} is {words(state)}" + (f": {text}" if text else "") if name else text
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label, _QUOTES)}">',
        f"<title>{escape(label)}</title>",
        f'<rect x=".5" y=".5" width="{WIDTH - 1}" height="{HEIGHT - 1}" rx="8" fill="#fff"'
        ' stroke="#dde2ea"/>',
        f'<circle cx="18" cy="20" r="6" fill="{colour}"/>',
        '<text x="32" y="25" font-family="DejaVu Sans,Verdana,Arial,sans-serif"'
        ' font-size="13" fill="#1d2430">',
    ]
    if name:
        parts.append(f'<tspan font-weight="bold">{escape(name)}</tspan>'
                     f'<tspan fill="{colour}"> \u00b7 {escape(words(state))}</tspan>')
        if text:
            parts.append(f'<tspan fill="#667085"> \u00b7 {escape(text)}</tspan>')
    else:
        parts.append(f'<tspan fill="#667085">{escape(text)}</tspan>')
    parts.append("</text></svg>\n")
    return "".join(parts).encode("utf-8")


_QUOTES = {'"': "&quot;"}


@lru_cache(maxsize=None)
def _glyph(style: str, ch: str) -> Tuple[int, bytes]:
    glyphs = font.GLYPHS[style]
    width, packed = glyphs.get(ch) or glyphs["?"]
    raw = base64.b64decode(packed)
    cover = bytearray()
    for byte in raw:
        cover.append(byte >> 4)
        cover.append(byte & 15)
    return width, bytes(cover[: width * font.HEIGHT])


class Canvas:
    def __init__(self, width: int, height: int, colour: Tuple[int, int, int]) -> None:
        self.width, self.height = width, height
        self.rows: List[bytearray] = [bytearray(colour * width) for _ in range(height)]

    def blend(self, x: int, y: int, colour: Tuple[int, int, int], alpha: float) -> None:
        if not (0 <= x < self.width and 0 <= y < self.height) or alpha <= 0:
            return
        row, i = self.rows[y], 3 * x
        for k in range(3):
            row[i + k] = round(row[i + k] * (1 - alpha) + colour[k] * alpha)

    def text(self, x: int, top: int, value: str, colour: Tuple[int, int, int],
             style: str = "regular", limit: int = WIDTH) -> int:
        """Draw ``value`` from ``x``; past ``limit`` it ends with "..."."""
        dots = 3 * _glyph(style, ".")[0]
        for i, ch in enumerate(value):
            width = _glyph(style, ch if " " <= ch <= "~" else "?")[0]
            if x + width > limit or (i < len(value) - 1 and x + width + dots > limit
                                     and self._width(value[i:], style) > limit - x):
                for _ in range(3):
                    x = self._char(x, top, ".", colour, style)
                return x
            x = self._char(x, top, ch, colour, style)
        return x

    @staticmethod
    def _width(value: str, style: str) -> int:
        return sum(_glyph(style, ch if " " <= ch <= "~" else "?")[0] for ch in value)

    def _char(self, x: int, top: int, ch: str, colour: Tuple[int, int, int],
              style: str) -> int:
        width, cover = _glyph(style, ch if " " <= ch <= "~" else "?")
        for gy in range(font.HEIGHT):
            for gx in range(width):
                a = cover[gy * width + gx]
                if a:
                    self.blend(x + gx, top + gy, colour, a / 15)
        return x + width

    def disc(self, cx: float, cy: float, r: float, colour: Tuple[int, int, int]) -> None:
        for y in range(int(cy - r - 1), int(cy + r + 2)):
            for x in range(int(cx - r - 1), int(cx + r + 2)):
                # coverage by 4x4 samples: a smooth edge
                inside = sum(1 for sy in range(4) for sx in range(4)
                             if (x + (sx + .5) / 4 - cx) ** 2 + (y + (sy + .5) / 4 - cy) ** 2
                             <= r * r)
                self.blend(x, y, colour, inside / 16)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def png(name: str, state: str, text: str = "") -> bytes:
    colour = COLOURS.get(state, COLOURS["offline"])
    c = Canvas(WIDTH, HEIGHT, BACK)
    for x in range(WIDTH):
        c.blend(x, 0, LINE, 1)
        c.blend(x, HEIGHT - 1, LINE, 1)
    for y in range(HEIGHT):
        c.blend(0, y, LINE, 1)
        c.blend(WIDTH - 1, y, LINE, 1)
    c.disc(18, 20, 6, colour)
    top = (HEIGHT - font.HEIGHT) // 2
    limit = WIDTH - 10
    text = text[:MAX_TEXT]
    if name:
        x = c.text(32, top, name, INK, "bold", limit)
        x = c.text(x, top, " - " + words(state), colour, "regular", limit)
        if text:
            c.text(x, top, " - " + text, MUTED, "regular", limit)
    else:
        c.text(32, top, text, MUTED, "regular", limit)
    return c.png()
