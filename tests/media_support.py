"""A fake of the media relay's leg API (``presence.sip.relay``, issue 15),
exactly as the relay exposes it to the media tunnel: ``leg_for(port)``,
``leg.user``, ``leg.attach``/``detach``, ``leg.inject``, ``leg.closed``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple


class FakeLeg:
    def __init__(self, relay: "FakeRelay", port: int, user: str) -> None:
        self.relay = relay
        self.port = self.rtp_port = port
        self.user = user
        self.closed = False
        self.sinks: List[object] = []
        #: packets injected "from this side": (packet, rtcp)
        self.injected: List[Tuple[bytes, bool]] = []
        #: packets the relay sent towards this side over UDP (no sink)
        self.udp_out: List[Tuple[bytes, bool]] = []

    def attach(self, sink) -> None:
        self.sinks = [sink]

    def detach(self, sink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def inject(self, packet: bytes, rtcp: bool) -> None:
        self.injected.append((packet, rtcp))
        peer = self.relay.peers.get(self)
        if peer is not None:
            peer.towards(packet, rtcp)

    def towards(self, packet: bytes, rtcp: bool = False) -> None:
        """The relay forwards a packet towards this side."""
        if self.closed:
            return
        if self.sinks:
            self.sinks[-1].send(packet, rtcp)
        else:
            self.udp_out.append((packet, rtcp))

    def close(self) -> None:
        self.closed = True
        self.sinks = []


class FakeRelay:
    def __init__(self) -> None:
        self.legs: Dict[int, FakeLeg] = {}
        self.peers: Dict[FakeLeg, FakeLeg] = {}

    def add(self, port: int, user: str) -> FakeLeg:
        leg = FakeLeg(self, port, user)
        self.legs[port] = self.legs[port + 1] = leg
        return leg

    def pair(self, a: FakeLeg, b: FakeLeg) -> None:
        """Packets injected at one leg go out of the other (a call)."""
        self.peers[a] = b
        self.peers[b] = a

    def leg_for(self, port: int) -> Optional[FakeLeg]:
        return self.legs.get(port)


def sip_io(r: Any, phone: Tuple[str, int]) -> None:
    """Give a bridge test rig ``r`` (``bridge``, ``stub``, ``net``) its three
    moves: ``phone_gets()`` what reached the phone since the last look,
    ``phone_sends(message or bytes, source)``, ``network_gets()`` what the
    proxy sent to the network; each after moving the HTTP traffic."""
    bridge, stub, net = r.bridge, r.stub, r.net

    def phone_gets() -> List[object]:
        stub.flush()
        out = [m for m, addr in bridge.transport.written]
        bridge.transport.written.clear()
        return out

    def phone_sends(message, source=phone) -> None:
        data = message.to_bytes() if not isinstance(message, bytes) else message
        bridge.datagram(data, source)
        stub.flush()

    def network_gets() -> List[object]:
        stub.flush()
        return [m for m, _ in net.take()]

    r.phone_gets, r.phone_sends, r.network_gets = phone_gets, phone_sends, network_gets
