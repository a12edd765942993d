"""The heartbeat: ``GET /jchat?me=<user>&id=<session>[&mode=stream|poll][&ack=n][&bundle=1]``.

Wire format (see docs/protocol.md)::

    HTTP/1.1 200 OK
    Content-Type: text/event-stream; charset=utf-8
    Cache-Control: no-cache

    id: 1
    data: msg update online bob

    \\n                      <- keep-alive byte after --keepalive idle seconds

The request is held in the reactor thread (``NOT_DONE_YET``) as the session's
:class:`~presence.core.hub.IChannel`; no thread per connection.  A newer
request of the same session releases it.  In poll mode the response ends as
soon as it carries frames (at most 100) or after ``wait`` seconds.  Clients
acknowledge with ``ack=n`` or ``Last-Event-ID: n``; unacknowledged frames are
sent again, with their ids, on the next request.  ``bundle=1`` asks for
the presence changes of the watched group bundled, one ``msg updates`` frame
per ``--presence-batch`` window (presence.core.fanout).
"""

from __future__ import annotations

import json
import socket
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.http_headers import Headers
from zope.interface import implementer

from presence.core.counters import Counters
from presence.core.frames import KEEPALIVE
from presence.core.hub import IChannel, IHub
from presence.core.mailbox import Entry
from presence.core.tables import Session
from presence.errors import BadRequest, ClientError
from presence.service import whole_number
from presence.web.auth import CROSS_ORIGIN, cookie_session_id, cross_origin
from presence.web.boxes import allow_box_origin, box_location
from presence.web.http import client_address, params
from presence.web.transport import direct, send_now

POLL_BATCH = 100
MAX_WAIT = 300.0
#: heartbeat writes per reactor turn at most; the rest wait for the next
#: turns, in order.  The hub already slices a fan-out by time (a few ms of
#: work per turn, presence.core.fanout), so this is only the backstop
WRITES_PER_TURN = 1000

_log = Logger()


class WritePacer:
    """Spreads the heartbeats' writes over reactor turns.

    A turn here is the time from one call of :meth:`_turn` (a ``callLater(0)``,
    which the reactor runs once per iteration) to the next.  Up to
    ``per_turn`` channels write in a turn; a channel refused waits in line
    with what it was to write, and the channels in line write first in the
    turns that follow.  When nothing waits and nothing was written, no call
    is scheduled.

    Two lines: a channel refused a *direct* frame (chat, ack, SIP, bye) waits
    in ``urgent``, which is served whole at the start of the next turn, before
    any channel that waits with fan-out frames only (``waiting``): no one's
    chat waits behind another user's presence updates.  A channel already
    waiting with fan-out frames moves to ``urgent`` when a direct frame joins
    them (its frames keep their order).
    """

    __slots__ = ("clock", "per_turn", "spent", "waiting", "urgent", "call")

    def __init__(self, clock: Any, per_turn: int = WRITES_PER_TURN) -> None:
        self.clock = clock
        self.per_turn = per_turn
        self.spent = 0
        self.waiting: Deque["HeartbeatChannel"] = deque()
        self.urgent: Deque["HeartbeatChannel"] = deque()
        self.call: Optional[IDelayedCall] = None

    def admit(self) -> bool:
        """May one more write go out in this turn?  (Counts it if so.)"""
        if self.spent >= self.per_turn:
            return False
        self.spent += 1
        self._schedule()
        return True

    def wait(self, channel: "HeartbeatChannel") -> None:
        self.waiting.append(channel)
        self._schedule()

    def hurry(self, channel: "HeartbeatChannel") -> None:
        """``channel`` waits with a direct frame: first in the next turn."""
        self.urgent.append(channel)
        self._schedule()

    def _schedule(self) -> None:
        if self.call is None:
            self.call = self.clock.callLater(0, self._turn)

    def _turn(self) -> None:
        self.call = None
        self.spent = 0
        urgent = self.urgent
        while urgent:
            channel = urgent.popleft()
            if channel.queued is not None and not channel.done:
                self.spent += 1
                channel.flush()
        waiting = self.waiting
        while waiting and self.spent < self.per_turn:
            channel = waiting.popleft()
            if channel.queued is not None and not channel.done:
                self.spent += 1
                channel.flush()
        if waiting or self.spent:
            self.call = self.clock.callLater(0, self._turn)


