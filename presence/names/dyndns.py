"""dyndns2 updates (``GET /nic/update``) and the presence they keep alive.

    GET /nic/update?hostname=alice.example.org[,alias.example.org...][&myip=IP]
    Authorization: Basic base64(alice:<password or update token>)

The answer is ``200 text/plain``, one line per hostname, in the words
ddclient and inadyn parse: ``good IP`` (the name now points to IP),
``nochg IP`` (it already did; the update still counts as "alive"),
``nohost`` (not a name of this user in this zone), ``notfqdn`` (not a
fully qualified name), and for the whole request ``badauth`` (wrong
credentials; ``401`` with a Basic challenge when none were sent),
``numhost`` (more than ``MAX_HOSTS`` names), ``abuse`` (too many updates or
failed logins: the rate limits), ``911`` (the server could not do it now;
try again later).  ``myip`` absent or empty means the request's address; a
``myip`` that is not an IP address is a ``400``.

**The alive loop.**  An update makes its user a presence source: a session
held by this box (:meth:`~presence.service.PresenceService.open_source`)
whose "heartbeat" is a :class:`SourceChannel` in this process.  It stays
held while updates keep coming; ``alive`` seconds after the last one it
ends (``msg bye alive``), and the user goes offline unless another session
holds them online, so their watchers get ``msg update offline``.  A new
address opens a new source session before the old one ends (the user stays
online; the name answers the new address at once, on every box of a
cluster, which sees the new session's address; watchers on this box get
``msg update address <user>``).  Chat sent to a user whom
only a source holds online goes to their message box.

Updates and offline transitions are logged with the user and address,
never the password or the token.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from presence.core import frames
from presence.core.hub import IChannel
from presence.core.mailbox import Entry
from presence.core.ratelimit import RateLimiter
from presence.core.tables import Session
from presence.errors import BadRequest, Forbidden, ServiceUnavailable, TooMany, Unauthorized
from presence.names.zone import LABEL
from presence.service import NAME_RE
from presence.web.http import client_address

#: hostnames one update may name
MAX_HOSTS = 20
#: updates one user may make: a burst, then one every 20 seconds
UPDATE_BURST = 20
UPDATE_RATE = 1 / 20
DEFAULT_ALIVE = 300.0


@implementer(IChannel)
class SourceChannel:
    """The held "heartbeat" of a dyndns2 source: nobody reads it, so every
    frame is acknowledged at once and chat goes to the message box."""

    def __init__(self, sources: "Sources", session: Session) -> None:
        self.sources = sources
        self.session = session

    def send(self, entries: Sequence[Entry]) -> None:
        for _, frame in entries:
            if frame.is_chat:
                self.sources.keep(self.session.user.name, frame)
        if entries:
            self.sources.hub.ack(self.session, entries[-1][0])

    def keepalive(self) -> None:
        pass

    def release(self, reason: str) -> None:
        self.sources.released(self.session, reason)


@dataclass
class Source:
    session: Session
    ip: str
    timer: Any


class Sources:
    """The dyndns2 presence sources of this box, one per user."""

    log = Logger()

    def __init__(self, service: Any, clock: Any, alive: float = DEFAULT_ALIVE) -> None:
        self.service = service
        self.hub = service.hub
        self.clock = clock
        self.alive = alive
        self.by_user: Dict[str, Source] = {}

    async def update(self, user: str, ip: str) -> str:
        """User ``user``'s client reports ``ip``: ``"good"`` or ``"nochg"``."""
        source = self.by_user.get(user)
        if source is not None and source.ip == ip:
            source.timer.reset(self.alive)
            return "nochg"
        session = await self.service.open_source(user, ip)
        self.hub.attach(session, SourceChannel(self, session))
        old = self.by_user.get(user)
        self.by_user[user] = Source(session, ip,
                                    self.clock.callLater(self.alive, self.expire, user, session))
        if old is not None:
            old.timer.cancel()
            # the watchers hear of the move (msg update address) through the
            # old session, before it ends; the new one carries the address
            self.hub.address_changed(old.session, ip, old.session.port)
            self.hub.end(old.session, "replaced")
        self.log.info("dyndns2: {user} is at {ip}", user=user, ip=ip)
        return "good"

    def expire(self, user: str, session: Session) -> None:
        source = self.by_user.get(user)
        if source is None or source.session is not session:
            return
        del self.by_user[user]
        self.log.info("dyndns2: no update of {user} for {alive} s: the name goes offline",
                      user=user, alive=self.alive)
        self.hub.end(session, "alive")

    def released(self, session: Session, reason: str) -> None:
        """The source session ended for another reason (a password change,
        shutdown): forget it."""
        user = session.user.name
        source = self.by_user.get(user)
        if source is not None and source.session is session:
            del self.by_user[user]
            source.timer.cancel()
            self.log.info("dyndns2: {user}'s name ended ({reason})", user=user, reason=reason)

    def keep(self, user: str, frame: Any) -> None:
        sender, msgid = frame.args[0], frame.args[1]
        d = defer.ensureDeferred(self.service.keep_message(user, sender, frame.payload, msgid))
        d.addCallback(lambda _: self.hub.deliver(user, frames.message(sender)))
        d.addErrback(lambda f: self.log.failure(
            "keeping a chat for {user} (online by dyndns2 only) failed", f, user=user))

    def stop(self) -> None:
        for source in list(self.by_user.values()):
            source.timer.cancel()
        self.by_user.clear()


