"""The pages (spec section 6) as a Klein app on a class.

Routes (see docs/pages.md):

    GET  /                         start page: find someone, log in, register
    GET  /{name}, /{any}/{name}    301 to /call?name=<canonical>; 404 page if unknown
    GET  /call?name=X              the communications page of a user or group
    POST /call  name, password     a protected group's password (then 303 to the page)
    POST /call/live  name          watch X with the visitor's session; the rows (HTML)
    POST /messages  to, text       leave a message (then 303 to /messages/left)
    GET  /messages/left?to=X       "message left"
    GET|POST /login, /register, /logout
    GET  /home                     the logged-in user's home page
    POST /home/live                watch the home group; its rows (HTML)
    POST /home/read  id            mark a message read
    GET  /settings, POST /settings/<action>

The live parts of the pages run in the browser (``static/presence.js``): it
holds the heartbeat with ``EventSource`` and calls the JSON API (``/chat``,
``/initchat``, ``/ack``, ``/api/...``) with the session cookie.

Every answer is HTML with a fitting status; a client error shows a page that
says what went wrong, an unexpected one is logged and shows a plain 500 page,
never a traceback.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple
from urllib.parse import urlencode
from weakref import WeakKeyDictionary

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.web import resource, server
from twisted.web.template import Tag
from werkzeug.exceptions import HTTPException

from presence.core.tables import Session
from presence.errors import BadRequest, ClientError, Forbidden, NotFound, TooMany, Unauthorized
from presence.service import RESERVED, PresenceService
from presence.web.api import set_resume_cookie
from presence.web.auth import COOKIE, cookie_session_id, cross_origin
from presence.web.boxes import box_sources
from presence.web.http import client_address, mask, params
from presence.pages import views
from presence.pages.views import Visitor, call_url, shown

log = Logger()

STATIC = FilePath(__file__).sibling("static")
#: seconds without input after which a live page reports its user away
IDLE = 300.0

CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
       b" connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
#: security headers of every HTML answer
HEADERS = {
    b"content-type": b"text/html; charset=utf-8",
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
    b"content-security-policy": CSP,
}

#: what a successful settings form says (only these texts are ever shown)
DONE = {
    "profile": "Profile saved.",
    "alias": "Alias added.",
    "active": "Your home page shows that group now.",
    "group-create": "Group created: you are its owner and first member.",
    "group-join": "You joined the group.",
    "group-leave": "You left the group.",
    "contact-add": "Contact added.",
    "contact-remove": "Contact removed.",
    "handset-secret": "A new handset secret: the old one no longer works.",
    "password": "Password changed: your other sessions have ended, and every other"
                " device must log in with the new password.",
    "greeting": "Greeting saved: your page shows it while you are offline.",
    "guest-calls": "Saved: who may call you in the browser.",
    "update-token": "A new update token: the old one no longer works.",
    "update-token-remove": "Update token removed: updates need your password now.",
}

#: what the home page says after an invitation was sent
INVITED = {
    "sent": "Invitation sent.",
    "queued": "The mail server did not take the invitation yet: it waits in the outbox"
              " and is sent as soon as it can be.",
}

Handler = Callable[..., Awaitable[bytes]]
#: a label of a host name that can be a person's name (as the zone's)
HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?\Z")


def page(handler: Handler) -> Callable[..., Awaitable[bytes]]:
    """Wrap a route: client errors become an error page with their status,
    anything else a logged 500 page."""

    @functools.wraps(handler)
    async def route(self: "Pages", request: server.Request, **kw: Any) -> bytes:
        try:
            return await handler(self, request, **kw)
        except ClientError as e:
            return await self.error(request, e.status, _TITLES.get(e.status, "Sorry"),
                                    e.message)
        except Exception:
            log.failure("{method} {path} failed", method=request.method,
                        path=mask(request.path).decode("ascii", "replace"))
            return await self.error(request, 500, "Something went wrong",
                                    "The server could not answer this; it has been logged.")

    return route


_TITLES = {
    400: "That did not work", 401: "Password needed", 403: "Not allowed",
    404: "Not found", 405: "Not here", 409: "Already taken", 413: "Too long",
    429: "Too many tries",
}


class Pages:
    """The HTML front-end: pages over :class:`~presence.service.PresenceService`."""

    app = Klein()

    def __init__(self, service: PresenceService, domain: str = "localhost") -> None:
        self.service = service
        self.domain = domain
        #: seconds without input after which a live page reports its user
        #: away (``--idle``; spec section 12: five minutes)
        self.idle = IDLE
        #: protected groups a visitor's session gave the password of
        self.admitted: "WeakKeyDictionary[Session, set]" = WeakKeyDictionary()
        #: the group each session's home page shows (absent: the address book)
        self.home_group: "WeakKeyDictionary[Session, str]" = WeakKeyDictionary()
        #: issues a handset secret for a session's user (the wireless
        #: gateway's issue_secret; None: wireless is off)
        self.handset_secret: Optional[Callable[[Session], Awaitable[Dict[str, str]]]] = None
        #: the invitations (presence.invite.service.Invitations; None: off):
        #: the home page's "Invite by e-mail" card
        self.invitations: Any = None

    # -- the resources to mount ------------------------------------------------

    def resource(self) -> resource.IResource:
        """The pages; give it to ``make_site`` as ``default``."""
        return _Guard(self, self.app.resource())

    def mounts(self) -> Dict[bytes, Any]:
        """``make_site`` mounts: the static files."""
        return {b"static": (StaticFiles(STATIC), False)}

    # -- helpers ----------------------------------------------------------------------

    def visitor_session(self, request: server.Request) -> Optional[Session]:
        sid = cookie_session_id(request)
        if sid is None:
            return None
        try:
            return self.service.session(sid)
        except ClientError:
            return None

    @staticmethod
    def visitor(session: Optional[Session]) -> Optional[Visitor]:
        if session is None:
            return None
        return Visitor(session.user.name, session.user.guest, session.state, session.status)

    def user_session(self, request: server.Request) -> Optional[Session]:
        session = self.visitor_session(request)
        return session if session is not None and not session.user.guest else None

    async def html(self, request: server.Request, status: int, title: str, content: Any,
                   session: Optional[Session] = None) -> bytes:
        request.setResponseCode(status)
        for name, value in HEADERS.items():
            request.setHeader(name, value)
        if isinstance(content, Tag) and content.attributes.get("id") == "live":
            # the pages' idle detection: seconds without input until away
            content.attributes["data-idle"] = "%g" % self.idle
        others = box_sources(request, self.service.hub)
        if others:
            # a cluster: the heartbeat may be redirected to the box that
            # holds the session (docs/cluster.md, "Pages across boxes")
            request.setHeader(b"content-security-policy", CSP.replace(
                b"connect-src 'self'", b"connect-src 'self'" + others))
        return await views.render_page(title, content, self.visitor(session))

    async def error(self, request: server.Request, status: int, title: str, text: str,
                    back: Optional[str] = None) -> bytes:
        try:
            session = self.visitor_session(request)
        except Exception:
            session = None
        return await self.html(request, status, title,
                               views.error_page(status, title, text, back), session)

    async def fragment(self, request: server.Request, content: Any) -> bytes:
        request.setResponseCode(200)
        for name, value in HEADERS.items():
            request.setHeader(name, value)
        return await views.render_fragment(content)

    @staticmethod
    def text(request: server.Request, status: int, message: str) -> bytes:
        """A short plain-text answer for the page script."""
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return message.encode("utf-8")

    @staticmethod
    def redirect(request: server.Request, location: str, status: int = 303) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"location", location.encode("ascii"))
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def check_post(self, request: server.Request) -> Dict[str, Any]:
        """The parameters of a form POST (which may change state): refused
        (403) when the browser says it comes from another origin, another
        port of this host included (see :mod:`presence.web.auth`)."""
        if cross_origin(request):
            raise Forbidden("this form was sent from another site")
        return params(request)

    def set_cookie(self, request: server.Request, session: Session) -> None:
        request.addCookie(COOKIE, session.id.encode("ascii"), path=b"/", httpOnly=True,
                          sameSite="lax")

    async def set_resume(self, request: server.Request, session: Session) -> None:
        """A resume token for this browser, in its HttpOnly cookie scoped to
        ``/api/resume``: the page's script gets the session back with it
        when the session is gone (docs/pages.md, "Resuming a session")."""
        set_resume_cookie(request, await self.service.issue_resume(session, "pages"))

    @staticmethod
    def local(url: Any, default: str = "/home") -> str:
        """``url`` if it is a path on this server, else ``default``."""
        if (isinstance(url, str) and url.startswith("/") and not url.startswith("//")
                and "\\" not in url and all(32 < ord(c) < 127 for c in url)):
            return url
        return default

    # -- start page and the redirector --------------------------------------------

    def host_name(self, request: server.Request) -> Optional[str]:
        """The name a request was sent to by its ``Host``: ``alice`` for
        ``alice.<domain>`` (any port), None for the domain itself, ``www``,
        ``ns`` and anything else (docs/names.md, "Pages by name")."""
        host = request.getRequestHostname().decode("ascii", "replace").lower().rstrip(".")
        suffix = "." + self.domain
        if not host.endswith(suffix):
            return None
        label = host[:-len(suffix)]
        if label in ("www", "ns") or not HOST_LABEL.match(label):
            return None
        return label

    @app.route("/", methods=["GET"])
    @page
    async def index(self, request) -> bytes:
        name = self.host_name(request)
        if name is not None:
            return await self.call_page(request, name, by_host=True)
        session = self.visitor_session(request)
        return await self.html(request, 200, "Find someone",
                               views.landing(self.visitor(session)), session)

    @app.route("/<name>", methods=["GET"])
    @page
    async def short(self, request, name) -> bytes:
        return await self.redirector(request, name)

    @app.route("/<prefix>/<name>", methods=["GET"])
    @page
    async def prefixed(self, request, prefix, name) -> bytes:
        if prefix.lower() in RESERVED:
            return await self.no_such_page(request)
        return await self.redirector(request, name)

    async def redirector(self, request: server.Request, name: str) -> bytes:
        found = None
        if name.lower() not in RESERVED:
            found = await self.service.resolve(name)
        if found is None:
            return await self.html(request, 404, "Not found", views.not_found(name),
                                   self.visitor_session(request))
        return self.redirect(request, call_url(found[1]), 301)

    async def no_such_page(self, request: server.Request) -> bytes:
        return await self.error(request, 404, "No such page",
                                "There is nothing at this address.")

    # -- the communications page -----------------------------------------------------

    @app.route("/call", methods=["GET"])
    @page
    async def call(self, request) -> bytes:
        p = params(request)
        name = p.get("name")
        if not isinstance(name, str) or not name.strip():
            return await self.html(request, 400, "Whose page?", views.error_page(
                400, "Whose page?", "Give a name: /call?name=<someone>.", "/"),
                self.visitor_session(request))
        return await self.call_page(request, name)

    async def call_page(self, request: server.Request, name: str,
                        by_host: bool = False) -> bytes:
        """The communications page of ``name``; ``by_host``: asked for as
        ``http://<name>.<domain>/``, where an alias is served as it is (a
        ``/call`` of an alias redirects to the canonical name)."""
        session = self.visitor_session(request)
        found = await self.service.resolve(name.strip())
        if found is None:
            return await self.html(request, 404, "Not found", views.not_found(name), session)
        kind, canonical = found
        if canonical != name and not by_host:
            return self.redirect(request, call_url(canonical), 301)
        admitted = session is not None and canonical in self.admitted.get(session, ())
        try:
            shown_page = await self.service.page(canonical, session, admitted)
        except Unauthorized:
            return await self.html(request, 401, canonical, views.password_page(canonical),
                                   session)
        if kind == "user" and not shown_page["rows"][0]["online"] and (
                session is None or session.user.name != canonical):
            await self.service.page_hit(canonical)
        return await self.html(request, 200, canonical,
                               views.call_page(shown_page, self.visitor(session), self.domain),
                               session)

    @app.route("/call", methods=["POST"])
    @page
    async def unlock(self, request) -> bytes:
        p = self.check_post(request)
        name = p.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest("which group? give its name")
        ip, port = client_address(request)
        session = self.visitor_session(request)
        try:
            group = await self.service.admit(name, p.get("password"), ip)
        except NotFound:
            return await self.html(request, 404, "Not found", views.not_found(name), session)
        except Forbidden:
            canonical = (await self.service.group_named(name))["name"]
            return await self.html(request, 403, canonical, views.password_page(
                canonical, "Wrong password: try again."), session)
        if session is None:
            session = self.service.guest(ip, port)
            self.set_cookie(request, session)
        self.admitted.setdefault(session, set()).add(group)
        return self.redirect(request, call_url(group))

    @app.route("/call/live", methods=["POST"])
    async def call_live(self, request) -> bytes:
        """For the page script: watch ``name`` with the visitor's session (if
        any) and answer the current rows."""
        try:
            p = self.check_post(request)  # it changes what the session watches
            name = p.get("name")
            if not isinstance(name, str) or not name:
                return self.text(request, 400, "name is required")
            session = self.visitor_session(request)
            found = await self.service.resolve(name)
            if found is None:
                return self.text(request, 404, f"no such user or group: {shown(name)}")
            admitted = session is not None and found[1] in self.admitted.get(session, ())
            if session is not None:
                shown_page = await self.service.show(session, found[1], admitted)
            else:
                shown_page = await self.service.page(found[1])
            me = session.user.name if session else None
            request.setHeader(b"x-presence-watching", b"1" if session else b"0")
            empty = "nobody" if shown_page["kind"] == "user" else "This group has no members."
            return await self.fragment(request, views.rows(
                shown_page["rows"], self.domain, me, shown_page["kind"] == "group", empty))
        except ClientError as e:
            return self.text(request, e.status, e.message)
        except Exception:
            log.failure("POST /call/live failed")
            return self.text(request, 500, "internal error; it has been logged")

    # -- leaving a message -----------------------------------------------------------

    @app.route("/messages", methods=["POST"])
    @page
    async def leave_message(self, request) -> bytes:
        p = self.check_post(request)
        session = self.visitor_session(request)
        ip, _ = client_address(request)
        to = p.get("to")
        target = await self.service.user_named(to)
        await self.service.leave_message(session, target, p.get("text"), ip)
        return self.redirect(request, "/messages/left?" + urlencode({"to": target}))

    @app.route("/messages/left", methods=["GET"])
    @page
    async def message_left(self, request) -> bytes:
        to = await self.service.user_named(params(request).get("to"))
        session = self.visitor_session(request)
        return await self.html(request, 200, "Message left", views.message_left(to), session)

    # -- accounts ------------------------------------------------------------------------

    @app.route("/login", methods=["GET"])
    @page
    async def login_form(self, request) -> bytes:
        p = params(request)
        session = self.visitor_session(request)
        return await self.html(request, 200, "Log in", views.login_page(
            self.local(p.get("next")), visitor=self.visitor(session)), session)

    @app.route("/login", methods=["POST"])
    @page
    async def login(self, request) -> bytes:
        p = self.check_post(request)
        next_url = self.local(p.get("next"))
        username = p.get("username")
        username = username.strip().lower() if isinstance(username, str) else ""
        ip, port = client_address(request)
        old = self.visitor_session(request)
        try:
            session = await self.service.login(username, p.get("password"), ip, port)
        except (BadRequest, Unauthorized, TooMany) as e:
            text = ("Wrong username or password." if isinstance(e, (BadRequest, Unauthorized))
                    else e.message)
            return await self.html(request, e.status, "Log in", views.login_page(
                next_url, username[:32], text, self.visitor(old)), old)
        if old is not None:
            self.service.logout(old)
        self.set_cookie(request, session)
        await self.set_resume(request, session)
        return self.redirect(request, next_url)

    @app.route("/register", methods=["GET"])
    @page
    async def register_form(self, request) -> bytes:
        session = self.visitor_session(request)
        return await self.html(request, 200, "Register", views.register_page({}), session)

    @app.route("/register", methods=["POST"])
    @page
    async def register(self, request) -> bytes:
        p = self.check_post(request)
        values = {k: (p.get(k) or "").strip() for k in ("username", "email", "phone",
                                                        "wireless")}
        values["username"] = values["username"].lower()
        old = self.visitor_session(request)
        password = p.get("password")
        try:
            if password != p.get("password2"):
                raise BadRequest("The two passwords differ.")
            ip, port = client_address(request)
            name = await self.service.register(values["username"], password,
                                               values["email"] or None,
                                               values["phone"] or None,
                                               values["wireless"] or None, ip=ip)
            session = await self.service.login(name, password, ip, port)
        except ClientError as e:
            return await self.html(request, e.status, "Register",
                                   views.register_page(values, e.message), old)
        if old is not None:
            self.service.logout(old)
        self.set_cookie(request, session)
        await self.set_resume(request, session)
        return self.redirect(request, "/home")

    @app.route("/logout", methods=["GET"])
    @page
    async def logout_form(self, request) -> bytes:
        session = self.user_session(request)
        if session is None:
            return self.redirect(request, "/")
        return await self.html(request, 200, "Log out", views.logout_page(
            self.visitor(session)), session)

    @app.route("/logout", methods=["POST"])
    @page
    async def logout(self, request) -> bytes:
        self.check_post(request)
        session = self.visitor_session(request)
        if session is not None:
            await self.service.logout(session)
        request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, sameSite="lax",
                          max_age=b"0")
        set_resume_cookie(request, None)
        return self.redirect(request, "/")

    # -- the home page -------------------------------------------------------------------

    @app.route("/home", methods=["GET"])
    @page
    async def home(self, request) -> bytes:
        session = self.user_session(request)
        if session is None:
            return self.redirect(request, "/login?" + urlencode({"next": "/home"}))
        done = INVITED.get(params(request).get("invited") or "")
        return await self.home_answer(request, session, 200, invite_done=done)

    async def home_answer(self, request, session: Session, status: int,
                          invite_done: Optional[str] = None,
                          invite_error: Optional[str] = None,
                          invite_values: Optional[Dict[str, str]] = None) -> bytes:
        welcome = await self.service.welcome(session)
        box = await self.service.messages(session)
        home = await self.service.home(session, self.home_group.get(session))
        groups = await self.service.group_names(session)
        content = views.home_page(self.visitor(session), welcome, box, home, groups,
                                  self.domain)
        if self.invitations is not None:
            from presence.invite.views import invites_card
            content(invites_card(await self.invitations.of(session), invite_done,
                                 invite_error, invite_values))
        return await self.html(request, status, "Home", content, session)

    @app.route("/home/invite", methods=["POST"])
    @page
    async def invite(self, request) -> bytes:
        p = self.check_post(request)
        session = self.user_session(request)
        if session is None:
            return self.redirect(request, "/login?" + urlencode({"next": "/home"}))
        if self.invitations is None:
            return await self.no_such_page(request)
        values = {k: p.get(k) if isinstance(p.get(k), str) else "" for k in ("email", "note")}
        try:
            status, _ = await self.invitations.invite(session, p.get("email"), p.get("note"))
        except ClientError as e:
            return await self.home_answer(request, session, e.status, invite_error=e.message,
                                          invite_values=values)
        return self.redirect(request, "/home?invited=" + ("queued" if status == 202
                                                          else "sent") + "#invite")

    @app.route("/home/live", methods=["POST"])
    async def home_live(self, request) -> bytes:
        try:
            self.check_post(request)  # it changes what the session watches
            session = self.user_session(request)
            if session is None:
                return self.text(request, 403, "log in again")
            home = await self.service.home(session, self.home_group.get(session))
            empty = ("Your address book is empty: add contacts in Settings."
                     if home["kind"] == "book" else "This group has no members.")
            request.setHeader(b"x-presence-watching", b"1")
            request.setHeader(b"x-presence-home", home["name"].encode("ascii"))
            return await self.fragment(request, views.rows(
                home["rows"], self.domain, session.user.name, True, empty))
        except ClientError as e:
            return self.text(request, e.status, e.message)
        except Exception:
            log.failure("POST /home/live failed")
            return self.text(request, 500, "internal error; it has been logged")

    @app.route("/home/read", methods=["POST"])
    @page
    async def read(self, request) -> bytes:
        p = self.check_post(request)
        session = self.user_session(request)
        if session is None:
            return self.redirect(request, "/login?" + urlencode({"next": "/home"}))
        await self.service.mark_read(session, p.get("id"))
        return self.redirect(request, "/home")

    # -- settings ------------------------------------------------------------------------

    @app.route("/settings", methods=["GET"])
    @page
    async def settings(self, request) -> bytes:
        session = self.user_session(request)
        if session is None:
            return self.redirect(request, "/login?" + urlencode({"next": "/settings"}))
        done = DONE.get(params(request).get("done") or "")
        return await self.settings_answer(request, session, 200, done=done)

    async def settings_answer(self, request, session: Session, status: int,
                              done: Optional[str] = None, error: Optional[str] = None,
                              secret: Optional[Dict[str, str]] = None) -> bytes:
        account = await self.service.account(session)
        home = self.home_group.get(session) or session.user.name
        page = views.settings_page(account, home, done, error, secret,
                                   self.handset_secret is not None, self.domain)
        return await self.html(request, status, "Settings", page, session)

    @app.route("/settings/<action>", methods=["POST"])
    @page
    async def change(self, request, action) -> bytes:
        p = self.check_post(request)
        session = self.user_session(request)
        if session is None:
            return self.redirect(request, "/login?" + urlencode({"next": "/settings"}))
        handler = self.ACTIONS.get(action)
        if handler is None:
            return await self.no_such_page(request)
        try:
            secret = await handler(self, session, p)
        except ClientError as e:
            return await self.settings_answer(request, session, e.status, error=e.message)
        if action == "password":
            # every token was revoked: this browser gets a new one
            await self.set_resume(request, session)
        if secret:
            # shown once, on this answer only (no redirect to a page that
            # could be reloaded or cached: the page is no-store)
            return await self.settings_answer(request, session, 200, done=DONE.get(action),
                                              secret=secret)
        return self.redirect(request, self.local(p.get("next"), "/settings?done=" + action))

    async def _profile(self, session, p) -> Optional[Dict[str, str]]:
        before = await self.service.handset_number(session.user.name)
        await self.service.update_profile(session, p.get("email"), p.get("phone"),
                                          p.get("wireless"))
        after = await self.service.handset_number(session.user.name)
        if after and after != before and self.handset_secret is not None:
            return await self.handset_secret(session)  # a new number: a new secret
        return None

    async def _handset_secret(self, session, p) -> Dict[str, str]:
        if self.handset_secret is None:
            raise NotFound("texting handsets is off on this server")
        return await self.handset_secret(session)

    async def _password(self, session, p) -> None:
        if p.get("new_password") != p.get("password2"):
            raise BadRequest("The two new passwords differ.")
        await self.service.change_password(session, p.get("old_password"),
                                           p.get("new_password"))

    async def _alias(self, session, p) -> None:
        alias = p.get("alias")
        await self.service.add_alias(session, alias.strip() if isinstance(alias, str) else alias)

    async def _active(self, session, p) -> None:
        group = p.get("group")
        me = session.user.name
        if group in (None, "", me):
            self.home_group.pop(session, None)
            return
        if group not in await self.service.group_names(session):
            raise NotFound(f"you are not a member of a group called {shown(group)}")
        self.home_group[session] = group

    async def _group_create(self, session, p) -> None:
        name = p.get("name")
        await self.service.create_group(session, name.strip().lower()
                                        if isinstance(name, str) else name, p.get("password"))

    async def _group_join(self, session, p) -> None:
        name = p.get("name")
        await self.service.join(session, name.strip().lower() if isinstance(name, str)
                                else name, p.get("password"))

    async def _group_leave(self, session, p) -> None:
        await self.service.leave(session, p.get("name"))
        if self.home_group.get(session) == p.get("name"):
            self.home_group.pop(session, None)

    async def _contact_add(self, session, p) -> None:
        contact = p.get("contact")
        await self.service.add_contact(session, contact.strip() if isinstance(contact, str)
                                       else contact)

    async def _contact_remove(self, session, p) -> None:
        await self.service.remove_contact(session, p.get("contact"))

    async def _greeting(self, session, p) -> None:
        await self.service.set_greeting(session, p.get("greeting"))

    async def _guest_calls(self, session, p) -> None:
        await self.service.set_guests_may_call(session, p.get("allow") == "1")

    async def _update_token(self, session, p) -> Dict[str, str]:
        return {"update_token": await self.service.new_update_token(session)}

    async def _update_token_remove(self, session, p) -> None:
        await self.service.drop_update_token(session)

    ACTIONS = {
        "profile": _profile, "alias": _alias, "active": _active,
        "group-create": _group_create, "group-join": _group_join,
        "group-leave": _group_leave, "contact-add": _contact_add,
        "contact-remove": _contact_remove, "handset-secret": _handset_secret,
        "password": _password, "greeting": _greeting, "update-token": _update_token,
        "guest-calls": _guest_calls,
        "update-token-remove": _update_token_remove,
    }

    # -- errors of routing itself --------------------------------------------------

    @app.handle_errors(HTTPException)
    async def http_error(self, request, failure) -> bytes:
        code = failure.value.code
        if code == 405:
            return await self.error(request, 405, "Not here",
                                    "This address does not answer that kind of request.")
        return await self.no_such_page(request)


class _Guard(resource.Resource):
    """In front of the Klein resource: a path or host that is not UTF-8 gets
    a 400 page here (Klein would log it as an error and answer plain text)."""

    isLeaf = True
    #: the site's Root leaves such paths to it (see presence.web.site)
    answers_bad_paths = True

    def __init__(self, pages: Pages, inner: resource.IResource) -> None:
        super().__init__()
        self.pages = pages
        self.inner = inner

    def render(self, request: server.Request) -> Any:
        try:
            b"/".join(request.postpath).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            d = self.pages.error(request, 400, "That address is garbled",
                                 "The address of this page is not valid UTF-8 text.")
            d = defer.ensureDeferred(d)

            def write(body: bytes) -> None:
                if not request.finished and not request._disconnected:
                    request.write(body)
                    request.finish()
            d.addCallback(write)
            d.addErrback(lambda f: log.failure("rendering a 400 page failed", f))
            return server.NOT_DONE_YET
        return self.inner.render(request)


class StaticFiles(resource.Resource):
    """The pages' CSS, script and icon, read once and served from memory
    (a handful of small files: no directory listing, no file system walks)."""

    isLeaf = True
    TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
             ".svg": b"image/svg+xml"}

    def __init__(self, folder: FilePath) -> None:
        super().__init__()
        self.files: Dict[bytes, Tuple[bytes, bytes, bytes]] = {}
        for child in folder.children():
            kind = self.TYPES.get(child.splitext()[1])
            if kind is not None and child.isfile():
                data = child.getContent()
                etag = b'"%s"' % hashlib.sha256(data).hexdigest()[:16].encode("ascii")
                self.files[child.basename().encode("utf-8")] = (data, kind, etag)

    def render_GET(self, request: server.Request) -> bytes:
        found = self.files.get(b"/".join(request.postpath))
        if found is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such file"
        data, kind, etag = found
        request.setHeader(b"content-type", kind)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return data

    def render_HEAD(self, request: server.Request) -> bytes:
        return self.render_GET(request)
