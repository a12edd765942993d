"""
``presence-sip-bridge --media http``: the phone's RTP and RTCP travel over
the bridge's HTTP connection to the server's media relay, for a phone whose
side blocks UDP to the server (``docs/calls.md``, "Media over HTTP").

For each call whose SDP from the server names relay ports (the relay
rewrites every SDP it sends towards a tunnel user to its own address and
the leg that faces that user), the bridge

 - opens a local UDP pair for the phone per C{m=} line (RTP on a port
   C{L}, RTCP on C{L+1}, on the C{--listen} address) and rewrites that SDP
   towards the phone to name it;
 - holds C{GET /sip/media/<leg port>} and sends each packet of that stream
   to the phone: to the address the phone's RTP actually comes from once it
   has sent one (symmetric RTP), before that to the port the phone's SDP
   named (on the phone's host only);
 - posts what the phone sends to the local pair (from the phone's host
   only) to C{POST /sip/media/<leg port>}, one request in flight per
   C{m=} line, the packets that arrive meanwhile batched into the next one
   (at most L{MAX_WAITING} wait; older ones are dropped: late audio is no
   audio);
 - rewrites the SDP the phone sends to the server to name the relay's own
   address and leg port again (the relay needs no UDP address on this side:
   the attached stream takes its packets), so the phone's local address
   never leaves the bridge once the legs are known.

Both rewrites are the relay's own (L{presence.sip.sdp}): C{o=} and C{c=}
name the new address (a hold's C{0.0.0.0} stays), C{a=rtcp:} names port + 1,
ICE lines are dropped.

The pairs of a call close, and its streams end, at C{BYE} or C{CANCEL}
(either way), a final error to the INVITE before the call was answered, a
stream the server ends for good (the call ended there), or
L{IDLE_TIMEOUT} seconds without a packet or a SIP message of the call.
At most L{MAX_CALLS} calls have media over HTTP at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from presence.sip import sdp
from presence.sip.media import has_sdp
from presence.sip.mediaframe import (
    CONTENT_TYPE, MAX_PACKET, NO_RELAY, FrameDecoder, MediaFrameError, encode,
)
from presence.sip.message import Message, Request, Response, bare_host
from presence.sip.relay import is_rtcp

log = Logger(namespace="presence.sip_bridge.media")

#: calls with media over HTTP at once; more keep their SDP as it is
MAX_CALLS = 64
#: m= lines of one SDP the bridge carries at most
MAX_STREAMS = 8
#: packets from the phone waiting for the POST in flight, per m= line
MAX_WAITING = 50
#: bytes of one POST body at most (the server takes 16 KiB)
MAX_BATCH = 15 * 1024
#: seconds without a packet or SIP message before a call's pairs close
IDLE_TIMEOUT = 120.0
#: seconds before a dropped stream is attached again (doubling to 8 s)
REATTACH = 0.5
#: tries to find a free RTP port whose next port is free too
PORT_TRIES = 16

MEDIA_HTTP = "http"
MEDIA_UDP = "udp"

Address = Tuple[str, int]


class MediaTunnelClient:
    """The bridge's media over HTTP: the calls with local pairs, by Call-ID.

    @param reactor: C{callLater}/C{seconds}; C{listenUDP} unless
        C{listen_udp} is given.
    @param client: the bridge's L{HeartbeatClient} (its session, its HTTP
        client, C{post_body}).
    @param host: the address of the local pairs (the bridge's C{--listen}
        host: the phone reaches it).
    @param phone_host: the phone's host: packets from any other are dropped.
    """

    def __init__(self, reactor: Any, client: Any, host: str, phone_host: str, *,
                 listen_udp: Optional[Callable[..., Any]] = None) -> None:
        self.reactor = reactor
        self.client = client
        self.host = host
        self.phone_host = phone_host
        self.listen_udp = listen_udp or reactor.listenUDP
        self.calls: Dict[str, MediaCall] = {}
        #: Call-ID -> the phone's addresses in an offer it made before the
        #: relay's legs were known (the answer brings them), the last few
        self.offers: "OrderedDict[str, List[Tuple[Optional[Address], Optional[Address], bool]]]" \
            = OrderedDict()
        self.counters: Dict[str, int] = {}
        #: the server answered that it relays no media (L{no_relay})
        self.server_has_no_relay = False

    def count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    # -- SIP passing by ----------------------------------------------------------

    def from_server(self, message: Message) -> None:
        """A message on its way to the phone (rewritten in place)."""
        call = self.calls.get(message.call_id or "")
        if call is not None:
            call.touch()
        if self._ends(message, call) or self.server_has_no_relay:
            return
        parsed = _sdp(message)
        if parsed is None or not any(m.enabled for m in parsed.media):
            return
        if call is None:
            if len(self.calls) >= MAX_CALLS:
                self.count("calls_refused")
                log.warn("{n} calls carry media over HTTP already: this call's SDP is left"
                         " as it is", n=len(self.calls))
                return
            call = self.calls[message.call_id or ""] = MediaCall(self, message.call_id or "")
        ports: List[Optional[int]] = []
        for media in parsed.media:
            index = media.index
            if not media.enabled or index >= MAX_STREAMS:
                call.close_stream(index)
                ports.append(None)  # stays 0, or is disabled
                continue
            pair = call.pairs.get(index)
            if pair is None or pair.leg_port != media.port:
                call.close_stream(index)
                try:
                    pair = MediaPair(call, index, media.address or "", media.port)
                except CannotListenError as e:
                    self.count("no_ports")
                    log.warn("no local UDP pair for a call's media: {why}", why=e)
                    ports.append(None)
                    continue
                call.pairs[index] = pair
                offered = self.offers.get(call.call_id)
                if offered is not None and index < len(offered):
                    pair.phone_said(*offered[index])
                pair.attach()
            ports.append(pair.rtp_port)
        message.body = sdp.rewrite(parsed, self.host, ports)

    def from_phone(self, message: Message) -> None:
        """A message of the phone on its way to the server (rewritten in
        place)."""
        call = self.calls.get(message.call_id or "")
        if call is not None:
            call.touch()
        if self._ends(message, call):
            return
        parsed = _sdp(message)
        if parsed is None:
            return
        if call is None:
            # an offer before the relay's ports are known: it goes as it is,
            # and its addresses wait for the answer
            self.offers[message.call_id or ""] = [
                (m.rtp_address(), m.rtcp_address(), m.mux) for m in parsed.media[:MAX_STREAMS]]
            self.offers.move_to_end(message.call_id or "")
            while len(self.offers) > MAX_CALLS:
                self.offers.popitem(last=False)
            return
        legs: List[Optional[int]] = []
        relay_host = ""
        for media in parsed.media:
            pair = call.pairs.get(media.index)
            if pair is None or not media.enabled:
                if pair is not None:
                    call.close_stream(media.index)  # the phone refused it
                legs.append(None)  # no leg behind it: disabled (or stays 0)
                continue
            pair.phone_said(media.rtp_address(), media.rtcp_address(), media.mux)
            legs.append(pair.leg_port)
            relay_host = relay_host or pair.relay_host
        if relay_host:
            message.body = sdp.rewrite(parsed, relay_host, legs)

    def _ends(self, message: Message, call: Optional["MediaCall"]) -> bool:
        """Whether ``message`` ends ``call`` (then closed)."""
        if call is None:
            return False
        if isinstance(message, Request):
            if message.method in ("BYE", "CANCEL"):
                call.close(f"{message.method} passed")
                return True
            return False
        if isinstance(message, Response) and message.cseq[1] == "INVITE":
            if 200 <= message.code < 300:
                call.answered = True
            elif message.code >= 300 and not call.answered:
                call.close(f"the call failed ({message.code})")
                return True
        return False

    def stop(self) -> None:
        for call in list(self.calls.values()):
            call.close("the bridge stops")
        self.offers.clear()

    def no_relay(self) -> None:
        """The server said it relays no media: the calls' SDP names the
        peers themselves, there is nothing to carry; pass SDP untouched."""
        if not self.server_has_no_relay:
            self.server_has_no_relay = True
            log.warn("the server relays no media (its --relay is none): --media http has"
                     " nothing to carry, calls' SDP now passes untouched")

    # -- HTTP ------------------------------------------------------------------------

    def media_url(self, leg_port: int) -> Optional[str]:
        session = self.client.session
        if session is None:
            return None
        query = urlencode([("me", session.username), ("id", session.session)])
        return f"{self.client.base_url}/sip/media/{leg_port}?{query}"


def _sdp(message: Message) -> Optional[sdp.Sdp]:
    """The SDP body of ``message``, or None (none, or none the relay's
    parser reads: passed as it is)."""
    if not has_sdp(message):
        return None
    try:
        return sdp.parse(message.body)
    except (ValueError, UnicodeDecodeError):
        return None


class MediaCall:
    """The local pairs of one call (by ``m=`` line index)."""

    def __init__(self, owner: MediaTunnelClient, call_id: str) -> None:
        self.owner = owner
        self.call_id = call_id
        self.pairs: Dict[int, MediaPair] = {}
        self.answered = False
        self.closed = False
        self._idle = owner.reactor.callLater(IDLE_TIMEOUT, self._timed_out)

    def touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(IDLE_TIMEOUT)

    def _timed_out(self) -> None:
        self._idle = None
        self.close(f"{IDLE_TIMEOUT:g} s without media or SIP")

    def close_stream(self, index: int) -> None:
        pair = self.pairs.pop(index, None)
        if pair is not None:
            pair.close()

    def stream_gone(self, pair: "MediaPair", why: str) -> None:
        """The server ended a stream for good: the call's media is over."""
        self.close(why)

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        for index in list(self.pairs):
            self.close_stream(index)
        if self.owner.calls.get(self.call_id) is self:
            del self.owner.calls[self.call_id]
        self.owner.offers.pop(self.call_id, None)
        self.owner.count("calls_closed")
        log.info("media of call {call} closed: {why}", call=self.call_id, why=why)


