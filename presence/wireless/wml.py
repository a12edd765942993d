"""WML 1.1 decks: escaping, building and the size bound.

Every deck is ASCII: characters outside ASCII are written as numeric
character references, so the bytes mean the same whatever charset a gateway
assumes, and the XML prolog says UTF-8 anyway.  Text and attribute values
from users pass through :func:`text` / :func:`attr`, which escape XML
(``& < > " '``) and WML's variable marker (``$`` becomes ``$$``), so that no
user text can inject markup or a variable reference.

A deck must stay under :data:`MAX_DECK` bytes (1,400: what old handsets and
gateways take in one go).  :func:`deck` raises :class:`DeckTooLarge` past
it; pages fit lists into the bound with :func:`fit` (as many rows as fit,
then a "More" link).
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

MAX_DECK = 1400
CONTENT_TYPE = b"text/vnd.wap.wml"
PUBLIC_ID = "-//WAPFORUM//DTD WML 1.1//EN"
SYSTEM_ID = "http://www.wapforum.org/DTD/wml_1.1.xml"
PROLOG = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    f'<!DOCTYPE wml PUBLIC "{PUBLIC_ID}" "{SYSTEM_ID}">\n'
)


class DeckTooLarge(ValueError):
    pass


def _ascii(value: str) -> str:
    return value.encode("ascii", "xmlcharrefreplace").decode("ascii")


def text(value: object) -> str:
    """Character data: XML-escaped, ``$`` doubled, ASCII only.  Control
    characters (not allowed in XML) become spaces."""
    s = str(value)
    s = "".join(c if c >= " " or c in "\n\t" else " " for c in s)
    s = (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
         .replace("$", "$$"))
    return _ascii(s)


def attr(value: object) -> str:
    """An attribute value (without the quotes): as :func:`text`, with quotes
    escaped and line ends as character references."""
    return (text(value).replace('"', "&quot;").replace("'", "&#39;")
            .replace("\n", "&#10;").replace("\t", "&#9;"))


def clip(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, with ``...`` when cut."""
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: max(0, limit - 3)] + "..."


def card(ident: str, title: str, body: str, extra: str = "") -> str:
    """One card: ``extra`` (onevent, do) before the paragraph ``body``."""
    return f'<card id="{ident}" title="{attr(title)}">{extra}<p>{body}</p></card>'


def deck(*cards: str, head: str = "") -> bytes:
    data = (PROLOG + "<wml>" + (f"<head>{head}</head>" if head else "")
            + "".join(cards) + "</wml>\n").encode("ascii")
    if len(data) >= MAX_DECK:
        raise DeckTooLarge(f"deck of {len(data)} bytes (bound {MAX_DECK})")
    return data


def link(href: str, label: str) -> str:
    return f'<a href="{attr(href)}">{text(label)}</a>'


def go_post(href: str, fields: Sequence[Tuple[str, str]]) -> str:
    """A ``<go method="post">``; field values are written as given, so a
    value may be a variable reference like ``$(msg)``: escape data with
    :func:`attr` before passing it."""
    posts = "".join(f'<postfield name="{n}" value="{v}"/>' for n, v in fields)
    return f'<go method="post" href="{attr(href)}">{posts}</go>'


def fit(build: Callable[[List[str], bool], bytes], rows: Sequence[str]) -> Tuple[bytes, int]:
    """The deck ``build(shown_rows, more)`` with as many of ``rows`` as fit
    under the bound; returns the deck and how many rows it shows (0 when not
    even one row fits: then the page shows the "More" link only)."""
    for n in range(len(rows), -1, -1):
        try:
            return build(list(rows[:n]), n < len(rows)), n
        except DeckTooLarge:
            continue
    raise DeckTooLarge("not even an empty page fits")
