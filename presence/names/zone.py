"""The authoritative zone of ``--domain``, answered with twisted.names.

:class:`PresenceZone` is a twisted.names resolver (an ``IResolver`` through
``common.ResolverBase``) that answers for the zone only, authoritatively, with
no recursion.  It keeps no copy of presence: each answer reads the hub's
presence at the moment of the query (``hub.is_online``, ``hub.address_of``),
so the zone changes the moment presence does and there is nothing to rebuild.
What it does keep is which labels are names (users, aliases that are DNS
labels, groups): a bounded cache filled from the directory (``resolve``),
since a DNS query must not wait on the directory for every answer.

Records (docs/names.md):

- ``<user>.<domain>``: ``A``/``AAAA`` the address of the user's most recent
  live session while online, else the page host (``page``, ``--page-address``);
  ``TXT "presence=online"`` or ``"presence=offline"``;
- ``<alias>.<domain>``: as its user; ``<group>.<domain>``: the page host;
- the apex: ``SOA``, ``NS ns.<domain>``, ``A``/``AAAA`` the page host; ``ns``
  and ``www`` are the page host (``ns`` is the glue of the ``NS`` record);
- a name that is no name: ``NXDOMAIN`` with the ``SOA``; a type the name has
  not: ``NODATA`` (no answer, ``NOERROR``, the ``SOA``); a name outside the
  zone or a class other than ``IN``: ``REFUSED``.

:class:`ZoneServerFactory` is twisted.names' ``DNSServerFactory`` over the
zone (UDP and TCP), answering every in-zone question with the AA bit, with a
rate limit per source address (datagrams past it are dropped unanswered, so
the server is no amplifier) and bounded TCP connections.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import OrderedDict
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import common, dns, error, server
from twisted.protocols import policies

from presence.core.ratelimit import RateLimiter, address_key

#: a label that can be a name in the zone (RFC 1123 letters, digits, inner
#: hyphens; underscores too, which usernames may hold)
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?\Z")
#: labels that are the server itself, never a person's name
HOST_LABELS = frozenset({"ns", "www"})
#: seconds a label's meaning (a user, an alias, a group, nothing) is cached
KNOWN_TTL = 300.0
UNKNOWN_TTL = 30.0
#: labels cached at most, and directory look-ups in flight at most
CACHE_SIZE = 200_000
MAX_LOOKUPS = 64
#: queries a second one source address may make (a burst of twice as many)
SOURCE_RATE = 200.0
#: TCP connections at once, and seconds one may stay idle
MAX_TCP = 256
TCP_IDLE = 30

Lookup = Callable[[str], Any]   # label -> Deferred of (kind, canonical) or None
_MISS = object()


#: the rate-limit key of a source address (the same sources ask again and
#: again; parsing an address is a good part of answering one query)
_source_key = functools.lru_cache(maxsize=65536)(address_key)


class Answer(NamedTuple):
    rcode: int
    answers: List[dns.RRHeader]
    authority: List[dns.RRHeader]
    additional: List[dns.RRHeader]


class NameCache:
    """Which labels are names: ``label -> (kind, canonical)`` or None
    (no such name), each kept ``KNOWN_TTL`` / ``UNKNOWN_TTL`` seconds, at
    most ``size`` labels (the least recently used go first).  Labels not
    cached are looked up through ``lookup``, at most ``inflight`` at once
    and once per label however many queries ask."""

    def __init__(self, clock: Any, lookup: Lookup, size: int = CACHE_SIZE,
                 inflight: int = MAX_LOOKUPS, known_ttl: float = KNOWN_TTL,
                 unknown_ttl: float = UNKNOWN_TTL) -> None:
        self.clock = clock
        self.lookup = lookup
        self.size = size
        self.inflight = inflight
        self.known_ttl = known_ttl
        self.unknown_ttl = unknown_ttl
        self.entries: "OrderedDict[str, Tuple[float, Optional[Tuple[str, str]]]]" = OrderedDict()
        self.pending: dict = {}

    def get(self, label: str) -> Any:
        """The cached meaning of ``label``, or ``_MISS``."""
        entry = self.entries.get(label)
        if entry is None:
            return _MISS
        if entry[0] <= self.clock.seconds():
            del self.entries[label]
            return _MISS
        self.entries.move_to_end(label)
        return entry[1]

    def put(self, label: str, found: Optional[Tuple[str, str]]) -> None:
        ttl = self.known_ttl if found is not None else self.unknown_ttl
        self.entries[label] = (self.clock.seconds() + ttl, found)
        self.entries.move_to_end(label)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def forget(self, label: str) -> None:
        """``label`` may mean something new (a registration, an alias)."""
        self.entries.pop(label, None)

    def fetch(self, label: str) -> defer.Deferred:
        """A Deferred of ``label``'s meaning from the directory; fails with
        ``error.DNSServerError`` when too many look-ups are in flight."""
        mine: defer.Deferred = defer.Deferred()
        waiting = self.pending.get(label)
        if waiting is not None:
            waiting.append(mine)
        else:
            if len(self.pending) >= self.inflight:
                return defer.fail(error.DNSServerError("too many look-ups in flight"))
            self.pending[label] = [mine]
            d = defer.maybeDeferred(self.lookup, label)

            def done(result: Any) -> None:
                found = None if isinstance(result, BaseException) else result
                if not isinstance(result, BaseException):
                    self.put(label, found)
                for w in self.pending.pop(label, ()):
                    w.errback(result) if isinstance(result, BaseException) else w.callback(found)

            d.addCallbacks(done, lambda f: done(f.value))
        return mine


@functools.lru_cache(maxsize=65536)
def _parse(address: str) -> Tuple[int, str]:
    """``(A or AAAA, address)``; ValueError if ``address`` is not an IP
    address (answers parse the same few addresses again and again)."""
    ip = ipaddress.ip_address(address)
    return (dns.A if ip.version == 4 else dns.AAAA), str(ip)


class PresenceZone(common.ResolverBase):
    """The zone of ``domain`` over the hub's presence (see the module
    docstring).  ``names`` says which labels are names; ``page`` is the
    page host's addresses (IPv4 and/or IPv6)."""

    log = Logger()

    def __init__(self, domain: str, hub: Any, names: NameCache, page: Sequence[str],
                 ttl: int = 60) -> None:
        super().__init__()
        self.domain = domain.lower().rstrip(".")
        self.hub = hub
        self.names = names
        self.ttl = int(ttl)
        self.page = [_parse(a) for a in page]
        self.origin = self.domain.encode("ascii")
        self.ns = b"ns." + self.origin
        self.soa = dns.Record_SOA(
            mname=self.ns, rname=b"hostmaster." + self.origin, serial=1,
            refresh=3600, retry=600, expire=86400, minimum=self.ttl, ttl=self.ttl)
        self.queries = 0

    # -- twisted.names' resolver interface ---------------------------------------

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred:
        d = defer.maybeDeferred(self.respond, dns.Query(name, type, cls))

        def result(answer: Answer) -> Tuple[list, list, list]:
            if answer.rcode == dns.EREFUSED:
                raise error.DNSQueryRefusedError(name)
            if answer.rcode == dns.ENAME:
                raise error.AuthoritativeDomainError(name)
            if answer.rcode != dns.OK:
                raise error.DNSServerError(name)
            return answer.answers, answer.authority, answer.additional
        return d.addCallback(result)

    # -- answers -------------------------------------------------------------------

    def in_zone(self, name: str) -> Optional[str]:
        """The part of ``name`` before the zone ("" for the apex), or None
        when ``name`` is outside the zone."""
        if name == self.domain:
            return ""
        if name.endswith("." + self.domain):
            return name[:-len(self.domain) - 1]
        return None

    def respond(self, query: dns.Query) -> Any:
        """The :class:`Answer` to ``query``, or a Deferred of it when the
        directory must say whether the label is a name."""
        self.queries += 1
        try:
            name = query.name.name.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            name = None
        label = None if name is None else self.in_zone(name)
        if label is None or query.cls not in (dns.IN, dns.ANY):
            return Answer(dns.EREFUSED, [], [], [])
        owner = query.name.name
        if label == "":
            return self._apex(owner, query.type)
        if label in HOST_LABELS:
            return self._records(owner, query.type, self.page, None)
        if not LABEL.match(label):
            return self._nxdomain()
        known = self.hub.knows(label) and ("user", label)
        found = known or self.names.get(label)
        if found is not _MISS:
            return self._name(owner, query.type, found)
        d = self.names.fetch(label)
        d.addCallbacks(lambda found: self._name(owner, query.type, found),
                       lambda f: Answer(dns.ESERVER, [], [], []))
        return d

    def _name(self, owner: bytes, qtype: int, found: Optional[Tuple[str, str]]) -> Answer:
        if found is None:
            return self._nxdomain()
        kind, canonical = found
        if kind != "user":
            return self._records(owner, qtype, self.page, None)
        online = self.hub.is_online(canonical)
        address = self.hub.address_of(canonical) if online else None
        try:
            where = [_parse(address)] if address else self.page
        except ValueError:
            where = self.page
        return self._records(owner, qtype, where,
                             b"presence=online" if online else b"presence=offline")

    def _records(self, owner: bytes, qtype: int, addresses: Sequence[Tuple[int, str]],
                 txt: Optional[bytes]) -> Answer:
        out = []
        for kind, address in addresses:
            if qtype in (kind, dns.ALL_RECORDS):
                payload = (dns.Record_A(address, self.ttl) if kind == dns.A
                           else dns.Record_AAAA(address, self.ttl))
                out.append(self._rr(owner, kind, payload))
        if txt is not None and qtype in (dns.TXT, dns.ALL_RECORDS):
            out.append(self._rr(owner, dns.TXT, dns.Record_TXT(txt, ttl=self.ttl)))
        if not out:
            return self._nodata()
        return Answer(dns.OK, out, [], [])

    def _apex(self, owner: bytes, qtype: int) -> Answer:
        answer = self._records(owner, qtype, self.page, None)
        extra = []
        if qtype in (dns.SOA, dns.ALL_RECORDS):
            extra.append(self._rr(owner, dns.SOA, self.soa))
        if qtype in (dns.NS, dns.ALL_RECORDS):
            extra.append(self._rr(owner, dns.NS, dns.Record_NS(self.ns, self.ttl)))
        if not extra:
            return answer
        glue = []
        if qtype == dns.NS:
            glue = self._records(self.ns, dns.ALL_RECORDS, self.page, None).answers
        return Answer(dns.OK, extra + (answer.answers if answer.rcode == dns.OK and
                                       answer.answers else []), [], glue)

    def _rr(self, owner: bytes, kind: int, payload: Any) -> dns.RRHeader:
        return dns.RRHeader(owner, kind, dns.IN, self.ttl, payload, auth=True)

    def _negative(self, rcode: int) -> Answer:
        return Answer(rcode, [], [self._rr(self.origin, dns.SOA, self.soa)], [])

    def _nxdomain(self) -> Answer:
        return self._negative(dns.ENAME)

    def _nodata(self) -> Answer:
        return self._negative(dns.OK)


