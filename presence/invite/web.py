"""The invitations' HTTP front-end (spec section 11; docs/invites.md).

    POST /api/invite  me, id, email[, note]   201 sent (or written to the outbox),
                                              202 {"queued": true}, 400, 403, 429
    GET  /api/invites me, id                  {"invites": [...]}, newest first
    GET  /badge/<token>.svg | .png            the inviter's presence now (no-store)
    GET  /i/<token>                           the inviter's page, a guest chat with them
    POST /i/<token>/register                  an account from the invitation
    GET  /i/u/<token>                         "don't invite me again", one button
    POST /i/u/<token>                         done (also RFC 8058's one-click POST)

Tokens are path segments: the access log masks them (``SECRET_PATHS``).
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, Dict, Optional

from klein import Klein
from twisted.logger import Logger
from twisted.web import resource, server
from werkzeug.exceptions import HTTPException

from presence.errors import ClientError
from presence.invite import badge as badges
from presence.invite import views
from presence.invite.service import Invitations
from presence.web.api import api
from presence.web.http import SECRET_PATHS, client_address, mask, params, write_json

log = Logger()

SECRET_PATHS.update({("i",), ("i", "u"), ("badge",)})

IMAGE_TYPES = {"svg": b"image/svg+xml", "png": b"image/png"}


def html_page(handler: Callable[..., Awaitable[bytes]]) -> Callable[..., Awaitable[bytes]]:
    """Client errors become an error page with their status; anything else
    a logged 500 page."""

    @functools.wraps(handler)
    async def route(self: "InviteWeb", request: server.Request, **kw: Any) -> bytes:
        try:
            return await handler(self, request, **kw)
        except ClientError as e:
            return await self.pages.error(request, e.status, "That did not work", e.message)
        except Exception:
            log.failure("{method} {path} failed", method=request.method,
                        path=mask(request.path).decode("ascii", "replace"))
            return await self.pages.error(request, 500, "Something went wrong",
                                          "The server could not answer this; it has been"
                                          " logged.")
    return route


class InviteWeb:
    app = Klein()

    def __init__(self, invitations: Invitations, pages: Any) -> None:
        self.invitations = invitations
        self.service = invitations.service
        self.hub = self.service.hub
        self.pages = pages

    def mount(self, root: Any) -> None:
        """Mount on the site's :class:`~presence.web.site.Root`."""
        whole = self.app.resource()
        root.mount(b"badge", whole, whole_path=True)
        root.mount(b"i", whole, whole_path=True)
        for name in (b"invite", b"invites"):
            root.mount_exact((b"api", name), _WholePath(whole))

    # -- the JSON API --------------------------------------------------------------

    def _session(self, request: server.Request, p: Dict[str, Any]) -> Any:
        from presence.web.auth import request_session
        return request_session(self.service, request, p)

    @app.route("/api/invite", methods=["POST"])
    @api
    async def invite(self, request, p) -> Any:
        return await self.invitations.invite(self._session(request, p), p.get("email"),
                                             p.get("note"))

    @app.route("/api/invites", methods=["GET"])
    @api
    async def invites(self, request, p) -> Any:
        return 200, {"invites": await self.invitations.of(self._session(request, p))}

    # -- the badge -----------------------------------------------------------------

    @app.route("/badge/<string:name>", methods=["GET", "HEAD"])
    async def badge(self, request, name) -> bytes:
        token, dot, kind = name.rpartition(".")
        try:
            if not dot or kind not in IMAGE_TYPES:
                request.setResponseCode(404)
                request.setHeader(b"cache-control", b"no-store")
                return write_json(request, 404, {"error": "a badge is <token>.svg or"
                                                          " <token>.png"})
            ip, _ = client_address(request)
            found = await self.invitations.badge(token, ip)
        except ClientError as e:
            request.setHeader(b"cache-control", b"no-store")
            return write_json(request, e.status, {"error": e.message})
        except Exception:
            log.failure("GET /badge failed")
            request.setHeader(b"cache-control", b"no-store")
            return write_json(request, 500, {"error": "internal error; it has been logged"})
        if found is None:
            request.setResponseCode(404)
            found = badges.EXPIRED
        draw = badges.svg if kind == "svg" else badges.png
        request.setHeader(b"content-type", IMAGE_TYPES[kind])
        request.setHeader(b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0")
        request.setHeader(b"pragma", b"no-cache")
        request.setHeader(b"expires", b"0")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; style-src 'unsafe-inline'")
        return draw(*found)

    # -- the invited person's page -----------------------------------------------------

    async def _invite_answer(self, request: server.Request, inv: Dict[str, Any], token: str,
                             session: Any, status: int = 200, started: bool = False,
                             error: Optional[str] = None,
                             values: Optional[Dict[str, str]] = None) -> bytes:
        inviter = inv["inviter"]
        page = await self.service.page(inviter, session)
        content = views.invite_page(inviter, page, self.pages.visitor(session),
                                    self.pages.domain, token, started, error, values)
        body = await self.pages.html(request, status, f"{inviter} invited you", content,
                                     session)
        request.setHeader(b"referrer-policy", b"no-referrer")  # the token is in the URL
        return body

    async def _gone(self, request: server.Request) -> bytes:
        return await self.pages.html(request, 404, "Invitation expired", views.gone_page(),
                                     self.pages.visitor_session(request))

    @app.route("/i/<string:token>", methods=["GET"])
    @html_page
    async def landing(self, request, token) -> bytes:
        ip, port = client_address(request)
        inv = await self.invitations.find(token, ip)
        if inv is None:
            return await self._gone(request)
        session = self.pages.visitor_session(request)
        if session is None:
            session = self.service.guest(ip, port)
            self.pages.set_cookie(request, session)
        started = await self.invitations.opened_link(inv, session)
        return await self._invite_answer(request, inv, token, session, started=started)

    @app.route("/i/<string:token>/register", methods=["POST"])
    @html_page
    async def register(self, request, token) -> bytes:
        p = self.pages.check_post(request)
        ip, port = client_address(request)
        inv = await self.invitations.find(token, ip)
        if inv is None:
            return await self._gone(request)
        old = self.pages.visitor_session(request)  # a guest's, usually
        username = p.get("username")
        try:
            session = await self.invitations.register(inv, username, p.get("password"),
                                                      p.get("password2"), ip, port)
        except ClientError as e:
            shown = username.strip().lower()[:32] if isinstance(username, str) else ""
            return await self._invite_answer(request, inv, token, old, e.status,
                                             error=e.message, values={"username": shown})
        # the guest session is left to expire (--guest-ttl): ending it now
        # would make the page's script, still running while the browser
        # follows the redirect, start another guest session and set its
        # cookie over the new user's
        self.pages.set_cookie(request, session)
        await self.pages.set_resume(request, session)
        return self.pages.redirect(request, "/home")

    @app.route("/i/u/<string:token>", methods=["GET"])
    @html_page
    async def unsubscribe_form(self, request, token) -> bytes:
        if not await self.invitations.known_unsubscribe(token):
            return await self._gone(request)
        body = await self.pages.html(request, 200, "Don't invite me again",
                                     views.unsubscribe_page(token, False), None)
        request.setHeader(b"referrer-policy", b"no-referrer")
        return body

    @app.route("/i/u/<string:token>", methods=["POST"])
    @html_page
    async def unsubscribe(self, request, token) -> bytes:
        # no origin check: RFC 8058's one-click POST comes from the mail
        # provider, and all it can do is stop invitations to one address
        params(request)
        ip, _ = client_address(request)
        if not await self.invitations.unsubscribe(token, ip):
            return await self._gone(request)
        return await self.pages.html(request, 200, "You will not be invited again",
                                     views.unsubscribe_page(token, True), None)

    @app.handle_errors(HTTPException)
    def http_error(self, request, failure) -> bytes:
        error = failure.value
        text = {404: "no such endpoint", 405: "method not allowed here"}.get(
            error.code, error.name)
        return write_json(request, error.code, {"error": text})


class _WholePath(resource.Resource):
    """A leaf that hands ``inner`` (a Klein resource) the whole path, for
    :meth:`~presence.web.site.Root.mount_exact`."""

    isLeaf = True

    def __init__(self, inner: resource.IResource) -> None:
        super().__init__()
        self.inner = inner

    def render(self, request: server.Request) -> Any:
        request.postpath = request.prepath + request.postpath
        request.prepath = []
        return self.inner.render(request)


__all__ = ["InviteWeb"]
