"""The real server's SIP proxy is no open relay (issue 11), end to end.

A "victim" listens on free loopback ports (TCP and UDP), as a loopback-only
Redis would; guests and registered users ``POST /sip`` requests aimed at it
(and at the server's own HTTP and SMSC ports, and at a name that resolves to
loopback), with ``--sip-outbound public`` so that even users allowed to call
out are refused.  Each request gets its ``403`` as a ``msg sipresp`` frame on
the user's heartbeat (the proxy has decided by then), and the victim has
received nothing.
"""

from __future__ import annotations

import select
import socket
from typing import Iterator, Tuple

import pytest

from presence.sip.testing import request
from presence_harness import User, expect, new_user
from test_sipp import free_port

#: how long the victim is watched after the refusal arrived (a refused
#: request is never sent, so nothing can arrive later; this only bounds
#: the check)
WATCH = 1.0


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "sip": free_port(),
            "sip_outbound": "public"}


@pytest.fixture
def victim() -> Iterator[Tuple[int, socket.socket, socket.socket]]:
    """A TCP listener and a UDP socket on one free loopback port."""
    port = free_port()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    try:
        yield port, tcp, udp
    finally:
        tcp.close()
        udp.close()


def untouched(tcp: socket.socket, udp: socket.socket) -> None:
    readable, _, _ = select.select([tcp, udp], [], [], WATCH)
    assert readable == [], "the proxy reached the victim"


def guest(api) -> User:
    r = expect(api.post("/api/guest"), 200, "POST /api/guest")
    body = r.json()
    return User(body["username"], "", body["session"], body)


def post_sip(api, user: User, message) -> str:
    r = api.post("/sip", query=user.auth, body=message.to_bytes(),
                 headers={"Content-Type": "message/sip"})
    expect(r, 202, "POST /sip")
    return r.json()["txid"]


def refusal(hb, txid: str) -> str:
    """The final response to ``txid`` on the heartbeat: a 403; its text."""
    frame = hb.wait_for(lambda f: f.kind == "sipresp" and f.words[3] == txid
                        and f.words[2] != "100", timeout=10, what=f"the answer to {txid}")
    assert frame.words[2] == "403", frame
    return frame.payload.split("\n", 1)[0]


def aimed_at(method: str, uri: str, user: str):
    body = "SET pwned 1\r\n" if method == "MESSAGE" else ""
    return request(method, uri, via_host="127.0.0.1", via_port=5080,
                   from_uri=f"sip:{user}@localhost", contact=f"<sip:{user}@127.0.0.1:5080>",
                   body=body)


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "OPTIONS"])
def test_a_guest_cannot_reach_a_loopback_service(api, server, heartbeats, victim, method):
    port, tcp, udp = victim
    visitor = guest(api)
    hb = heartbeats(visitor)
    for transport in (";transport=tcp", ""):
        txid = post_sip(api, visitor, aimed_at(method, f"sip:x@127.0.0.1:{port}{transport}",
                                               visitor.name))
        assert "guests" in refusal(hb, txid)
    untouched(tcp, udp)
    assert server.running


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE"])
def test_a_registered_user_cannot_reach_a_loopback_service(api, server, heartbeats, victim,
                                                          method):
    port, tcp, udp = victim
    bob = new_user(api, "bob")
    hb = heartbeats(bob)
    targets = [f"sip:x@127.0.0.1:{port};transport=tcp", f"sip:x@127.0.0.1:{port}",
               f"sip:x@localhost:{port};transport=tcp",  # a name that resolves to loopback
               f"sip:x@10.0.0.1:{port}", f"sip:x@169.254.169.254:80;transport=tcp"]
    for uri in targets:
        assert "Forbidden" in refusal(hb, post_sip(api, bob, aimed_at(method, uri, bob.name)))
    # a Route at the victim, on a request for a user of the domain
    routed = aimed_at(method, f"sip:{bob.name}@localhost", bob.name)
    routed.add("Route", f"<sip:127.0.0.1:{port};transport=tcp;lr>")
    assert "loopback" in refusal(hb, post_sip(api, bob, routed))
    untouched(tcp, udp)


def test_the_servers_own_ports_are_refused(api, server, heartbeats):
    bob = new_user(api, "bob")
    hb = heartbeats(bob)
    own = [server.port, server.smsc_port]
    for port in [p for p in own if p]:
        txid = post_sip(api, bob, aimed_at("OPTIONS", f"sip:x@127.0.0.1:{port};transport=tcp",
                                           bob.name))
        assert "own address" in refusal(hb, txid)
    # and the server still answers
    expect(api.get("/api/stats"), 200)
