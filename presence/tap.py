"""``twistd presence``: options and the service tree.

    twistd -n presence --http tcp:8080 --data ./presence-data

``makeService`` builds a ``MultiService`` of: the directory (SQLite under
``--data``), the HTTP listener (heartbeats, JSON API) and the sweep timer.
It logs ``presence ready http=HOST:PORT`` once every listener is up (and,
with ``--redis``, once the node has joined the cluster: ``cluster=redis://...``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from typing import Any, Optional

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints, threads
from twisted.logger import Logger, globalLogPublisher, jsonFileLogObserver
from twisted.python import usage

from presence import admin as admin_frontend
from presence import gcpolicy
from presence.core.hub import Hub, HubConfig
from presence.endpoint_option import check_server_endpoint
from presence.invite import frontend as invite_frontend
from presence.listen import ListenService
from presence.names import frontend as names_frontend
from presence.pages import Pages
from presence.service import RESUME_TTL, Limits, PresenceService
from presence.sip import frontend as sip_frontend
from presence.store import passwords
from presence.store.open import open_store
from presence.sweep import SweepService
from presence.threads import Pool
from presence.web import calls as calls_web
from presence.web.site import make_site
from presence.wireless import frontend as wireless_frontend

log = Logger()


def _positive(kind):
    def convert(value: str):
        number = kind(value)
        if number <= 0:
            raise ValueError(f"must be positive, not {value}")
        return number
    convert.coerceDoc = "Must be positive."  # type: ignore[attr-defined]
    return convert


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must not be negative, not {value}")
    return number


def _batch_ms(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 5000:  # NaN too
        raise ValueError(f"must be 0-5000 milliseconds, not {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative, not {value}")
    return number


#: one label of a host name (RFC 1123): letters, digits, inner hyphens
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _domain(value: str) -> str:
    labels = value.split(".")
    if len(value) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"--domain: not a host name: {value!r} (letters, digits,"
                         " hyphens and dots; labels of 1-63 characters)")
    return value.lower()


_domain.coerceDoc = "A host name."  # type: ignore[attr-defined]


def _loopback(host: str) -> bool:
    """Is the listening address ``host`` on this machine only?  ``False``
    for a wildcard and for anything that is not an IP address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def domain_detail(domain: str, http_host: str) -> str:
    """The ``domain=`` word of the ready line: with what to set when the
    domain is this machine's alone but --http is reachable from others."""
    if domain == "localhost" or _loopback(domain):
        if http_host not in ("?", "") and not _loopback(http_host):
            return (f"{domain} (set --domain NAME so that other devices can reach"
                    " SIP URIs and links)")
    return domain


def _pair(form: str, second: type, example: str):
    """A ``FIRST:SECOND`` option of two positive numbers (a whole number,
    then ``second``)."""
    def convert(value: str) -> tuple:
        first, sep, rest = value.partition(":")
        if not sep:
            raise ValueError(f"must be {form}, not {value}")
        return (_positive(int)(first), _positive(second)(rest))
    convert.coerceDoc = f"{form}, e.g. {example}."  # type: ignore[attr-defined]
    return convert


_bucket = _pair("BURST:PER_SECOND", float, "1200:10")
_quota = _pair("MESSAGES:BYTES", int, "1000:4194304")


def limits_of(options: Any) -> Limits:
    """The service's :class:`Limits` from the options (usage.Options passes
    a default through as it is written, so the string defaults are parsed
    here)."""
    def value(name: str, parse: Any) -> Any:
        given = options[name]
        return parse(given) if isinstance(given, str) else given
    box = value("box-quota", _quota)
    return Limits(chat_session=value("chat-limit", _bucket),
                  chat_address=value("address-chat-limit", _bucket),
                  box_messages=box[0], box_bytes=box[1],
                  guests_per_address=options["guests-per-address"],
                  registrations=options["registrations-per-hour"],
                  resume_ttl=options["resume-ttl"])


