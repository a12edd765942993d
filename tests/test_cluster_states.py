"""Presence states across boxes, with ClusterHub on the fake Redis of
``test_cluster_hub`` (no reactor): each box shares the combination of its
sessions; every box combines the boxes' states; a stand-in's change is
carried out on its box; no frame when the combined state stays."""

from __future__ import annotations

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
