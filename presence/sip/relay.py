"""The media relay: RTP and RTCP of the calls that cross the tunnel, anchored
on ports of this server (as rtpproxy and rtpengine do).

A relayed :class:`Call` (Call-ID and the caller's tag) has one *stream* per
relayed ``m=`` line, and each stream two :class:`Leg` objects, one facing
each side of the call (the caller's, the callee's).  A leg owns a port pair
of this server, RTP on an even port and RTCP on the next one; the SDP the
proxy sends towards a side names that side's leg ports (``c=IN IP4 <relay
address>``, ``m=audio <leg RTP port>``, RTCP on port + 1, or on the RTP
port with ``a=rtcp-mux``).  See ``docs/calls.md`` (section *Media relay*).

Symmetric RTP (latching), strict: a leg is latched to the source address
of a valid RTP/RTCP packet (version 2) that arrives on its RTP port, and
separately on its RTCP port.  A packet from one of its side's own IPs (the
side's signalling IP, ``Call.signal``, or an IP its SDP named) latches at
once, over a stranger's latch too; a packet from any other source latches
only while no packet from the side's own IPs has been accepted on that
slot, and only after a probation (:data:`PROBATION` consecutive RTP packets
of one SSRC with consecutive sequence numbers from that source; on the
RTCP port, a source on the host the RTP port latched to).  Packets not
accepted are dropped and counted.  A latched leg takes another source (by
the same rule) only after a new SDP of its side (a re-INVITE or UPDATE: the
phone may have moved) or once its latched source has been silent for
:data:`RELATCH_IDLE` seconds (a NAT that rebinds).  A packet accepted on a
leg goes to the other leg of the stream, which sends it from its own port
to the address its side is latched to; until that side has sent anything,
to the address its SDP named if it was allowed (:meth:`Leg.expect`: only
at the side's signalling IP), else nowhere.  A side may instead be served
by an :class:`IMediaSink` (RTP over the HTTP tunnel): :meth:`Leg.attach`
sends its packets there, :meth:`Leg.inject` takes packets from it.

Bounds: the port range (``--relay-ports``), the relayed calls at once
(``--relay-calls``), of them :data:`USER_RINGING` unanswered and
:data:`USER_CALLS` in all a caller's user, :data:`MAX_STREAMS` streams a
call.  A call is closed
(its ports too) at ``BYE``, ``CANCEL``, a final non-2xx to its INVITE,
when its INVITE was not answered within :data:`RING_TIMEOUT`, and when no
packet was accepted on any of its legs for ``--relay-timeout`` seconds
after the answer.

Everything here is bookkeeping on a clock and an :class:`IUdpLayer`; the
reactor's UDP is :class:`ReactorUdp`, a thin front-end.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import Interface, implementer

log = Logger(namespace="presence.sip.relay")

Address = Tuple[str, int]

#: the sides of a call
CALLER, CALLEE = 0, 1
#: defaults of the options
PORTS = (40000, 40999)
MAX_CALLS = 200
MEDIA_TIMEOUT = 60.0
#: a call whose INVITE got no 2xx within this long is closed (the proxy's
#: timer C, 181 s, cancels such an INVITE before; then timer B, 32 s)
RING_TIMEOUT = 181.0 + 32.0
#: relayed m= lines per call (audio, video and two more); further m= lines
#: are disabled (port 0) in the SDP passed on
MAX_STREAMS = 4
#: seconds of silence of a latched source after which another may take over
RELATCH_IDLE = 10.0
#: consecutive RTP packets (one SSRC, consecutive sequence numbers) a source
#: that is none of its side's own addresses must send before it latches a
#: leg (Asterisk's strictrtp probation)
PROBATION = 4
#: relayed calls a user may have at once that are not answered yet, and in
#: all (charged to the caller's user; calls from the network to no one)
USER_RINGING = 4
USER_CALLS = 10
#: how often calls are checked for their timeouts
SWEEP = 1.0
#: port pairs tried when one cannot be bound (used by another program)
BIND_ATTEMPTS = 16
#: RTP header 12 bytes, RTCP header 8
MIN_PACKET = 8


class IMediaSink(Interface):
    """Where a leg sends the packets for its side, instead of UDP."""

    def send(packet: bytes, rtcp: bool) -> None:
        "Deliver one RTP (rtcp=False) or RTCP packet towards this side."


class IUdpPort(Interface):
    def send(data: bytes, address: Address) -> None:
        "Send one datagram from this port."

    def close() -> None:
        "Stop listening."


class IUdpLayer(Interface):
    def open(port: int, receive: Callable[[bytes, Address], None]) -> IUdpPort:
        """Listen on UDP ``port``; ``receive(data, (host, port))`` for each
        datagram.  Raises :class:`PortBusy` when the port cannot be bound."""


class PortBusy(Exception):
    """A relay port could not be bound (another program has it)."""


class NoRoom(Exception):
    """No relayed call or port pair is left: the call gets no relay.  The
    proxy answers ``status`` with ``reason``."""

    status = 503
    reason = "Service Unavailable (no media relay ports left)"


class UserLimit(NoRoom):
    """The caller's user has its share of the relay (:data:`USER_RINGING`,
    :data:`USER_CALLS`) already."""

    reason = "Service Unavailable (too many relayed calls of this user)"


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 section 4: on a multiplexed port, RTCP packet types 192-223
    (the second byte, marker bit aside, 64-95)."""
    return len(packet) >= 2 and 64 <= (packet[1] & 0x7F) <= 95


