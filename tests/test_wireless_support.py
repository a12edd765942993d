"""Helpers for the wireless tests (no tests here): an in-memory network of
HTTP hosts over StubTreq, and a presence server with its wireless front-end,
simulator and pages wired together on a fake clock."""

from __future__ import annotations

import json as jsonlib
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

import treq
from treq.testing import StubTreq

from helpers import BASE, World, result_of
from presence.wireless.frontend import WirelessFrontEnd

SIM = "http://sim.test"
USER, PASSWORD = "presence", "sim-secret"


class Router:
    """A treq-like client that sends each request to the in-memory host
    named in its URL (``request``, ``content``, ``flush``)."""

    def __init__(self, hosts: Optional[Dict[str, Any]] = None) -> None:
        self.stubs: Dict[str, StubTreq] = {}
        self.down: set = set()
        self.log: list = []
        for host, resource in (hosts or {}).items():
            self.add(host, resource)

    def add(self, host: str, resource: Any) -> None:
        self.stubs[host] = StubTreq(resource)

    def request(self, method: str, url: str, **kw: Any):
        host = urlsplit(url).netloc
        self.log.append((method, url))
        if host in self.down or host not in self.stubs:
            from twisted.internet import defer
            return defer.fail(ConnectionRefusedError(f"{host} is down"))
        kw.pop("unbuffered", None)
        return self.stubs[host].request(method, url, **kw)

    def content(self, response: Any):
        return treq.content(response)

    def collect(self, response: Any, collector: Any):
        return treq.collect(response, collector)

    def flush(self) -> None:
        for _ in range(5):
            for stub in list(self.stubs.values()):
                stub.flush()


class Reply:
    def __init__(self, response: Any, body: bytes) -> None:
        self.status = response.code
        self.headers = response.headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def json(self) -> Any:
        return jsonlib.loads(self.body)


class Net:
    """A presence server (:class:`helpers.World`) with the wireless
    front-end, its simulator at ``http://sim.test`` and the server at
    ``http://presence.test``, all in memory on one fake clock."""

    def __init__(self, via: str = "push", validity: float = 60.0, **world: Any) -> None:
        self.world = World(**world)
        self.clock = self.world.clock
        self.router = Router()
        options = {"smsc": "tcp:0", "smsc-user": USER, "smsc-password": PASSWORD,
                   "smsc-validity": validity, "wireless-via": via, "wml-base": None,
                   "domain": "presence.test"}
        self.front = WirelessFrontEnd(options, self.world.service, self.clock, http=self.router)
        self.front.mount(self.world.site.resource)
        self.sim = self.front.simulator
        self.gateway = self.front.gateway
        self.router.add("sim.test", self.front.operator.app.resource())
        self.router.add("presence.test", self.world.site.resource)
        self.front.ready({"http": "presence.test:80", "smsc": "sim.test:80"})
        # the gateway's URLs, as ready() made them from those addresses
        self.gateway.configure(SIM, BASE, BASE)

    def call(self, method: str, url: str, **kw: Any) -> Reply:
        d = self.router.request(method, url, **kw)
        self.router.flush()
        response = result_of(d)
        body = result_of(self.router.content(response))
        return Reply(response, body)

    def get(self, url: str, **params: Any) -> Reply:
        return self.call("GET", url, params=params or None)

    def post(self, url: str, **data: Any) -> Reply:
        return self.call("POST", url, data=data)