#: where a channel made without the resource's counters counts (tests)
_UNCOUNTED = Counters()


@implementer(IChannel)
class HeartbeatChannel:
    """One held heartbeat request, as the channel of its session."""

    __slots__ = ("request", "hub", "session", "poll", "timer", "done", "pacer", "queued",
                 "counters", "urgent", "bundle", "sock")

    def __init__(self, request: server.Request, hub: IHub, session: Session,
                 poll: bool, pacer: WritePacer, counters: Optional[Counters] = None,
                 bundle: bool = False) -> None:
        self.counters = counters if counters is not None else _UNCOUNTED
        self.request = request
        self.hub = hub
        self.session = session
        self.poll = poll
        self.timer: Optional[IDelayedCall] = None
        self.done = False
        self.pacer = pacer
        #: what waits for a turn of the pacer to be written, in order
        self.queued: Optional[List[Entry]] = None
        #: whether what waits holds a direct frame (it is in the pacer's
        #: urgent line)
        self.urgent = False
        #: the request asked for bundled presence (``bundle=1``)
        self.bundle = bundle
        #: the TCP connection that :func:`send_now` writes the chunks of
        #: this response to directly (a chunked response, headers written),
        #: or None: everything through ``request.write``
        self.sock: Any = None
        if getattr(request, "chunked", 0) and getattr(request, "startedWriting", 0):
            self.sock = direct(getattr(request.channel, "transport", None))

    def send(self, entries: Sequence[Entry]) -> None:
        """Direct frames: written now, or first in the next turn."""
        if self.done:
            return
        if self.queued is not None:
            self.queued.extend(entries)
            if not self.urgent:
                self.urgent = True
                self.pacer.hurry(self)
            return
        if not self.pacer.admit():
            self.queued = list(entries)
            self.urgent = True
            self.pacer.hurry(self)
            return
        self._send_now(entries)

    def send_bulk(self, entries: Sequence[Entry]) -> None:
        """Frames of a fan-out: written now, or in line after the direct ones."""
        if self.done:
            return
        if self.queued is not None:
            self.queued.extend(entries)
            return
        if not self.pacer.admit():
            self.queued = list(entries)
            self.pacer.wait(self)
            return
        self._send_now(entries)

    def flush(self) -> None:
        """Write what waited for the pacer."""
        queued, self.queued = self.queued, None
        self.urgent = False
        if queued and not self.done:
            self._send_now(queued)

    def _send_now(self, entries: Sequence[Entry]) -> None:
        if self.poll:
            if len(entries) < POLL_BATCH and len(self.session.mailbox) > len(entries):
                entries = self.session.mailbox.pending(POLL_BATCH)
            entries = entries[:POLL_BATCH]
            self._write(self._events(entries))
            self._count(entries)
            self.release("answered")
        else:
            self._write(self._events(entries))
            self._count(entries)

    def _count(self, entries: Sequence[Entry]) -> None:
        counters = self.counters
        counters.frames_written += len(entries)
        counters.frames_per_write.observe(len(entries))
        if counters.measuring:
            now = counters.clock()
            for _, frame in entries:
                if frame.kind == "chat":
                    counters.chat_written(frame.args[1], now)

    def _events(self, entries: Sequence[Entry]) -> bytes:
        """The events of ``entries``.  A frame that could only be written
        repaired is logged (once); one that cannot be written at all (not a
        frame) is logged and left out: the frames around it still go out and
        the heartbeat stays held.  (Its id is skipped; the client's next ack
        covers it.)"""
        try:
            if len(entries) == 1:
                ident, frame = entries[0]
                data = frame.event(ident)
                if frame.repaired:
                    self._repaired(ident, frame)
                return data
            data = b"".join([frame.event(i) for i, frame in entries])
        except Exception:
            return self._each(entries)
        for ident, frame in entries:
            if frame.repaired:
                self._repaired(ident, frame)
        return data

    def _each(self, entries: Sequence[Entry]) -> bytes:
        parts = []
        for ident, frame in entries:
            try:
                parts.append(frame.event(ident))
            except Exception:
                _log.failure("frame {ident} for {user} cannot be written; left out",
                             ident=ident, user=self.session.user.name)
                continue
            if frame.repaired:
                self._repaired(ident, frame)
        return b"".join(parts)

    def _repaired(self, ident: int, frame: Any) -> None:
        if frame.repair_to_report():
            _log.warn("frame {ident} for {user} ({kind}) was not valid text; it was"
                      " written with U+FFFD in place of what was not",
                      ident=ident, user=self.session.user.name,
                      kind=str(getattr(frame, "kind", "?"))[:32])

    def keepalive(self) -> None:
        if not self.done:
            self._write(KEEPALIVE)
            self.counters.keepalives += 1

    def release(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.counters.release(reason)
        # frames still waiting for the pacer stay in the mailbox, unacknowledged:
        # the next request of the session gets them
        self.queued = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        try:
            self.request.finish()
        except Exception:
            # the connection is already gone: finishing is moot
            self.ended(None)

    def _write(self, data: bytes) -> None:
        sock = self.sock
        if sock is not None and data:
            request = self.request
            # what request.write does (the chunk, the length for the access
            # log), sent at once when the connection's buffer is empty
            if not request.finished and not request._disconnected and \
                    send_now(sock, b"%x\r\n%b\r\n" % (len(data), data)):
                request.sentLength += len(data)
                return
        try:
            self.request.write(data)
        except Exception:
            # a write on a dead request: the session no longer holds it
            self.release("dead")

    def ended(self, _reason: Any) -> None:
        """The request finished or its connection was lost."""
        if not self.done:
            self.counters.release("lost")  # the client went, not released by us
        self.done = True
        self.queued = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.hub.detach(self.session, self)


class HeartbeatResource(resource.Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, hub: IHub, clock, keepalive: float,
                 counters: Optional[Counters] = None) -> None:
        super().__init__()
        self.counters = counters if counters is not None else Counters()
        self.hub = hub
        self.clock = clock
        self.keepalive = keepalive
        self.pacer = WritePacer(clock)
        #: seconds written data may stay unacknowledged before the kernel
        #: declares the connection dead (then we see it lost at once)
        self.dead_after = max(10.0, 2 * hub.config.poll + 5)

    def render(self, request: server.Request) -> Any:
        allow_box_origin(request, self.hub)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _error(request, 405, "the heartbeat is a GET request")
        return self.render_GET(request)

    def render_GET(self, request: server.Request) -> Any:
        try:
            p = params(request)
        except ClientError as e:
            return _error(request, e.status, e.message)
        sid = p.get("id") or p.get("sessionId")
        by_cookie = None
        if not sid:
            sid = by_cookie = cookie_session_id(request)
            # holding a heartbeat (and its ack) changes the session's state:
            # with the cookie alone, never from another origin
            if sid is not None and cross_origin(request):
                return _error(request, 403, CROSS_ORIGIN)
        session = self.hub.session(sid) if sid else None
        if session is None and sid:
            pending = self.hub.claim(sid)
            if pending is not None:
                # a cluster: the session may have been placed here by another
                # node a moment ago, or be held by another box
                pending.addCallback(self._claimed, request, p, by_cookie)
                pending.addErrback(self._unclaimed, request)
                return server.NOT_DONE_YET
        return self._hold(request, p, session, by_cookie)

    def _claimed(self, session, request: server.Request, p: Dict[str, Any],
                 by_cookie: Optional[str] = None) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        body = self._hold(request, p, session, by_cookie)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _unclaimed(self, failure, request: server.Request) -> None:
        if not (request.finished or getattr(request, "_disconnected", False)):
            request.write(_error(request, 503, "the cluster's directory is unavailable,"
                                 " try again shortly"))
            request.finish()

    def _hold(self, request: server.Request, p: Dict[str, Any],
              session: Optional[Session], by_cookie: Optional[str] = None) -> Any:
        me = p.get("me")
        if session is None or (me and me != session.user.name):
            return _error(request, 403, "no such session: log in again")
        if session.host_box != self.hub.config.host_box:
            # held by another box of the cluster: the heartbeat goes there
            request.setResponseCode(307)
            request.setHeader(b"location",
                              box_location(request, self.hub, session.host_box, by_cookie))
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": "this session is held by another box",
                               "host_box": session.host_box}).encode("ascii")
        mode = p.get("mode") or "stream"
        if mode not in ("stream", "poll"):
            return _error(request, 400, "mode must be stream or poll")
        bundle = p.get("bundle") or "0"
        if bundle not in ("0", "1"):
            return _error(request, 400, "bundle must be 0 or 1")
        try:
            ack = max(_number(p.get("ack"), "ack"),
                      _number(_header(request, b"last-event-id"), "Last-Event-ID"))
            wait = _wait(p.get("wait"), self.keepalive)
        except ClientError as e:
            return _error(request, e.status, e.message)
        ip, port = client_address(request)
        self.hub.address_changed(session, ip, port)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        _tune(getattr(request.channel, "transport", None), self.dead_after)
        request.write(b"")  # the headers, at once
        channel = HeartbeatChannel(request, self.hub, session, mode == "poll", self.pacer,
                                   self.counters, bundle == "1")
        if ack:
            self.counters.acks += 1
        watch = getattr(request, "watch", None)
        if watch is not None:
            watch(channel)  # BoundedRequest: no Deferred kept per held request
        else:
            request.notifyFinish().addBoth(channel.ended)
        _slim(request)
        self.hub.attach(session, channel, ack)
        if channel.poll and not channel.done:
            channel.timer = self.clock.callLater(wait, channel.release, "timeout")
        return server.NOT_DONE_YET


