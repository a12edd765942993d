"""Tier-1 unit tests of presence states (spec section 12): the combination
rule of :mod:`presence.core.states`, the ``msg update`` frames the hub sends
for it, on a :class:`twisted.internet.task.Clock` (no reactor, no sleep).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence.core import frames, states
from presence.core.frames import parse
from test_core_hub import World


# -- the pure rule ---------------------------------------------------------------

def test_the_most_available_state_wins() -> None:
    assert states.combine([("busy", "", 5), ("away", "", 1)])[0] == "away"
    assert states.combine([("away", "", 5), ("available", "", 1), ("busy", "", 9)])[0] == \
        "available"
    assert states.combine([]) is None


def test_between_equal_states_the_latest_text_wins() -> None:
    best = states.combine([("away", "lunch", 1), ("away", "gym", 7), ("busy", "call", 9)])
    assert best == ("away", "gym", 7)


@given(st.lists(st.tuples(st.sampled_from(states.STATES), st.text(max_size=3),
                          st.integers(0, 50)), min_size=1, max_size=8),
       st.integers(1, 7))
def test_combining_per_box_first_gives_the_same_answer(entries, cut) -> None:
    # a cluster combines each box's sessions, then the boxes' results
    parts = [entries[:cut], entries[cut:]]
    per_box = [states.combine(p) for p in parts if p]
    whole = states.combine(entries)
    assert states.combine(per_box)[:2] == whole[:2]
    assert states.RANK[whole[0]] == min(states.RANK[e[0]] for e in entries)


def test_wire_words() -> None:
    assert [states.wire(s) for s in ("available", "away", "busy", "offline")] == [
        "online", "away", "busy", "offline"]
    assert [states.from_wire(w) for w in ("online", "away", "busy", "offline", "address")] == [
        "available", "away", "busy", "offline", None]


@pytest.mark.parametrize("text", ["", "at lunch", "é" * 140, "<b>&amp;</b>", "日本語 🙂"])
def test_texts_accepted(text: str) -> None:
    assert states.text_error(text) is None


@pytest.mark.parametrize("text", ["x" * 141, "two\nlines", "cr\r", "tab\t", "nul\x00",
                                  "ls\u2028", "ps\u2029", "nel\x85", "lone\ud800", 5])
def test_texts_refused(text) -> None:
    assert states.text_error(text)


@pytest.mark.parametrize("value", ["online", "offline", "AWAY", "", None, 1])
def test_states_refused(value) -> None:
    assert states.state_error(value)
    assert all(states.state_error(s) is None for s in states.STATES)


def test_update_frame_carries_the_text_as_its_second_line() -> None:
    frame = frames.update("away", "bob", "at lunch")
    assert frame.text == "msg update away bob\nat lunch"
    assert frame.data() == b"data: msg update away bob\ndata: at lunch\n\n"
    assert parse(frame.text) == frame
    assert frames.update("online", "bob").text == "msg update online bob"


# -- the hub ---------------------------------------------------------------------

@pytest.fixture
def w() -> World:
    return World()


def book_watcher(w: World):
    """alice, holding a heartbeat, with bob in her address book."""
    return w.watcher("alice")


def bob_session(w: World):
    return w.login("bob", groups=["~alice"])


def test_a_state_change_reaches_watchers_with_its_text(w: World) -> None:
    alice = book_watcher(w)
    bob = bob_session(w)
    w.attach(bob)
    w.hub.set_state(bob, "away", "back at 3")
    w.hub.set_state(bob, "busy")
    w.hub.set_state(bob, "available")
    assert alice.texts() == ["msg update online bob", "msg update away bob\nback at 3",
                             "msg update busy bob", "msg update online bob"]
    assert w.hub.state_of("bob") == ("available", "")


def test_no_frame_when_the_combined_state_does_not_change(w: World) -> None:
    alice = book_watcher(w)
    pc, phone = bob_session(w), bob_session(w)
    w.attach(pc)
    w.attach(phone)
    w.hub.set_state(pc, "away")             # the phone is still available
    w.hub.set_state(pc, "away")
    w.hub.set_state(phone, "available")     # as it was
    assert alice.texts() == ["msg update online bob"]
    assert w.hub.state_of("bob") == ("available", "")
    w.hub.set_state(phone, "busy", "meeting")
    assert alice.texts()[1:] == ["msg update away bob"]     # away beats busy
    w.hub.set_state(phone, "busy", "meeting")
    assert len(alice.texts()) == 2


def test_a_state_set_before_the_heartbeat_is_the_one_announced(w: World) -> None:
    alice = book_watcher(w)
    bob = bob_session(w)
    w.hub.set_state(bob, "busy", "do not disturb")
    assert alice.texts() == [] and w.hub.state_of("bob") == ("offline", "")
    w.attach(bob)
    assert alice.texts() == ["msg update busy bob\ndo not disturb"]


def test_offline_carries_no_text_and_online_again_the_state(w: World) -> None:
    alice = book_watcher(w)
    bob = bob_session(w)
    channel = w.attach(bob)
    w.hub.set_state(bob, "away", "gone fishing")
    channel.release("client gone")
    w.advance(w.hub.config.linger)
    w.sweep()
    assert alice.texts()[-1] == "msg update offline bob"
    assert w.hub.state_of("bob") == ("offline", "")
    w.attach(bob)
    assert alice.texts()[-1] == "msg update away bob\ngone fishing"


def test_a_session_that_ends_stops_counting(w: World) -> None:
    alice = book_watcher(w)
    pc, phone = bob_session(w), bob_session(w)
    w.attach(pc)
    w.attach(phone)
    w.hub.set_state(phone, "busy")
    w.hub.end(pc, "logout")                 # the available one
    assert alice.texts() == ["msg update online bob", "msg update busy bob"]


def test_a_session_whose_heartbeat_stopped_counts_until_its_linger_ends(w: World) -> None:
    alice = book_watcher(w)
    pc, phone = bob_session(w), bob_session(w)
    pc_channel = w.attach(pc)
    w.attach(phone)
    w.hub.set_state(phone, "away", "idle")
    pc_channel.release("client gone")       # the available one lingers
    w.advance(w.hub.config.linger / 2)
    w.sweep()
    assert w.hub.state_of("bob") == ("available", "")
    w.advance(w.hub.config.linger)
    w.sweep()
    assert w.hub.state_of("bob") == ("away", "idle")
    assert alice.texts() == ["msg update online bob", "msg update away bob\nidle"]
    w.attach(pc)                            # it comes back: counts again
    assert alice.texts()[-1] == "msg update online bob"


def test_the_server_never_changes_a_session_state_but_offline(w: World) -> None:
    bob = bob_session(w)
    channel = w.attach(bob)
    w.hub.set_state(bob, "busy")
    for _ in range(5):
        w.advance(w.hub.config.keepalive)
        w.sweep()
    channel.release("replaced")
    w.attach(bob)
    assert (bob.state, w.hub.state_of("bob")) == ("busy", ("busy", ""))


def test_a_reconnecting_heartbeat_sends_no_frame(w: World) -> None:
    alice = book_watcher(w)
    bob = bob_session(w)
    w.hub.set_state(bob, "away")
    channel = w.attach(bob)
    channel.release("client gone")
    w.attach(bob)
    w.attach(bob)                            # replaces the one held
    assert alice.texts() == ["msg update away bob"]


def test_an_ended_session_is_ignored(w: World) -> None:
    alice = book_watcher(w)
    bob = bob_session(w)
    w.attach(bob)
    w.hub.end(bob, "logout")
    w.hub.set_state(bob, "busy")
    assert alice.texts() == ["msg update online bob", "msg update offline bob"]


# -- a property: what watchers were told is the combined state, never twice -------

OPS = st.lists(st.one_of(
    st.tuples(st.just("login")),
    st.tuples(st.just("attach"), st.integers(0, 3)),
    st.tuples(st.just("drop"), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 3), st.sampled_from(["logout", "expired"])),
    st.tuples(st.just("state"), st.integers(0, 3), st.sampled_from(states.STATES),
              st.sampled_from(["", "a", "b"])),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 4.0, 9.0])),
), max_size=40)


@given(OPS, st.sampled_from([0.0, 8.0]))
def test_watchers_always_end_up_told_the_combined_state_and_never_twice(ops, linger) -> None:
    w = World(poll=4.0, linger=linger)
    alice = w.watcher("alice")
    sessions, channels = [], {}
    for op in ops:
        kind = op[0]
        live = [s for s in sessions if w.hub.session(s.id) is s]
        if kind == "login":
            sessions.append(w.login("bob", groups=["~alice"]))
        elif kind == "wait":
            w.advance(op[1])
            w.sweep()
        elif live:
            session = live[op[1] % len(live)]
            if kind == "attach":
                channels[session] = w.attach(session)
            elif kind == "drop" and session.channel is not None:
                session.channel.release("client gone")
            elif kind == "end":
                w.hub.end(session, op[2])
            elif kind == "state":
                w.hub.set_state(session, op[2], op[3])
        told = [f for _, f in alice.sent if f.kind == "update"]
        for before, after in zip(told, told[1:]):
            assert (before.args, before.payload) != (after.args, after.payload)
        state, text = w.hub.state_of("bob")
        last = (told[-1].args[0], told[-1].payload) if told else ("offline", "")
        assert last == (states.wire(state), text), (op, told[-3:])
