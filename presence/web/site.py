"""The HTTP front-end's resource tree.

The first path segment picks a front-end: ``/jchat`` is a plain, light
resource (thousands are held at once); the JSON API answers ``/api``,
``/chat``, ``/initchat`` and ``/ack``; another front-end (pages, SIP tunnel,
WML) adds its own segments with :meth:`Root.mount` or becomes the default
that every other path goes to.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from presence.service import PresenceService
from presence.web.api import PresenceAPI
from presence.web.heartbeat import HeartbeatResource
from presence.web.http import PresenceSite, mask

#: the first segments the JSON API answers through Klein
API_SEGMENTS = (b"api", b"initchat")
#: API routes of every session's life served without Klein (``Direct``):
#: a Klein request leaves some 40 objects of cyclic garbage (its render's
#: closures refer to themselves and to the request), which only the cyclic
#: garbage collector frees
DIRECT_API = ("register", "login", "guest", "logout", "resume")


class Direct(resource.Resource):
    """One hot API route (``POST /chat``, ``POST /ack``) served without
    Klein's routing: the same handler, a quarter of the cost per request.
    A handler that finishes at once (a chat to an online user) is answered
    in the same reactor turn."""

    isLeaf = True
    log = Logger()

    def __init__(self, handler: Callable, methods: Tuple[bytes, ...] = (b"POST",)) -> None:
        super().__init__()
        self.handler = handler
        self.methods = methods

    def render(self, request):
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": "no such endpoint"}'
        if request.method not in self.methods:
            request.setResponseCode(405)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": "method not allowed here"}'
        answered: list = []

        def grab(body: bytes) -> bytes:
            answered.append(body)
            return body

        d = defer.ensureDeferred(self.handler(request))

        def later(body: bytes) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        def failed(f) -> bytes:
            self.log.failure("answering {path} failed", f, path=mask(request.uri))
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": "internal error; the request was not carried out"}'

        d.addErrback(failed)
        d.addCallback(grab)
        if answered:
            return answered[0]
        d.addCallback(later)
        d.addErrback(lambda f: self.log.failure("answering {path} failed", f,
                                                path=mask(request.uri)))
        return server.NOT_DONE_YET


def _text_path(name: bytes, rest: list, host: bytes) -> bool:
    """Whether the path's segments (percent-decoded) and the host are UTF-8
    text."""
    try:
        for segment in (name, *rest, host):
            if not segment.isascii():
                segment.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _BadPath(resource.Resource):
    """The JSON answer to a path or host that is not UTF-8 text (Klein would
    log a traceback and answer in plain text)."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "the path or the host is not UTF-8 text"}'


_BAD_PATH = _BadPath()


class Root(resource.Resource):
    def __init__(self, default: resource.IResource) -> None:
        super().__init__()
        self.default = default
        self.routes: Dict[bytes, resource.IResource] = {}
        self.whole_path: set[bytes] = set()
        #: whole paths (tuples of segments) answered by a leaf of their own,
        #: before the resource of their first segment
        self.exact: Dict[Tuple[bytes, ...], resource.IResource] = {}

    def mount(self, segment: bytes, child: resource.IResource, whole_path: bool = False) -> None:
        """Send paths starting with ``segment`` to ``child``.  With
        ``whole_path`` (a Klein app) the child sees the whole path."""
        self.routes[segment] = child
        if whole_path:
            self.whole_path.add(segment)

    def mount_exact(self, path: Tuple[bytes, ...], child: resource.IResource) -> None:
        """Send exactly ``path`` (no trailing slash, nothing more) to the
        leaf ``child``; longer or other paths go where they went before."""
        self.exact[path] = child

    def getChildWithDefault(self, name: bytes, request) -> resource.IResource:
        path = request.path
        host = request.getHeader(b"host") or b""
        if ((b"%" in path or not path.isascii() or not host.isascii())
                and not _text_path(name, request.postpath, host)):
            # (the pages, the default front-end, have an error page of their own)
            if name in self.routes or not getattr(self.default, "answers_bad_paths", False):
                return _BAD_PATH
        if self.exact and len(request.postpath) == 1:
            child = self.exact.get((name, request.postpath[0]))
            if child is not None:
                request.prepath.append(request.postpath.pop())
                return child
        child = self.routes.get(name)
        if child is None:
            child = self.default
        elif name not in self.whole_path:
            return child
        # hand the whole path to Klein, which routes on it
        request.postpath.insert(0, request.prepath.pop())
        return child

    def render(self, request):
        return self.default.render(request)


def make_site(service: PresenceService, keepalive: float, reactor=None,
              stats: Optional[Callable[[], dict]] = None,
              mounts: Optional[Dict[bytes, Tuple[resource.IResource, bool]]] = None,
              default: Optional[resource.IResource] = None,
              access_log: Union[bool, str] = True) -> PresenceSite:
    """The site: heartbeat and JSON API, plus ``mounts`` (first segment ->
    (resource, whole_path)) of other front-ends; paths no front-end claims
    go to ``default`` (the pages, once they exist; else the API's 404s)."""
    handlers = PresenceAPI(service, stats)
    api = handlers.app.resource()
    root = Root(default=default if default is not None else api)
    root.mount(b"jchat", HeartbeatResource(service.hub, service.clock, keepalive,
                                           service.counters))
    for segment in API_SEGMENTS:
        root.mount(segment, api, whole_path=True)
    root.mount(b"chat", Direct(handlers.chat))
    root.mount(b"ack", Direct(handlers.ack))
    for name in DIRECT_API:
        root.mount_exact((b"api", name.encode("ascii")), Direct(getattr(handlers, name)))
    for segment, (child, whole_path) in (mounts or {}).items():
        root.mount(segment, child, whole_path)
    site = PresenceSite(root, reactor=reactor, access_log=access_log)
    site.counters = service.counters
    return site
