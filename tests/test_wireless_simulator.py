"""The simulated operator network with a fake clock: queues, order, acks,
reconnects, validity periods and the delivery reports they cause."""

from __future__ import annotations

from typing import List
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from helpers import result_of
from presence.wireless.dlr import DlrPolicy
from presence.wireless.si import ServiceIndication
from presence.wireless.simulator import Simulator, SimulatorError

BOB = "+15550001"
CAROL = "+15550002"
URL = "http://app.test/dlr?s=%d&to=%p&from=%P&a=%A"


class Reports:
    """The simulator's fetch: records each report URL."""

    def __init__(self) -> None:
        self.urls: List[str] = []
        self.fail = 0

    def __call__(self, url: str) -> defer.Deferred:
        self.urls.append(url)
        if self.fail:
            self.fail -= 1
            return defer.fail(ConnectionRefusedError("down"))
        return defer.succeed(200)

    def events(self) -> List[int]:
        return [int(parse_qs(urlsplit(u).query)["s"][0]) for u in self.urls]

    def field(self, i: int, name: str) -> str:
        return parse_qs(urlsplit(self.urls[i]).query)[name][0]


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_000_000)
    return c


@pytest.fixture
def reports():
    return Reports()


@pytest.fixture
def sim(clock, reports):
    return Simulator(clock, validity=60.0, fetch=reports, dlr_policy=DlrPolicy(["app.test"]))


def got(d) -> List[dict]:
    return [m.wire() for m in result_of(d)]


def test_an_attached_handset_receives_in_order_and_acks_deliver(sim, reports):
    assert got(sim.poll(BOB, 0, wait=0)) == []
    for text in ("one", "two", "three"):
        sim.submit("sms", "7777", BOB, text, dlr_mask=3, dlr_url=URL)
    first = got(sim.poll(BOB, 0))
    assert [m["text"] for m in first] == ["one", "two", "three"]
    assert [m["seq"] for m in first] == [1, 2, 3]
    assert first[0]["from"] == "7777" and first[0]["type"] == "sms"
    assert reports.urls == []  # handed out is not delivered
    assert got(sim.poll(BOB, 3, wait=0)) == []
    assert reports.events() == [1, 1, 1]
    assert reports.field(0, "to") == BOB and reports.field(0, "from") == "7777"
    assert "stat:DELIVRD" in reports.field(0, "a")


def test_a_held_poll_is_answered_when_a_message_arrives(sim):
    d = sim.poll(BOB, 0, wait=25)
    assert not d.called
    sim.submit("sms", "7777", BOB, "hi")
    assert [m.text for m in result_of(d)] == ["hi"]


def test_a_held_poll_times_out_empty(sim, clock):
    d = sim.poll(BOB, 0, wait=25)
    clock.advance(24.9)
    assert not d.called
    clock.advance(0.1)
    assert result_of(d) == []


def test_nothing_is_lost_across_a_reconnect(sim, reports):
    sim.poll(BOB, 0, wait=0)
    sim.submit("sms", "7777", BOB, "a", dlr_mask=1, dlr_url=URL)
    sim.submit("sms", "7777", BOB, "b", dlr_mask=1, dlr_url=URL)
    assert [m["seq"] for m in got(sim.poll(BOB, 0))] == [1, 2]
    # the answer was lost on the way: the handset asks again with after=0
    again = got(sim.poll(BOB, 0))
    assert [m["text"] for m in again] == ["a", "b"]
    # it processed the first only, then reconnected
    after = got(sim.poll(BOB, 1))
    assert [m["text"] for m in after] == ["b"]
    assert reports.events() == [1]
    sim.submit("sms", "7777", BOB, "c")
    assert [m["text"] for m in got(sim.poll(BOB, 1))] == ["b", "c"]


def test_an_ack_never_covers_what_was_not_handed_out(sim, reports):
    sim.poll(BOB, 0, wait=0)
    sim.submit("sms", "7777", BOB, "a", dlr_mask=1, dlr_url=URL)
    # a handset claiming seq 5 before seeing anything acknowledges nothing
    assert [m["text"] for m in got(sim.poll(BOB, 5))] == ["a"]
    assert reports.urls == []


