"""The HTTP front-end's resource tree: ``/jchat`` is a plain, light resource
(thousands are held at once); everything else is the Klein app."""

from __future__ import annotations

from typing import Callable, Optional

from twisted.web import resource

from presence.service import PresenceService
from presence.web.api import PresenceAPI
from presence.web.heartbeat import HeartbeatResource
from presence.web.http import PresenceSite


class Root(resource.Resource):
    def __init__(self, heartbeat: resource.IResource, app: resource.IResource) -> None:
        super().__init__()
        self.heartbeat = heartbeat
        self.app = app

    def getChildWithDefault(self, name: bytes, request) -> resource.IResource:
        if name == b"jchat":
            return self.heartbeat
        # hand the whole path to Klein, which routes on it
        request.postpath.insert(0, request.prepath.pop())
        return self.app

    def render(self, request):
        return self.app.render(request)


def make_site(service: PresenceService, keepalive: float, reactor=None,
              stats: Optional[Callable[[], dict]] = None) -> PresenceSite:
    api = PresenceAPI(service, stats)
    heartbeat = HeartbeatResource(service.hub, service.clock, keepalive)
    return PresenceSite(Root(heartbeat, api.app.resource()), reactor=reactor)