def parse_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise BadRequest("myip is not an IPv4 or IPv6 address")


class UpdateResource(resource.Resource):
    """``/nic/update`` (see the module docstring).  ``domain`` is the zone."""

    isLeaf = True
    log = Logger()

    def __init__(self, service: Any, sources: Sources, domain: str) -> None:
        super().__init__()
        self.service = service
        self.sources = sources
        self.domain = domain.lower()
        self.updates = RateLimiter(capacity=UPDATE_BURST, rate=UPDATE_RATE, max_keys=100000)

    def render_GET(self, request: server.Request) -> Any:
        if request.postpath != [b"update"]:
            return _text(request, 404, "no such endpoint: dyndns2 updates are GET /nic/update")
        d = defer.ensureDeferred(self.answer(request))

        def write(reply: tuple) -> None:
            status, body = reply
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_text(request, status, body))
                request.finish()

        def failed(f: Any) -> tuple:
            self.log.failure("a dyndns2 update failed", f)
            return (200, "911")
        d.addErrback(failed)
        d.addCallback(write)
        return server.NOT_DONE_YET

    async def answer(self, request: server.Request) -> tuple:
        try:
            return await self._answer(request)
        except ServiceUnavailable as e:
            self.log.warn("dyndns2: an update could not be done now: {why}", why=e.message)
            return (200, "911")

    async def _answer(self, request: server.Request) -> tuple:
        ip, _ = client_address(request)
        user = request.getUser().decode("utf-8", "replace")
        secret = request.getPassword().decode("utf-8", "replace")
        if not request.getHeader(b"authorization"):
            request.setHeader(b"www-authenticate", b'Basic realm="presence dyndns2"')
            return (401, "badauth")
        args = request.args
        names = b",".join(args.get(b"hostname", [])).decode("utf-8", "replace")
        hosts = [h.strip().lower().rstrip(".") for h in names.split(",") if h.strip()]
        if not hosts:
            return (200, "notfqdn")
        if len(hosts) > MAX_HOSTS:
            return (200, "numhost")
        myip = (args.get(b"myip") or [b""])[0].decode("utf-8", "replace")
        try:
            address = parse_ip(myip) if myip.strip() else parse_ip(ip)
        except BadRequest as e:
            return (400, e.message)
        try:
            await self.service.check_update_secret(user, secret, ip)
        except TooMany:
            self.log.info("dyndns2: too many failed updates from {ip}", ip=ip)
            return (200, "abuse")
        except Forbidden:
            # the operator locked the account: its names are blocked
            self.log.info("dyndns2: {user} is locked", user=user)
            return (200, "abuse")
        except (Unauthorized, BadRequest):
            # a name that is no username may be a password typed in the
            # wrong field: it is not written
            self.log.info("dyndns2: bad credentials for {user} from {ip}",
                          user=user if NAME_RE.match(user) else "(not a username)", ip=ip)
            return (200, "badauth")
        if not self.updates.take(user, self.sources.clock.seconds()):
            self.log.info("dyndns2: {user} updates too often", user=user)
            return (200, "abuse")
        lines: List[Optional[str]] = []
        mine = False
        for host in hosts:
            word = await self._check_host(host, user)
            lines.append(word)
            mine = mine or word is None
        result = (await self.sources.update(user, address)) if mine else ""
        return (200, "\n".join(w if w is not None else f"{result} {address}" for w in lines))

    async def _check_host(self, host: str, user: str) -> Optional[str]:
        """None if ``host`` is a name of ``user`` in the zone, else the word."""
        if "." not in host:
            return "notfqdn"
        if not host.endswith("." + self.domain):
            return "nohost"
        label = host[:-len(self.domain) - 1]
        if not LABEL.match(label):
            return "nohost"
        found = await self.service.resolve(label)
        if found is None or found != ("user", user):
            return "nohost"
        return None


def _text(request: server.Request, status: int, body: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    data = body.encode("utf-8")
    # a length, not chunks: the simplest reply for the simplest clients
    request.setHeader(b"content-length", b"%d" % len(data))
    return data