def _cost(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 20:
        raise ValueError("must be 1 to 20")
    return number


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Presence server: HTTP heartbeats with reliable numbered frames, "
                "presence propagation, chat and message boxes.  See docs/operations.md.")
    optFlags = [
        ["no-access-log", None,
         "Do not log a line per HTTP request (by default each one is logged in the"
         " combined format, session IDs and passwords masked). Logging costs about a"
         " quarter of the server's CPU per chat at high message rates."],
        ["no-turn-flush", None,
         "Send HTTP output by Twisted's own TCP write path instead of at the end of the"
         " reactor turn (for diagnosis and comparison; about a fifth more CPU per chat)."],
    ]

    optParameters = [
        ["access-log", None, "",
         "Write the access log to this file instead of the server's log: lines are"
         " buffered and written once a second (and at stop), a fraction of the cost of"
         " one log event per request. Appends; rotate it by copy-and-truncate."],
        ["http", None, "tcp:8080",
         "Endpoint for web pages, the JSON API and heartbeats (a Twisted server endpoint"
         " string, e.g. tcp:8080:interface=127.0.0.1)."],
        ["data", None, "./presence-data", "Directory where the embedded store keeps its files."],
        ["domain", None, "localhost",
         "Domain of static URLs, SIP URIs and names: a host name (or IPv4 address) that"
         " other devices resolve to this server. The default, localhost, works only on"
         " this machine; the ready line says so when --http is reachable from others.",
         _domain],
        ["host-box", None, None,
         "This node's identity in dynamic session information [default: host:port of --http]."
         " In cluster mode (--redis) it is required: HOST:PORT where clients reach this"
         " node's --http; https://HOST:PORT (the same scheme on every node) makes the"
         " 307 to another box https [default: the scheme of the request]."],
        ["redis", None, None,
         "Cluster mode: the directory, the global directory of sessions and the routing"
         " between host boxes live in this Redis (redis://[:password@]host:port/db or"
         " unix:/path/to/redis.sock[?db=N]), shared by every node. Needs --host-box."],
        ["keepalive", None, 25.0,
         "Idle seconds after which one keep-alive byte is written to a heartbeat.",
         _positive(float)],
        ["poll", None, 4.0,
         "Sweep interval in seconds: finds due keep-alives, dead sockets, ended presence.",
         _positive(float)],
        ["linger", None, None,
         "Seconds a user stays online after their last heartbeat ended [default: 2 x poll].",
         _non_negative],
        ["presence-batch", None, 100.0,
         "Milliseconds of the presence window: heartbeats with bundle=1 get the presence"
         " changes of their group in one msg updates frame per window, and a user's"
         " further changes within the window go out as the final state only. 0: every"
         " change at once.", _batch_ms],
        ["session-ttl", None, 3600.0,
         "Seconds without a heartbeat after which a session expires.", _positive(float)],
        ["mailbox", None, 1000,
         "Unacknowledged frames kept per session; older ones overflow (chat text goes to"
         " the message box).", _positive(int)],
        ["away-after", None, 300.0,
         "Seconds without input (or hidden) after which the pages' script reports its"
         " user away; available again on the next input. Shorten only for tests.",
         _positive(float)],
        ["hash-cost", None, passwords.DEFAULT_COST,
         "Password hash work factor, log2 of scrypt's N (1-20). Lower only for tests and"
         " benchmarks.", _cost],
        ["json-log", None, None, "Also write the log as JSON lines to this file."],
        ["gc-freeze-at", None, gcpolicy.FREEZE_AT,
         "Garbage collector: once it tracks this many objects outside the frozen set,"
         " collect them once and freeze all live objects (gc.freeze), so that no full"
         " collection scans the long-lived sessions again and none pauses the server for"
         " more than about this many objects (~15 ms at 20000).  Frozen objects that end"
         " up in cyclic garbage are never reclaimed (see --gc-thaw).  0: CPython's plain"
         " collector, whose full collections grow with the number of sessions.",
         _non_negative_int],
        ["gc-thaw", None, 0.0,
         "Every this many seconds, unfreeze all objects, run one full collection over"
         " them (reclaiming any cyclic garbage among frozen objects; the log line says how"
         " much) and freeze again.  That collection pauses the server about 0.6 us per"
         " object (~200 ms with 19000 held heartbeats).  0: never.", _non_negative],
        # abuse limits (docs/operations.md, "Limits")
        ["chat-limit", None, "1200:10",
         "Chats and left messages one session may send: a burst, then so many a"
         " second (429 past it).", _bucket],
        ["address-chat-limit", None, "3000:50",
         "The same for all sessions of one client address together.", _bucket],
        ["box-quota", None, "1000:4194304",
         "Unread messages and their UTF-8 bytes one message box holds; storing more"
         " is refused with 429.", _quota],
        ["guest-ttl", None, 300.0,
         "Seconds without a heartbeat after which a guest session expires.",
         _positive(float)],
        ["max-guests", None, 10000, "Guest sessions the server holds at most.",
         _positive(int)],
        ["guests-per-address", None, 100,
         "Live guest sessions one client address may hold.", _positive(int)],
        ["resume-ttl", None, RESUME_TTL,
         "Seconds a resume token (issued at each password login) re-creates sessions"
         " without the password; older ones are refused (401) and forgotten.",
         _positive(float)],
        ["registrations-per-hour", None, 100,
         "Accounts one client address may register an hour (also the burst).",
         _positive(int)],
    ] + (wireless_frontend.OPTIONS + sip_frontend.OPTIONS + invite_frontend.OPTIONS
         + names_frontend.OPTIONS + admin_frontend.OPTIONS + calls_web.OPTIONS)

    def postOptions(self) -> None:
        if self["linger"] is None:
            self["linger"] = 2 * self["poll"]
        check_server_endpoint("http", self["http"])
        # --host-box https://HOST:PORT: the scheme clients reach the boxes with
        self["box-scheme"] = None
        scheme, sep, rest = (self["host-box"] or "").partition("://")
        if sep:
            if scheme not in ("http", "https"):
                raise usage.UsageError("--host-box: the scheme may be http:// or https://")
            self["host-box"], self["box-scheme"] = rest, scheme
        if self["redis"] is not None:
            from presence.store.redis import parse_url
            try:
                parse_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}")
            box = self["host-box"] or ""
            host, _, port = box.rpartition(":")
            if not (host and port.isdigit() and 0 < int(port) < 65536 and box.isascii()
                    and not any(c in box for c in "/?#@ ")):
                raise usage.UsageError("--redis needs --host-box HOST:PORT: the address"
                                       " where clients reach this node's --http")
        wireless_frontend.check_options(self)
        sip_frontend.check_options(self)
        invite_frontend.check_options(self)
        names_frontend.check_options(self)
        admin_frontend.check_options(self)
        calls_web.check_options(self)
        if self["access-log"] and self["no-access-log"]:
            raise usage.UsageError("--access-log and --no-access-log contradict each other")
        for name in ("access-log", "json-log"):
            if self[name]:
                self[name] = _appendable(name, self[name])


