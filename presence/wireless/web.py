"""The wireless pages under ``/wml/`` and the ``/api/wireless/...`` calls.

WML (``Content-Type: text/vnd.wap.wml``, decks built by
:mod:`presence.wireless.decks`)::

    GET  /wml/                   home (or the login card without a session)
    GET  /wml/login              login card; POST username, password
    GET  /wml/t/<token>          one-time link from a push (with the handset's
                                 X-Handset-Proof): a session limited to the
                                 wireless pages, the chat with the sender
    GET  /wml/buddies?from=N     address book with presence
    GET  /wml/chat?with=NAME     chat card with a reply form
    POST /wml/chat               to, msg: send, then the chat card again
    GET  /wml/messages?from=N    message box; GET /wml/messages/<id>?part=N
    POST /wml/logout

The session is the ``presence_session`` cookie that login sets (the same as
the JSON API's).  A push link's session has the scope ``"wml"``: these pages
and the heartbeat take it, the JSON API, the HTML pages and ``/sip`` refuse
it (403, :meth:`PresenceService.session`).  Errors are decks too, with the
fitting status: 401 wrong login, 403 no session or no handset proof, 404
unknown name or page, 410 used or expired link, 413 text too long, 429 too
many tries.

JSON::

    POST /api/wireless/text    me, id, to  -> 202 {"status": "sent"}
    POST /api/wireless/secret  me, id      -> 201 {"number", "secret"} (shown once)
    GET|POST /api/wireless/dlr ref, status (the operator's delivery reports)
    GET  /api/wireless         {"enabled": bool, "via": "push"|"sms"}
    GET  /api/wireless/session, POST /api/wireless/ack, POST /api/wireless/logout
                               as /api/session, /ack, /api/logout, also for
                               a "wml" session (the emulator's heartbeat)
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, Optional, Sequence, Tuple

from klein import Klein
from twisted.logger import Logger
from twisted.web import resource, server
from werkzeug.exceptions import HTTPException

from presence.core import frames
from presence.core.tables import Session
from presence.errors import BadRequest, ClientError, Forbidden, NotFound, TooLarge, Unauthorized
from presence.service import PresenceService
from presence.web import auth
from presence.web.api import api as json_route
from presence.web.http import COOKIE, client_address, params as _params, write_json
from presence.wireless import decks, numbers
from presence.wireless.gateway import WirelessGateway
from presence.wireless.keys import PROOF_HEADER
from presence.wireless.wml import CONTENT_TYPE

log = Logger()
Page = Tuple[int, bytes]
#: the scope of a session a push link opens (see PresenceService.session)
SCOPE = "wml"


def _write(request: server.Request, status: int, data: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", CONTENT_TYPE)
    request.setHeader(b"cache-control", b"no-cache")
    return data


def wml_route(handler: Callable[..., Awaitable[Page]]) -> Callable[..., Awaitable[bytes]]:
    """Wrap a WML route: errors become error decks with their status."""

    @functools.wraps(handler)
    async def route(self: "WirelessWeb", request: server.Request, **kw: Any) -> bytes:
        try:
            status, data = await handler(self, request, **kw)
        except Unauthorized as e:
            status, data = e.status, decks.login(e.message)
        except Forbidden as e:
            status, data = e.status, decks.error("Log in", e.message, "/wml/login", "Log in")
        except ClientError as e:
            status, data = e.status, decks.error("Sorry", e.message)
        except Exception:
            log.failure("{method} {path} failed", method=request.method,
                        path=request.path.decode("ascii", "replace"))
            status, data = 500, decks.error("Sorry", "Something went wrong; it has been logged.")
        return _write(request, status, data)

    return route


def params(request: server.Request) -> dict:
    """The request's parameters (:func:`presence.web.http.params`: text that
    is not UTF-8 or holds a lone surrogate is already a 400 there)."""
    return _params(request)


def _same_site(request: server.Request) -> None:
    """A state change authenticated by the cookie must come from this site
    (:func:`presence.web.auth.check_cookie_request`: 403 when the browser
    says it comes from another origin; a WML browser sends neither header
    and passes)."""
    if request.method not in auth.SAFE_METHODS:
        auth.check_cookie_request(request)


def _number(value: Any, what: str) -> int:
    if value in (None, ""):
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a whole number")
    if number < 0 or number > 10 ** 9:
        raise BadRequest(f"{what} is out of range")
    return number


class WirelessWeb:
    app = Klein()

    def __init__(self, service: PresenceService, gateway: WirelessGateway) -> None:
        self.service = service
        self.hub = service.hub
        self.gateway = gateway

    # -- sessions -----------------------------------------------------------

    def _maybe_session(self, request: server.Request) -> Optional[Session]:
        sid = auth.cookie_session_id(request)
        return None if sid is None else self.hub.session(sid)

    def _session(self, request: server.Request) -> Session:
        session = self._maybe_session(request)
        if session is None:
            raise Forbidden("Log in first.")
        _same_site(request)
        return session

    def _login(self, request: server.Request, session: Session) -> None:
        request.addCookie(COOKIE, session.id.encode("ascii"), path=b"/", httpOnly=True,
                          sameSite="lax")

    async def _home(self, session: Session, note: str = "") -> bytes:
        unread = await self.service.unread(session)
        return decks.home(session.user.name, unread, session.user.guest, note)

    # -- pages ----------------------------------------------------------------

    @app.route("/wml", methods=["GET"])
    @app.route("/wml/", methods=["GET"])
    @wml_route
    async def index(self, request: server.Request) -> Page:
        session = self._maybe_session(request)
        if session is None:
            return 200, decks.login()
        return 200, await self._home(session)

    @app.route("/wml/login", methods=["GET"])
    @wml_route
    async def login_card(self, request: server.Request) -> Page:
        return 200, decks.login()

    @app.route("/wml/login", methods=["POST"])
    @wml_route
    async def login(self, request: server.Request) -> Page:
        _same_site(request)
        p = params(request)
        ip, port = client_address(request)
        try:
            session = await self.service.login(p.get("username"), p.get("password"), ip, port)
        except BadRequest:
            return 400, decks.login("Give your name and password.")
        except Unauthorized:
            return 401, decks.login("Wrong name or password.")
        self._login(request, session)
        return 200, await self._home(session)

    @app.route("/wml/t/<string:token>", methods=["GET"])
    @wml_route
    async def token(self, request: server.Request, token: str) -> Page:
        proof = request.getHeader(PROOF_HEADER)
        user, peer = self.gateway.consume(
            token, proof.decode("ascii", "replace") if proof is not None else None)
        ip, port = client_address(request)
        try:
            session = await self.service.login_verified(user, ip, port, scope=SCOPE)
        except NotFound:
            raise NotFound("That account is gone.")
        self._login(request, session)
        self.hub.deliver_session(session, frames.init_chat(peer))
        return 200, self._chat_card(peer, (), f"{peer} wants to chat.")

    @app.route("/wml/buddies", methods=["GET"])
    @wml_route
    async def buddies(self, request: server.Request) -> Page:
        session = self._session(request)
        start = _number(params(request).get("from"), "from")
        if session.user.guest:
            return 200, decks.error("Buddies", "Guests have no buddy list.")
        book = await self.service.contacts(session)
        rows = [(m["name"], m["state"], m["text"]) for m in book["members"]]
        data, _ = decks.buddies(rows, min(start, len(rows)))
        return 200, data

    def _chat_card(self, peer: str, lines: Sequence[str] = (), note: str = "") -> bytes:
        """The chat card with ``peer``, showing their presence state and
        status text."""
        state, status = self.hub.state_of(peer)
        return decks.chat(peer, state, lines, note, status)

    def _lines(self, session: Session, peer: str) -> list:
        """Chat text from ``peer`` this session has not acknowledged yet."""
        out = []
        for _, frame in session.mailbox.pending():
            if frame.kind == "chat" and frame.args and frame.args[0] == peer:
                out.append(f"{peer}: {frame.payload}")
        return out

    @app.route("/wml/chat", methods=["GET"])
    @wml_route
    async def chat_card(self, request: server.Request) -> Page:
        session = self._session(request)
        peer = await self.service.user_named(params(request).get("with"), param="with")
        return 200, self._chat_card(peer, self._lines(session, peer))

    @app.route("/wml/chat", methods=["POST"])
    @wml_route
    async def chat(self, request: server.Request) -> Page:
        session = self._session(request)
        p = params(request)
        peer = await self.service.user_named(p.get("to"))
        try:
            delivered, _ = await self.service.chat(session, peer, p.get("msg"), p.get("seq"))
        except TooLarge as e:
            return 413, self._chat_card(peer, self._lines(session, peer), e.message)
        except BadRequest as e:
            return 400, self._chat_card(peer, self._lines(session, peer), e.message)
        note = "Sent." if delivered == "online" else f"{peer} is offline: kept in their box."
        return 200, self._chat_card(peer, self._lines(session, peer), note)

    @app.route("/wml/messages", methods=["GET"])
    @wml_route
    async def messages(self, request: server.Request) -> Page:
        session = self._session(request)
        start = _number(params(request).get("from"), "from")
        if session.user.guest:
            return 200, decks.error("Messages", "Guests have no message box.")
        box = await self.service.messages(session)
        items = box["messages"]
        data, _ = decks.messages(items, min(start, len(items)))
        return 200, data

    @app.route("/wml/messages/<string:ident>", methods=["GET"])
    @wml_route
    async def message(self, request: server.Request, ident: str) -> Page:
        session = self._session(request)
        number = _number(ident, "the message number")
        part = _number(params(request).get("part"), "part")
        if session.user.guest:
            raise NotFound("no such message")
        box = await self.service.messages(session)
        found = next((m for m in box["messages"] if m["id"] == number), None)
        if found is None:
            raise NotFound("no such message")
        await self.service.mark_read(session, number)
        return 200, decks.message(found, part)

    @app.route("/wml/logout", methods=["POST"])
    @wml_route
    async def logout(self, request: server.Request) -> Page:
        _same_site(request)
        session = self._maybe_session(request)
        if session is not None:
            self.service.logout(session)
        request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, sameSite="lax",
                          max_age=b"0")
        return 200, decks.login("Logged out.")

    # -- JSON -------------------------------------------------------------------

    def _api_session(self, request: server.Request, p: dict,
                     scopes: Tuple[str, ...] = ()) -> Session:
        """The request's session; a push link's (``"wml"``) only where
        ``scopes`` names it."""
        sid = p.get("id") or p.get("sessionId")
        if not sid:
            sid = auth.cookie_session_id(request)
            _same_site(request)
        return self.service.session(sid, p.get("me"), scopes)

    @app.route("/api/wireless/text", methods=["POST"])
    @json_route
    async def text(self, request: server.Request, p: dict) -> Tuple[int, Any]:
        session = self._api_session(request, p)
        return 202, await self.gateway.text(session, p.get("to"), client_address(request)[0])

    @app.route("/api/wireless/secret", methods=["POST"])
    @json_route
    async def secret(self, request: server.Request, p: dict) -> Tuple[int, Any]:
        return 201, await self.gateway.issue_secret(self._api_session(request, p))

    # what the emulator's heartbeat needs of a push link's session: whose it
    # is, acknowledging frames, ending it (the JSON API's refuse that scope)

    @app.route("/api/wireless/session", methods=["GET"])
    @json_route
    async def session_info(self, request: server.Request, p: dict) -> Tuple[int, Any]:
        return 200, self._api_session(request, p, (SCOPE,)).info()

    @app.route("/api/wireless/ack", methods=["POST"])
    @json_route
    async def ack(self, request: server.Request, p: dict) -> Tuple[int, Any]:
        ack = p.get("ack")
        if not isinstance(ack, str) or not ack.isascii() or not ack.isdigit() or len(ack) > 18:
            raise BadRequest("ack must be a whole number")
        self.hub.ack(self._api_session(request, p, (SCOPE,)), int(ack))
        return 204, None

    @app.route("/api/wireless/logout", methods=["POST"])
    @json_route
    async def api_logout(self, request: server.Request, p: dict) -> Tuple[int, Any]:
        self.service.logout(self._api_session(request, p, (SCOPE,)))
        return 204, None

    @app.route("/api/wireless/dlr", methods=["GET", "POST"])
    @json_route
    async def dlr(self, request: server.Request, p: dict) -> Tuple[int, Any]:
        if not self.gateway.report(p.get("ref"), p.get("status")):
            raise NotFound("no such text")
        return 204, None

    @app.route("/api/wireless", methods=["GET"])
    @json_route
    async def info(self, request: server.Request, p: dict) -> Tuple[int, Any]:
        return 200, {"enabled": self.gateway.ready, "via": self.gateway.via}

    @app.handle_errors(HTTPException)
    def http_error(self, request: server.Request, failure: Any) -> bytes:
        error = failure.value
        message = {404: "no such page", 405: "method not allowed here"}.get(
            error.code, error.name)
        if request.path.startswith(b"/api/"):
            return write_json(request, error.code, {"error": message})
        return _write(request, error.code, decks.error("Sorry", message))


class ApiSplit(resource.Resource):
    """The ``/api`` segment shared by the JSON API and the wireless calls:
    ``/api/wireless...`` goes to ``wireless``, the rest to ``api`` (both
    Klein resources that see the whole path)."""

    isLeaf = True

    def __init__(self, api: resource.IResource, wireless: resource.IResource) -> None:
        super().__init__()
        self.api = api
        self.wireless = wireless

    def render(self, request: server.Request) -> Any:
        path = list(request.prepath) + list(request.postpath)
        target = self.wireless if path[:2] == [b"api", b"wireless"] else self.api
        return target.render(request)


def mount(root: Any, web: WirelessWeb) -> None:
    """Mount ``/wml`` and ``/api/wireless`` on the site's root resource
    (:class:`presence.web.site.Root`)."""
    child = web.app.resource()
    root.mount(b"wml", child, whole_path=True)
    api = root.routes.get(b"api")
    root.mount(b"api", ApiSplit(api, child) if api is not None else child, whole_path=True)
