"""The HTML of the invitation pages (``/i/<token>``, ``/i/u/<token>``) and
of the home page's *Invite by e-mail* card, built with
:mod:`twisted.web.template` tags as the other pages are (every text is
escaped by the flattener)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.web.template import Tag, tags

from presence.pages import views
from presence.pages.views import Visitor, call_url, clean, field, notice, when

MAX_NOTE = 500


def invite_page(inviter: str, page: Dict[str, Any], visitor: Optional[Visitor],
                domain: str, token: str, started: bool, error: Optional[str] = None,
                values: Optional[Dict[str, str]] = None) -> Tag:
    """The communications page of ``inviter`` for someone they invited:
    their live row, the chat (opened at once when they are online), and the
    offer to register."""
    main = views.call_page(page, visitor, domain)
    intro = tags.section(
        tags.h2(inviter, " invited you to chat"),
        tags.p(("A chat with " + inviter + " is open below: write to them now."
                if started else inviter + " is not online right now: leave them a"
                " message below, or come back later; this page shows when they are"
                " online."), class_="muted"),
        class_="card invited", id="invited")
    main.children.insert(2, intro)  # after the heading and its line
    if visitor is None or visitor.guest:
        main(register_card(inviter, token, error, values or {}))
    return main


def register_card(inviter: str, token: str, error: Optional[str],
                  values: Dict[str, str]) -> Tag:
    return tags.section(
        tags.h2("Join, and keep ", inviter, " in your address book"),
        tags.p("Register and you and ", inviter, " are in each other's address book:"
               " you see when the other is online, on every device.", class_="muted"),
        notice(error, "error"),
        tags.form(
            field("Username", "username", values.get("username", ""), required="",
                  maxlength="32", autocomplete="username", autocapitalize="none",
                  title="1-32 of a-z, 0-9, '.', '_', '-' (capitals are made small)"),
            field("Password (6 characters or more)", "password", kind="password",
                  required="", minlength="6", maxlength="1024", autocomplete="new-password"),
            field("Password again", "password2", kind="password", required="",
                  minlength="6", maxlength="1024", autocomplete="new-password"),
            tags.p(tags.button("Register", type="submit")),
            method="post", action=f"/i/{token}/register", id="invite-register"),
        class_="card", id="join")


def gone_page() -> Tag:
    """An unknown or expired invitation: it names nobody."""
    return Tag("main")(
        tags.h1("This invitation has expired"),
        tags.p("The link is not valid any more (invitation links work for a limited time)."
               " Ask the person who invited you for a new one, or find them by name:"),
        views.find_form(),
        class_="narrow", **{"data-status": "404"})


def unsubscribe_page(token: str, done: bool) -> Tag:
    if done:
        body: Any = [tags.h1("You will not be invited again"),
                     notice("This address gets no more invitations from this server.")]
    else:
        body = [tags.h1("Don't invite me again"),
                tags.p("This server will send no more invitations to the address this"
                       " link was sent to."),
                tags.form(tags.input(type="hidden", name="List-Unsubscribe",
                                     value="One-Click"),
                          tags.button("Don't invite me again", type="submit"),
                          method="post", action=f"/i/u/{token}", id="unsubscribe")]
    return Tag("main")(*body, class_="narrow")


def _state(inv: Dict[str, Any]) -> List[Any]:
    out: List[Any] = []
    if inv["accepted"]:
        out.append(tags.span("accepted by ", tags.a(inv["accepted_by"],
                                                     href=call_url(inv["accepted_by"])),
                             class_="inv accepted"))
    elif inv["opened"] or inv["clicked"]:
        out.append(tags.span("opened", class_="inv opened"))
    elif inv["mail"] == "queued":
        out.append(tags.span("waiting to be sent", class_="inv queued"))
    elif inv["mail"] == "failed":
        out.append(tags.span("could not be sent", class_="inv failed"))
    else:
        out.append(tags.span("sent", class_="inv sent"))
    if inv["expired"] and not inv["accepted"]:
        out.append(tags.span(" · expired", class_="muted"))
    return out


def invites_card(invites: List[Dict[str, Any]], done: Optional[str] = None,
                 error: Optional[str] = None, values: Optional[Dict[str, str]] = None
                 ) -> Tag:
    """The home page's *Invite by e-mail* form and the list of invitations."""
    v = values or {}
    items = []
    for inv in invites:
        opens = inv["opens"] or 0
        items.append(tags.li(
            tags.div(tags.strong(clean(inv["email"], 254), class_="to"), " ",
                     *_state(inv), class_="meta"),
            tags.div("sent ", when(inv["sent"]),
                     f" · opened {opens} time" + ("" if opens == 1 else "s"),
                     (" · link followed" if inv["clicked"] else ""),
                     class_="muted small"),
            tags.p(clean(inv["note"], MAX_NOTE), class_="text") if inv["note"] else "",
            class_="invite", **{"data-id": str(inv["id"]),
                                "data-opens": str(opens),
                                "data-accepted": inv["accepted_by"] or ""}))
    if not items:
        items = [tags.li("No invitations yet.", class_="empty")]
    return tags.section(
        tags.h2("Invite by e-mail"),
        tags.p("Your friend gets a mail that shows whether you are online when they open"
               " it, with a link to chat with you at once, without an account.",
               class_="muted"),
        notice(done), notice(error, "error"),
        tags.form(
            field("Their e-mail address", "email", v.get("email", ""), kind="email",
                  required="", maxlength="254", autocomplete="off"),
            field("A note (optional, one line)", "note", v.get("note", ""),
                  maxlength=str(MAX_NOTE)),
            tags.p(tags.button("Send the invitation", type="submit")),
            method="post", action="/home/invite", id="invite-form"),
        tags.h3("Your invitations"),
        tags.ul(*items, id="invites", class_="invites"),
        class_="card", id="invite")


__all__ = ["invite_page", "gone_page", "unsubscribe_page", "invites_card"]
