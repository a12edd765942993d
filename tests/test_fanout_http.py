"""The heartbeat's side of large fan-outs, through the HTTP site in memory:
direct frames never wait behind presence updates, ``bundle=1`` heartbeats get
``msg updates``, unbundled ones keep ``msg update``."""

from __future__ import annotations

from helpers import logged_errors, world  # noqa: F401  (fixtures)
from test_heartbeat_http import TurnClock, chats


def _paced(world, per_turn):
    pacer = world.site.resource.routes[b"jchat"].pacer
    pacer.per_turn = per_turn
    pacer.clock = TurnClock()
    return pacer.clock


def _watchers(world, names, contact="alice", **params):
    out = []
    for name in names:
        w = world.user(name)
        assert w.post("/api/contacts", contact=contact).status == 204
        hb = w.heartbeat(ack="1", **params)
        assert hb.heads() == []
        out.append(hb)
    return out


def test_a_chat_is_written_before_the_presence_updates_waiting_for_their_turn(world):
    turns = _paced(world, 2)
    alice = world.user("alice")
    watchers = _watchers(world, ["bob", "carol", "dave", "erin", "frank", "gina"])
    zoe, yuri = world.user("zoe"), world.user("yuri")
    zhb = zoe.heartbeat()
    turns.turn()
    turns.turn()
    alice.heartbeat()  # six watchers to tell, two writes a turn
    assert sum(1 for hb in watchers if hb.heads()) == 2
    assert yuri.post("/chat", to="zoe", msg="now").status == 202
    assert chats(zhb) == []  # this turn's writes are spent...
    turns.turn()
    # ...and the next turn writes the chat first, before any waiting update
    assert [e.text.split("\n")[1] for e in chats(zhb)] == ["now"]
    assert sum(1 for hb in watchers if hb.heads()) == 3
    turns.turn()
    turns.turn()
    assert all(hb.heads() == ["msg update online alice"] for hb in watchers)


def test_a_direct_frame_to_a_waiting_channel_takes_its_updates_along_in_order(world):
    turns = _paced(world, 1)
    alice = world.user("alice")
    bob_hb, carol_hb = _watchers(world, ["bob", "carol"])
    turns.turn()
    turns.turn()
    alice.heartbeat()  # the turn's one write goes to one of them
    waiting = carol_hb if bob_hb.heads() else bob_hb
    to = "carol" if waiting is carol_hb else "bob"
    assert world.user("zed").post("/chat", to=to, msg="hi").status == 202
    turns.turn()
    assert waiting.heads()[0] == "msg update online alice"
    assert waiting.heads()[1].startswith("msg chat zed")
    assert waiting.ids() == sorted(waiting.ids())


def test_bundle_1_gets_one_msg_updates_per_window_and_others_msg_update(world):
    world.config.presence_batch = 0.1
    alice = world.user("alice")
    bundled, = _watchers(world, ["bob"], bundle="1")
    plain, = _watchers(world, ["carol"])
    alice.heartbeat()
    assert bundled.heads() == []
    assert plain.heads() == ["msg update online alice"]
    world.clock.advance(0.1)
    assert [e.text for e in bundled.events()] == ["msg updates\nonline alice"]
    assert plain.heads() == ["msg update online alice"]


def test_bundle_must_be_0_or_1(world):
    bob = world.user("bob")
    reply = bob.browser.heartbeat_reply(me="bob", id=bob.session, bundle="yes")
    assert reply.status == 400
    assert reply.json == {"error": "bundle must be 0 or 1"}