class MediaPair:
    """One ``m=`` line: the local RTP/RTCP ports for the phone and the HTTP
    stream of the relay leg ``leg_port``."""

    def __init__(self, call: MediaCall, index: int, relay_host: str, leg_port: int) -> None:
        self.call = call
        self.owner = call.owner
        self.index = index
        self.relay_host = relay_host
        self.leg_port = leg_port
        #: the phone's RTP and RTCP addresses for this stream in its SDP
        #: (used until latched; None: none, or on hold)
        self.advertised: Tuple[Optional[Address], Optional[Address]] = (None, None)
        #: the phone's SDP asked for RTCP on the RTP port (RFC 5761)
        self.mux = False
        #: where the phone's RTP and RTCP really come from (symmetric RTP)
        self.latched: List[Optional[Address]] = [None, None]
        self.outbox: List[bytes] = []
        self.posting = False
        self.closed = False
        self.stream_request: Any = None
        self.body: Optional[_StreamBody] = None
        self.decoder = FrameDecoder()
        self.reattach_delay = REATTACH
        self._reattach: Any = None
        self.sent_to_phone = 0
        self.sent_to_server = 0
        self.ports = self._listen()
        self.rtp_port = self.ports[0].getHost().port

    def _listen(self) -> List[Any]:
        listen = self.owner.listen_udp
        last: Optional[Exception] = None
        for _ in range(PORT_TRIES):
            rtp = listen(0, _LocalSide(self, False), interface=self.owner.host,
                         maxPacketSize=65535)
            port = rtp.getHost().port
            if port < 65535:
                try:
                    rtcp = listen(port + 1, _LocalSide(self, True), interface=self.owner.host,
                                  maxPacketSize=65535)
                    return [rtp, rtcp]
                except CannotListenError as e:
                    last = e
            rtp.stopListening()
        raise CannotListenError(self.owner.host, 0, last or "no free port pair")

    def phone_said(self, rtp: Optional[Address], rtcp: Optional[Address], mux: bool) -> None:
        """The phone's SDP for this stream."""
        self.advertised = (rtp, rtcp)
        self.mux = mux

    # -- towards the phone ---------------------------------------------------------

    def attach(self) -> None:
        """Hold the stream of the leg (again)."""
        self._reattach = None
        if self.closed:
            return
        url = self.owner.media_url(self.leg_port)
        if url is None:
            self._retry("no session yet")
            return
        http = self.owner.client.http
        d = http.request("GET", url, headers={"Accept": [CONTENT_TYPE.decode("ascii")]},
                         unbuffered=True)
        self.stream_request = d
        d.addCallbacks(self._stream_response, self._stream_failed, errbackArgs=("connect",))

    def _stream_response(self, response: Any) -> None:
        if self.closed:
            self._discard(response)
            return
        if response.code == 404:
            self.owner.count("stream_404")
            d = self.owner.client.http.content(response)
            d.addCallbacks(self._gone, lambda f: self._gone(b""))
            return
        if response.code != 200:
            self._discard(response)
            if response.code == 403:
                self._retry("session not valid (403)")
            else:
                self.owner.count("stream_refused")
                log.warn("the server refused the media stream of relay port {port}: {code}",
                         port=self.leg_port, code=response.code)
                self._retry(f"HTTP {response.code}")
            return
        self.reattach_delay = REATTACH
        self.owner.count("streams")
        self.decoder = FrameDecoder()
        body = self.body = _StreamBody(self)
        body.finished.addCallbacks(self._stream_ended, self._stream_failed,
                                   callbackArgs=(body,), errbackArgs=("stream", body))
        response.deliverBody(body)

    def _gone(self, body: bytes) -> None:
        """The server has no media at the leg's port: the call ended there,
        or the server relays no media at all (then later calls keep their
        SDP as it is)."""
        if NO_RELAY.encode("ascii") in body:
            self.owner.no_relay()
        self.call.stream_gone(self, f"the server has no media at relay port {self.leg_port}")

    def _data(self, data: bytes) -> bool:
        """Bytes of the stream; False: the stream broke, drop it."""
        try:
            packets = self.decoder.feed(data)
        except MediaFrameError as e:
            self.owner.count("bad_frames")
            log.warn("the media stream of relay port {port} broke: {why}", port=self.leg_port,
                     why=e.reason)
            return False
        for packet, rtcp in packets:
            self._to_phone(packet, rtcp)
        if packets:
            self.call.touch()
        return True

    def _to_phone(self, packet: bytes, rtcp: bool) -> None:
        slot = 1 if rtcp and not self.mux else 0
        target = self.latched[slot]
        if target is None and self.advertised[slot] is not None:
            # what the phone's SDP said, but always on the phone's host
            target = (self.owner.phone_host, self.advertised[slot][1])
        if target is None:
            self.owner.count("no_phone_address")
            return
        self.ports[slot].write(packet, target)
        self.sent_to_phone += 1

    def _stream_ended(self, _: object, body: Optional["_StreamBody"] = None) -> None:
        if body is self.body:
            self.body = None
        if not self.closed:
            self._retry("the stream ended")

    def _stream_failed(self, failure: Any, where: str,
                       body: Optional["_StreamBody"] = None) -> None:
        if body is not None and body is self.body:
            self.body = None
        if not self.closed and not failure.check(CancelledError):
            self._retry(f"{where}: {failure.getErrorMessage()}")

    def _retry(self, why: str) -> None:
        if self.closed or self._reattach is not None:
            return
        log.debug("media stream of relay port {port}: {why}; again in {s:g} s",
                  port=self.leg_port, why=why, s=self.reattach_delay)
        self._reattach = self.owner.reactor.callLater(self.reattach_delay, self.attach)
        self.reattach_delay = min(self.reattach_delay * 2, 8.0)

    def _discard(self, response: Any) -> None:
        self.owner.client.http.content(response).addErrback(lambda f: None)

    # -- from the phone -----------------------------------------------------------------

    def from_phone(self, packet: bytes, addr: Address, rtcp: bool) -> None:
        if self.closed:
            return
        if bare_host(addr[0]) != self.owner.phone_host:
            self.owner.count("foreign_media")
            return
        if not packet or len(packet) > MAX_PACKET:
            self.owner.count("bad_media")
            return
        self.latched[1 if rtcp else 0] = addr
        rtcp = rtcp or is_rtcp(packet)  # RTCP on the RTP port (rtcp-mux)
        self.call.touch()
        if len(self.outbox) >= MAX_WAITING:
            self.outbox.pop(0)
            self.owner.count("media_dropped")
        self.outbox.append(encode(packet, rtcp))
        if not self.posting:
            self._post()

    def _post(self) -> None:
        body = b""
        while self.outbox and len(body) + len(self.outbox[0]) <= MAX_BATCH:
            body += self.outbox.pop(0)
        if not body:
            return
        self.posting = True
        self.sent_to_server += 1
        d = self.owner.client.post_body(f"/sip/media/{self.leg_port}", body,
                                        CONTENT_TYPE.decode("ascii"))
        d.addErrback(self._post_failed)
        d.addBoth(self._posted)

    def _post_failed(self, failure: Any) -> None:
        self.owner.count("post_failed")
        log.debug("posting media to relay port {port} failed: {why}", port=self.leg_port,
                  why=failure.getErrorMessage())

    def _posted(self, _: object) -> None:
        self.posting = False
        if not self.closed and self.outbox:
            self._post()

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.outbox = []
        if self._reattach is not None and self._reattach.active():
            self._reattach.cancel()
        self._reattach = None
        request, self.stream_request = self.stream_request, None
        if request is not None and not request.called:
            request.cancel()
        body, self.body = self.body, None
        if body is not None:
            body.abort()
        for port in self.ports:
            port.stopListening()
        self.owner.count("pairs_closed")


class _StreamBody(Protocol):
    """The body of a held media stream: packets to the pair as they come;
    L{abort} closes its connection."""

    def __init__(self, pair: MediaPair) -> None:
        self.pair: Optional[MediaPair] = pair
        self.finished: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        pair = self.pair
        if pair is None or pair.body is not self:
            self.abort()
        elif not pair._data(data):
            self.abort()

    def abort(self) -> None:
        self.pair = None
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Any) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(reason)


class _LocalSide(DatagramProtocol):
    noisy = False

    def __init__(self, pair: MediaPair, rtcp: bool) -> None:
        self.pair = pair
        self.rtcp = rtcp

    def datagramReceived(self, data: bytes, addr: Tuple[Any, ...]) -> None:
        try:
            self.pair.from_phone(data, (addr[0], addr[1]), self.rtcp)
        except Exception:
            log.failure("a media packet from {host}:{port} could not be handled",
                        host=addr[0], port=addr[1])