def _appendable(option: str, path: str) -> str:
    """``path`` made absolute, once it is known that it can be appended to
    (created if missing); else a usage error naming ``option``."""
    try:
        open(path, "a").close()
    except OSError as e:
        raise usage.UsageError(f"--{option}: cannot append to {path}: {e.strerror}")
    return os.path.abspath(path)


class ReadyGate:
    """Logs ``presence ready`` once every expected listener is up.

    Each front-end's listener calls :meth:`up` with its label and address
    (``http``, ``sip-udp``, ``sip-tcp``, ``smsc`` ...); ``expect`` names them
    all before the service starts.
    """

    def __init__(self) -> None:
        self.expected: list[str] = []
        self.addresses: dict[str, str] = {}
        self.hooks: list = []
        #: further words for the ready line (data directory, host box)
        self.details: dict[str, str] = {}
        self.done = False

    def expect(self, label: str) -> str:
        self.expected.append(label)
        return label

    def up(self, label: str, address: str) -> None:
        self.addresses[label] = address
        if not self.done and all(name in self.addresses for name in self.expected):
            self.done = True
            for hook in self.hooks:
                hook(self.addresses)
            log.info("presence ready {listeners} {details}", listeners=" ".join(
                f"{name}={self.addresses[name]}" for name in self.expected),
                details=" ".join(f"{k}={v}" for k, v in self.details.items()))

    def listener(self, listen: ListenService) -> None:
        self.up(listen.label, listen.address())


