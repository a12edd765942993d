"""SIP between the boxes of a cluster: each box's proxy is a next hop of
the others' (``docs/cluster.md``, "SIP across boxes").

A request for a user of the domain reaches the proxy of whichever box it
arrives at (UDP/TCP, or ``POST /sip`` from a session there).  That proxy
forks it, as RFC 3261 16.5-16.6 say, to every target of the user: the
user's sessions it holds (``msg sipreq`` frames) and, for each other live
box holding one of the user's sessions, **that box's proxy** over TCP, with
the Request-URI ``sip:<user>@<domain>;box=<box>``.  The far proxy delivers
to its own sessions only (the ``box`` parameter: the fork is done), adds
its ``Via`` and ``Record-Route`` and rewrites the session's ``Contact`` to
itself, so responses, ``ACK``, ``BYE`` and re-INVITEs travel the normal
route set through both proxies; transactions and dialogs stay where they
are.

:class:`SipBoxes` is the proxy's :class:`~presence.sip.proxy.ISipBoxes`:
each box publishes the address of its SIP listener in Redis (``sip:<box>``,
the host of ``--host-box`` resolved to an IP, and the SIP port), with the
TTL of its box key, refreshed every ``REFRESH`` seconds in the same call
that reads the other live boxes' addresses.  The proxy forwards to those
addresses, and takes a ``Route`` naming one of them from the network,
for exactly the live boxes (``hub.live`` at the last refresh, this box
excluded): an address no live box registered is judged as before (no open
relay, no loopback, no private address).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from presence.cluster.hub import BOX_TTL, REFRESH, _text
from presence.sip.message import SipURI, bare_host, format_hostport
from presence.sip.proxy import TCP, UDP, Hop, ISipBoxes

#: the Request-URI parameter of a request one box's proxy forked to another's
PARAM = "box"

# Publish this box's SIP address and read the live boxes' (KEYS sip:<me>;
# ARGV address, ttl, key prefix, then the other boxes): one address, or
# '', per box asked for, in order
ADDRESSES = b"""
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
local out = {}
for i = 4, #ARGV do
  table.insert(out, redis.call('GET', ARGV[3] .. ARGV[i]) or '')
end
return out
"""


def parse_address(text: str) -> Optional[Tuple[str, int]]:
    """``ip:port`` (``[v6]:port``) as a box publishes it, or None."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return None
    return bare_host(host), int(port)


