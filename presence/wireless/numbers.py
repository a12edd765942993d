"""Handset numbers (MSISDNs) and the SMS size rules.

A handset number is ``+`` and 3-15 digits (E.164).  The operator API also
takes the forms callers commonly send: ``00`` for ``+``, bare digits (the
``+`` of an unencoded query string arrives as a space, which separates
receivers) and ``-`` as a digit separator; :func:`normalize` turns each into
the ``+digits`` form, or None when the text is not a number at all.

SMS size: a text in the GSM 03.38 default alphabet fits 160 septets in one
message (characters of the extension table count two); any other text is
sent as UCS-2, 70 UTF-16 units.  A longer text is split into concatenated
parts of 153 septets or 67 units (the rest of each part carries the
concatenation header); a split never cuts an escape sequence or a surrogate
pair.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from presence.service import valid_text

_DIGITS = re.compile(r"[0-9]{3,15}\Z")

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

SINGLE_GSM7, PART_GSM7 = 160, 153
SINGLE_UCS2, PART_UCS2 = 70, 67


def normalize(raw: str) -> Optional[str]:
    """``+digits`` for a handset number in any accepted form, else None."""
    if not isinstance(raw, str):
        return None
    text = raw.strip().replace("-", "")
    if text.startswith("00"):
        text = text[2:]
    elif text.startswith("+"):
        text = text[1:]
    if not _DIGITS.match(text):
        return None
    return "+" + text


#: whether a text is Unicode scalar values only: no lone surrogate (which no
#: SMS, XML or UTF-8 can carry); the service's rule for every entry point
scalar = valid_text


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _units(text: str, gsm7: bool) -> List[Tuple[str, int]]:
    """The text as (piece, cost) units that a split may not cut."""
    out: List[Tuple[str, int]] = []
    for c in text:
        if gsm7:
            out.append((c, 2 if c in GSM7_EXTENSION else 1))
        else:
            out.append((c, 2 if ord(c) > 0xFFFF else 1))  # a surrogate pair
    return out


def split(text: str) -> Tuple[str, List[str]]:
    """``(coding, parts)``: ``"gsm7"`` or ``"ucs2"`` and the text of each SMS."""
    gsm7 = is_gsm7(text)
    coding = "gsm7" if gsm7 else "ucs2"
    units = _units(text, gsm7)
    single, part = (SINGLE_GSM7, PART_GSM7) if gsm7 else (SINGLE_UCS2, PART_UCS2)
    if sum(cost for _, cost in units) <= single:
        return coding, [text]
    parts: List[str] = []
    current: List[str] = []
    used = 0
    for piece, cost in units:
        if used + cost > part:
            parts.append("".join(current))
            current, used = [], 0
        current.append(piece)
        used += cost
    if current:
        parts.append("".join(current))
    return coding, parts
