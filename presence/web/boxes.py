"""The heartbeat between the host boxes of a cluster (docs/cluster.md,
"Pages across boxes"): where a heartbeat sent to the wrong box is
redirected, and which pages may hold a heartbeat on another box.

* The ``307`` to the box that holds the session uses the scheme of
  ``--host-box https://HOST:PORT`` when one was configured
  (``HubConfig.box_scheme``, the same on every node), else the scheme the
  client used for this request (``https`` on a TLS listener).  No
  ``X-Forwarded-Proto`` is believed: the server has no list of trusted
  proxies.  A heartbeat authenticated by the session cookie alone gets the
  session ID added to the ``Location`` (as ``id``): the browser does not
  send a host's cookie to another host, and the request on the right box
  then names its session like any client's.
* A page served by one box whose session is held by another follows that
  ``307`` with its ``EventSource``: a cross-origin request.  The box answers
  it with ``Access-Control-Allow-Origin`` set to the request's ``Origin``
  exactly when that origin is ``<scheme>://<a live box of the cluster>``
  (one node alone: none), never ``*`` and never credentials.
"""

from __future__ import annotations

from typing import Optional, Set, Tuple
from urllib.parse import quote

from twisted.web import server

from presence.core.hub import IHub
from presence.web.auth import _origin_tuple, stated_origin


def box_scheme(request: server.Request, hub: IHub) -> str:
    """The scheme clients use to reach the boxes (see the module docstring)."""
    configured = getattr(hub.config, "box_scheme", None)
    if configured:
        return configured
    return "https" if request.isSecure() else "http"


def box_origins(hub: IHub, scheme: str) -> Set[Tuple[str, str, int]]:
    """The origins of the cluster's live boxes, this one's included."""
    origins = set()
    for box in hub.box_names():
        origin = _origin_tuple(scheme, box)
        if origin is not None:
            origins.add(origin)
    return origins


def allow_box_origin(request: server.Request, hub: IHub) -> None:
    """Let a page of another box of this cluster read this heartbeat: set
    ``Access-Control-Allow-Origin`` to the request's ``Origin`` when it is
    one of the live boxes' (nothing otherwise)."""
    raw = request.getHeader(b"origin")
    if raw is None:
        return
    request.setHeader(b"vary", b"Origin")
    origin = stated_origin(request)
    if origin is None or len(hub.box_names()) < 2:
        return
    if origin in box_origins(hub, box_scheme(request, hub)):
        request.setHeader(b"access-control-allow-origin", raw.strip())


def box_location(request: server.Request, hub: IHub, box: str,
                 cookie_sid: Optional[str]) -> bytes:
    """The ``Location`` of the heartbeat ``request`` on ``box``: the same
    path and query, plus ``id`` when the cookie named the session."""
    uri = request.uri
    if cookie_sid is not None:
        uri += (b"&" if b"?" in uri else b"?") + b"id=" + quote(cookie_sid, safe="").encode(
            "ascii")
    return box_scheme(request, hub).encode("ascii") + b"://" + box.encode("ascii") + uri


def box_sources(request: server.Request, hub: IHub) -> bytes:
    """The other live boxes' origins, space-separated, for a page's
    ``connect-src`` (its ``EventSource`` may be redirected there); empty for
    one node alone."""
    boxes = [box for box in hub.box_names() if box != hub.config.host_box]
    scheme = box_scheme(request, hub)
    return b"".join(b" " + f"{scheme}://{box}".encode("ascii") for box in sorted(boxes)
                    if _origin_tuple(scheme, box) is not None)