def test_a_newer_poll_answers_the_older_one(sim):
    old = sim.poll(BOB, 0, wait=25)
    new = sim.poll(BOB, 0, wait=25)
    assert result_of(old) == []
    assert not new.called
    sim.submit("sms", "7777", BOB, "x")
    assert [m.text for m in result_of(new)] == ["x"]


def test_a_cancelled_poll_leaves_the_message_queued(sim, clock):
    d = sim.poll(BOB, 0, wait=25)
    d.cancel()
    d.addErrback(lambda f: None)
    m = sim.submit("sms", "7777", BOB, "x")
    assert m.state == "queued"
    assert [x.text for x in result_of(sim.poll(BOB, 0))] == ["x"]


def test_validity_expiry_reports_non_delivery(sim, clock, reports):
    sim.poll(BOB, 0, wait=0)
    sim.detach(BOB)
    m = sim.submit("sms", "7777", BOB, "late", dlr_mask=2, dlr_url=URL)
    clock.advance(59.9)
    assert reports.urls == [] and m.state == "queued"
    clock.advance(0.1)
    assert m.state == "expired"
    assert reports.events() == [2]
    assert "stat:EXPIRED" in reports.field(0, "a")
    assert got(sim.poll(BOB, 0, wait=0)) == []  # it left the queue


def test_shorter_validity_and_si_expiry(sim, clock, reports):
    sim.poll(BOB, 0, wait=0)
    sim.submit("sms", "7777", BOB, "x", dlr_mask=2, dlr_url=URL, validity=10)
    indication = ServiceIndication("http://h/", "t", "id", expires=clock.seconds() + 5)
    sim.submit("push", "7777", BOB, "t", si=indication, dlr_mask=2, dlr_url=URL)
    clock.advance(5)
    assert reports.events() == [2]
    clock.advance(5)
    assert reports.events() == [2, 2]


def test_unknown_subscriber_fails_at_once(sim, reports):
    m = sim.submit("sms", "7777", CAROL, "x", dlr_mask=3, dlr_url=URL)
    assert m.state == "failed"
    assert reports.events() == [2]
    assert "err:001" in reports.field(0, "a")


def test_mask_selects_the_events(sim, reports):
    sim.poll(BOB, 0, wait=0)
    sim.detach(BOB)
    sim.submit("sms", "7777", BOB, "x", dlr_mask=31, dlr_url=URL)
    # 8: accepted by the SMSC, 4: queued (the handset is detached)
    assert reports.events() == [8, 4]
    sim.poll(BOB, 0, wait=0)
    sim.poll(BOB, 1, wait=0)
    assert reports.events() == [8, 4, 1]


def test_no_reports_without_url_or_mask(sim, reports):
    sim.poll(BOB, 0, wait=0)
    sim.submit("sms", "7777", BOB, "x", dlr_mask=0, dlr_url=URL)
    sim.submit("sms", "7777", BOB, "y", dlr_mask=3, dlr_url="")
    sim.poll(BOB, 0)
    sim.poll(BOB, 2)
    assert reports.urls == []


def test_a_failed_report_is_retried(sim, clock, reports):
    reports.fail = 2
    sim.submit("sms", "7777", CAROL, "x", dlr_mask=2, dlr_url=URL)
    assert len(reports.urls) == 1
    clock.advance(1)
    assert len(reports.urls) == 2
    clock.advance(5)
    assert len(reports.urls) == 3
    clock.advance(100)
    assert len(reports.urls) == 3


def test_a_push_is_delivered_with_its_indication(sim):
    sim.poll(BOB, 0, wait=0)
    indication = ServiceIndication("http://h/wml/t/x", "alice wants to chat", "r1",
                                   "signal-high")
    sim.submit("push", "7777", BOB, indication.text, si=indication)
    [m] = got(sim.poll(BOB, 0))
    assert m["type"] == "push" and m["href"] == "http://h/wml/t/x"
    assert m["text"] == "alice wants to chat" and m["action"] == "signal-high"


