"""Groups with presence on demand (``POST /api/groups/<g>/presence``): the
owner's choice; their watchers are pushed nothing and read presence when they
open the page or the list."""

from __future__ import annotations

from helpers import logged_errors, world  # noqa: F401  (fixtures)


def _big(world):
    owner = world.user("owner")
    assert owner.post("/api/groups", name="big").status == 201
    members = [world.user(n) for n in ("bob", "carol")]
    for m in members:
        assert m.post("/api/groups/big/join").status == 204
    return owner, members


def test_the_owner_chooses_on_demand_and_watchers_are_pushed_nothing(world):
    owner, (bob, carol) = _big(world)
    reply = owner.post("/api/groups/big/presence", presence="on_demand")
    assert reply.status == 200
    assert reply.json == {"name": "big", "presence": "on_demand"}
    assert bob.post("/api/active", group="big").status == 204
    hb = bob.heartbeat(ack="99")
    carol.heartbeat()  # carol comes online
    assert world.user("dave").post("/api/groups/big/join").status == 204
    assert hb.heads() == []  # no msg update, no msg refresh
    # what the list says when it is opened
    rows = bob.get("/api/presence/big").json["members"]
    assert {"name": "carol", "online": True, "state": "available", "text": ""} in rows
    # back to push: the next change is pushed again
    assert owner.post("/api/groups/big/presence", presence="push").json["presence"] == "push"
    owner.heartbeat()
    assert hb.heads() == ["msg update online owner"]


def test_only_the_owner_chooses_and_only_push_or_on_demand(world):
    owner, (bob, _) = _big(world)
    assert bob.post("/api/groups/big/presence", presence="on_demand").status == 403
    reply = owner.post("/api/groups/big/presence", presence="sometimes")
    assert reply.status == 400
    assert reply.json == {"error": "presence must be push or on_demand"}
    assert owner.post("/api/groups/nothing/presence", presence="push").status == 404


def test_a_box_learns_the_choice_when_a_session_opens_the_group(world):
    owner, (bob, carol) = _big(world)
    world.store.set_on_demand("big", True)  # chosen through another box of a cluster
    assert bob.post("/api/active", group="big").status == 204
    hb = bob.heartbeat(ack="99")
    carol.heartbeat()
    assert hb.heads() == []
