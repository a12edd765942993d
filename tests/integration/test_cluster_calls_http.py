"""Browser calls across the boxes of a cluster, through the HTTP API: two
real nodes share one real ``redis-server``; alice's session is held by box
A, bob's by box B, and every signalling POST goes to the node that does
not hold the sender's session, as a page served by the other node sends
it (docs/calls.md, "Calls across boxes")."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presence_harness import (  # noqa: E402
    HeartbeatReader, expect, login, register, unique_name,
)
from cluster_support import box_of, redis, two_nodes  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.integration

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = '{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0"}'


def person(node, via, prefix: str):
    """A user logged in through ``via`` whose session ``node`` holds."""
    user = login(via.api(), register(via.api(), unique_name(prefix)))
    assert user.login_body["host_box"] == box_of(node), user.login_body
    return user


def signal(node, user, action: str, **form):
    return node.api().post("/api/call", form={**user.auth, "action": action, **form})


def call_frame(hb: HeartbeatReader, line: str):
    return hb.wait_for(line, timeout=5)


def test_alice_on_box_a_calls_bob_on_box_b(two_nodes):
    a, b = two_nodes
    alice = person(a, a, "alice")          # a tie: the answering node
    bob = person(b, b, "bob")              # b holds fewer
    with HeartbeatReader.open(a.host, a.port, alice.name, alice.session) as ha, \
            HeartbeatReader.open(b.host, b.port, bob.name, bob.session) as hb:
        r = expect(signal(b, alice, "offer", to=bob.name, sdp=SDP, call="xcall-0001"), 200,
                   "the offer through box B")
        assert r.json() == {"call": "xcall-0001", "caller": alice.name,
                            "callee": bob.name, "state": "ringing"}
        offer = call_frame(hb, f"msg call offer {alice.name} xcall-0001")
        assert offer.payload.startswith("v=0\no=- 1 2 IN IP4 127.0.0.1")
        call_frame(ha, f"msg call ringing {bob.name} xcall-0001")
        expect(signal(b, alice, "ice", call="xcall-0001", candidate=CANDIDATE), 204)
        r = expect(signal(a, bob, "answer", call="xcall-0001", sdp=SDP), 200,
                   "the answer through box A")
        assert r.json()["state"] == "active"
        assert call_frame(ha, f"msg call answer {bob.name} xcall-0001").payload.startswith("v=0")
        assert '"sdpMid":"0"' in call_frame(hb, f"msg call ice {alice.name} xcall-0001").payload
        expect(signal(a, bob, "ice", call="xcall-0001", candidate=CANDIDATE), 204)
        call_frame(ha, f"msg call ice {bob.name} xcall-0001")
        # a third person, on box A, finds bob busy with a call of box A
        carol = person(a, a, "carol")
        r = expect(signal(b, carol, "offer", to=bob.name, sdp=SDP), 200, "carol's offer")
        assert (r.json()["state"], r.json()["reason"]) == ("ended", "busy")
        # bob, in a call, starts no other
        expect(signal(b, bob, "offer", to=alice.name, sdp=SDP), 409, "bob in a call")
        expect(signal(b, alice, "hangup", call="xcall-0001"), 204, "the hang-up")
        call_frame(hb, f"msg call end {alice.name} xcall-0001 hangup")
        call_frame(ha, f"msg call end {bob.name} xcall-0001 hangup")
        r = signal(a, bob, "hangup", call="xcall-0001")
        assert r.status == 404, r.body
        # once it ended, bob is free again: carol gets through
        r = expect(signal(a, carol, "offer", to=bob.name, sdp=SDP, call="xcall-0002"), 200)
        assert r.json()["state"] == "ringing"
        call_frame(hb, f"msg call offer {carol.name} xcall-0002")


def test_the_callers_box_dying_ends_the_call_offline_for_the_callee(two_nodes):
    a, b = two_nodes
    alice = person(a, a, "alice")
    bob = person(b, b, "bob")
    with HeartbeatReader.open(b.host, b.port, bob.name, bob.session) as hb, \
            HeartbeatReader.open(a.host, a.port, alice.name, alice.session):
        expect(signal(a, alice, "offer", to=bob.name, sdp=SDP, call="xcall-0003"), 200)
        call_frame(hb, f"msg call offer {alice.name} xcall-0003")
        expect(signal(b, bob, "answer", call="xcall-0003", sdp=SDP), 200)
        a.kill()
        # the cluster buries a box within about 11 s (docs/cluster.md)
        hb.wait_for(f"msg call end {alice.name} xcall-0003 offline", timeout=20)