class _QuietDecoding:
    """Messages are decoded without a log line each: a stranger's garbage
    (or a response sent to the server) is counted and dropped, so it can
    neither fill the log nor reach the answering code."""

    controller: Any

    def _handleResponse(self, data: bytes, messageSource: Any, notifyController: Any,
                        validate: Any = None) -> None:
        message = dns.Message()
        try:
            message.fromStr(data)
        except Exception:
            self.controller.malformed += 1
            return
        if message.answer:
            self.controller.malformed += 1
            return
        notifyController(message)


class QueryDatagrams(_QuietDecoding, dns.DNSDatagramProtocol):
    """The UDP protocol of the zone's server."""


class QueryStream(_QuietDecoding, dns.DNSProtocol):
    """The TCP protocol of the zone's server."""


class ZoneServerFactory(server.DNSServerFactory):
    """twisted.names' DNS server over one :class:`PresenceZone` (see the
    module docstring); ``clock`` times the per-source limit."""

    log = Logger()
    protocol = QueryStream

    def __init__(self, zone: PresenceZone, clock: Any, source_rate: float = SOURCE_RATE,
                 max_tcp: int = MAX_TCP) -> None:
        super().__init__(authorities=[zone])
        self.zone = zone
        self.clock = clock
        self.sources = RateLimiter(capacity=2 * source_rate, rate=source_rate, max_keys=20000)
        self.max_tcp = max_tcp
        #: datagrams dropped past their source's rate; messages not understood
        self.dropped = 0
        self.malformed = 0

    def messageReceived(self, message: dns.Message, proto: Any, address: Any = None) -> None:
        if address is not None and not self.sources.take(
                _source_key(str(address[0])), self.clock.seconds()):
            self.dropped += 1   # over its rate: no answer, so no amplification
            return
        super().messageReceived(message, proto, address)

    def allowQuery(self, message: dns.Message, protocol: Any, address: Any) -> bool:
        return len(message.queries) == 1

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        answer = self.zone.respond(message.queries[0])
        if isinstance(answer, defer.Deferred):
            answer.addCallback(self._answer, protocol, message, address)
            answer.addErrback(lambda f: self.log.failure("answering a DNS query failed", f))
        else:
            self._answer(answer, protocol, message, address)

    def _answer(self, answer: Answer, protocol: Any, message: dns.Message, address: Any) -> None:
        response = self._responseFromMessage(
            message=message, rCode=answer.rcode, answers=answer.answers,
            authority=answer.authority, additional=answer.additional)
        response.auth = answer.rcode in (dns.OK, dns.ENAME)
        self.sendReply(protocol, response, address)

    def tcp(self) -> "_TCPFactory":
        """The factory for the TCP listener: at most ``max_tcp`` connections,
        idle ones closed after ``TCP_IDLE`` seconds."""
        return _TCPFactory(self, timeoutPeriod=TCP_IDLE)


class _TCPFactory(policies.TimeoutFactory):
    def buildProtocol(self, addr: Any) -> Any:
        inner = self.wrappedFactory
        if len(inner.connections) >= inner.max_tcp:
            return None  # the connection is closed at once
        return super().buildProtocol(addr)
