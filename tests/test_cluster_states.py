"""Presence states across boxes, with ClusterHub on the fake Redis of
``test_cluster_hub`` (no reactor): each box shares the combination of its
sessions; every box combines the boxes' states; a stand-in's change is
carried out on its box; no frame when the combined state stays."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.core import states
from presence.core.tables import book_key
from test_cluster_hub import Cluster


def texts(channel):
    return [f.text for _, f in channel.sent if f.kind == "update"]


def alice_watching_bob():
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice")                                  # on a
    bob = c.login(0, "bob", groups=[book_key("alice")])          # on b
    assert (alice.host_box, bob.host_box) == (a.me, b.me)
    return c, c.hold(alice), bob


def test_a_state_set_through_a_stand_in_reaches_a_watcher_on_another_box():
    c, ha, bob = alice_watching_bob()
    a, b = c.hubs
    c.hold(bob)
    stand_in = a.session(bob.id)
    assert stand_in.host_box == b.me
    a.set_state(stand_in, "away", "lunch")
    c.redis.pump()
    assert b.session(bob.id).state == "away"
    assert texts(ha) == ["msg update online bob", "msg update away bob\nlunch"]
    assert a.state_of("bob") == b.state_of("bob") == ("away", "lunch")


def test_the_most_available_box_wins_and_the_same_state_sends_nothing():
    c, ha, bob = alice_watching_bob()
    a, b = c.hubs
    c.hold(bob)
    b.set_state(b.session(bob.id), "busy")
    c.redis.pump()
    phone = c.login(0, "bob", groups=[book_key("alice")])        # on a (a tie: here)
    assert phone.host_box == a.me
    c.hold(phone)
    a.set_state(a.session(phone.id), "away")
    c.redis.pump()
    b.set_state(b.session(bob.id), "busy")                       # as it was
    c.redis.pump()
    # (the phone came online available, then set away: away beats busy)
    assert texts(ha) == ["msg update online bob", "msg update busy bob",
                         "msg update online bob", "msg update away bob"]
    assert b.state_of("bob") == ("away", "")
    a.end(a.session(phone.id), "logout")
    c.redis.pump()
    assert texts(ha)[-1] == "msg update busy bob"
    b.end(b.session(bob.id), "logout")
    c.redis.pump()
    assert texts(ha)[-1] == "msg update offline bob" and a.state_of("bob") == ("offline", "")


def test_a_dead_box_takes_its_state_with_it():
    c, ha, bob = alice_watching_bob()
    a, b = c.hubs
    c.hold(bob)
    b.set_state(b.session(bob.id), "busy", "x")
    c.redis.pump()
    a.forget_box(b.me)
    assert a.state_of("bob") == ("offline", "") and texts(ha)[-1] == "msg update offline bob"
    assert "bob" not in a.remote_states


def test_a_state_changed_while_redis_was_away_is_shared_after_the_reload():
    c, ha, bob = alice_watching_bob()
    a, b = c.hubs
    c.hold(bob)
    c.redis.down = True
    b.set_state(b.session(bob.id), "busy", "during the outage")
    c.redis.down = False
    assert a.state_of("bob") == ("available", "")
    b.load()                               # b's subscription is back
    c.redis.pump()
    assert a.state_of("bob") == ("busy", "during the outage")
    assert texts(ha)[-1] == "msg update busy bob\nduring the outage"


OPS = st.lists(st.one_of(
    st.tuples(st.just("login"), st.integers(0, 1)),
    st.tuples(st.just("attach"), st.integers(0, 3)),
    st.tuples(st.just("drop"), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 3)),
    st.tuples(st.just("state"), st.integers(0, 3), st.integers(0, 1),
              st.sampled_from(states.STATES), st.sampled_from(["", "a"])),
), max_size=30)


@settings(deadline=None)
@given(OPS)
def test_every_box_agrees_on_the_combined_state_and_tells_it_once(ops):
    c = Cluster(2)
    a, b = c.hubs
    ha = c.hold(c.login(0, "alice"))
    sessions = []
    for op in ops:
        live = [s for s in sessions if c.hub_of(s).users.session(s.id) is not None]
        if op[0] == "login":
            sessions.append(c.login(op[1], "bob", groups=[book_key("alice")]))
        elif live:
            session = live[op[1] % len(live)]
            hub = c.hub_of(session)
            local = hub.users.session(session.id)
            if op[0] == "attach":
                c.hold(session)
            elif op[0] == "drop" and local.channel is not None:
                local.channel.release("client gone")
            elif op[0] == "end":
                hub.end(local, "logout")
            elif op[0] == "state":
                # through either box: the session's, or a stand-in elsewhere
                via = c.hubs[op[2]]
                via.set_state(via.session(session.id), op[3], op[4])
        c.redis.pump()
        assert a.state_of("bob") == b.state_of("bob"), op
        told = [f for _, f in ha.sent if f.kind == "update"]
        for before, after in zip(told, told[1:]):
            assert (before.args, before.payload) != (after.args, after.payload)
        state, text = a.state_of("bob")
        last = (told[-1].args[0], told[-1].payload) if told else ("offline", "")
        assert last == (states.wire(state), text), (op, [f.text for f in told[-3:]])
