"""The JSON API (spec sections 2, 4 and 5) as a Klein app on a class.

Every route answers JSON; an error is ``{"error": "<readable text>"}`` with
the status of its :mod:`presence.errors` class, and an unexpected failure is
logged and answered ``500`` without a traceback.  Parameters come from the
query string, a form body or a JSON object body alike.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from klein import Klein
from twisted.logger import Logger
from twisted.web import server
from werkzeug.exceptions import HTTPException

from presence.core.tables import Session
from presence.errors import BadRequest, ClientError, Forbidden, Unauthorized
from presence.service import PresenceService
from presence.web.auth import (  # noqa: F401  (COOKIE, request_session: re-exported)
    COOKIE, cookie_session_id, cross_origin, request_session,
)
from presence.web.http import client_address, error_answer, mask, params, write_json

Answer = Tuple[int, Any]
Handler = Callable[..., Awaitable[Answer]]

log = Logger()

#: the cookie a browser keeps the pages' resume token in: HttpOnly (no
#: script reads it), SameSite=Strict, sent to ``/api/resume`` only
RESUME_COOKIE = b"presence_resume"
RESUME_PATH = b"/api/resume"


def set_resume_cookie(request: server.Request, token: Optional[str]) -> None:
    """Give the browser ``token`` in :data:`RESUME_COOKIE` (a browser-session
    cookie, like the session cookie); None clears it."""
    if token is None:
        request.addCookie(RESUME_COOKIE, b"", path=RESUME_PATH, httpOnly=True,
                          sameSite="strict", max_age=b"0")
        return
    request.addCookie(RESUME_COOKIE, token.encode("ascii"), path=RESUME_PATH, httpOnly=True,
                      sameSite="strict", secure=request.isSecure() or None)


async def known_session(hub: Any, request: server.Request, p: Dict[str, Any]) -> None:
    """A cluster: a session this node has not heard of yet (placed elsewhere
    by a login a moment ago) is looked up first, so that any node answers a
    call made right after the login."""
    sid = p.get("id") or p.get("sessionId") or cookie_session_id(request)
    if isinstance(sid, str) and sid and hub.session(sid) is None:
        pending = hub.claim(sid)
        if pending is not None:
            await pending


def api(handler: Handler) -> Callable[..., Awaitable[bytes]]:
    """Wrap a route: parse parameters, map errors to JSON answers."""

    @functools.wraps(handler)
    async def route(self: "PresenceAPI", request: server.Request, **kw: Any) -> bytes:
        try:
            p = params(request)
            hub = getattr(self, "hub", None)   # the wireless API uses this wrapper too
            if hub is not None:
                await known_session(hub, request, p)
            status, body = await handler(self, request, p, **kw)
        except ClientError as e:
            status, body = error_answer(request, e)
        except Exception:
            log.failure("{method} {path} failed", method=request.method,
                        path=mask(request.path).decode("ascii", "replace"))
            status, body = 500, {"error": "internal error; it has been logged"}
        request.setHeader(b"cache-control", b"no-store")
        return write_json(request, status, body)

    return route


class PresenceAPI:
    app = Klein()

    def __init__(self, service: PresenceService, stats: Optional[Callable[[], dict]] = None) -> None:
        self.service = service
        self.hub = service.hub
        self._stats = stats

    # -- helpers ----------------------------------------------------------------

    def _session(self, request: server.Request, p: Dict[str, Any],
                 state_change: Optional[bool] = None) -> Session:
        return request_session(self.service, request, p, state_change)

    def _maybe_session(self, request: server.Request, p: Dict[str, Any]) -> Optional[Session]:
        """For calls open to anyone: the caller's session if they name one
        (a wrong one is 403), or the cookie's if it is still live (a state
        change with the cookie from another origin is 403, see
        :mod:`presence.web.auth`)."""
        if p.get("id") or p.get("sessionId"):
            return self._session(request, p)
        sid = cookie_session_id(request)
        if sid is not None and self.hub.session(sid) is not None:
            return self._session(request, p)
        return None

    @staticmethod
    def _not_from_another_site(request: server.Request) -> None:
        """A login sets the session cookie: a browser that says the request
        comes from another origin (which could log its user in as someone
        else) is refused; clients that send no ``Origin`` are not affected."""
        if cross_origin(request):
            raise Forbidden("this login was sent from another site")

    def _login_answer(self, request: server.Request, session: Session,
                      resume: Optional[str] = None) -> Answer:
        name = session.user.name
        request.addCookie(COOKIE, session.id.encode("ascii"), path=b"/", httpOnly=True,
                          sameSite="lax")
        return 200, {
            "session": session.id,
            "username": name,
            "heartbeat": f"/jchat?me={name}&id={session.id}",
            "host_box": session.host_box,
            "resume": resume,
        }

    # -- accounts ----------------------------------------------------------------

    @app.route("/api/register", methods=["POST"])
    @api
    async def register(self, request, p) -> Answer:
        ip, _ = client_address(request)
        name = await self.service.register(p.get("username"), p.get("password"),
                                           p.get("email"), p.get("phone"), p.get("wireless"),
                                           ip=ip)
        return 201, {"username": name}

    @app.route("/api/login", methods=["POST"])
    @api
    async def login(self, request, p) -> Answer:
        self._not_from_another_site(request)
        ip, port = client_address(request)
        session = await self.service.login(p.get("username"), p.get("password"), ip, port)
        return self._login_answer(request, session,
                                  await self.service.issue_resume(session, "api"))

    @app.route("/api/resume", methods=["POST"])
    @api
    async def resume(self, request, p) -> Answer:
        """A new session from a resume token: ``token``, or (the pages) the
        :data:`RESUME_COOKIE`; the answer carries the token given as
        ``token`` again, and ``"resume": null`` when it came in the cookie
        (it stays out of reach of the page's scripts)."""
        self._not_from_another_site(request)
        ip, port = client_address(request)
        token = p.get("token")
        from_cookie = token in (None, "") and bool(request.getCookie(RESUME_COOKIE))
        if from_cookie:
            token = request.getCookie(RESUME_COOKIE).decode("ascii", "replace")
        try:
            session = await self.service.resume(token, ip, port)
        except Unauthorized:
            if from_cookie:
                set_resume_cookie(request, None)
            raise
        return self._login_answer(request, session, None if from_cookie else token)

    @app.route("/api/guest", methods=["POST"])
    @api
    async def guest(self, request, p) -> Answer:
        self._not_from_another_site(request)
        ip, port = client_address(request)
        return self._login_answer(request, self.service.guest(ip, port))

    @app.route("/api/logout", methods=["POST"])
    @api
    async def logout(self, request, p) -> Answer:
        await self.service.logout(self._session(request, p))
        request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, sameSite="lax",
                          max_age=b"0")
        set_resume_cookie(request, None)
        return 204, None

    @app.route("/api/password", methods=["POST"])
    @api
    async def password(self, request, p) -> Answer:
        ip, _ = client_address(request)
        await self.service.change_password(self._session(request, p), p.get("password"),
                                           p.get("new_password"), ip)
        return 204, None

    @app.route("/api/session", methods=["GET"])
    @api
    async def session_info(self, request, p) -> Answer:
        return 200, self._session(request, p).info()

    # -- groups, contacts, aliases ----------------------------------------------------

    @app.route("/api/groups", methods=["POST"])
    @api
    async def create_group(self, request, p) -> Answer:
        session = self._session(request, p)
        name = await self.service.create_group(session, p.get("name"), p.get("password"))
        return 201, {"name": name}

    @app.route("/api/groups/<string:name>/join", methods=["POST"])
    @api
    async def join(self, request, p, name) -> Answer:
        await self.service.join(self._session(request, p), name, p.get("password"))
        return 204, None

    @app.route("/api/groups/<string:name>/presence", methods=["POST"])
    @api
    async def group_presence(self, request, p, name) -> Answer:
        return 200, await self.service.set_group_presence(self._session(request, p), name,
                                                          p.get("presence"))

    @app.route("/api/groups/<string:name>/leave", methods=["POST"])
    @api
    async def leave(self, request, p, name) -> Answer:
        await self.service.leave(self._session(request, p), name)
        return 204, None

    @app.route("/api/contacts", methods=["POST"])
    @api
    async def add_contact(self, request, p) -> Answer:
        await self.service.add_contact(self._session(request, p), p.get("contact"))
        return 204, None

    @app.route("/api/contacts", methods=["GET"])
    @api
    async def contacts(self, request, p) -> Answer:
        return 200, await self.service.contacts(self._session(request, p))

    @app.route("/api/contacts/remove", methods=["POST"])
    @api
    async def remove_contact(self, request, p) -> Answer:
        await self.service.remove_contact(self._session(request, p), p.get("contact"))
        return 204, None

    @app.route("/api/active", methods=["POST"])
    @api
    async def active(self, request, p) -> Answer:
        await self.service.set_active(self._session(request, p), p.get("group"))
        return 204, None

    @app.route("/api/aliases", methods=["POST"])
    @api
    async def alias(self, request, p) -> Answer:
        alias = await self.service.add_alias(self._session(request, p), p.get("alias"))
        return 201, {"alias": alias}

    @app.route("/api/status", methods=["POST"])
    @api
    async def status(self, request, p) -> Answer:
        return 200, self.service.set_status(self._session(request, p), p.get("state"),
                                            p.get("text"))

    # -- names (spec section 10): the greeting and the dyndns2 update token ----------

    @app.route("/api/greeting", methods=["POST"])
    @api
    async def greeting(self, request, p) -> Answer:
        text = await self.service.set_greeting(self._session(request, p), p.get("greeting"))
        return 200, {"greeting": text}

    @app.route("/api/greeting/<string:name>", methods=["GET"])
    @api
    async def greeting_of(self, request, p, name) -> Answer:
        user = await self.service.user_named(name, param="name")
        return 200, {"name": user, "greeting": await self.service.greeting(user)}

    @app.route("/api/update-token", methods=["POST"])
    @api
    async def update_token(self, request, p) -> Answer:
        session = self._session(request, p)
        token = await self.service.new_update_token(session)
        return 201, {"username": session.user.name, "token": token}

    @app.route("/api/update-token/remove", methods=["POST"])
    @api
    async def remove_update_token(self, request, p) -> Answer:
        await self.service.drop_update_token(self._session(request, p))
        return 204, None

    @app.route("/api/presence/<string:name>", methods=["GET"])
    @api
    async def presence(self, request, p, name) -> Answer:
        session = self._maybe_session(request, p)
        ip, _ = client_address(request)
        return 200, await self.service.presence_of(name, p.get("password"), session, ip)

    # -- chat ----------------------------------------------------------------------

    @app.route("/initchat", methods=["GET", "POST"])
    @api
    async def init_chat(self, request, p) -> Answer:
        # a GET (as the spec has it) that changes state: with the cookie
        # only from a page of this origin
        session = self._session(request, p, state_change=True)
        if await self.service.init_chat(session, p.get("to")):
            return 204, None
        return 200, {"online": False}

    @app.route("/chat", methods=["POST"])
    @api
    async def chat(self, request, p) -> Answer:
        session = self._session(request, p)
        delivered, msgid = await self.service.chat(session, p.get("to"), p.get("msg"),
                                                   p.get("seq"))
        return 202, {"delivered": delivered, "msgid": msgid}

    @app.route("/ack", methods=["POST"])
    @api
    async def ack(self, request, p) -> Answer:
        if p.get("ack") in (None, ""):
            raise BadRequest("ack is required")
        self._session(request, p)
        return 204, None

    # -- message box -----------------------------------------------------------------

    @app.route("/api/messages", methods=["POST"])
    @api
    async def leave_message(self, request, p) -> Answer:
        session = self._maybe_session(request, p)
        ip, _ = client_address(request)
        ident = await self.service.leave_message(session, p.get("to"), p.get("text"), ip)
        return 201, {"id": ident}

    @app.route("/api/messages", methods=["GET"])
    @api
    async def messages(self, request, p) -> Answer:
        return 200, await self.service.messages(self._session(request, p))

    @app.route("/api/messages/<string:ident>/read", methods=["POST"])
    @api
    async def read(self, request, p, ident) -> Answer:
        await self.service.mark_read(self._session(request, p), ident)
        return 204, None

    @app.route("/api/welcome", methods=["GET"])
    @api
    async def welcome(self, request, p) -> Answer:
        return 200, await self.service.welcome(self._session(request, p))

    # -- operations -------------------------------------------------------------------

    @staticmethod
    def _operators_only(request, what: str) -> None:
        ip, _ = client_address(request)
        try:
            loopback = ipaddress.ip_address(ip).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise Forbidden(f"{what} are served to the loopback address only")

    @app.route("/api/cluster", methods=["GET"])
    @api
    async def cluster(self, request, p) -> Answer:
        self._operators_only(request, "the cluster's boxes")
        return 200, {"boxes": self.hub.boxes()}

    @app.route("/api/stats", methods=["GET"])
    @api
    async def stats(self, request, p) -> Answer:
        self._operators_only(request, "stats")
        figures = dict(self.hub.stats())
        if self._stats is not None:
            figures.update(self._stats())
        return 200, figures

    # -- errors of routing itself --------------------------------------------------

    @app.handle_errors(HTTPException)
    def http_error(self, request, failure) -> bytes:
        error = failure.value
        text = {404: "no such endpoint", 405: "method not allowed here"}.get(
            error.code, error.name)
        return write_json(request, error.code, {"error": text})