class Leg:
    """One side's port pair of one stream.  See the module docstring."""

    def __init__(self, relay: "MediaRelay", call: "Call", side: int, index: int,
                 user: str, rtp_port: int, sockets: Tuple[IUdpPort, IUdpPort]) -> None:
        self.relay = relay
        self.call = call
        self.side = side
        self.index = index
        #: the user whose side this leg faces ("" for the network side)
        self.user = user
        self.rtp_port = rtp_port
        self.rtcp_port = rtp_port + 1
        self._sockets = sockets
        self.peer: Optional[Leg] = None
        self.closed = False
        #: where the side's SDP said it receives (None: not allowed, or none)
        self.expected: List[Optional[Address]] = [None, None]
        #: the side's SDP asked for rtcp-mux (RTCP on the RTP port)
        self.mux = False
        #: latched source on the RTP port [0] and the RTCP port [1]
        self.latched: List[Optional[Address]] = [None, None]
        self._relatch = [False, False]
        self._heard = [0.0, 0.0]
        #: the IPs the side's SDP named: with its signalling IP, its own
        self.sdp_ips: Tuple[str, ...] = ()
        #: a packet from one of the side's own IPs was accepted on the slot
        self._own_heard = [False, False]
        #: the slot's latch is to one of the side's own IPs
        self._latched_own = [False, False]
        #: a foreign source on probation: (source, SSRC, last seq, count)
        self._candidate: Optional[Tuple[Address, bytes, int, int]] = None
        self.sinks: List[IMediaSink] = []
        self.received = 0
        self.sent = 0

    def __repr__(self) -> str:
        return f"<Leg {self.rtp_port} side={self.side} user={self.user!r}>"

    # -- the SDP of this side ----------------------------------------------

    def expect(self, rtp: Optional[Address], rtcp: Optional[Address], mux: bool,
               ips: Optional[Tuple[str, ...]] = None) -> None:
        """The side's (new) SDP: where it receives, if the address was
        allowed (``rtp``, ``rtcp``), and the IPs it named (``ips``, by
        default those of ``rtp`` and ``rtcp``); its latches may move to a
        new source now."""
        self.expected = [rtp, rtcp]
        self.mux = mux
        self._relatch = [True, True]
        if ips is None:
            ips = tuple(a[0] for a in (rtp, rtcp) if a is not None)
        ips = tuple(ip for ip in ips if ip and ip != "0.0.0.0")
        if ips and set(ips) != set(self.sdp_ips):  # (a hold names none: kept)
            self.sdp_ips = ips
            self._own_heard = [False, False]
            self._latched_own = [self._own(a) for a in self.latched]

    def _own(self, source: Optional[Address]) -> bool:
        """``source`` is at the side's signalling IP or an IP of its SDP."""
        return source is not None and (
            source[0] == self.call.signal[self.side] or source[0] in self.sdp_ips)

    # -- the seam for RTP over HTTP ----------------------------------------

    def attach(self, sink: IMediaSink) -> None:
        """From now on the packets for this side go to ``sink``, not UDP."""
        if not self.closed and sink not in self.sinks:
            self.sinks.append(sink)

    def detach(self, sink: IMediaSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def inject(self, packet: bytes, rtcp: bool) -> None:
        """A packet from this side, as if it came on the leg's port from the
        latched address."""
        if self.closed or len(packet) < MIN_PACKET or packet[0] >> 6 != 2:
            self.relay._count("dropped_invalid")
            return
        self._accepted()
        if self.peer is not None:
            self.peer.deliver(packet, rtcp)

    # -- packets -------------------------------------------------------------

    def datagram(self, packet: bytes, source: Address, slot: int) -> None:
        """A datagram on the leg's RTP (``slot`` 0) or RTCP (1) port."""
        if self.closed:
            return
        relay = self.relay
        if len(packet) < MIN_PACKET or packet[0] >> 6 != 2:
            relay._count("dropped_invalid")
            return
        now = relay.clock.seconds()
        latched = self.latched[slot]
        if latched != source:
            free = latched is None or self._relatch[slot] \
                or now - self._heard[slot] >= RELATCH_IDLE
            own = self._own(source)
            if own:
                # the side's own address: at once, over a stranger's latch too
                if not free and self._latched_own[slot]:
                    relay._count("dropped_foreign")
                    return
                self._own_heard[slot] = True
            elif not free or self._own_heard[slot] or not self._probation(packet, source, slot):
                relay._count("dropped_foreign")
                return
            self.latched[slot] = source
            self._latched_own[slot] = own
            self._candidate = None
            relay._count("latched")
        # the first packet after a new SDP settles the latch, from the old
        # source as from a new one
        self._relatch[slot] = False
        self._heard[slot] = now
        self._accepted(now)
        if self.peer is not None:
            self.peer.deliver(packet, slot == 1 or is_rtcp(packet))

    def _probation(self, packet: bytes, source: Address, slot: int) -> bool:
        """A packet from a source that is none of the side's own: does it
        latch the (free) slot?  On the RTCP port, when it comes from the
        host the RTP port latched to; on the RTP port, as the
        :data:`PROBATION`-th consecutive RTP packet of one SSRC from it."""
        if slot == 1 or is_rtcp(packet):
            rtp = self.latched[0]
            return slot == 1 and rtp is not None and rtp[0] == source[0]
        if len(packet) < 12:
            return False
        seq, ssrc = int.from_bytes(packet[2:4], "big"), packet[8:12]
        known = self._candidate
        count = 1
        if known is not None and known[0] == source and known[1] == ssrc \
                and (known[2] + 1) & 0xFFFF == seq:
            count = known[3] + 1
        self._candidate = (source, ssrc, seq, count)
        return count >= PROBATION

    def _accepted(self, now: Optional[float] = None) -> None:
        self.received += 1
        self.relay.received += 1
        self.call.last_media = self.relay.clock.seconds() if now is None else now

    def deliver(self, packet: bytes, rtcp: bool) -> None:
        """Send ``packet`` towards this leg's side."""
        if self.closed:
            return
        if self.sinks:
            for sink in list(self.sinks):
                sink.send(packet, rtcp)
            self.sent += 1
            self.relay.forwarded += 1
            return
        slot = 1 if rtcp and not self.mux else 0
        destination = self.latched[slot] or self.expected[slot]
        if destination is None and slot == 1:
            rtp = self.latched[0]
            destination = (rtp[0], rtp[1] + 1) if rtp is not None else None
        if destination is None:
            self.relay._count("dropped_no_destination")
            return
        self._sockets[slot].send(packet, destination)
        self.sent += 1
        self.relay.forwarded += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sinks = []
        for sock in self._sockets:
            sock.close()


class Call:
    """A relayed call: its streams (pairs of legs) and its times."""

    def __init__(self, relay: "MediaRelay", key: Tuple[str, str], users: Tuple[str, str],
                 now: float) -> None:
        self.relay = relay
        self.key = key
        self.users = users
        #: the signalling address of each side (a network peer's IP, a
        #: tunnel session's client IP), set by the SIP side
        self.signal = ["", ""]
        self.streams: List[Tuple[Leg, Leg]] = []
        self.opened_at = now
        self.last_media = now
        self.answered = False
        self.closed = False

    def __repr__(self) -> str:
        return f"<Call {self.key[0]!r} streams={len(self.streams)}>"

    def stream(self, index: int) -> Tuple[Leg, Leg]:
        """The legs of stream ``index`` (caller's, callee's), opened on
        first use; raises :class:`NoRoom`."""
        if self.closed:
            raise NoRoom("the call has ended")
        if index >= MAX_STREAMS:
            raise NoRoom(f"at most {MAX_STREAMS} media streams a call are relayed")
        while len(self.streams) <= index:
            self.streams.append(self.relay._open_stream(self, len(self.streams)))
        return self.streams[index]

    def legs(self) -> List[Leg]:
        return [leg for pair in self.streams for leg in pair]

    def answer(self) -> None:
        """The INVITE got a 2xx: the media timeout applies from now on."""
        if not self.answered:
            self.answered = True
            self.last_media = self.relay.clock.seconds()


class MediaRelay:
    """Port pairs, calls and their timeouts.  ``ports`` is the inclusive
    range ``(low, high)``; RTP ports are its even ones."""

    def __init__(self, clock: Any, udp: IUdpLayer, *, ports: Tuple[int, int] = PORTS,
                 max_calls: int = MAX_CALLS, timeout: float = MEDIA_TIMEOUT,
                 ring_timeout: float = RING_TIMEOUT,
                 rng: Optional[random.Random] = None) -> None:
        low, high = ports
        if not 1024 <= low < high <= 65535:
            raise ValueError("the relay port range must be LOW-HIGH within 1024-65535")
        self.clock = clock
        self.udp = udp
        self.ports = (low, high)
        self.max_calls = max_calls
        self.timeout = timeout
        self.ring_timeout = ring_timeout
        self.rng = rng or random.SystemRandom()
        first = low + (low % 2)
        self._free: List[int] = list(range(first, high, 2))
        self._legs: Dict[int, Leg] = {}
        self.calls: Dict[Tuple[str, str], Call] = {}
        self.counters: Dict[str, int] = {}
        #: packets forwarded (kept apart from the counters: it is the hot path)
        self.forwarded = 0
        #: packets accepted on a leg (or injected): what should be forwarded
        self.received = 0
        self._sweep: Any = None

    @property
    def capacity(self) -> int:
        """Port pairs the range holds."""
        first = self.ports[0] + (self.ports[0] % 2)
        return len(range(first, self.ports[1], 2))

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    def stats(self) -> Dict[str, int]:
        figures = dict(self.counters)
        figures["forwarded"] = self.forwarded
        figures["received"] = self.received
        figures["calls"] = len(self.calls)
        figures["port_pairs_in_use"] = len(self._legs) // 2
        figures["port_pairs_free"] = len(self._free)
        return figures

    # -- calls -----------------------------------------------------------------

    def find(self, call_id: Optional[str], *tags: Optional[str]) -> Optional[Call]:
        """The call of Call-ID ``call_id`` whose caller's tag is one of
        ``tags`` (a message's From and To tags)."""
        if not call_id:
            return None
        for tag in tags:
            call = self.calls.get((call_id, tag or ""))
            if call is not None:
                return call
        return None

    def open_call(self, call_id: str, caller_tag: str, users: Tuple[str, str]) -> Call:
        """A new relayed call; ``users`` the users of the caller's and the
        callee's sides ("" for a network side).  Raises :class:`NoRoom`."""
        key = (call_id, caller_tag or "")
        known = self.calls.get(key)
        if known is not None:
            return known
        if len(self.calls) >= self.max_calls:
            self._count("refused_calls")
            raise NoRoom(f"the media relay carries {self.max_calls} calls already")
        self._check_user(users[CALLER])
        call = Call(self, key, users, self.clock.seconds())
        self.calls[key] = call
        self._count("calls_opened")
        if self._sweep is None:
            self._sweep = self.clock.callLater(SWEEP, self._check)
        return call

    def _check_user(self, user: str) -> None:
        """Raises :class:`UserLimit` when ``user`` has its share already."""
        if not user:
            return
        mine = [c for c in self.calls.values() if c.users[CALLER] == user]
        if len(mine) >= USER_CALLS:
            self._count("refused_user_calls")
            raise UserLimit(f"{user} has {USER_CALLS} relayed calls already")
        if sum(1 for c in mine if not c.answered) >= USER_RINGING:
            self._count("refused_user_ringing")
            raise UserLimit(f"{user} has {USER_RINGING} unanswered relayed calls already")

    def close(self, call: Optional[Call], why: str) -> None:
        """Close ``call`` and its ports (the sinks get nothing more)."""
        if call is None or call.closed:
            return
        call.closed = True
        for leg in call.legs():
            self._release(leg)
        if self.calls.get(call.key) is call:
            del self.calls[call.key]
        self._count(f"closed_{why}")
        log.debug("relayed call {key} closed: {why}", key=call.key[0], why=why)

    def leg_for(self, port: int) -> Optional[Leg]:
        """The leg a relay port (RTP or RTCP) belongs to."""
        return self._legs.get(port)

    def stop(self) -> None:
        for call in list(self.calls.values()):
            self.close(call, "stopped")
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    # -- ports ------------------------------------------------------------------

    def _open_stream(self, call: Call, index: int) -> Tuple[Leg, Leg]:
        legs = []
        try:
            for side in (CALLER, CALLEE):
                legs.append(self._open_leg(call, side, index))
        except NoRoom:
            for leg in legs:
                self._release(leg)
            raise
        caller, callee = legs
        caller.peer, callee.peer = callee, caller
        return caller, callee

    def _release(self, leg: Leg) -> None:
        leg.close()
        self._legs.pop(leg.rtp_port, None)
        self._legs.pop(leg.rtcp_port, None)
        self._free.append(leg.rtp_port)

    def _open_leg(self, call: Call, side: int, index: int) -> Leg:
        busy: List[int] = []  # not tried again for this leg, free again after
        try:
            for _ in range(BIND_ATTEMPTS):
                if not self._free:
                    break
                at = self.rng.randrange(len(self._free))
                self._free[at], self._free[-1] = self._free[-1], self._free[at]
                port = self._free.pop()
                holder: List[Leg] = []
                try:
                    rtp = self.udp.open(port, lambda data, src: holder[0].datagram(data, src, 0))
                except PortBusy:
                    busy.append(port)
                    continue
                try:
                    rtcp = self.udp.open(port + 1,
                                         lambda data, src: holder[0].datagram(data, src, 1))
                except PortBusy:
                    rtp.close()
                    busy.append(port)
                    continue
                leg = Leg(self, call, side, index, call.users[side], port, (rtp, rtcp))
                holder.append(leg)
                self._legs[port] = self._legs[port + 1] = leg
                return leg
        finally:
            if busy:
                self._count("ports_busy", len(busy))
                self._free[:0] = busy
        self._count("refused_ports")
        raise NoRoom("no media relay port pair is left")

    # -- timeouts -----------------------------------------------------------------

    def _check(self) -> None:
        self._sweep = None
        now = self.clock.seconds()
        for call in list(self.calls.values()):
            if call.answered:
                if now - call.last_media >= self.timeout:
                    self.close(call, "timeout")
            elif now - call.opened_at >= self.ring_timeout:
                self.close(call, "unanswered")
        if self.calls:
            self._sweep = self.clock.callLater(SWEEP, self._check)


# -- the reactor's UDP -------------------------------------------------------------

class _RelayProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, receive: Callable[[bytes, Address], None]) -> None:
        self.receive = receive

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self.receive(data, (addr[0], addr[1]))
        except Exception:
            log.failure("a relayed datagram from {addr} could not be handled", addr=addr)


