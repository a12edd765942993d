"""Between the proxy and the media relay: which calls get relay ports, and
the SDP of their messages rewritten to them.

The proxy calls :class:`MediaAnchor` where a message leaves it:
:meth:`~MediaAnchor.request` for each copy of a request it forwards (with
the hop it came from and the hop it goes to), :meth:`~MediaAnchor.response`
for each response it sends to the previous hop, :meth:`~MediaAnchor.cancel`
for a ``CANCEL`` it takes.  Only calls that cross the tunnel (a tunnel
session on either side of the first INVITE) get a relayed
:class:`~presence.sip.relay.Call`; its sides are the caller's (whose tag is
the INVITE's From tag) and the callee's, so a message's side is read from
its tags.  Any ``application/sdp`` body of such a call (INVITE, re-INVITE,
UPDATE, PRACK, ACK, and 18x/2xx answers) is recorded as what its sender's
side expects (:meth:`presence.sip.relay.Leg.expect`) and rewritten to the
legs facing the receiving side.  The call is closed at ``BYE``, at a
``CANCEL`` before the answer, and at a final non-2xx to its INVITE.

Before a side's packets have latched its leg, the relay sends to the
address its SDP named only if that address is at the side's signalling IP
(the network peer's, or the tunnel session's client address), and never to
one of the relay's own ports: the relay is no way to make the server send
UDP to a third party or into its own network (see ``docs/security.md``).
Any other side latches with its first packet (symmetric RTP).  The IPs the
SDP named are the side's own for latching all the same
(:meth:`presence.sip.relay.Leg.expect`).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from twisted.logger import Logger

from presence.sip import sdp as sdplib
from presence.sip.message import Message, Request, Response, bare_host
from presence.sip.proxy import Hop
from presence.sip.relay import CALLEE, CALLER, Call, MediaRelay, NoRoom

log = Logger(namespace="presence.sip.relay")


def has_sdp(message: Message) -> bool:
    ctype = (message.get("content-type") or "").split(";", 1)[0].strip().lower()
    return ctype == "application/sdp" and bool(message.body.strip())


class MediaAnchor:
    """``address_for(hop)``: the relay address a hop reaches (written into
    the SDP sent to it); ``is_local(ip)``: an address of this machine."""

    def __init__(self, relay: MediaRelay, address_for: Callable[[Hop], str],
                 is_local: Callable[[str], bool]) -> None:
        self.relay = relay
        self.address_for = address_for
        self.is_local = is_local

    # -- what the proxy calls ------------------------------------------------

    def request(self, request: Request, source: Hop, dest: Hop) -> None:
        """``request`` (the copy for ``dest``) is about to be sent.  Raises
        :class:`NoRoom` for a first INVITE the relay has no room for."""
        method = request.method
        call = self.relay.find(request.call_id, request.tag("from"), request.tag("to"))
        if method == "BYE":
            self.relay.close(call, "bye")
            return
        initial = request.tag("to") is None
        if call is None and method == "INVITE" and (source.tunnel or dest.tunnel) \
                and (initial or has_sdp(request)):
            # a new call; or a re-INVITE of a call whose relaying had ended
            # (its media timed out, say, while on hold): relayed again, its
            # sender as the caller's side
            call = self.relay.open_call(request.call_id or "", request.tag("from") or "",
                                        (_user(source), _user(dest)))
            call.signal = [_ip(source), _ip(dest)]
            try:
                self._rewrite(request, call, CALLER, dest, strict=initial)
            except NoRoom:
                self.relay.close(call, "no_room")
                raise
            return
        if call is None or not has_sdp(request):
            return
        side = CALLER if request.tag("from") == call.key[1] else CALLEE
        self._rewrite(request, call, side, dest)

    def response(self, response: Response, method: str, initial: bool, upstream: Hop) -> None:
        """``response`` to a ``method`` request (``initial``: a first
        INVITE, with no To tag) is about to go to ``upstream``."""
        call = self.relay.find(response.call_id, response.tag("from"), response.tag("to"))
        if call is None:
            return
        code = response.code
        if method == "INVITE" and initial and code >= 300:
            self.relay.close(call, "rejected")
            return
        if method == "INVITE" and 200 <= code < 300:
            call.answer()
        if 100 < code < 300 and has_sdp(response):
            # a response comes from the side that did not send the request
            side = CALLEE if response.tag("from") == call.key[1] else CALLER
            self._rewrite(response, call, side, upstream)

    def cancel(self, request: Request) -> None:
        """A ``CANCEL``: the call ends unless it was answered already."""
        call = self.relay.find(request.call_id, request.tag("from"))
        if call is not None and not call.answered:
            self.relay.close(call, "cancel")

    def stop(self) -> None:
        self.relay.stop()

    # -- the SDP ---------------------------------------------------------------

    def _rewrite(self, message: Message, call: Call, side: int, dest: Hop,
                 strict: bool = False) -> None:
        """The SDP of ``message`` comes from ``side`` and goes to the other."""
        if not has_sdp(message):
            return
        try:
            parsed = sdplib.parse(message.body)
        except (ValueError, UnicodeDecodeError) as e:
            log.debug("SDP not relayed: {why}", why=str(e))
            return  # not SDP we understand: passed as it is
        ports: List[Optional[int]] = []
        other = 1 - side
        signal = call.signal
        for media in parsed.media:
            if not media.enabled:
                ports.append(None)
                continue
            try:
                pair = call.stream(media.index)
            except NoRoom:
                if strict and media.index == 0:
                    raise
                ports.append(None)  # this stream is disabled (port 0)
                continue
            sender = pair[side]
            rtp, rtcp = media.rtp_address(), media.rtcp_address()
            sender.expect(self._allowed(rtp, signal[side]), self._allowed(rtcp, signal[side]),
                          media.mux, tuple(bare_host(a[0]) for a in (rtp, rtcp) if a))
            ports.append(pair[other].rtp_port)
        message.body = sdplib.rewrite(parsed, self.address_for(dest), ports)

    def _allowed(self, address: Optional[Tuple[str, int]],
                 signalling_ip: str) -> Optional[Tuple[str, int]]:
        """``address`` if the relay may send there before the side latched."""
        if address is None:
            return None
        ip = bare_host(address[0])
        if self.relay.leg_for(address[1]) is not None and (
                ip == signalling_ip or self.is_local(ip)):
            # one of our own relay ports (an SDP that presence-sip-bridge
            # --media http rewrote to the relay): never a destination, or the
            # other side's media would come back to its sender
            return None
        if ip == signalling_ip:
            return (ip, address[1])
        # any other address, public or not, may be a third party's: the side
        # latches with its first packet instead
        return None


def _user(hop: Hop) -> str:
    session = hop.session if hop.tunnel else None
    return session.user.name if session is not None else ""


def _ip(hop: Hop) -> str:
    if hop.tunnel:
        return bare_host(getattr(hop.session, "ip", "") or "")
    return bare_host(hop.host)

