"""``/sip/media/<port>?me&id``: RTP and RTCP over HTTP between a session
(``presence-sip-bridge --media http``) and the leg of the media relay that
faces it, for phones whose side blocks UDP (``docs/calls.md``, "Media over
HTTP").  Frames: :mod:`presence.sip.mediaframe`.

``<port>`` is a relay port the server named in an SDP it sent to this
session (the RTP port of an ``m=`` line, or its RTCP port; both name the
same leg).

* ``GET``: a held response (``200``, ``Content-Type:
  application/x-presence-media``, chunked) that carries, as frames, every
  packet the relay sends towards this side; from then on the leg sends
  nothing over UDP to this side.  A keep-alive frame goes out after
  :data:`KEEPALIVE_EVERY` seconds without a packet.  One stream per leg: a
  new ``GET`` replaces the one before (which ends).  The stream ends when the
  call ends (its leg closes), when the session ends (both checked every
  :data:`CHECK_EVERY` second), or when the client goes.
  A client that reads too slowly loses packets (they are dropped, never
  queued: late audio is no audio).
* ``POST``: a body of whole frames (at most :data:`MAX_POST` bytes), each
  packet injected into the leg as if it had come from this side over UDP.
  ``204`` when all were taken (not written to the access log: tens a second
  a stream; ``injected`` counts them); ``429`` (JSON ``taken``/``dropped``) when
  some went over :data:`PACKET_RATE` packets a second for the leg
  (:data:`BURST` seconds' worth at once); the dropped ones are not resent.

Errors (JSON ``{"error": ...}``): ``400`` a port that is no number or a
broken body (the reason says where), ``403`` no such session, or a leg that
faces another user, ``404`` no call's media at that port, ``405`` another
method, ``413`` a body over :data:`MAX_POST`, ``415`` another content type,
``429`` more than :data:`MAX_STREAMS` streams held by one session.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Set

from twisted.logger import Logger
from twisted.web import server
from zope.interface import implementer

from presence.core.ratelimit import RateLimiter
from presence.errors import BadRequest, ClientError, Forbidden, NotFound, TooLarge, TooMany
from presence.sip.mediaframe import (
    CONTENT_TYPE, KEEPALIVE, MAX_PACKET, MediaFrameError, decode_all, encode,
)
from presence.sip.proxy import UnsupportedMedia
from presence.sip.relay import IMediaSink
from presence.web.api import request_session
from presence.web.http import params, write_json

log = Logger(namespace="presence.sip.media")

#: bytes of one POST body at most (about ten full-size packets)
MAX_POST = 16 * 1024
#: packets a second a session may inject into one leg (video at a few
#: hundred packets a second fits; audio is 50)
PACKET_RATE = 400.0
#: seconds' worth of PACKET_RATE allowed at once
BURST = 2.0
#: streams (GETs) one session holds at once
MAX_STREAMS = 16
#: seconds between the checks of a held stream (its leg closed, its session
#: gone: then it ends)
CHECK_EVERY = 1.0
#: seconds without a packet before a keep-alive frame
KEEPALIVE_EVERY = 10.0


class PacketsDropped(TooMany):
    """429 for a POST some of whose packets went over the rate; ``figures``
    (``taken``, ``dropped``) go into the JSON answer."""

    def __init__(self, message: str, **figures: int) -> None:
        super().__init__(message)
        self.figures = figures


def _port(segment: bytes) -> int:
    if not segment.isdigit() or len(segment) > 5 or not 0 < int(segment) <= 65535:
        raise BadRequest("the path must be /sip/media/<relay port>, a port number 1-65535")
    return int(segment)


class MediaTunnel:
    """The streams and limits of one server's media tunnel; ``render`` is
    called by the ``/sip`` resource for paths under ``/sip/media/``."""

    def __init__(self, service: Any, relay: Any, clock: Any, *,
                 packet_rate: float = PACKET_RATE, max_streams: int = MAX_STREAMS,
                 keepalive: float = KEEPALIVE_EVERY, check: float = CHECK_EVERY) -> None:
        self.service = service
        self.relay = relay
        self.clock = clock
        self.max_streams = max_streams
        self.keepalive = keepalive
        self.check = check
        self.limiter = RateLimiter(max(1.0, packet_rate * BURST), packet_rate,
                                   max_keys=100_000)
        #: leg -> its attached stream
        self.streams: Dict[Any, "MediaStream"] = {}
        #: session id -> its streams
        self.by_session: Dict[str, Set["MediaStream"]] = {}
        self.counters: Dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def stats(self) -> dict:
        return dict(self.counters, streams=len(self.streams))

    # -- HTTP -------------------------------------------------------------------

    def render(self, request: server.Request, path: list) -> Any:
        request.setHeader(b"cache-control", b"no-store")
        try:
            if len(path) != 1:
                raise NotFound("no such endpoint: /sip/media/<relay port>")
            if request.method == b"GET":
                return self._get(request, _port(path[0]))
            if request.method == b"POST":
                return self._post(request, _port(path[0]))
            request.setHeader(b"allow", b"GET, POST")
            return write_json(request, 405, {"error": "method not allowed here: GET the"
                                             " stream or POST frames"})
        except PacketsDropped as e:
            return write_json(request, e.status, {"error": e.message, **e.figures})
        except ClientError as e:
            return write_json(request, e.status, {"error": e.message})
        except Exception:
            log.failure("{method} /sip/media failed", method=request.method)
            return write_json(request, 500, {"error": "internal error; it has been logged"})

    def _leg(self, request: server.Request, port: int) -> tuple:
        p = params(request)
        # attaching moves the call's media: never from another origin's page
        session = request_session(self.service, request, p, state_change=True)
        leg = self.relay.leg_for(port)
        if leg is None or leg.closed:
            raise NotFound(f"no call's media at relay port {port}")
        if leg.user != session.user.name:
            raise Forbidden(f"relay port {port} is not a leg of your calls")
        return session, leg

    def _get(self, request: server.Request, port: int) -> Any:
        session, leg = self._leg(request, port)
        held = self.by_session.get(session.id, set())
        old = self.streams.get(leg)
        if len(held) >= self.max_streams and old not in held:
            raise TooMany(f"this session holds {len(held)} media streams already"
                          f" (at most {self.max_streams})")
        if old is not None:
            self.count("replaced")
            old.end()
        request.setHeader(b"content-type", CONTENT_TYPE)
        request.setHeader(b"x-accel-buffering", b"no")
        transport = getattr(request.channel, "transport", None)
        if transport is not None and hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)  # a packet is one small write
            except OSError:
                pass
        stream = MediaStream(self, request, leg, session.id, port)
        self.streams[leg] = stream
        self.by_session.setdefault(session.id, set()).add(stream)
        request.notifyFinish().addBoth(stream.ended)
        request.registerProducer(stream, True)
        request.write(b"")  # the headers, at once
        leg.attach(stream)
        stream.tick()
        self.count("attached")
        return server.NOT_DONE_YET

    def _post(self, request: server.Request, port: int) -> bytes:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != CONTENT_TYPE:
            raise UnsupportedMedia("the body must be media frames with Content-Type: "
                                   + CONTENT_TYPE.decode("ascii"))
        session, leg = self._leg(request, port)
        request.content.seek(0)
        body = request.content.read(MAX_POST + 1)
        if len(body) > MAX_POST:
            raise TooLarge(f"a media body over {MAX_POST} bytes: post fewer frames at once")
        try:
            packets = decode_all(body)
        except MediaFrameError as e:
            raise BadRequest(f"not valid media frames: {e.reason}")
        now = self.clock.seconds()
        key = str(leg.rtp_port)  # the RTP and the RTCP port share the leg's budget
        if not packets and not self.limiter.take(key, now):
            raise PacketsDropped("too many media posts for this leg: slow down", taken=0,
                                 dropped=0)
        taken = dropped = 0
        for packet, rtcp in packets:
            if self.limiter.take(key, now):
                leg.inject(packet, rtcp)
                taken += 1
            else:
                dropped += 1
        self.count("injected", taken)
        if dropped:
            self.count("rate_dropped", dropped)
            raise PacketsDropped(f"over {self.limiter.rate:g} packets a second for this leg:"
                                 f" {dropped} dropped", taken=taken, dropped=dropped)
        request.setResponseCode(204)
        request.quiet = True  # tens a second a stream: counted, not logged
        return b""

    def forget(self, stream: "MediaStream") -> None:
        if self.streams.get(stream.leg) is stream:
            del self.streams[stream.leg]
        held = self.by_session.get(stream.session_id)
        if held is not None:
            held.discard(stream)
            if not held:
                del self.by_session[stream.session_id]


@implementer(IMediaSink)
class MediaStream:
    """One held ``GET``: the relay's sink for one leg, and the push producer
    of its response (paused while the client's TCP window is full: packets
    are then dropped)."""

    def __init__(self, tunnel: MediaTunnel, request: server.Request, leg: Any,
                 session_id: str, port: int) -> None:
        self.tunnel = tunnel
        self.request = request
        self.leg = leg
        self.session_id = session_id
        self.port = port
        self.paused = False
        self.done = False
        self.sent = 0
        self.dropped = 0
        self._last = tunnel.clock.seconds()  # when a frame last went out
        self._timer: Optional[Any] = None

    # -- IMediaSink -------------------------------------------------------------

    def send(self, packet: bytes, rtcp: bool) -> None:
        if self.done:
            return
        if self.paused or not packet or len(packet) > MAX_PACKET:
            self.dropped += 1
            self.tunnel.count("stream_dropped")
            return
        self.request.write(encode(packet, rtcp))
        self.sent += 1
        self._last = self.tunnel.clock.seconds()

    # -- IPushProducer ------------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.end()

    # -- life -----------------------------------------------------------------------

    def tick(self) -> None:
        """Every ``check`` seconds: end the stream if its leg closed or its
        session ended; else a keep-alive frame after ``keepalive`` seconds
        without one."""
        self._timer = None
        if self.done:
            return
        if self.leg.closed or self.tunnel.service.hub.session(self.session_id) is None:
            self.end()
            return
        now = self.tunnel.clock.seconds()
        if now - self._last >= self.tunnel.keepalive and not self.paused:
            self.request.write(KEEPALIVE)
            self._last = now
        self._timer = self.tunnel.clock.callLater(self.tunnel.check, self.tick)

    def end(self) -> None:
        """Detach from the leg and finish the response."""
        if self.done:
            return
        self._close()
        try:
            self.request.unregisterProducer()
            self.request.finish()
        except Exception:  # the connection went at the same moment
            pass

    def ended(self, reason: object) -> None:
        """The response finished or its connection was lost."""
        if not self.done:
            self._close()
        return None

    def _close(self) -> None:
        self.done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.leg.detach(self)
        self.tunnel.forget(self)
        self.tunnel.count("detached")