def test_detach_answers_the_held_poll_and_status(sim, clock):
    assert sim.status(BOB) == {"number": BOB, "known": False, "attached": False, "pending": 0}
    d = sim.poll(BOB, 0, wait=25)
    assert sim.status(BOB)["attached"] is True
    assert sim.detach(BOB) is True
    assert result_of(d) == []
    assert sim.status(BOB)["attached"] is False
    assert sim.detach(CAROL) is False


def test_attached_lingers_briefly_after_a_poll(sim, clock):
    sim.poll(BOB, 0, wait=0)
    assert sim.status(BOB)["attached"] is True
    clock.advance(31)
    assert sim.status(BOB)["attached"] is False


def test_queue_bound(clock, reports):
    sim = Simulator(clock, fetch=reports, max_queue=2, dlr_policy=DlrPolicy(["app.test"]))
    sim.poll(BOB, 0, wait=0)
    sim.submit("sms", "7777", BOB, "1")
    sim.submit("sms", "7777", BOB, "2")
    m = sim.submit("sms", "7777", BOB, "3", dlr_mask=2, dlr_url=URL)
    assert m.state == "failed" and reports.events() == [2]


def test_handset_bound(clock):
    sim = Simulator(clock, max_handsets=1)
    sim.poll(BOB, 0, wait=0)
    with pytest.raises(SimulatorError) as e:
        sim.poll(CAROL, 0, wait=0)
    assert e.value.status == 503


def test_too_long_texts_are_refused(sim):
    sim.poll(BOB, 0, wait=0)
    sim.submit("sms", "7777", BOB, "x" * 1530)  # 10 parts of 153
    with pytest.raises(SimulatorError) as e:
        sim.submit("sms", "7777", BOB, "x" * 1531)
    assert e.value.status == 400 and "too long" in e.value.message
    [queued] = got(sim.poll(BOB, 0))
    assert queued["parts"] == 10 and queued["coding"] == "gsm7"


def test_mobile_originated_text_to_the_shortcode(sim):
    seen = []
    sim.on_mo = lambda number, to, text: seen.append((number, to, text))
    assert sim.send_mo(BOB, "7777", "@alice hi")["status"] == "accepted"
    assert seen == [(BOB, "7777", "@alice hi")]
    assert sim.known(BOB)


def test_mobile_originated_text_to_another_handset(sim):
    sim.poll(CAROL, 0, wait=0)
    answer = sim.send_mo(BOB, CAROL, "hello carol")
    assert answer["to"] == CAROL
    [m] = got(sim.poll(CAROL, 0))
    assert m["from"] == BOB and m["text"] == "hello carol"


@pytest.mark.parametrize("to, status", [("+19999999", 404), ("nobody", 400)])
def test_mobile_originated_errors(sim, to, status):
    with pytest.raises(SimulatorError) as e:
        sim.send_mo(BOB, to, "x")
    assert e.value.status == status


def test_without_a_service_the_shortcode_is_unavailable(sim):
    with pytest.raises(SimulatorError) as e:
        sim.send_mo(BOB, "7777", "x")
    assert e.value.status == 503


def test_a_failing_service_is_logged_not_raised(sim):
    def broken(*a):
        raise RuntimeError("boom")

    sim.on_mo = broken
    from twisted.logger import capturedLogs
    with capturedLogs() as events:
        assert sim.send_mo(BOB, "7777", "x")["status"] == "accepted"
    assert any("failed" in (e.get("log_format") or "") for e in events)


def test_stop_cancels_timers_and_answers_polls(sim, clock, reports):
    d = sim.poll(BOB, 0, wait=25)
    sim.detach(BOB)
    sim.poll(BOB, 0, wait=0)
    sim.submit("sms", "7777", BOB, "x", dlr_mask=2, dlr_url=URL)
    held = sim.poll(BOB, 1, wait=25)
    sim.stop()
    assert result_of(d) == [] and held.called
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert reports.urls == []