@implementer(IUdpPort)
class _ReactorPort:
    __slots__ = ("port", "sendto")

    def __init__(self, port: Any, protocol: _RelayProtocol) -> None:
        self.port = port
        # the socket's own sendto: Twisted's Port.write parses the address
        # again for every datagram (as long as the rest of the relay's path);
        # the relay only ever sends to addresses a socket reported or that
        # were checked when the SDP was read
        sock = getattr(port, "socket", None)
        self.sendto = sock.sendto if sock is not None else protocol.transport.write

    def send(self, data: bytes, address: Address) -> None:
        try:
            self.sendto(data, address)
        except OSError as e:  # a full buffer, an ICMP error of an earlier datagram
            log.debug("relayed datagram to {address} not sent: {why}", address=address,
                      why=str(e) or type(e).__name__)

    def close(self) -> None:
        self.port.stopListening()


@implementer(IUdpLayer)
class ReactorUdp:
    """:class:`IUdpLayer` on the reactor, bound to ``interface`` ("" every
    IPv4 interface, like the SIP listener)."""

    def __init__(self, reactor: Any, interface: str = "") -> None:
        self.reactor = reactor
        self.interface = interface

    def open(self, port: int, receive: Callable[[bytes, Address], None]) -> IUdpPort:
        protocol = _RelayProtocol(receive)
        try:
            listening = self.reactor.listenUDP(port, protocol, interface=self.interface)
        except CannotListenError as e:
            raise PortBusy(str(e))
        return _ReactorPort(listening, protocol)
