"""Browser calls between the boxes of a cluster (presence.cluster.calls),
against the fake of the Redis seam of test_cluster_hub (no reactor, no
sleeps): each box has its own state machine and router, and the actions
are carried out as the HTTP front hands them over once checked."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Dict, List

import pytest
from twisted.internet import defer

from presence.cluster import calls as ccalls
from presence.cluster import hub as cluster
from presence.cluster.calls import ClusterCalls
from presence.errors import Conflict, NotFound, ServiceUnavailable
from presence.web.calls import CallsWeb

from test_cluster_hub import Cluster

SDP = "v=0\no=- 1 2 IN IP4 127.0.0.1\ns=-\nt=0 0"
CANDIDATE = '{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}'
P = "presence:"


class Boxes:
    """A cluster of ``n`` boxes, each with its browser calls."""

    def __init__(self, n: int = 2) -> None:
        self.c = Cluster(n)
        self.incall: Dict[str, str] = {}
        self.calls_seen: List[bytes] = []
        fake = self.c.redis
        real = fake.eval

        def eval(script, keys, args):
            if script in (ccalls.CLAIM, ccalls.RELEASE, ccalls.RECORD):
                if fake.down:
                    return real(script, keys, args)
                self.calls_seen.append(script)
                return defer.succeed(self.script(script, [a.decode() for a in args]))
            return real(script, keys, args)
        fake.eval = eval
        self.webs = []
        self.routers = []
        for hub in self.c.hubs:
            web = CallsWeb(SimpleNamespace(hub=hub), self.c.clock, ring_timeout=30)
            web.router = ClusterCalls(hub, web.calls, self.c.clock)
            self.webs.append(web)
            self.routers.append(web.router)
        self.channels = {}

    def script(self, script: bytes, a: List[str]):
        if script == ccalls.RECORD:
            found = self.incall.get(a[0])
            return None if found is None else found.encode()
        if script == ccalls.RELEASE:
            for user in a[2:]:
                if user in self.incall and json.loads(self.incall[user]) == [a[0], a[1]]:
                    del self.incall[user]
            return 1
        callid, owner, caller, callee = a[:4]

        def holder(user):
            value = self.incall.get(user)
            if value is not None and self.c.redis.alive(json.loads(value)[1]):
                return value
            return None
        for verdict, user in (("self", caller), ("busy", callee)):
            value = holder(user)
            if value is not None:
                return [verdict.encode(), value.encode()]
        value = json.dumps([callid, owner])
        self.incall[caller] = self.incall[callee] = value
        return [b"ok", value.encode()]

    def login(self, box: int, name: str):
        """A session of ``name`` on box ``box``, its heartbeat held."""
        hub = self.c.hubs[box]
        n = len(self.c.redis.sessions)
        session = hub.login_local(name, f"sid-{name}-{n:016d}", "10.1.1.1")
        self.c.redis.pump()
        self.channels[session.id] = self.c.hold(session)
        return session

    def act(self, via: int, session, action: str, **p):
        """``session`` signals through box ``via``: (status, body), or the
        error raised."""
        p.setdefault("call", None)
        d = defer.ensureDeferred(self.routers[via].act(action, session.id, session.name, p))
        self.c.redis.pump()
        results = []
        d.addBoth(results.append)
        assert results, "no answer"
        result = results[0]
        if hasattr(result, "value"):
            return result.value
        return result

    def heads(self, session) -> List[str]:
        return [" ".join(("msg", f.kind) + f.args) for _, f in self.channels[session.id].sent
                if f.kind == "call"]

    def payloads(self, session) -> List[str]:
        return [f.payload for _, f in self.channels[session.id].sent if f.kind == "call"]

    def advance(self, seconds: float) -> None:
        self.c.clock.advance(seconds)
        self.c.redis.pump()

    def kill(self, box: int) -> None:
        """Box ``box`` dies (no refresh, no messages); the others bury it."""
        dead = self.c.hubs[box]
        self.c.redis.hubs.remove(dead)
        self.c.clock.advance(cluster.BOX_TTL + 1)
        for hub in self.c.redis.hubs:
            hub.refresh()
        self.c.redis.pump()


@pytest.fixture
def boxes():
    return Boxes(2)


def offer(b: Boxes, via: int, caller, to: str, call: str = "call-0001"):
    return b.act(via, caller, "offer", to=to, sdp=SDP, call=call)


def answered(b: Boxes):
    """alice on box A calls bob on box B, who answers: (alice, bob)."""
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    offer(b, 0, alice, "bob")
    assert b.act(1, bob, "answer", call="call-0001", sdp=SDP)[0] == 200
    return alice, bob


def test_a_whole_call_between_two_boxes_through_either_node(boxes):
    b = boxes
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    # alice's offer lands on bob's box: carried out on alice's box, the owner
    assert offer(b, 1, alice, "bob") == (200, {"call": "call-0001", "caller": "alice",
                                                "callee": "bob", "state": "ringing"})
    assert "call-0001" in b.webs[0].calls.calls and not b.webs[1].calls.calls
    assert b.heads(bob) == ["msg call offer alice call-0001"]
    assert b.payloads(bob) == [SDP]
    assert b.heads(alice) == ["msg call ringing bob call-0001"]
    assert b.act(1, alice, "ice", call="call-0001", candidate=CANDIDATE) == (204, None)
    # bob answers through box A, then signals through his own box B
    status, body = b.act(0, bob, "answer", call="call-0001", sdp=SDP)
    assert (status, body["state"]) == (200, "active")
    assert b.heads(alice)[1:] == ["msg call answer bob call-0001"]
    assert b.heads(bob)[1:] == ["msg call ice alice call-0001"]
    assert b.payloads(bob)[1] == CANDIDATE
    looked_up = len(b.calls_seen)
    assert b.act(1, bob, "ice", call="call-0001", candidate=CANDIDATE) == (204, None)
    assert b.heads(alice)[2:] == ["msg call ice bob call-0001"]
    assert len(b.calls_seen) == looked_up     # bob's box knew the call's box
    assert b.act(1, bob, "hangup", call="call-0001") == (204, None)
    assert b.heads(alice)[-1] == "msg call end bob call-0001 hangup"
    assert b.heads(bob)[-1] == "msg call end alice call-0001 hangup"
    assert b.incall == {}                      # the record is released
    error = b.act(1, bob, "hangup", call="call-0001")
    assert isinstance(error, NotFound)
    assert not b.routers[0].remote and not b.routers[1].remote


def test_errors_of_the_calls_box_reach_the_node_that_got_the_request(boxes):
    b = boxes
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    offer(b, 0, alice, "bob")
    error = b.act(1, bob, "ice", call="call-0001", candidate=CANDIDATE)
    assert isinstance(error, Conflict) and "answer the call" in error.message
    carol = b.login(1, "carol")
    assert isinstance(b.act(1, carol, "hangup", call="call-0001"), NotFound)
    assert isinstance(offer(b, 1, alice, "carol", call="call-0002"), Conflict)


def test_busy_counts_the_calls_of_every_box(boxes):
    b = boxes
    alice, bob, carol = b.login(0, "alice"), b.login(1, "bob"), b.login(1, "carol")
    offer(b, 1, carol, "bob", call="call-bc01")          # box B's call
    assert b.act(1, bob, "answer", call="call-bc01", sdp=SDP)[0] == 200
    status, body = offer(b, 0, alice, "bob", call="call-ab01")
    assert (status, body["state"], body["reason"]) == (200, "ended", "busy")
    assert b.heads(alice) == ["msg call end bob call-ab01 busy"]
    assert b.heads(bob) == ["msg call offer carol call-bc01"]   # never rung by alice
    # once that call ends, alice gets through
    b.act(0, carol, "hangup", call="call-bc01")
    assert offer(b, 0, alice, "bob", call="call-ab02")[1]["state"] == "ringing"


def test_the_callees_sessions_on_every_box_ring_and_the_first_accept_wins(boxes):
    b = boxes
    alice, bob_a, bob_b = b.login(0, "alice"), b.login(0, "bob"), b.login(1, "bob")
    offer(b, 1, alice, "bob")
    assert b.heads(bob_a) == b.heads(bob_b) == ["msg call offer alice call-0001"]
    assert b.act(1, bob_b, "answer", call="call-0001", sdp=SDP)[0] == 200
    assert b.heads(bob_a)[-1] == "msg call end alice call-0001 elsewhere"
    error = b.act(0, bob_a, "answer", call="call-0001", sdp=SDP)
    assert isinstance(error, Conflict) and "not ringing here" in error.message
    assert b.heads(alice)[-1] == "msg call answer bob call-0001"


def test_a_call_of_another_box_rings_out_noanswer(boxes):
    b = boxes
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    offer(b, 0, alice, "bob")
    b.advance(30)
    assert b.heads(alice)[-1] == "msg call end bob call-0001 noanswer"
    assert b.heads(bob)[-1] == "msg call end alice call-0001 noanswer"
    assert b.incall == {}


def test_the_calls_box_dying_ends_it_offline_on_the_other_and_frees_the_callee(boxes):
    b = boxes
    alice, bob = answered(b)
    b.kill(0)                                   # within the dead-box detection
    assert b.heads(bob)[-1] == "msg call end alice call-0001 offline"
    assert not b.routers[1].remote
    # its record no longer counts: bob can be called again
    carol = b.login(1, "carol")
    assert offer(b, 1, carol, "bob", call="call-0002")[1]["state"] == "ringing"


def test_the_callees_box_dying_ends_the_call_offline_for_the_caller(boxes):
    b = boxes
    alice, bob = answered(b)
    b.kill(1)
    b.advance(1)                                # the calls' check
    assert b.heads(alice)[-1] == "msg call end bob call-0001 offline"
    assert b.incall == {}


def test_a_remote_callees_session_ending_ends_the_call_offline(boxes):
    b = boxes
    alice, bob = answered(b)
    b.c.hubs[1].end(b.c.hubs[1].session(bob.id), "logout")
    b.c.redis.pump()
    b.advance(1)
    assert b.heads(alice)[-1] == "msg call end bob call-0001 offline"


def test_a_box_that_does_not_answer_gives_503_in_time(boxes):
    b = boxes
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    offer(b, 0, alice, "bob")
    b.c.hubs[0].extra_handlers.pop("callreq")       # box A hears, never answers
    d = defer.ensureDeferred(b.routers[1].act("hangup", bob.id, "bob", {"call": "call-0001"}))
    b.c.redis.pump()
    results = []
    d.addBoth(results.append)
    assert not results
    b.c.clock.advance(ccalls.TIMEOUT)
    assert isinstance(results[0].value, ServiceUnavailable)
    assert not b.routers[1].waiting


def test_a_stale_record_of_this_box_does_not_make_anyone_busy(boxes):
    b = boxes
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    # what a restart of box A leaves: its record of a call it no longer has
    b.incall["bob"] = json.dumps(["call-lost1", b.c.hubs[0].me])
    assert offer(b, 0, alice, "bob")[1]["state"] == "ringing"


def test_signalling_while_redis_is_down_is_a_503(boxes):
    b = boxes
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    b.c.redis.down = True
    assert isinstance(offer(b, 0, alice, "bob"), ServiceUnavailable)
    assert isinstance(b.act(1, bob, "hangup", call="call-0001"), ServiceUnavailable)


def test_the_calls_box_stopping_cleanly_ends_it_offline_on_the_other_at_once(boxes):
    b = boxes
    alice, bob = answered(b)
    b.c.hubs[0].bury(b.c.hubs[0].me, alive=True)      # its clean stop leaves the cluster
    b.c.redis.pump()
    assert b.heads(bob)[-1] == "msg call end alice call-0001 offline"


def test_a_decline_on_the_callees_box_ends_the_call_on_the_callers(boxes):
    b = boxes
    alice, bob = b.login(0, "alice"), b.login(1, "bob")
    offer(b, 0, alice, "bob")
    assert b.act(1, bob, "decline", call="call-0001") == (204, None)
    assert b.heads(alice)[-1] == "msg call end bob call-0001 declined"
    assert b.heads(bob)[-1] == "msg call end alice call-0001 declined"
    assert b.incall == {}