class JsonLogService(Service):
    """``--json-log``: the log as JSON lines in a file, from the start of the
    service tree to its end (the observer is removed and the file closed at
    stop).  The file is opened before ``twistd -u`` drops privileges, as the
    access log file is (Twisted opens that one when the HTTP port listens)."""

    def __init__(self, path: str, publisher: Any = globalLogPublisher) -> None:
        self.path = path
        self.publisher = publisher
        self.observer: Any = None
        self._file: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def startService(self) -> None:
        super().startService()
        self._open()

    def _open(self) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
            self.observer = jsonFileLogObserver(self._file)
            self.publisher.addObserver(self.observer)

    def stopService(self):
        super().stopService()
        if self.observer is not None:
            self.publisher.removeObserver(self.observer)
            self.observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


class DirectoryService(Service):
    """Opens the store at start (after ``twistd -u`` dropped privileges);
    one that cannot be opened ends the start with one line naming
    ``--data``, as a port that cannot be bound does."""

    def __init__(self, store, reactor, data: str = "") -> None:
        self.store = store
        self.reactor = reactor
        self.data = data

    def startService(self) -> None:
        super().startService()
        try:
            self.store.start(self.reactor)
        except Exception as e:  # OSError, sqlite3.Error: both say what is wrong
            self.running = False
            raise SystemExit(f"presence: cannot open the store in --data {self.data}: {e}")

    def stopService(self):
        super().stopService()
        # the worker finishes every queued write (those of the sessions that
        # just ended included) before its thread is joined; the directory in
        # Redis answers a Deferred (its batches sent, its connections
        # closed), which twistd waits for before the reactor stops
        return self.store.stop()


class PoolService(Service):
    """Starts and stops a thread pool with the service tree."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()


class HubService(Service):
    """At shutdown, ends every session (``msg bye shutdown``) so that unread
    chat goes to the message boxes and users are recorded offline before the
    directory closes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def stopService(self):
        super().stopService()
        self.hub.close_all("shutdown")


