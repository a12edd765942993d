"""The handset emulator's small WML browser.

It fetches decks over HTTP (any treq-like client: ``request`` and
``content``), parses them with a hardened parser (``defusedxml``: no entity
declarations, nothing fetched; the WML entities ``&nbsp;`` and ``&shy;`` are
known), and renders the current card as text::

    == Chat alice ==
    alice is online
    alice: hi bob
    [msg: ]
    [1]Send
    [2]Refresh [3]Buddies
    (4) Send

Every link (``<a>``), ``<anchor>`` and ``<do>`` gets a number that
:meth:`WMLBrowser.follow` takes.  Inputs are browser variables
(:meth:`WMLBrowser.set`); ``$(name)`` references are substituted in text,
``href`` (URL-escaped) and ``postfield`` values.  ``<go>`` runs its
``setvar`` s and sends its ``postfield`` s (``method="post"`` as a form
body, ``get`` in the query); ``<prev>`` goes back in the history,
``<refresh>`` sets its variables and renders again.  Entering a card runs
its ``onenterforward`` event; ``newcontext="true"`` clears the context.
Cookies are kept per host (``Set-Cookie`` name/value, ``Max-Age=0`` or an
empty value deletes); redirects are followed (at most 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAX_REDIRECTS = 5
MAX_BODY = 256 * 1024
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?\)|\$([A-Za-z_][A-Za-z0-9_]*)")
_WML_ENTITIES = {b"&nbsp;": b"&#160;", b"&shy;": b"&#173;"}
USER_AGENT = "presence-handset/0.1 (WML 1.1)"


class BrowserError(Exception):
    """A page could not be fetched or is not a usable deck."""


def parse_deck(data: bytes) -> Element:
    """The ``<wml>`` root of a deck; :class:`BrowserError` if it is not one."""
    for name, ref in _WML_ENTITIES.items():
        data = data.replace(name, ref)
    try:
        root = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise BrowserError("the deck declares entities: refused") from None
    except (ParseError, ValueError) as e:
        raise BrowserError(f"the deck is not well-formed XML ({e})") from None
    if root.tag != "wml" or root.find("card") is None:
        raise BrowserError("not a WML deck (no <wml> with a <card>)")
    return root


def substitute(value: str, variables: Dict[str, str], escape: bool = False) -> str:
    """``value`` with WML variable references replaced."""

    def one(m: "re.Match[str]") -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(3)
        mode = (m.group(2) or "").lower()
        text = variables.get(name, "")
        if mode in ("e", "escape") or (escape and mode not in ("n", "noesc", "u", "unesc")):
            return quote(text, safe="")
        return text

    return _VAR.sub(one, value)


@dataclass
class Action:
    label: str
    task: Optional[Element] = None     # a go, prev, refresh or noop element
    href: Optional[str] = None         # for <a href>


@dataclass
class Entry:
    url: str
    deck: Optional[Element]
    card: Optional[str]
    body: str = ""


@dataclass
class Page:
    url: str
    status: int
    content_type: str
    text: str
    actions: List[Action] = field(default_factory=list)


class WMLBrowser:
    def __init__(self, http: Any, user_agent: str = USER_AGENT) -> None:
        self.http = http
        self.user_agent = user_agent
        self.cookies: Dict[str, Dict[str, str]] = {}
        self.vars: Dict[str, str] = {}
        self.history: List[Entry] = []
        self.current: Optional[Entry] = None
        self.status = 0
        self.content_type = ""
        self.actions: List[Action] = []

    # -- cookies --------------------------------------------------------------

    @staticmethod
    def _host(url: str) -> str:
        return (urlsplit(url).netloc or "").lower()

    def cookie(self, url: str, name: str) -> Optional[str]:
        return self.cookies.get(self._host(url), {}).get(name)

    def _keep_cookies(self, url: str, headers: Any) -> None:
        jar = self.cookies.setdefault(self._host(url), {})
        for raw in headers.getRawHeaders(b"set-cookie") or []:
            text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
            first, *attrs = [p.strip() for p in text.split(";")]
            name, sep, value = first.partition("=")
            if not sep or not name:
                continue
            expired = any(a.lower().replace(" ", "") in ("max-age=0",) for a in attrs)
            if expired or value == "":
                jar.pop(name, None)
            else:
                jar[name] = value

    def _cookie_header(self, url: str) -> Optional[str]:
        jar = self.cookies.get(self._host(url))
        if not jar:
            return None
        return "; ".join(f"{k}={v}" for k, v in jar.items())

    # -- fetching ---------------------------------------------------------------

    async def _fetch(self, url: str, method: str = "GET",
                     fields: Optional[List[Tuple[str, str]]] = None,
                     extra: Optional[Dict[str, List[str]]] = None,
                     ) -> Tuple[str, int, str, bytes]:
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept": ["text/vnd.wap.wml, text/plain;q=0.5"],
                       "User-Agent": [self.user_agent]}
            if extra:
                headers.update(extra)  # the first request only, never a redirect's
                extra = None
            # always explicit: an HTTP client's own cookie jar stays out of it
            headers["Cookie"] = [self._cookie_header(url) or ""]
            kw: Dict[str, Any] = {"headers": headers, "allow_redirects": False}
            if method == "POST":
                kw["data"] = urlencode(fields or []).encode("utf-8")
                headers["Content-Type"] = ["application/x-www-form-urlencoded"]
            elif fields:
                url = url + ("&" if "?" in url else "?") + urlencode(fields)
            try:
                response = await self.http.request(method, url, **kw)
                body = await self.http.content(response)
            except Exception as e:
                raise BrowserError(f"cannot fetch {url}: {e}") from None
            self._keep_cookies(url, response.headers)
            if response.code in (301, 302, 303, 307, 308):
                location = (response.headers.getRawHeaders(b"location") or [b""])[0]
                if isinstance(location, bytes):
                    location = location.decode("latin-1")
                if not location:
                    break
                url = urljoin(url, location)
                if response.code in (301, 302, 303):
                    method, fields = "GET", None
                continue
            ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
            if isinstance(ctype, bytes):
                ctype = ctype.decode("latin-1")
            return url, response.code, ctype, body[:MAX_BODY]
        raise BrowserError("too many redirects")

    async def open(self, url: str, method: str = "GET",
                   fields: Optional[List[Tuple[str, str]]] = None,
                   headers: Optional[Dict[str, List[str]]] = None) -> Page:
        """Fetch ``url`` and show it (the current page goes to the history);
        ``headers`` go with the first request only."""
        base = self.current.url if self.current is not None else None
        target = urljoin(base, url) if base else url
        if not urlsplit(target).scheme.startswith("http"):
            raise BrowserError(f"not an http URL: {url[:80]}")
        final, status, ctype, body = await self._fetch(target, method, fields, headers)
        self.status = status
        self.content_type = ctype
        if self.current is not None:
            self.history.append(self.current)
            del self.history[:-20]
        if ctype.split(";")[0].strip().lower() == "text/vnd.wap.wml":
            deck = parse_deck(body)
            fragment = urlsplit(final).fragment or None
            card = self._card(deck, fragment)
            self.current = Entry(urlunsplit(urlsplit(final)._replace(fragment="")), deck,
                                 card.get("id"))
            return await self._enter(card)
        self.current = Entry(final, None, None, body.decode("utf-8", "replace"))
        self.actions = []
        return self.page()

    @staticmethod
    def _card(deck: Element, ident: Optional[str]) -> Element:
        cards = deck.findall("card")
        if ident:
            for c in cards:
                if c.get("id") == ident:
                    return c
        return cards[0]

    async def _enter(self, card: Element, depth: int = 0) -> Page:
        assert self.current is not None
        self.current.card = card.get("id")
        if card.get("newcontext") == "true":
            self.vars.clear()
            self.history.clear()
        for event in card.findall("onevent"):
            if event.get("type") == "onenterforward" and len(event) and depth < 5:
                task = event[0]
                if task.tag == "refresh":
                    self._setvars(task)
                elif task.tag == "go":
                    return await self.run(task, depth + 1)
        href = card.get("onenterforward")
        if href and depth < 5:
            return await self.open(substitute(href, self.vars, escape=True))
        return self.page()

    # -- actions ------------------------------------------------------------------

    def _setvars(self, task: Element) -> None:
        for sv in task.findall("setvar"):
            name = substitute(sv.get("name", ""), self.vars)
            if re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", name):
                self.vars[name] = substitute(sv.get("value", ""), self.vars)

    def set(self, name: str, value: str) -> None:
        self.vars[name] = value

    async def run(self, task: Element, depth: int = 0) -> Page:
        """Carry out a ``go``, ``prev``, ``refresh`` or ``noop`` task."""
        if task.tag == "go":
            href = substitute(task.get("href", ""), self.vars, escape=True)
            fields = [(substitute(pf.get("name", ""), self.vars),
                       substitute(pf.get("value", ""), self.vars))
                      for pf in task.findall("postfield")]
            self._setvars(task)
            if href.startswith("#"):
                return await self._jump(href[1:], depth)
            method = "POST" if (task.get("method") or "get").lower() == "post" else "GET"
            return await self.open(href, method, fields)
        if task.tag == "prev":
            self._setvars(task)
            return self.back()
        if task.tag == "refresh":
            self._setvars(task)
        return self.page()

    async def _jump(self, card: str, depth: int = 0) -> Page:
        """Go to another card of the current deck (nothing is fetched)."""
        if self.current is None or self.current.deck is None:
            raise BrowserError("no deck is open")
        self.history.append(Entry(self.current.url, self.current.deck, self.current.card))
        self.current = Entry(self.current.url, self.current.deck, self.current.card)
        return await self._enter(self._card(self.current.deck, card), depth)

    def back(self) -> Page:
        if self.history:
            self.current = self.history.pop()
        return self.page()

    async def follow(self, number: int) -> Page:
        """Activate the link, anchor or softkey numbered ``number``."""
        self.page()
        if not 1 <= number <= len(self.actions):
            raise BrowserError(f"no link [{number}] on this card")
        action = self.actions[number - 1]
        if action.href is not None:
            href = substitute(action.href, self.vars, escape=True)
            if href.startswith("#"):
                return await self._jump(href[1:])
            return await self.open(href)
        assert action.task is not None
        return await self.run(action.task)

    async def accept(self) -> Page:
        """Press the card's accept key (its ``<do type="accept">``)."""
        card = self.card()
        if card is not None:
            for do in card.findall("do"):
                if do.get("type") == "accept" and len(do):
                    return await self.run(do[0])
        raise BrowserError("this card has no accept action")

    def inputs(self) -> List[str]:
        card = self.card()
        return [el.get("name", "") for el in card.iter("input")] if card is not None else []

    # -- rendering ---------------------------------------------------------------

    def card(self) -> Optional[Element]:
        if self.current is None or self.current.deck is None:
            return None
        return self._card(self.current.deck, self.current.card)

    def page(self) -> Page:
        """The current card rendered as text, its actions numbered."""
        self.actions = []
        if self.current is None:
            return Page("", 0, "", "(nothing open)")
        card = self.card()
        if card is None:
            text = f"[{self.content_type or 'no content type'}]\n{self.current.body[:1000]}"
            return Page(self.current.url, self.status, self.content_type, text)
        lines: List[str] = []
        title = card.get("title")
        if title:
            lines.append(f"== {substitute(title, self.vars)} ==")
        softkeys: List[str] = []
        for child in card:
            if child.tag == "p":
                lines.append(self._inline(child).strip("\n"))
            elif child.tag == "do" and len(child):
                n = self._add(Action(child.get("label") or child.get("type", "do"), child[0]))
                softkeys.append(f"({n}) {substitute(self.actions[n - 1].label, self.vars)}")
        lines.extend(softkeys)
        text = "\n".join(line for line in lines if line is not None)
        return Page(self.current.url, self.status, self.content_type, text, list(self.actions))

    def _add(self, action: Action) -> int:
        self.actions.append(action)
        return len(self.actions)

    def _text(self, value: Optional[str]) -> str:
        if not value:
            return ""
        return re.sub(r"[ \t\r\n]+", " ", substitute(value, self.vars))

    def _inline(self, el: Element) -> str:
        out: List[str] = [self._text(el.text)]
        for child in el:
            tag = child.tag
            if tag == "br":
                out.append("\n")
            elif tag == "a":
                n = self._add(Action(self._text("".join(child.itertext())), href=child.get("href", "")))
                out.append(f"[{n}]{self.actions[n - 1].label.strip()}")
            elif tag == "anchor":
                task = next((c for c in child if c.tag in ("go", "prev", "refresh")), None)
                label = self._text(child.text) + "".join(self._text(c.tail) for c in child)
                n = self._add(Action(label.strip(), task))
                out.append(f"[{n}]{label.strip()}")
            elif tag == "input":
                name = child.get("name", "")
                value = self.vars.get(name, child.get("value", ""))
                if child.get("type") == "password":
                    value = "*" * len(value)
                out.append(f"[{child.get('title') or name}: {value}]")
            elif tag == "select":
                options = [self._text("".join(o.itertext())).strip() for o in child.iter("option")]
                out.append(f"[{child.get('name', '')}: {' | '.join(options)}]")
            elif tag == "img":
                out.append(f"[{self._text(child.get('alt', 'image'))}]")
            elif tag == "table":
                for tr in child.findall("tr"):
                    out.append(" | ".join(self._inline(td).strip() for td in tr.findall("td")))
                    out.append("\n")
            elif tag in ("do",) and len(child):
                n = self._add(Action(child.get("label") or child.get("type", "do"), child[0]))
                out.append(f"({n}) {child.get('label') or child.get('type')}")
            elif tag in ("onevent", "timer", "postfield", "setvar"):
                pass
            else:  # em, strong, b, i, u, big, small, fieldset
                out.append(self._inline(child))
            out.append(self._text(child.tail))
        return "".join(out)