_NO_HEADERS = Headers()
_NOTHING = ()


def _slim(request: server.Request) -> None:
    """Drop what a held request no longer needs once its headers are sent.

    Thousands of heartbeats are held at once; the parsed query, the request
    headers, the empty body buffer and the sent response headers are about a
    kilobyte each.  The access log line, written when the request ends, reads
    only the method, URI, status, length and the peer's IP.

    Every container dropped is also one object less for each full garbage
    collection to scan: the path lists, the (already sent) cookie list, the
    empty list of finish notifications, the two address objects (the peer's
    IP is kept as a string for the access log).
    """
    request.args = {}
    request.requestHeaders = _NO_HEADERS
    request.responseHeaders = _NO_HEADERS
    request.content = None
    request.prepath = request.postpath = request.sitepath = _NOTHING
    request.cookies = _NOTHING
    if not request.notifications:
        # BoundedRequest.notifyFinish makes it a list again if need be
        request.notifications = _NOTHING
    client = request.client
    request.peer_ip = getattr(client, "host", None)
    request.client = request.host = None


def _tune(transport: Any, dead_after: float) -> None:
    """Socket options for a held heartbeat: no Nagle delay on small frames,
    and TCP_USER_TIMEOUT so that a peer that vanished without a word (no FIN,
    no RST) is found dead a few seconds after the next keep-alive write
    instead of after minutes of retransmission."""
    if transport is None:
        return
    try:
        transport.setTcpNoDelay(True)
        sock = transport.getHandle()
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_after * 1000))
    except (AttributeError, OSError):
        pass  # not a TCP socket (tests, UNIX endpoints)


def _number(text: Optional[str], what: str) -> int:
    if text is None or text == "":
        return 0
    return whole_number(text, what)


def _wait(text: Optional[str], default: float) -> float:
    if text is None:
        return default
    try:
        if len(text) > 20:
            raise ValueError(text)
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT:  # NaN too
        raise BadRequest(f"wait must be 0-{MAX_WAIT:g} seconds")
    return wait


def _header(request: server.Request, name: bytes) -> Optional[str]:
    value = request.getHeader(name)
    return value.decode("ascii", "replace") if value is not None else None


def _error(request: server.Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": message}).encode("utf-8")
