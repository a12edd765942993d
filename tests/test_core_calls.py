"""The call state machine (presence.core.calls), driven by a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from presence.core.calls import (
    MAX_EARLY_CANDIDATES, Calls, Party, check_candidate, check_sdp,
)
from presence.errors import BadRequest, Conflict, Forbidden, NotFound, TooLarge

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"


class Net:
    """Records the frames per session; ``dead`` sessions are not alive."""

    def __init__(self, ring_timeout: float = 30.0) -> None:
        self.clock = Clock()
        self.sent: dict = {}
        self.dead: set = set()
        ids = iter(f"call{n:08d}" for n in range(1000))
        self.calls = Calls(self.clock, self.send, lambda s: s not in self.dead,
                           ring_timeout=ring_timeout, new_id=lambda: next(ids))

    def send(self, session, frame) -> None:
        self.sent.setdefault(session, []).append(frame.text)

    def take(self, session) -> list:
        return self.sent.pop(session, [])


def ring(net: Net, callee_sessions=("b1",)):
    call = net.calls.offer(Party("alice", "a1"), "bob", list(callee_sessions), "v=0\ns=-")
    return call


def test_alice_calls_bob_every_session_rings_first_accept_wins():
    net = Net()
    call = ring(net, ("b1", "b2"))
    assert call.state == "ringing"
    assert net.take("b1") == ["msg call offer alice call00000000\nv=0\ns=-"]
    assert net.take("b2") == ["msg call offer alice call00000000\nv=0\ns=-"]
    assert net.take("a1") == ["msg call ringing bob call00000000"]
    net.calls.ice("a1", call.id, '{"candidate":"c1"}')   # early: kept
    assert net.sent == {}
    net.calls.answer("b2", call.id, "v=0\ns=answer")
    assert net.take("a1") == ["msg call answer bob call00000000\nv=0\ns=answer"]
    assert net.take("b1") == ["msg call end alice call00000000 elsewhere"]
    assert net.take("b2") == ['msg call ice alice call00000000\n{"candidate":"c1"}']
    with pytest.raises(Conflict):
        net.calls.answer("b1", call.id, "v=0")
    net.calls.ice("b2", call.id, '{"candidate":"c2"}')
    net.calls.ice("a1", call.id, '{"candidate":"c3"}')
    assert net.take("a1") == ['msg call ice bob call00000000\n{"candidate":"c2"}']
    assert net.take("b2") == ['msg call ice alice call00000000\n{"candidate":"c3"}']
    with pytest.raises(Forbidden):
        net.calls.ice("b1", call.id, '{"candidate":"c4"}')
    net.calls.hangup("b2", call.id)
    assert net.take("a1") == ["msg call end bob call00000000 hangup"]
    assert net.take("b2") == ["msg call end alice call00000000 hangup"]
    assert not net.calls.in_call("alice") and not net.calls.in_call("bob")
    with pytest.raises(NotFound):
        net.calls.hangup("a1", call.id)
    assert net.calls.stats()["ended"] == {"hangup": 1}


def test_decline_ends_the_call_on_both_sides_and_every_ringing_session():
    net = Net()
    call = ring(net, ("b1", "b2"))
    net.sent.clear()
    net.calls.decline("b1", call.id)
    assert net.take("a1") == ["msg call end bob call00000000 declined"]
    assert net.take("b1") == net.take("b2") == ["msg call end alice call00000000 declined"]
    with pytest.raises(NotFound):
        net.calls.decline("b1", call.id)


def test_caller_hanging_up_while_it_rings_cancels():
    net = Net()
    call = ring(net)
    net.sent.clear()
    net.calls.hangup("a1", call.id)
    assert net.take("b1") == ["msg call end alice call00000000 cancelled"]
    assert net.take("a1") == ["msg call end bob call00000000 cancelled"]


def test_busy_when_the_callee_is_in_a_call_and_the_caller_may_not_call_twice():
    net = Net()
    ring(net)
    net.sent.clear()
    busy = net.calls.offer(Party("carol", "c1"), "bob", ["b1"], "v=0")
    assert busy.state == "ended"
    assert net.take("c1") == ["msg call end bob call00000001 busy"]
    assert net.take("b1") == []          # bob is not disturbed
    assert net.calls.in_call("bob") and not net.calls.in_call("carol")
    busy2 = net.calls.offer(Party("carol", "c1"), "alice", ["a1"], "v=0")  # the caller too
    assert net.take("c1") == [f"msg call end alice {busy2.id} busy"]
    with pytest.raises(Conflict):
        net.calls.offer(Party("alice", "a1"), "dave", ["d1"], "v=0")


def test_no_answer_after_the_ring_timeout():
    net = Net(ring_timeout=30)
    call = ring(net)
    net.sent.clear()
    net.clock.advance(29.5)
    assert call.state == "ringing"
    net.clock.advance(0.5)
    assert call.state == "ended"
    assert net.take("a1") == ["msg call end bob call00000000 noanswer"]
    assert net.take("b1") == ["msg call end alice call00000000 noanswer"]
    assert net.clock.getDelayedCalls() == []


def test_answered_calls_do_not_time_out():
    net = Net(ring_timeout=5)
    call = ring(net)
    net.calls.answer("b1", call.id, "v=0")
    net.clock.advance(60)
    assert call.state == "active"


def test_callee_offline_at_once_mid_ring_and_mid_call():
    net = Net()
    call = net.calls.offer(Party("alice", "a1"), "bob", [], "v=0")
    assert net.take("a1") == ["msg call end bob call00000000 offline"]
    assert not net.calls.in_call("alice")

    call = ring(net, ("b1", "b2"))
    net.sent.clear()
    net.dead.add("b1")
    net.clock.advance(1)
    assert call.state == "ringing" and call.ringing == ["b2"]
    net.dead.add("b2")
    net.clock.advance(1)
    assert call.state == "ended"
    assert net.take("a1") == [f"msg call end bob {call.id} offline"]

    net.dead.clear()
    call = ring(net, ("b1",))
    net.calls.answer("b1", call.id, "v=0")
    net.sent.clear()
    net.dead.add("b1")
    net.clock.advance(1)
    assert call.state == "ended"
    assert net.take("a1") == [f"msg call end bob {call.id} offline"]
    assert net.take("b1") == []  # gone
    assert net.clock.getDelayedCalls() == []


def test_caller_offline_ends_the_call_for_the_callee():
    net = Net()
    call = ring(net)
    net.calls.answer("b1", call.id, "v=0")
    net.sent.clear()
    net.dead.add("a1")
    net.clock.advance(1)
    assert net.take("b1") == [f"msg call end alice {call.id} offline"]


def test_strangers_and_bad_ids():
    net = Net()
    call = ring(net)
    for action in (lambda: net.calls.hangup("x1", call.id),
                   lambda: net.calls.decline("x1", call.id),
                   lambda: net.calls.ice("x1", call.id, "{}")):
        with pytest.raises(Forbidden):
            action()
    with pytest.raises(Conflict):
        net.calls.answer("x1", call.id, "v=0")
    with pytest.raises(Conflict):
        net.calls.decline("a1", call.id)
    with pytest.raises(Conflict):
        net.calls.ice("b1", call.id, "{}")
    with pytest.raises(BadRequest):
        net.calls.hangup("a1", "")
    with pytest.raises(BadRequest):
        net.calls.offer(Party("alice", "a1"), "alice", ["a2"], "v=0")
    with pytest.raises(BadRequest):
        net.calls.offer(Party("carol", "c1"), "dave", ["d1"], "v=0", callid="bad id!")
    with pytest.raises(Conflict):
        net.calls.offer(Party("carol", "c1"), "dave", ["d1"], "v=0", callid=call.id)
    chosen = net.calls.offer(Party("carol", "c1"), "dave", ["d1"], "v=0", callid="mine-1234")
    assert chosen.id == "mine-1234"


def test_early_candidates_are_bounded():
    net = Net()
    call = ring(net)
    for n in range(MAX_EARLY_CANDIDATES):
        net.calls.ice("a1", call.id, '{"candidate":"c"}')
    with pytest.raises(TooLarge):
        net.calls.ice("a1", call.id, '{"candidate":"c"}')


def test_close_all_ends_every_call():
    net = Net()
    ring(net)
    net.sent.clear()
    net.calls.close_all()
    assert net.take("a1") == ["msg call end bob call00000000 offline"]
    assert net.clock.getDelayedCalls() == []


def test_checking_sdp_and_candidates():
    assert check_sdp(SDP) == "v=0\no=- 1 2 IN IP4 127.0.0.1\ns=-"
    for bad, error in ((None, BadRequest), ("", BadRequest), ("hello", BadRequest),
                       ("v=0\x00", BadRequest), ("v=0\n" + "a" * 17000, TooLarge)):
        with pytest.raises(error):
            check_sdp(bad)
    assert check_candidate('{"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ relay",\n'
                           ' "sdpMid": "0"}') == (
        '{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ relay","sdpMid":"0"}')
    for bad, error in (("", BadRequest), ("{", BadRequest), ("[1]", BadRequest),
                       ('{"candidate": 1}', BadRequest),
                       ('{"candidate": "' + "x" * 2000 + '"}', TooLarge)):
        with pytest.raises(error):
            check_candidate(bad)
