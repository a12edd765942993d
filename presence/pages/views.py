"""The HTML of the pages, built with :mod:`twisted.web.template`.

Every piece of text (names, messages, form values, errors) goes into the
tree as a Python string and is escaped by the flattener, in element content
and in attribute values alike; nothing here concatenates markup.  The page
skeleton is ``templates/layout.xml``; the bodies are built from ``tags``.

Pages carry no inline script or style (the Content-Security-Policy forbids
both): what the script of a live page needs (who is looking, at what) is in
``data-*`` attributes of ``<main id="live">``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional
from urllib.parse import urlencode

from twisted.python.filepath import FilePath
from twisted.web.template import Element, Tag, XMLFile, flattenString, renderer, tags

from presence.core import states
from presence.pages import greeting

TEMPLATES = FilePath(__file__).sibling("templates")
DOCTYPE = b"<!DOCTYPE html>\n"

#: C0 controls (but tab and line feed), DEL, C1 controls and lone surrogates
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_TEL = re.compile(r"[^0-9+]")
MAX_SHOWN = 64


def _main(*children: Any, **attributes: str) -> Tag:
    """``<main>``, which ``tags`` does not know."""
    return Tag("main")(*children, **attributes)


def clean(text: Any, limit: Optional[int] = None) -> str:
    """``text`` without control characters, cut to ``limit`` characters."""
    value = _CONTROL.sub("\ufffd", text if isinstance(text, str) else str(text))
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    return value


def shown(name: Any) -> str:
    """A client-given name as a page may show it: clean and short."""
    return clean(name, MAX_SHOWN)


def call_url(name: str, fragment: str = "") -> str:
    return "/call?" + urlencode({"name": name}) + (("#" + fragment) if fragment else "")


def tel_href(phone: Optional[str]) -> Optional[str]:
    """A ``tel:`` URI for a stored phone number, or None if it has no digits."""
    if not phone:
        return None
    digits = _TEL.sub("", phone)
    if sum(c.isdigit() for c in digits) < 3:
        return None
    return "tel:" + digits


def when(epoch: Optional[float], unknown: str = "never") -> Tag:
    """A ``<time>`` in UTC; the page script shows it in local time."""
    if epoch is None:
        return tags.span(unknown, class_="muted")
    t = time.gmtime(epoch)
    return tags.time(time.strftime("%Y-%m-%d %H:%M UTC", t),
                     datetime=time.strftime("%Y-%m-%dT%H:%M:%SZ", t))


def duration(seconds: Optional[float]) -> str:
    if not seconds or seconds < 60:
        return "under a minute"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{value} {unit}" for value, unit in ((days, "d"), (hours, "h"), (minutes, "min"))
             if value]
    return " ".join(parts[:2])


@dataclass
class Visitor:
    """Who is looking at a page: a user or a guest (None: nobody yet)."""

    name: str
    guest: bool
    #: the presence state and status text the visitor's session set
    state: str = "available"
    text: str = ""


# -- the skeleton -------------------------------------------------------------------

class Layout(Element):
    loader = XMLFile(TEMPLATES.child("layout.xml"))

    def __init__(self, title: str, content: Any, visitor: Optional[Visitor]) -> None:
        super().__init__()
        self.page_title = title
        self.body = content
        self.visitor = visitor

    @renderer
    def title(self, request, tag):
        return clean(self.page_title, 120)

    @renderer
    def nav(self, request, tag):
        v = self.visitor
        if v is not None and not v.guest:
            return tag(
                tags.a("Home", href="/home"),
                tags.a("My page", href=call_url(v.name)),
                tags.a("Settings", href="/settings"),
                tags.form(tags.button("Log out", type="submit", class_="link"),
                          method="post", action="/logout", class_="inline"),
                tags.span(v.name, class_="me", title="logged in as"),
            )
        items = [tags.a("Log in", href="/login"), tags.a("Register", href="/register")]
        if v is not None:
            items.append(tags.span(v.name, class_="me guest", title="your guest name"))
        return tag(*items)

    @renderer
    def content(self, request, tag):
        return self.body


async def render_page(title: str, content: Any, visitor: Optional[Visitor]) -> bytes:
    return DOCTYPE + await flattenString(None, Layout(title, content, visitor))


async def render_fragment(content: Any) -> bytes:
    return await flattenString(None, content)


# -- small pieces ------------------------------------------------------------------

def notice(text: Optional[str], kind: str = "ok") -> Any:
    if not text:
        return ""
    return tags.p(clean(text, 500), class_=f"notice {kind}",
                  role="alert" if kind == "error" else "status")


def field(label: str, name: str, value: str = "", kind: str = "text", **attrs: str) -> Tag:
    attributes: Dict[str, str] = {"name": name, "type": kind, "id": "f-" + name}
    if value:
        attributes["value"] = clean(value, 200)
    attributes.update(attrs)
    return tags.p(tags.label(label, for_="f-" + name), tags.input(**attributes), class_="field")


def find_form(value: str = "") -> Tag:
    return tags.form(
        tags.label("Open someone's page", for_="f-find", class_="sr"),
        tags.input(type="search", name="name", id="f-find", placeholder="name, alias or group",
                   required="", maxlength="128", **({"value": clean(value, 128)} if value else {})),
        tags.button("Open", type="submit"),
        method="get", action="/call", class_="find",
    )


# -- rows of a communications page ------------------------------------------------

def row(r: Dict[str, Any], domain: str, me: Optional[str], link_names: bool) -> Tag:
    name = r["name"]
    online = bool(r["online"])
    # the wire word (msg update): online, away, busy or offline
    state = states.wire(r.get("state") or ("available" if online else "offline"))
    sip = f"sip:{name}@{domain}"
    chat_attrs = {"type": "button", "class": "opt chat", "data-action": "chat", "data-peer": name}
    call_attrs = {"class": "opt call", "data-action": "call", "data-href": sip, "data-peer": name,
                  "title": f"PC-to-PC call: {sip}"}
    if online and name != me:
        call_attrs["href"] = sip
    else:
        chat_attrs["disabled"] = ""
        call_attrs["aria-disabled"] = "true"
    options: List[Any] = [
        tags.button("Chat", **chat_attrs),
        tags.a("Call (PC)", **call_attrs),
    ]
    tel = tel_href(r.get("phone"))
    if tel:
        options.append(tags.a("Phone ", tags.span(clean(r["phone"], 40), class_="num"),
                              href=tel, class_="opt tel", **{"data-action": "tel"}))
    options.append(tags.a("Leave a message", class_="opt message",
                          href=call_url(name, "message") if link_names else "#message",
                          **{"data-action": "message", "data-peer": name}))
    if r.get("handset"):
        options.append(tags.button("Text handset", type="button", class_="opt text",
                                   **{"data-action": "text", "data-peer": name}))
    label: Any = tags.a(name, href=call_url(name)) if link_names else name
    you = tags.span(" (you)", class_="muted") if name == me else ""
    return tags.li(
        tags.span("", class_="dot", **{"aria-hidden": "true"}),
        tags.span(label, you, class_="name"),
        tags.span(state, class_="state"),
        tags.span(clean(r.get("text") or "", states.MAX_TEXT), class_="status-text"),
        tags.span(*options, class_="options"),
        class_="row", **{"data-user": name, "data-presence": state},
    )


def rows(items: Iterable[Dict[str, Any]], domain: str, me: Optional[str], link_names: bool,
         empty: str) -> List[Tag]:
    out = [row(r, domain, me, link_names) for r in items]
    if not out:
        out.append(tags.li(empty, class_="empty"))
    return out


def live_main(mode: str, name: str, visitor: Optional[Visitor], domain: str,
              *children: Any, **data: str) -> Tag:
    attrs = {"id": "live", "data-live": mode, "data-name": name,
             "data-me": visitor.name if visitor else "",
             "data-guest": "1" if visitor is None or visitor.guest else "0",
             "data-domain": domain,
             "data-state": visitor.state if visitor else "available",
             "data-text": visitor.text if visitor else ""}
    attrs.update({"data-" + k: v for k, v in data.items()})
    return _main(*children, **attrs)


def state_form(state: str, text: str) -> Tag:
    """The home page's choice of the user's own presence state and status
    text (the script sends it with ``POST /api/status``; the pages also turn
    the user away while idle, see docs/pages.md)."""
    choices = [tags.option(word, value=value, **({"selected": ""} if value == state else {}))
               for value, word in (("available", "available"), ("away", "away"),
                                   ("busy", "busy: do not disturb"))]
    return tags.form(
        tags.label("Your state ", for_="f-state"),
        tags.select(*choices, name="state", id="f-state"),
        tags.label("Status text", for_="f-status", class_="sr"),
        tags.input(type="text", name="text", id="f-status", maxlength=str(states.MAX_TEXT),
                   placeholder="status text (optional)",
                   **({"value": clean(text, states.MAX_TEXT)} if text else {})),
        tags.button("Set", type="submit", class_="small"),
        method="post", action="/api/status", id="state-form", class_="inline state-form",
    )


def live_status() -> Tag:
    return tags.p(tags.noscript("Live updates need JavaScript: reload the page to see changes."),
                  id="status", class_="status", role="status")


def chats() -> Tag:
    return tags.section("", id="chats", class_="chats", **{"aria-live": "polite"})


# -- pages ---------------------------------------------------------------------------

def landing(visitor: Optional[Visitor]) -> Tag:
    if visitor is not None and not visitor.guest:
        hello: Any = tags.p("You are logged in as ", tags.strong(visitor.name), ". ",
                            tags.a("Go to your home page", href="/home"), ".")
    else:
        hello = tags.p(tags.a("Log in", href="/login"), " or ",
                       tags.a("register", href="/register"),
                       " to have your own page that shows when you are online.")
    return _main(
        tags.h1("Who do you want to reach?"),
        tags.p("Every person and group here has a page at ", tags.code("/<name>"),
               ": it shows who is online right now and lets you chat, call or leave"
               " a message, without an account."),
        find_form(),
        hello,
        class_="narrow",
    )


def not_found(name: str) -> Tag:
    return _main(
        tags.h1("No one here by that name"),
        tags.p("There is no user, group or alias called ",
               tags.strong(shown(name)), " on this server."),
        tags.p("Names are lower-case letters, digits, '.', '_' and '-'. Aliases may also be"
               " phone numbers or e-mail addresses. Check the spelling, or try another:"),
        find_form(),
        tags.p("Want this name? ", tags.a("Register it", href="/register"), "."),
        class_="narrow",
    )


def error_page(status: int, title: str, text: str, back: Optional[str] = None) -> Tag:
    more: Any = tags.p(tags.a("Go back", href=back)) if back else tags.p(
        tags.a("Start page", href="/"))
    return _main(tags.h1(clean(title, 120)), tags.p(clean(text, 500)), more,
                     class_="narrow", **{"data-status": str(status)})


def password_page(group: str, error: Optional[str] = None) -> Tag:
    return _main(
        tags.h1(group),
        tags.p(group, " is a protected group: give its password to see who is in it."),
        notice(error, "error"),
        tags.form(
            tags.input(type="hidden", name="name", value=group),
            field("Group password", "password", kind="password", required="",
                  autocomplete="off", maxlength="1024"),
            tags.p(tags.button("Open the group", type="submit")),
            method="post", action="/call", class_="card",
        ),
        class_="narrow",
    )


def call_page(page: Dict[str, Any], visitor: Optional[Visitor], domain: str,
              notice_text: Optional[str] = None) -> Tag:
    name = page["name"]
    me = visitor.name if visitor else None
    if page["kind"] == "user":
        sub: Any = tags.p("Communications page of ", tags.strong(name), " · ",
                          tags.code(f"sip:{name}@{domain}"), class_="sub")
        message: Any = tags.section(
            tags.h2("Leave a message for ", name),
            tags.p(name, " sees it on their home page, whether or not they are online now.",
                   class_="muted"),
            tags.form(
                tags.input(type="hidden", name="to", value=name),
                tags.p(tags.label("Your message", for_="f-text"),
                       tags.textarea(name="text", id="f-text", rows="4", maxlength="4096",
                                     required=""), class_="field"),
                tags.p(tags.button("Leave the message", type="submit")),
                tags.p("", class_="result", **{"aria-live": "polite"}),
                method="post", action="/messages", id="message-form",
            ),
            id="message", class_="card",
        )
        empty = "nobody"
    else:
        count = len(page["rows"])
        sub = tags.p("Group", " (protected)" if page["protected"] else "", " · ",
                     f"{count} member" + ("" if count == 1 else "s"), class_="sub")
        message = ""
        empty = "This group has no members."
    return live_main(
        "call", name, visitor, domain,
        tags.h1(name), sub, notice(notice_text), live_status(),
        tags.ul(*rows(page["rows"], domain, me, page["kind"] == "group", empty),
                id="rows", class_="rows"),
        greeting_section(name, page.get("greeting") or ""),
        chats(), message,
        **{"kind": page["kind"]},
    )


def greeting_section(name: str, text: str) -> Any:
    """The user's greeting, shown while they are offline (the stylesheet
    hides it while their row says anything else, so it follows presence in
    place like the row)."""
    if not text:
        return ""
    return tags.section(*greeting.render(text), id="greeting", class_="card greeting",
                        **{"data-greeting-of": name, "aria-label": f"{name}'s greeting"})


def login_page(next_url: str, username: str = "", error: Optional[str] = None,
               visitor: Optional[Visitor] = None) -> Tag:
    already: Any = ""
    if visitor is not None and not visitor.guest:
        already = tags.p("You are logged in as ", tags.strong(visitor.name),
                         ". Logging in again replaces that session.", class_="muted")
    return _main(
        tags.h1("Log in"), already, notice(error, "error"),
        tags.form(
            tags.input(type="hidden", name="next", value=next_url),
            field("Username", "username", username, required="", autocomplete="username",
                  maxlength="32", autocapitalize="none"),
            field("Password", "password", kind="password", required="",
                  autocomplete="current-password", maxlength="1024"),
            tags.p(tags.button("Log in", type="submit")),
            method="post", action="/login", class_="card",
        ),
        tags.p("No account yet? ", tags.a("Register", href="/register"), "."),
        class_="narrow",
    )


def register_page(values: Dict[str, str], error: Optional[str] = None) -> Tag:
    v = values
    return _main(
        tags.h1("Register"), notice(error, "error"),
        tags.form(
            field("Username", "username", v.get("username", ""), required="", maxlength="32",
                  autocomplete="username", autocapitalize="none",
                  title="1-32 of a-z, 0-9, '.', '_', '-' (capitals are made small)"),
            field("Password (6 characters or more)", "password", kind="password", required="",
                  minlength="6", maxlength="1024", autocomplete="new-password"),
            field("Password again", "password2", kind="password", required="",
                  minlength="6", maxlength="1024", autocomplete="new-password"),
            field("E-mail (optional)", "email", v.get("email", ""), kind="email",
                  maxlength="128"),
            field("Phone (optional; shown as a call link on your page)", "phone",
                  v.get("phone", ""), kind="tel", maxlength="32"),
            field("Handset number for texts (optional, e.g. +491701234567)", "wireless",
                  v.get("wireless", ""), kind="tel", maxlength="16"),
            tags.p(tags.button("Register", type="submit")),
            method="post", action="/register", class_="card",
        ),
        tags.p("Have an account? ", tags.a("Log in", href="/login"), "."),
        class_="narrow",
    )


def logout_page(visitor: Visitor) -> Tag:
    return _main(
        tags.h1("Log out"),
        tags.p("You are logged in as ", tags.strong(visitor.name), "."),
        tags.form(tags.button("Log out", type="submit"), method="post", action="/logout"),
        class_="narrow",
    )


def message_left(to: str) -> Tag:
    return _main(
        tags.h1("Message left"),
        notice(f"Your message for {to} is in their message box."),
        tags.p(tags.a(f"Back to {to}'s page", href=call_url(to))),
        class_="narrow",
    )


def message_item(m: Dict[str, Any]) -> Tag:
    sender = m["from"]
    who: Any = sender
    if sender != "anonymous" and not sender.startswith("guest."):
        who = tags.a(sender, href=call_url(sender))
    read_form: Any = ""
    if not m["read"]:
        read_form = tags.form(
            tags.input(type="hidden", name="id", value=str(m["id"])),
            tags.button("Mark read", type="submit", class_="small"),
            method="post", action="/home/read", class_="inline read",
        )
    return tags.li(
        tags.div(tags.strong(who, class_="from"), " ", when(m["time"]), " ", read_form,
                 class_="meta"),
        tags.p(clean(m["text"], 4096), class_="text"),
        class_="message" + ("" if m["read"] else " unread"),
        **{"data-id": str(m["id"])},
    )


def home_page(visitor: Visitor, welcome: Dict[str, Any], box: Dict[str, Any],
              home: Dict[str, Any], groups: List[str], domain: str) -> Tag:
    w = welcome
    first = w.get("last_login") is None
    figures = tags.dl(
        tags.div(tags.dt("Last login"), tags.dd(when(w.get("last_login"), "first time"))),
        tags.div(tags.dt("Time away"),
                 tags.dd("this is your first visit" if first
                         else duration(w.get("offline_seconds")), id="away")),
        tags.div(tags.dt("Visits to your page while away"),
                 tags.dd(str(w.get("hits_while_offline") or 0), id="hits")),
        tags.div(tags.dt("Unread messages"), tags.dd(str(w.get("unread") or 0), id="unread")),
        class_="figures",
    )
    if home["kind"] == "book":
        heading: Any = tags.h2("Your address book")
        empty = "Your address book is empty: add contacts in Settings."
    else:
        heading = tags.h2("Group ", tags.a(home["name"], href=call_url(home["name"])))
        empty = "This group has no members."
    choices = [tags.option("address book", value=visitor.name,
                           **({"selected": ""} if home["kind"] == "book" else {}))]
    for g in groups:
        attrs = {"value": g}
        if home["kind"] == "group" and home["name"] == g:
            attrs["selected"] = ""
        choices.append(tags.option(g, **attrs))
    switch = tags.form(
        tags.input(type="hidden", name="next", value="/home"),
        tags.label("Show ", for_="f-group"),
        tags.select(*choices, name="group", id="f-group"),
        tags.button("Show", type="submit", class_="small"),
        method="post", action="/settings/active", class_="inline switch",
    )
    messages = [message_item(m) for m in box["messages"]]
    if not messages:
        messages = [tags.li("No messages.", class_="empty")]
    return live_main(
        "home", home["name"], visitor, domain,
        tags.h1("Welcome, ", visitor.name),
        tags.p("Your first visit: add people to your address book in Settings, or invite"
               " them by e-mail below.", class_="sub", id="first-visit") if first else "",
        state_form(visitor.state, visitor.text),
        figures,
        tags.section(heading, switch, live_status(),
                     tags.ul(*rows(home["rows"], domain, visitor.name, True, empty),
                             id="rows", class_="rows"),
                     class_="card"),
        chats(),
        tags.section(tags.h2("Messages"), tags.ul(*messages, id="messages", class_="messages"),
                     class_="card"),
        **{"kind": home["kind"]},
    )


def handset_section(a: Dict[str, Any], secret: Optional[Dict[str, str]],
                    form: Callable[..., Tag]) -> Any:
    """The handset secret: shown once right after it was issued."""
    if secret is not None and "number" not in secret:
        secret = None   # another secret (the update token) was just shown
    if not a.get("wireless") and not secret:
        return ""
    shown: Any = ""
    if secret:
        shown = tags.div(
            tags.p("The secret of your handset ", tags.code(clean(secret["number"], 16)),
                   " (shown this once: copy it now into the file you give"
                   " presence-handset --secret-file):"),
            tags.p(tags.code(clean(secret["secret"], 64), id="handset-secret")),
            class_="secret-shown", role="status")
    return tags.section(
        tags.h2("Handset secret"),
        tags.p("Your handset proves it is yours with this secret; a new one replaces the"
               " old.", class_="muted"),
        shown,
        form("handset-secret", tags.p(tags.button("New handset secret", type="submit"))),
        class_="card", id="handset")


def greeting_form(a: Dict[str, Any], form: Callable[..., Tag]) -> Tag:
    return tags.section(
        tags.h2("Your page while you are offline"),
        tags.p("A greeting your page shows while you are offline, above the form for"
               " leaving you a message: plain text, with **bold**, *emphasis*, `code` and"
               " [links](https://example.org) if you like (at most 1,000 characters).",
               class_="muted"),
        form("greeting",
             tags.p(tags.label("Greeting", for_="f-greeting"),
                    tags.textarea(a.get("greeting") or "", name="greeting", id="f-greeting",
                                  rows="5", maxlength="1000"), class_="field"),
             tags.p(tags.button("Save the greeting", type="submit"))),
        class_="card", id="greeting-card")


def update_token_section(a: Dict[str, Any], secret: Optional[Dict[str, str]],
                         form: Callable[..., Tag], domain: str) -> Tag:
    """The dyndns2 update token: shown once right after it was made."""
    me = a["name"]
    shown: Any = ""
    if secret and secret.get("update_token"):
        shown = tags.div(
            tags.p("Your update token (shown this once: put it in ddclient's or your"
                   " router's password field):"),
            tags.p(tags.code(clean(secret["update_token"], 64), id="update-token")),
            class_="secret-shown", role="status")
    state = ("You have an update token." if a.get("update_token")
             else "You have no update token: updates use your password.")
    return tags.section(
        tags.h2("Your name on the network (dyndns2)"),
        tags.p(tags.code(f"{me}.{domain}"), " leads to you while you are online and to this"
               " page while you are not. A router or ddclient can keep you online with"
               " dyndns2 updates to ", tags.code("/nic/update"), ", user ", tags.code(me),
               " and your password or an update token, which opens nothing else.",
               class_="muted"),
        tags.p(state, class_="muted"),
        shown,
        form("update-token", tags.p(tags.button("New update token", type="submit"))),
        form("update-token-remove", tags.p(tags.button("Remove the update token",
                                                       type="submit", class_="small"))),
        class_="card", id="dyndns")


def guest_calls_section(a: Dict[str, Any], post_form: Any) -> Tag:
    """Whether guests (visitors without an account) may call the user in
    the browser ("Call (PC)"); off unless the user turns it on."""
    allowed = bool(a.get("guests_may_call"))
    box = {"type": "checkbox", "name": "allow", "value": "1", "id": "f-guest-calls"}
    if allowed:
        box["checked"] = ""
    return tags.section(
        tags.h2("Calls from guests"),
        tags.p("Members can always call you from your page (Call (PC)). Guests, visitors"
               " who have no account, can call you only if you let them; you never call a"
               " guest, you only answer.", class_="muted"),
        post_form("guest-calls",
                  tags.p(tags.input(**box), " ",
                         tags.label("Guests may call me", for_="f-guest-calls")),
                  tags.p(tags.button("Save", type="submit"))),
        class_="card", id="guest-calls")


def settings_page(account: Dict[str, Any], home: str, done: Optional[str] = None,
                  error: Optional[str] = None, secret: Optional[Dict[str, str]] = None,
                  wireless: bool = False, domain: str = "localhost") -> Tag:
    a = account
    me = a["name"]

    def post_form(action: str, *children: Any, cls: str = "") -> Tag:
        return tags.form(*children, method="post", action="/settings/" + action,
                         class_=("inline " + cls).strip() if cls else "stack")

    aliases = [tags.li(x) for x in a["aliases"]] or [tags.li("none yet", class_="muted")]
    group_items = []
    for g in a["groups"]:
        group_items.append(tags.li(
            tags.a(g["name"], href=call_url(g["name"])),
            tags.span(" (protected)" if g["protected"] else "", class_="muted"),
            tags.span(" · yours" if g["owner"] == me else "", class_="muted"), " ",
            post_form("group-leave", tags.input(type="hidden", name="name", value=g["name"]),
                      tags.button("Leave", type="submit", class_="small"), cls="x"),
        ))
    if not group_items:
        group_items = [tags.li("You are in no group.", class_="muted")]
    contact_items = []
    for c in a["contacts"]:
        contact_items.append(tags.li(
            tags.a(c, href=call_url(c)), " ",
            post_form("contact-remove", tags.input(type="hidden", name="contact", value=c),
                      tags.button("Remove", type="submit", class_="small"), cls="x"),
        ))
    if not contact_items:
        contact_items = [tags.li("Your address book is empty.", class_="muted")]
    choices = [tags.option("my address book", value=me,
                           **({"selected": ""} if home == me else {}))]
    for g in a["groups"]:
        choices.append(tags.option(g["name"], value=g["name"],
                                   **({"selected": ""} if home == g["name"] else {})))
    return _main(
        tags.h1("Settings"),
        notice(done), notice(error, "error"),
        tags.section(
            tags.h2("Profile"),
            post_form("profile",
                      field("E-mail", "email", a.get("email") or "", kind="email",
                            maxlength="128"),
                      field("Phone (a call link on your page)", "phone", a.get("phone") or "",
                            kind="tel", maxlength="32"),
                      field("Handset number for texts (+ and digits)", "wireless",
                            a.get("wireless") or "", kind="tel", maxlength="16"),
                      tags.p(tags.button("Save", type="submit"))),
            class_="card", id="profile"),
        handset_section(a, secret, post_form) if wireless else "",
        greeting_form(a, post_form),
        guest_calls_section(a, post_form),
        update_token_section(a, secret, post_form, domain),
        tags.section(
            tags.h2("Password"),
            tags.p("A new password ends your other sessions and logs out every other"
                   " device.", class_="muted"),
            post_form("password",
                      field("Current password", "old_password", kind="password", required="",
                            maxlength="1024", autocomplete="current-password"),
                      field("New password (at least 6 characters)", "new_password",
                            kind="password", required="", minlength="6", maxlength="1024",
                            autocomplete="new-password"),
                      field("New password again", "password2", kind="password", required="",
                            minlength="6", maxlength="1024", autocomplete="new-password"),
                      tags.p(tags.button("Change password", type="submit"))),
            class_="card", id="password"),
        tags.section(
            tags.h2("Aliases"),
            tags.p("Other names that lead to your page: a nickname, a phone number, an"
                   " e-mail address.", class_="muted"),
            tags.ul(*aliases, class_="plain", id="aliases"),
            post_form("alias", field("New alias", "alias", required="", maxlength="64"),
                      tags.p(tags.button("Add alias", type="submit"))),
            class_="card", id="alias"),
        tags.section(
            tags.h2("What your home page shows"),
            post_form("active", tags.label("Active group ", for_="f-active"),
                      tags.select(*choices, name="group", id="f-active"),
                      tags.button("Choose", type="submit"), cls="row-form"),
            class_="card", id="active"),
        tags.section(
            tags.h2("Groups"),
            tags.ul(*group_items, class_="plain", id="groups"),
            tags.h3("Create a group"),
            post_form("group-create",
                      field("Name", "name", required="", maxlength="32"),
                      field("Password (optional: makes the group protected)", "password",
                            kind="password", maxlength="1024", autocomplete="new-password"),
                      tags.p(tags.button("Create", type="submit"))),
            tags.h3("Join a group"),
            post_form("group-join",
                      field("Name", "name", required="", maxlength="32"),
                      field("Password (for a protected group)", "password", kind="password",
                            maxlength="1024", autocomplete="off"),
                      tags.p(tags.button("Join", type="submit"))),
            class_="card", id="groups-card"),
        tags.section(
            tags.h2("Address book"),
            tags.ul(*contact_items, class_="plain", id="contacts"),
            post_form("contact-add", field("Add a contact (name or alias)", "contact",
                                           required="", maxlength="128"),
                      tags.p(tags.button("Add", type="submit"))),
            class_="card", id="book"),
        class_="narrow settings",
    )


__all__ = ["Visitor", "render_page", "render_fragment", "call_url", "shown", "clean"]
