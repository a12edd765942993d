"""The WML decks of the wireless pages (content only; routes in
:mod:`presence.wireless.web`).  Every deck is built with
:mod:`presence.wireless.wml`, so it is escaped, ASCII and under 1,400 bytes;
lists are cut to what fits and end with a "More" link to the next rows.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlencode

from presence.wireless.wml import attr, card, clip, deck, fit, go_post, link, text

ROOT = "/wml/"
PART_BYTES = 640


def _url(path: str, **query: Any) -> str:
    q = {k: v for k, v in query.items() if v not in (None, "", 0)}
    return path + ("?" + urlencode(q) if q else "")


def _note(note: str) -> str:
    return f"{text(clip(note, 160))}<br/>" if note else ""


def login(error: str = "") -> bytes:
    go = go_post("/wml/login", [("username", "$(u)"), ("password", "$(pw)")])
    body = (
        _note(error)
        + 'Name:<input name="u" title="Name" maxlength="32"/><br/>'
        + 'Password:<input name="pw" type="password" title="Password"/><br/>'
        + f"<anchor>Log in{go}</anchor>"
    )
    return deck(card("login", "Presence", body, f'<do type="accept" label="Log in">{go}</do>'))


def home(name: str, unread: int, guest: bool = False, note: str = "") -> bytes:
    rows = [_note(note), f"Hello {text(name)}<br/>"]
    if not guest:
        rows.append(link("/wml/buddies", "Buddies") + "<br/>")
        rows.append(link("/wml/messages", f"Messages ({unread} unread)") + "<br/>")
    # a state change: POST, never a link a prefetch could follow
    rows.append(f'<anchor>Log out{go_post("/wml/logout", [])}</anchor>')
    return deck(card("home", "Presence", "".join(rows)))


def error(title: str, message: str, href: str = ROOT, label: str = "Home") -> bytes:
    return deck(card("error", clip(title, 30),
                     f"{text(clip(message, 200))}<br/>{link(href, label)}"))


#: what a buddy list row says of each presence state (spec section 12)
SHORT = {"available": "on", "away": "away", "busy": "busy", "offline": "off"}


def state_word(state: Any) -> str:
    """``online``, ``away``, ``busy`` or ``offline`` for a state (or, as the
    older callers give it, a bool: online or not)."""
    if isinstance(state, bool):
        return "online" if state else "offline"
    return "online" if state == "available" else str(state)


def _status(status: str, limit: int) -> str:
    return f": {text(clip(status, limit))}" if status else ""


def buddies(rows: Sequence[Tuple[Any, ...]], start: int = 0) -> Tuple[bytes, int]:
    """The buddy list from row ``start``: rows of ``(name, state)`` or
    ``(name, state, status text)``, state a presence state (or a bool: online
    or not); returns the deck and how many rows it shows."""
    items = []
    for name, state, *status in rows[start:]:
        word = SHORT.get(state, str(state)) if not isinstance(state, bool) else (
            "on" if state else "off")
        said = _status(status[0], 24) if status and word != "off" else ""
        items.append(link(_url("/wml/chat", **{"with": name}), name) + f" {word}{said}<br/>")

    def build(shown: List[str], more: bool) -> bytes:
        body = "".join(shown) or ("No buddies yet.<br/>" if not rows else "")
        if more:
            body += link(_url("/wml/buddies", **{"from": start + max(len(shown), 1)}),
                         "More") + "<br/>"
        body += link(ROOT, "Home")
        return deck(card("buddies", "Buddies", body))

    return fit(build, items)


def chat(peer: str, online: Any, lines: Sequence[str] = (), note: str = "",
         status: str = "") -> bytes:
    """The chat card with ``peer``: their state (``online`` a presence state,
    or a bool) and ``status`` text, the newest ``lines`` that fit (each
    ``"who: text"``), a reply form and links."""
    go = go_post("/wml/chat", [("to", attr(peer)), ("msg", "$(msg)")])
    clear = '<onevent type="onenterforward"><refresh><setvar name="msg" value=""/></refresh></onevent>'
    extra = clear + f'<do type="accept" label="Send">{go}</do>'
    word = state_word(online)
    said = _status(status, 60) if word != "offline" else ""
    head = f"{text(peer)} is {word}{said}<br/>" + _note(note)
    tail = (
        '<input name="msg" title="Reply" maxlength="4096"/><br/>'
        f"<anchor>Send{go}</anchor><br/>"
        + link(_url("/wml/chat", **{"with": peer}), "Refresh") + " "
        + link("/wml/buddies", "Buddies")
    )
    shown = [f"{text(clip(line, 80))}<br/>" for line in lines]

    def build(rows: List[str], more: bool) -> bytes:
        return deck(card("chat", clip(f"Chat {peer}", 30), head + "".join(rows) + tail, extra))

    # keep the newest lines: fit from the end
    for n in range(len(shown), -1, -1):
        try:
            return build(shown[len(shown) - n:], False)
        except ValueError:
            continue
    raise ValueError("the chat card does not fit")


def _when(t: Optional[float]) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(t)) if t else ""


def messages(items: Sequence[Dict[str, Any]], start: int = 0) -> Tuple[bytes, int]:
    rows = [
        ("* " if not m.get("read") else "")
        + link(f"/wml/messages/{int(m['id'])}",
               f"{m.get('from', '?')}: {clip(str(m.get('text', '')), 40)}") + "<br/>"
        for m in items[start:]
    ]

    def build(shown: List[str], more: bool) -> bytes:
        body = "".join(shown) or ("No messages.<br/>" if not items else "")
        if more:
            body += link(_url("/wml/messages", **{"from": start + max(len(shown), 1)}),
                         "More") + "<br/>"
        body += link(ROOT, "Home")
        return deck(card("box", "Messages", body))

    return fit(build, rows)


def _shown(value: str) -> str:
    return text(value).replace("\n", "<br/>")


def parts(message: str, budget: int = PART_BYTES) -> List[str]:
    """A long text cut into pages whose escaped form is at most ``budget``
    bytes, at spaces where possible."""
    out: List[str] = []
    current = ""
    for word in message.split(" "):
        candidate = f"{current} {word}" if current else word
        if len(_shown(candidate)) <= budget:
            current = candidate
            continue
        if current:
            out.append(current)
            current = ""
        while len(_shown(word)) > budget:
            cut, size = 0, 0
            for c in word:
                size += len(_shown(c))
                if size > budget:
                    break
                cut += 1
            out.append(word[:cut])
            word = word[cut:]
        current = word
    if current or not out:
        out.append(current)
    return out


def message(item: Dict[str, Any], part: int = 0) -> bytes:
    pieces = parts(str(item.get("text", "")))
    part = max(0, min(part, len(pieces) - 1))
    ident = int(item["id"])
    head = (f"From {text(item.get('from', '?'))} {text(_when(item.get('time')))}"
            + (f" ({part + 1}/{len(pieces)})" if len(pieces) > 1 else "") + "<br/>")
    nav = []
    if part + 1 < len(pieces):
        nav.append(link(_url(f"/wml/messages/{ident}", part=part + 1), "Next"))
    sender = str(item.get("from", ""))
    if sender and sender != "anonymous" and not sender.startswith("guest."):
        nav.append(link(_url("/wml/chat", **{"with": sender}), "Reply"))
    nav.append(link("/wml/messages", "Messages"))
    body = head + _shown(pieces[part]) + "<br/>" + " ".join(nav)
    return deck(card("msg", "Message", body))