def makeService(options: Any, reactor: Optional[Any] = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor

    top = MultiService()
    if options.get("json-log"):  # first to start, last to stop
        JsonLogService(options["json-log"]).setServiceParent(top)
    # opened (the directory created) when the tree starts: after twistd -u
    # dropped privileges, so its files belong to the user the server runs as
    store = open_store(options.get("redis"), options["data"], reactor)
    DirectoryService(store, reactor, options["data"]).setServiceParent(top)

    config = HubConfig(
        keepalive=options["keepalive"], poll=options["poll"], linger=options["linger"],
        session_ttl=options["session-ttl"], mailbox=options["mailbox"],
        host_box=options["host-box"] or "", guest_ttl=options["guest-ttl"],
        box_scheme=options.get("box-scheme"),
        presence_batch=options["presence-batch"] / 1000.0,
    )
    if options.get("redis"):
        from presence.cluster.service import ClusterService
        cluster = ClusterService(options["redis"], config, reactor)
        hub = cluster.hub
        # stops before the directory: ends its sessions, leaves the cluster
        cluster.setServiceParent(top)
    else:
        hub = Hub(reactor, config)
        HubService(hub).setServiceParent(top)  # stops before the directory

    # password hashing: the reactor's pool size, in a pool whose calls leave
    # no cyclic garbage (presence.threads)
    hash_pool = Pool(0, 10, name="presence-hash")
    PoolService(hash_pool).setServiceParent(top)

    def hasher(fn, *args):
        return threads.deferToThreadPool(reactor, hash_pool, fn, *args)

    service = PresenceService(hub, store, hasher, hash_cost=options["hash-cost"],
                              max_guests=options["max-guests"], limits=limits_of(options))
    if options.get("redis"):
        from presence.cluster.devices import SharedDevices
        from presence.cluster.limits import SharedLimits
        service.shared_limits = SharedLimits(hub)    # chat limits over every box
        service.shared_devices = SharedDevices(hub)  # a logout on any node revokes
    sweep = SweepService(hub, reactor, options["poll"])
    started = time.time()

    gc_policy = gcpolicy.GCPolicy(reactor, options["gc-freeze-at"], options["gc-thaw"])

    def stats() -> dict:
        figures = sweep.stats()
        figures.update(gc_policy.stats())
        figures["uptime"] = round(time.time() - started, 3)
        if sip is not None:
            figures["sip"] = sip.stats()
        figures["calls"] = calls.calls.stats()
        return figures

    pages = Pages(service, domain=options["domain"])
    pages.idle = options["away-after"]
    site = make_site(service, options["keepalive"], reactor, stats,
                     mounts=pages.mounts(), default=pages.resource(),
                     access_log=(False if options["no-access-log"]
                                 else options["access-log"] or True))

    # browser calls: signalling POSTs, TURN credentials (docs/calls.md)
    calls = calls_web.CallsWeb.from_options(options, service, reactor)
    calls.mount(site.resource)
    if options.get("redis"):
        from presence.cluster.calls import ClusterCalls
        calls.router = ClusterCalls(hub, calls.calls, reactor)  # calls across boxes

    gate = ReadyGate()

    def host_box(addresses: dict) -> None:
        if not config.host_box:
            host, _, port = addresses["http"].rpartition(":")
            if host in ("0.0.0.0", "::", ""):
                host = socket.gethostname()
            config.host_box = f"{host}:{port}"
        gate.details["data"] = options["data"]
        gate.details["host_box"] = config.host_box
        http_host = addresses["http"].rpartition(":")[0].strip("[]")
        gate.details["domain"] = domain_detail(options["domain"], http_host)

    gate.hooks.append(host_box)
    if options.get("redis"):
        # ready once subscribed and the view of the cluster is loaded: the
        # first login is then placed knowing the other boxes
        joined = gate.expect("cluster")
        cluster.ready.addCallback(lambda _: gate.up(joined, cluster.address.where))
    wireless = wireless_frontend.WirelessFrontEnd(options, service, reactor)
    wireless.mount(site.resource)
    if wireless.enabled:
        pages.handset_secret = wireless.gateway.issue_secret
    sip = None
    if options["sip"]:
        sip = sip_frontend.SipFrontEnd.from_options(options, service, reactor)
        sip.mount(site.resource)
        gate.hooks.append(sip.ready)
        if options.get("redis"):
            # the other boxes' proxies are next hops of this one (SIP across boxes)
            from presence.cluster.sip import SipBoxes
            boxes = SipBoxes(hub, sip.network.resolve, options["domain"], reactor)
            sip.proxy.boxes = boxes
            gate.hooks.append(boxes.listening)
            boxes.setServiceParent(top)
    gate.hooks.append(wireless.ready)
    names = names_frontend.NamesFrontEnd(options, service, reactor)
    names.mount(site.resource)
    # before the listeners: its start (the operator password file) is done
    # by the time they report ready and "presence ready" is logged
    wireless.setServiceParent(top)
    invites = invite_frontend.InviteFrontEnd(options, service, pages, reactor)
    invites.mount(site.resource)
    gate.hooks.append(invites.ready)
    invites.setServiceParent(top)  # its store is open before the listeners
    http = ListenService(gate.expect("http"),
                         endpoints.serverFromString(reactor, options["http"]),
                         site, gate.listener, turn_flush=not options.get("no-turn-flush"),
                         value=options["http"])
    http.setServiceParent(top)
    if sip is not None:
        for listener in sip.services(gate.expect("sip-udp"), gate.expect("sip-tcp"), gate.up):
            listener.setServiceParent(top)
    if names.enabled:
        for listener in names.services(gate.expect("dns-udp"), gate.expect("dns-tcp"),
                                       gate.up):
            listener.setServiceParent(top)
    if wireless.enabled:
        ListenService(gate.expect("smsc"), wireless.endpoint(), wireless.site,
                      gate.listener, value=options["smsc"]).setServiceParent(top)
    operators = admin_frontend.AdminFrontEnd(
        options, service, reactor, gate, sweep=sweep, sip=sip,
        wireless=wireless.gateway if wireless.enabled else None,
        cluster=cluster if options.get("redis") else None)
    if operators.enabled:
        # before its listener: the token is made (or read) by the time it binds
        listener = operators.listener()
        operators.setServiceParent(top)
        listener.setServiceParent(top)
    sweep.setServiceParent(top)
    # last: its first check, at start, freezes everything built above
    gc_policy.setServiceParent(top)
    return top
