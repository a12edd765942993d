"""Helpers for the wireless tests (no tests here): an in-memory network of
HTTP hosts over StubTreq, and a presence server with its wireless front-end,
simulator and pages wired together on a fake clock."""

from __future__ import annotations

import json as jsonlib
import re
from typing import Any, Dict, Optional
from urllib.parse import unquote, urlsplit

import treq
from treq.testing import StubTreq
from twisted.web import resource

from helpers import BASE, World, result_of
from presence.wireless.frontend import WirelessFrontEnd

SIM = "http://sim.test"
USER, PASSWORD = "presence", "sim-secret"
_HANDSET = re.compile(r"/handset/([^/?]+)")


class AnySecrets(dict):
    """For tests of the simulator alone: every number has the secret
    ``s<number>`` (see :meth:`Net.trust_any_handset`)."""

    def __missing__(self, number: str) -> str:
        return "s" + number


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


class Receiver(resource.Resource):
    """An application's HTTP endpoint (delivery reports, PAP result
    notifications): a twisted.web resource that records every request as
    ``(method, uri, content type, body)``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def render(self, request: Any) -> bytes:
        self.seen.append((request.method.decode(), request.uri.decode("ascii"),
                          request.getHeader(b"content-type"), request.content.read()))
        return b"ok"


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

    def __init__(self, via: str = "push", validity: float = 60.0,
                 dlr_allow: str = "app.test,a.test", pages: bool = False,
                 **world: Any) -> None:
        self.world = World(**world)
        self.pages = None
        if pages:  # the HTML pages too (the settings page shows handset secrets)
            from presence.pages import Pages
            from presence.web.site import make_site

            self.pages = Pages(self.world.service, domain="presence.test")
            self.world.site = make_site(self.world.service, 25.0, reactor=self.world.clock,
                                        mounts=self.pages.mounts(),
                                        default=self.pages.resource())
        self.clock = self.world.clock
        self.router = Router()
        options = {"smsc": "tcp:0", "smsc-user": USER, "smsc-password": PASSWORD,
                   "smsc-validity": validity, "wireless-via": via, "wml-base": None,
                   "domain": "presence.test", "dlr-allow": dlr_allow}
        self.front = WirelessFrontEnd(options, self.world.service, self.clock, http=self.router)
        self.front.startService()
        self.front.mount(self.world.site.resource)
        self.sim = self.front.simulator
        self.gateway = self.front.gateway
        if self.pages is not None:
            self.pages.handset_secret = self.gateway.issue_secret
        self.router.add("sim.test", self.front.operator.app.resource())
        self.router.add("presence.test", self.world.site.resource)
        self.front.ready({"http": "presence.test:80", "smsc": "sim.test:80"})
        # the gateway's URLs, as ready() made them from those addresses
        self.gateway.configure(SIM, BASE, BASE)
        #: number -> secret: ``call`` sends it on the handset API
        self.secrets: Dict[str, str] = {}

    def handset(self, user: str, number: str) -> str:
        """Issue ``user``'s handset ``number`` its secret, as the settings
        page does, and remember it for :meth:`call`."""
        self.secrets[number] = self.gateway.keys.issue(user, number)
        return self.secrets[number]

    def trust_any_handset(self) -> None:
        """The simulator alone, without presence users: the number ``N``'s
        secret is ``sN``."""
        from twisted.internet import defer

        self.secrets = AnySecrets()
        self.front.operator.handset_auth = (
            lambda number, secret: defer.succeed(secret == "s" + number))

    def record_reports(self) -> None:
        """Delivery reports are not fetched but kept in ``self.sent``."""
        from twisted.internet import defer

        self.sent: list = []

        def fetch(url: str) -> Any:
            self.sent.append(url)
            return defer.succeed(200)

        self.sim.fetch = fetch

    def call(self, method: str, url: str, **kw: Any) -> Reply:
        match = _HANDSET.match(urlsplit(url).path) if url.startswith(SIM) else None
        if match is not None and "headers" not in kw:
            from presence.wireless.numbers import normalize

            number = normalize(unquote(match.group(1))) or ""
            if number in self.secrets or isinstance(self.secrets, AnySecrets):
                kw["headers"] = {"Authorization": [f"Bearer {self.secrets[number]}"]}
        d = self.router.request(method, url, **kw)
        self.router.flush()
        response = result_of(d)
        body = result_of(self.router.content(response))
        return Reply(response, body)

    def get(self, url: str, **params: Any) -> Reply:
        return self.call("GET", url, params=params or None)

    def post(self, url: str, **data: Any) -> Reply:
        return self.call("POST", url, data=data)