@implementer(ISipBoxes)
class SipBoxes(Service):
    """The SIP listeners of the other live boxes (see the module docstring).

    ``hub`` is the box's :class:`~presence.cluster.hub.ClusterHub` (its
    ``me``, ``live``, ``remote_boxes``, ``key`` and Redis calls); ``resolve`` a
    name to its addresses (the SIP network's); ``domain`` the proxy's."""

    log = Logger()

    def __init__(self, hub: Any, resolve: Callable[[str], defer.Deferred], domain: str,
                 clock: Any) -> None:
        self.hub = hub
        self.resolve = resolve
        self.domain = domain.lower()
        self.clock = clock
        #: this box's SIP address as it publishes it, once its listener is up
        self.address: Optional[Tuple[str, int]] = None
        #: the other boxes' SIP addresses, as last read (live ones only)
        self.addresses: Dict[str, Tuple[str, int]] = {}
        #: the boxes asked for in the last read (those without an address
        #: then have no SIP listener, or had not published it yet)
        self.asked: frozenset = frozenset()
        #: who waits for the read in flight (none: no read in flight)
        self._waiting: List[defer.Deferred] = []
        self.loop = task.LoopingCall(self.refresh)
        self.loop.clock = clock

    # -- the ready gate and the refresh -------------------------------------------

    def listening(self, addresses: Dict[str, str]) -> defer.Deferred:
        """The ready gate's hook: the SIP port is known; this box's address
        is the host of ``--host-box`` (resolved) on that port."""
        tcp = addresses.get("sip-tcp") or addresses.get("sip-udp") or ""
        port = tcp.rpartition(":")[2]
        host = bare_host(self.hub.me.rpartition(":")[0])
        d = self.resolve(host)

        def resolved(ips: List[str]) -> None:
            if not ips or not port.isdigit():
                self.log.warn("cluster: this box's SIP listener is not published (no"
                              " address for {host}): calls to its users from other boxes"
                              " are 480", host=host)
                return
            ipv4 = [ip for ip in ips if ":" not in ip]
            self.address = ((ipv4 or ips)[0].lower(), int(port))
            if self.running and not self.loop.running:
                self.loop.start(REFRESH, now=True)
        d.addCallback(resolved)
        d.addErrback(lambda f: self.log.failure("cluster: resolving {host} failed", f,
                                                host=host))
        return d

    def startService(self) -> None:
        super().startService()
        if self.address is not None and not self.loop.running:
            self.loop.start(REFRESH, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self.loop.running:
            self.loop.stop()

    def others(self) -> List[str]:
        """The other boxes alive as this box knows: live at the hub's last
        refresh, or holding sessions in its view (announced since; a dead
        box leaves both at once)."""
        return sorted((set(self.hub.live) | set(self.hub.box_sessions)) - {self.hub.me})

    def refresh(self) -> defer.Deferred:
        """Publish this box's address; read the other live boxes' (one
        read in flight at a time: a caller during one waits for it)."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        if len(self._waiting) == 1:
            self._read().addBoth(self._read_done)
        return d

    def _read_done(self, _: Any) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _read(self) -> defer.Deferred:
        boxes = self.others()
        host, port = self.address
        shown = format_hostport(host, port)
        d = self.hub._do("sharing this box's SIP address", ADDRESSES,
                         [self.hub.key("sip", self.hub.me)],
                         [shown, BOX_TTL, self.hub.prefix + "sip:"] + boxes)

        def read(reply: Any) -> None:
            if not isinstance(reply, list):
                return      # Redis away: the addresses last read stay
            self.asked = frozenset(boxes)
            found = {}
            for box, raw in zip(boxes, reply):
                address = parse_address(_text(raw))
                if address is not None:
                    found[box] = address
            self.addresses = found
        d.addCallback(read)
        return d

    # -- ISipBoxes ------------------------------------------------------------------

    def _live(self) -> Dict[str, Tuple[str, int]]:
        hub = self.hub
        return {box: a for box, a in self.addresses.items()
                if box in hub.live or box in hub.box_sessions}

    def hops(self, name: str, uri: SipURI) -> Any:
        if uri.param(PARAM) is not None:
            return []       # forked by another box's proxy: this box's sessions only
        boxes = sorted(self.hub.remote_boxes(name))
        if self.address is not None and any(
                box not in self.addresses and box not in self.asked for box in boxes):
            # a box that joined since the last read: read its address first
            d = self.refresh()
            d.addCallback(lambda _: self._hops(name, uri, boxes))
            return d
        return self._hops(name, uri, boxes)

    def _hops(self, name: str, uri: SipURI, boxes: List[str]) -> List[Hop]:
        out = []
        for box in boxes:
            address = self.addresses.get(box)
            if address is None:
                continue
            target = SipURI(self.domain, uri.user or name, None, [(PARAM, box)])
            out.append(Hop(TCP, address[0], address[1], uri=str(target)))
        return out

    def hop_of(self, uri: SipURI) -> Optional[Hop]:
        host = bare_host(uri.param("maddr") or uri.host)
        port = uri.port or 5060
        if not self.is_box(host, port):
            return None
        return Hop(TCP if uri.transport == "TCP" else UDP, host, port)

    def is_box(self, ip: str, port: int) -> bool:
        return (bare_host(ip), port) in self._live().values()

    def is_box_ip(self, ip: str) -> bool:
        ip = bare_host(ip)
        return any(host == ip for host, _ in self._live().values())
