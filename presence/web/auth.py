"""Who a web request acts for, and whether a browser may have been tricked
into sending it: the session cookie, the session a request names, and the
same-origin rule for cookie-authenticated state changes.

Every front-end of the HTTP listener (the JSON API, ``/chat`` and ``/ack``,
the heartbeat, the pages, the SIP tunnel) uses these, so that the rule is
the same everywhere (see docs/security.md, "Web input, CSRF and logs"):

* A request that names its session with ``me`` and ``id`` (or
  ``sessionId``) is a client that knows the session ID: no browser sends
  that on its own, so no origin check applies (non-browser clients send no
  ``Origin``).
* A request that is authenticated by the ``presence_session`` cookie alone
  and changes state (any method but GET and HEAD, a GET that acknowledges
  frames, holds a heartbeat or opens a chat) is refused with ``403`` when
  the browser says it comes from another origin: a ``Sec-Fetch-Site`` other
  than ``same-origin``, or an ``Origin`` that is not the scheme, host and
  port the request was sent to.  The cookie is ``SameSite=Lax``, which does
  not stop another port of the same host (the same *site*, a different
  *origin*); this check does.  Every current browser sends one of the two
  headers with a cross-origin ``POST`` (``Origin`` with every ``fetch`` and
  form ``POST``, ``Sec-Fetch-Site`` with every request), and with the
  subresource requests that could carry the cookie (``EventSource``, an
  image).  A request with neither header is not a browser's: a client
  that holds the cookie itself (the contract lets every call take the
  cookie in place of ``id``) is not refused.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

from twisted.web import server

from presence.core.tables import Session
from presence.errors import Forbidden
from presence.service import PresenceService, whole_number

COOKIE = b"presence_session"
#: the methods that never change state by themselves
SAFE_METHODS = (b"GET", b"HEAD")
CROSS_ORIGIN = ("this request came from another site (its Origin is not this server's):"
                " the session cookie is not accepted for it; send me and id instead")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def cookie_session_id(request: server.Request) -> Optional[str]:
    """The session ID the request's ``presence_session`` cookie carries."""
    raw = request.getCookie(COOKIE)
    if not raw:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None  # never a session ID of ours


def _origin_tuple(scheme: str, netloc: str) -> Optional[Tuple[str, str, int]]:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.username is not None:
        return None
    return scheme, host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme, 0)


def own_origin(request: server.Request) -> Optional[Tuple[str, str, int]]:
    """``(scheme, host, port)`` the request was sent to (its ``Host``)."""
    host = request.getHeader(b"host")
    if not host:
        return None
    try:
        netloc = host.decode("ascii")
    except UnicodeDecodeError:
        return None
    return _origin_tuple("https" if request.isSecure() else "http", netloc)


def stated_origin(request: server.Request) -> Optional[Tuple[str, str, int]]:
    """``(scheme, host, port)`` of the request's ``Origin`` header, or None
    (absent, ``null`` or not an origin)."""
    origin = request.getHeader(b"origin")
    if not origin:
        return None
    try:
        text = origin.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    scheme, sep, netloc = text.partition("://")
    if not sep or scheme.lower() not in _DEFAULT_PORTS:
        return None
    return _origin_tuple(scheme.lower(), netloc)


def same_origin(request: server.Request) -> bool:
    """Whether a browser vouches that this request comes from a page of this
    very origin: ``Sec-Fetch-Site: same-origin``, or (a browser without Fetch
    Metadata) an ``Origin`` equal to this server's scheme, host and port.

    A ``Sec-Fetch-Site`` that says anything else (``same-site`` is another
    port of this host, ``cross-site``, ``none``) is believed over ``Origin``.
    """
    site = request.getHeader(b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() == b"same-origin"
    origin = stated_origin(request)
    return origin is not None and origin == own_origin(request)


def cross_origin(request: server.Request) -> bool:
    """Whether the browser says this request comes from another origin (a
    ``Sec-Fetch-Site`` other than ``same-origin``, or an ``Origin`` header
    that is not this server's).  A request with neither header is not a
    browser's cross-origin request."""
    if request.getHeader(b"sec-fetch-site") is None and request.getHeader(b"origin") is None:
        return False
    return not same_origin(request)


def check_cookie_request(request: server.Request) -> None:
    """Raise ``Forbidden`` (403) when the request, authenticated by the
    session cookie, comes from another origin (see :func:`cross_origin`)."""
    if cross_origin(request):
        raise Forbidden(CROSS_ORIGIN)


def changes_state(request: server.Request, p: Dict[str, Any]) -> bool:
    """A method other than GET/HEAD, or a request that acknowledges frames."""
    return request.method not in SAFE_METHODS or p.get("ack") not in (None, "")


def request_session(service: PresenceService, request: server.Request,
                    p: Dict[str, Any], state_change: Optional[bool] = None) -> Session:
    """The live session a request names by ``id`` (or ``sessionId``) and
    ``me``, or by its cookie (``403`` when none is live), after applying the
    request's ``ack=n`` to it (``400`` unless a whole number).

    With the cookie only, a request that changes state (``state_change``;
    by default :func:`changes_state`) from another origin is 403.
    """
    sid = p.get("id") or p.get("sessionId")
    if not sid:
        sid = cookie_session_id(request)
        if sid is not None and (changes_state(request, p) if state_change is None
                                else state_change):
            check_cookie_request(request)
    session = service.session(sid, p.get("me"))
    ack = p.get("ack")
    if ack not in (None, ""):
        service.hub.ack(session, whole_number(ack, "ack"))
        service.counters.acks += 1
    return session

