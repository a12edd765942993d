"""Test doubles and message builders for the SIP front-end (used by the unit
tests and by ``bench/sip_bench.py``'s self-check).

:class:`FakeNetwork` records what the proxy sends instead of sending it;
:func:`invite` and friends build requests the way a user agent does.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from zope.interface import implementer

from presence.sip.message import Message, ParseError, Request, Response, parse
from presence.sip.proxy import Hop, ISipNetwork

SDP = (
    "v=0\r\n"
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)


#: a public (globally reachable) address that the fake network resolves
#: names to: the proxy may send there (nothing is ever sent for real)
PUBLIC_HOST = "93.184.216.34"


@implementer(ISipNetwork)
class FakeNetwork:
    """Records ``(message, hop)`` for every send; names resolve to
    :data:`PUBLIC_HOST` unless ``resolutions`` (name -> list of addresses, or
    a Deferred) says otherwise; our address is ``192.0.2.1``."""

    def __init__(self, port: int = 5060, local: str = "192.0.2.1") -> None:
        self.port = port
        self.local = local
        self.sent: List[Tuple[Message, Hop]] = []
        self.errors: List[Callable[[], None]] = []
        self.unreachable: set = set()
        self.resolutions: dict = {}

    def send(self, data: bytes, hop: Hop, on_error: Optional[Callable[[], None]] = None) -> None:
        if (hop.host, hop.port) in self.unreachable:
            if on_error is not None:
                on_error()
            return
        try:
            message = parse(data)
        except ParseError as e:  # an answer to a broken request copies its faults
            message = e.partial
        self.sent.append((message, hop))

    def local_host(self, hop: Hop) -> str:
        return self.local

    def resolve(self, host: str) -> defer.Deferred:
        if isIPAddress(host) or isIPv6Address(host):
            return defer.succeed([host])
        if host in self.resolutions:
            found = self.resolutions[host]
            return found if isinstance(found, defer.Deferred) else defer.succeed(list(found))
        return defer.succeed([PUBLIC_HOST])

    def is_local(self, host: str) -> bool:
        return host in (self.local, "127.0.0.1")

    def take(self) -> List[Tuple[Message, Hop]]:
        out, self.sent = self.sent, []
        return out


def branch() -> str:
    return "z9hG4bK" + secrets.token_hex(6)


def request(method: str, uri: str, *, via_host: str = "198.51.100.7", via_port: int = 5062,
            transport: str = "UDP", call_id: Optional[str] = None, cseq: int = 1,
            from_uri: str = "sip:carol@example.net", to_uri: Optional[str] = None,
            to_tag: Optional[str] = None, from_tag: str = "ft1", body: str = "",
            max_forwards: Optional[int] = 70, branch_id: Optional[str] = None,
            contact: Optional[str] = "<sip:carol@198.51.100.7:5062>",
            extra: Tuple[Tuple[str, str], ...] = ()) -> Request:
    """A request as a user agent sends it."""
    req = Request(method, uri)
    req.add("Via", f"SIP/2.0/{transport} {via_host}:{via_port};branch={branch_id or branch()}"
                   ";rport")
    if max_forwards is not None:
        req.add("Max-Forwards", str(max_forwards))
    req.add("From", f"<{from_uri}>;tag={from_tag}")
    to = f"<{to_uri or uri}>"
    if to_tag:
        to += f";tag={to_tag}"
    req.add("To", to)
    req.add("Call-ID", call_id or secrets.token_hex(8) + "@198.51.100.7")
    req.add("CSeq", f"{cseq} {method}")
    if contact and method not in ("ACK", "CANCEL", "BYE"):
        req.add("Contact", contact)
    for name, value in extra:
        req.add(name, value)
    if body:
        req.add("Content-Type", "application/sdp")
        req.body = body.encode("utf-8")
    return req


def invite(uri: str = "sip:bob@example.org", **kw: Any) -> Request:
    kw.setdefault("body", SDP)
    return request("INVITE", uri, **kw)


def answer(req: Request, code: int, *, to_tag: str = "callee1",
           contact: Optional[str] = None, body: str = "",
           record_route: bool = True) -> Response:
    """The response a user agent sends to ``req`` (Vias and Record-Route copied)."""
    resp = Response(code)
    for value in req.get_all("via"):
        resp.add("Via", value)
    if record_route and code > 100:
        for value in req.get_all("record-route"):
            resp.add("Record-Route", value)
    resp.add("From", req.get("from"))
    to = req.get("to")
    if code > 100 and "tag=" not in to:
        to += f";tag={to_tag}"
    resp.add("To", to)
    resp.add("Call-ID", req.call_id)
    resp.add("CSeq", req.get("cseq"))
    if contact:
        resp.add("Contact", contact)
    if body:
        resp.add("Content-Type", "application/sdp")
        resp.body = body.encode("utf-8")
    return resp


class FakeUdpPort:
    """A bound relay port of :class:`FakeUdp`: records what it sends."""

    def __init__(self, layer: "FakeUdp", port: int, receive: Callable) -> None:
        self.layer = layer
        self.port = port
        self.receive = receive
        self.closed = False

    def send(self, data: bytes, address: Tuple[str, int]) -> None:
        assert not self.closed, "a closed relay port sent a datagram"
        self.layer.sent.append((self.port, data, address))

    def close(self) -> None:
        self.closed = True
        self.layer.bound.pop(self.port, None)


class FakeUdp:
    """The relay's UDP layer in memory (:class:`presence.sip.relay.IUdpLayer`):
    ``bound`` port -> :class:`FakeUdpPort`, ``sent`` ``(from port, data,
    to address)``; ``busy`` ports cannot be bound; :meth:`arrive` delivers a
    datagram to a bound port."""

    def __init__(self) -> None:
        self.bound: dict = {}
        self.sent: List[Tuple[int, bytes, Tuple[str, int]]] = []
        self.busy: set = set()

    def open(self, port: int, receive: Callable) -> FakeUdpPort:
        from presence.sip.relay import PortBusy
        if port in self.busy or port in self.bound:
            raise PortBusy(f"port {port} is in use")
        bound = self.bound[port] = FakeUdpPort(self, port, receive)
        return bound

    def arrive(self, port: int, data: bytes, source: Tuple[str, int]) -> bool:
        """A datagram from ``source`` to relay port ``port``; False if the
        port is not bound (it would be lost)."""
        bound = self.bound.get(port)
        if bound is None:
            return False
        bound.receive(data, source)
        return True

    def take(self) -> List[Tuple[int, bytes, Tuple[str, int]]]:
        out, self.sent = self.sent, []
        return out


def rtp_packet(seq: int = 1, payload: bytes = b"\xff" * 160, pt: int = 0) -> bytes:
    """An RTP packet (version 2, payload type ``pt``)."""
    return bytes([0x80, pt & 0x7F]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") \
        + b"\x12\x34\x56\x78" + payload


def rtcp_packet() -> bytes:
    """An RTCP receiver report with no report blocks."""
    return b"\x80\xc9\x00\x01\x12\x34\x56\x78"
