"""Presence states across host boxes: three real ``twistd presence`` nodes
and one real ``redis-server`` (spec sections 9 and 12, docs/cluster.md).

bob's session is on box b; he sets his state through box c (a stand-in there:
carried out on b), alice on box a hears ``msg update busy bob`` with the text,
every node answers it, a node started afterwards reads it from Redis, and a
second session of bob's on another box combines with the first.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from presence_harness import expect, login  # noqa: E402
from cluster_support import node_of, redis, start_node, wait_until  # noqa: E402,F401
from test_cluster import alice_on_a_watching_bob_on_b, cluster, hold  # noqa: E402,F401

pytestmark = pytest.mark.integration


def state_seen(node, name: str):
    body = node.api().get(f"/api/presence/{name}").json()
    return body["state"], body["text"]


def test_a_state_set_through_any_box_reaches_watchers_and_views_on_every_box(
        cluster, redis, tmp_path):
    a, b, c = cluster
    alice, bob = alice_on_a_watching_bob_on_b(cluster)
    with hold(cluster, alice) as ha, hold(cluster, bob):
        ha.wait_for(f"msg update online {bob.name}", timeout=5)
        wait_until(lambda: c.api().get(f"/api/presence/{bob.name}").json()["online"], 5,
                   "c sees bob online")
        # through c, which holds neither (bob's session is a stand-in there)
        r = expect(c.api().post("/api/status", form={**bob.auth, "state": "busy",
                                                     "text": "on a call <b>"}), 200)
        assert r.json()["session"] == {"state": "busy", "text": "on a call <b>"}
        frame = ha.wait_for(f"msg update busy {bob.name}", timeout=5)
        assert frame.payload == "on a call <b>"
        for node in cluster:
            wait_until(lambda: state_seen(node, bob.name) == ("busy", "on a call <b>"), 5,
                       f"{node.port} sees bob busy")
        # a node that starts now reads the state from Redis (no event to hear)
        url = next(arg for arg in a.extra_args if arg.startswith("redis://"))
        d = start_node(tmp_path, url, "d")
        try:
            wait_until(lambda: state_seen(d, bob.name) == ("busy", "on a call <b>"), 10,
                       "a new node sees bob busy")
        finally:
            d.stop()

        # bob's phone, on another box, is available: the combination is
        phone = login(c.api(), type(bob)(bob.name, bob.password))
        assert node_of(cluster, phone) is not b
        with hold(cluster, phone):
            ha.wait_for(f"msg update online {bob.name}", timeout=5)
            assert state_seen(a, bob.name) == ("available", "")
            expect(node_of(cluster, phone).api().post("/api/logout", form=phone.auth), 204)
            frame = ha.wait_for(f"msg update busy {bob.name}", timeout=5)
            assert frame.payload == "on a call <b>"
        # the same state again through b: no frame; a new one: one frame
        expect(b.api().post("/api/status", form={**bob.auth, "state": "busy",
                                                 "text": "on a call <b>"}), 200)
        expect(b.api().post("/api/status", form={**bob.auth, "state": "away"}), 200)
        later = ha.frames_until(f"msg update away {bob.name}", timeout=5)
        assert [f.first_line for f in later if f.kind == "update"] == [
            f"msg update away {bob.name}"]
        expect(b.api().post("/api/logout", form=bob.auth), 204)
        ha.wait_for(f"msg update offline {bob.name}", timeout=5)
        wait_until(lambda: state_seen(c, bob.name) == ("offline", ""), 5, "c sees bob offline")
