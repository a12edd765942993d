"""The invitation e-mail: what a stranger may give (an address, a note) is
checked here, and the message is built with the standard library's
:class:`email.message.EmailMessage` (never by pasting strings into headers).

* :func:`check_address`: one plain ASCII address ``local@domain`` (no display
  name, no comments, no list); a carriage return, line feed or any other
  control character is a header injection attempt (400).
* :func:`check_note`: at most :data:`MAX_NOTE` characters on one line; a
  line break is refused (the note is never put in a header, but a line break
  in it is how header injection is tried, and a form's note is one line).
* :func:`build_invitation`: the message, a text part and an HTML part
  (``multipart/alternative``) that both name the inviter and carry the note,
  the live badge (HTML), the link to the inviter's page (both: the text part
  is the fallback for readers that show neither images nor HTML) and the
  "don't invite me again" link; RFC 8058 ``List-Unsubscribe`` and
  ``List-Unsubscribe-Post`` headers for the mail reader's own button.

See docs/invites.md.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from typing import Any, Optional

from presence.errors import BadRequest

MAX_NOTE = 500
MAX_ADDRESS = 254
#: characters a header value may never carry (CR, LF, NUL and the others)
_CONTROL = re.compile("[\x00-\x1f\x7f\u0085\u2028\u2029]")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")

#: the words a state is shown with (an unknown one is shown as it is)
STATE_WORDS = {"available": "available", "away": "away", "busy": "busy",
               "offline": "offline"}


def _injection(what: str) -> BadRequest:
    return BadRequest(f"{what} holds a line break or another control character: that is a"
                      " header injection attempt, and nothing was sent")


def check_address(value: Any) -> str:
    """``value`` as an address the mail may be sent to (the domain lower
    case), or :class:`BadRequest`."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("email is required: the address to invite")
    if _CONTROL.search(value):
        raise _injection("email")
    value = value.strip()
    if len(value) > MAX_ADDRESS or not value.isascii():
        raise BadRequest("email is not an address this server can send to (ASCII,"
                         f" at most {MAX_ADDRESS} characters)")
    local, at, domain = value.rpartition("@")
    labels = domain.split(".")
    if (not at or len(local) > 64 or not _LOCAL.match(local) or len(labels) < 2
            or not all(_LABEL.match(label) for label in labels)
            or labels[-1].isdigit()):
        raise BadRequest("email is not an e-mail address (one address: name@example.org)")
    return f"{local}@{domain.lower()}"


def check_note(value: Any) -> str:
    """The inviter's note ("" when none), or :class:`BadRequest`."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest("note must be text")
    if _CONTROL.search(value.replace("\t", " ")):
        raise _injection("note")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("note is not valid Unicode text (a lone surrogate)")
    value = value.strip()
    if len(value) > MAX_NOTE:
        raise BadRequest(f"note is longer than {MAX_NOTE} characters")
    return value


@dataclass
class Links:
    """The URLs one invitation's mail carries (each holds a token)."""

    page: str          # /i/<token>
    badge_svg: str     # /badge/<token>.svg
    badge_png: str     # /badge/<token>.png
    unsubscribe: str   # /i/u/<unsubscribe token>


def state_phrase(state: str, text: str = "") -> str:
    word = STATE_WORDS.get(state, state)
    phrase = "online" if state == "available" else word
    return f"{phrase} ({text})" if text else phrase


def build_invitation(inviter: str, to: str, sender: str, note: str, links: Links,
                     state: str = "offline", status_text: str = "",
                     site: str = "presence", now: Optional[float] = None,
                     domain: Optional[str] = None) -> EmailMessage:
    """The invitation from user ``inviter`` to the address ``to``, sent as
    ``sender`` (``--smtp-from``).  ``state``/``status_text``: the inviter's
    presence when it is sent (the badge shows it live).  ``to`` and ``note``
    must have passed :func:`check_address` and :func:`check_note`."""
    msg = EmailMessage()
    msg["Subject"] = f"{inviter} invites you to chat on {site}"
    msg["From"] = _from(sender, f"{inviter} via {site}")
    msg["To"] = to
    when = datetime.fromtimestamp(now, timezone.utc) if now is not None else \
        datetime.now(timezone.utc)
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = make_msgid("invite", domain=domain or sender.rpartition("@")[2] or None)
    msg["List-Unsubscribe"] = f"<{links.unsubscribe}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Auto-Submitted"] = "auto-generated"
    now_state = state_phrase(state, status_text)
    quoted = "".join(f"> {line}\n" for line in note.splitlines()) if note else ""
    msg.set_content(
        f"{inviter} invites you to chat on {site}.\n\n"
        + (f"{inviter} writes:\n{quoted}\n" if note else "")
        + f"When this mail was sent, {inviter} was {now_state}.\n\n"
        f"Open this link to see whether {inviter} is online now and to chat with"
        f" them, without an account:\n\n    {links.page}\n\n"
        f"The link works for a limited time and only for this invitation.\n\n"
        f"Don't want invitations from this server any more? Open this link:\n"
        f"    {links.unsubscribe}\n")
    e = html.escape
    note_html = (f'<blockquote style="margin:1em 0;padding:.6em 1em;border-left:4px solid'
                 f' #2255cc;background:#f5f7fa;white-space:pre-wrap">{e(note)}</blockquote>'
                 if note else "")
    msg.add_alternative(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{e(inviter)} invites you</title></head>"
        "<body style=\"margin:0;padding:1.5em;background:#f5f7fa;color:#1d2430;"
        "font:16px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif\">"
        "<div style=\"max-width:34rem;margin:0 auto;background:#fff;border:1px solid #dde2ea;"
        "border-radius:10px;padding:1.2em 1.4em\">"
        f"<h1 style=\"font-size:1.35rem;margin:0 0 .6em\">{e(inviter)} invites you to chat"
        f" on {e(site)}</h1>"
        f"{note_html}"
        f"<p><a href=\"{e(links.page)}\"><img src=\"{e(links.badge_png)}\" width=\"320\""
        f" height=\"40\" alt=\"{e(inviter)} was {e(now_state)} when this mail was sent\""
        " style=\"display:block;border:0\"></a></p>"
        f"<p style=\"color:#667085;font-size:.9em\">The picture above shows whether"
        f" {e(inviter)} is online right now, each time you open this mail.</p>"
        f"<p><a href=\"{e(links.page)}\" style=\"display:inline-block;padding:.5em 1.1em;"
        "background:#2255cc;color:#fff;border-radius:6px;text-decoration:none\">"
        f"Chat with {e(inviter)}</a></p>"
        "<p style=\"color:#667085;font-size:.9em\">No account is needed. The link works"
        " for a limited time and only for this invitation.</p>"
        "<hr style=\"border:0;border-top:1px solid #dde2ea\">"
        "<p style=\"color:#667085;font-size:.8em\">"
        f"<a href=\"{e(links.unsubscribe)}\" style=\"color:#667085\">Don't invite me"
        " again</a></p></div></body></html>\n",
        subtype="html")
    return msg


def _from(sender: str, name: str) -> Any:
    from email.headerregistry import Address
    local, _, domain = sender.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)
