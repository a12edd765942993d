"""Cluster mode: three real ``twistd presence`` nodes sharing one real
``redis-server`` (spec section 9, docs/cluster.md).

Each node is started with ``--redis`` and ``--host-box 127.0.0.1:<port>``;
the tests follow the ``host_box`` of each login answer, as clients do.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presence_harness import (  # noqa: E402
    HeartbeatReader, User, chat, chat_frames, chat_ok, expect,
    login, register, start_client, stop_client, unique_name,
)
from redis_support import fresh_prefix  # noqa: E402
from cluster_support import (  # noqa: E402,F401  (the redis fixture)
    boxes, node_of, redis, start_cluster, wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(redis, tmp_path):
    url = f"{redis.url}?prefix={fresh_prefix()}"
    nodes = start_cluster(tmp_path, url, ("a", "b", "c"))
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def hold(nodes, user: User) -> HeartbeatReader:
    node = node_of(nodes, user)
    return HeartbeatReader.open(node.host, node.port, user.name, user.session)


def test_two_boxes_see_each_other_and_chat_both_ways_in_order(cluster):
    a, b, c = cluster
    alice, bob = alice_on_a_watching_bob_on_b(cluster)
    # login placement: the answering node held the fewest sessions each time
    assert alice.login_body["host_box"] == f"127.0.0.1:{a.port}"
    expect(c.api().post("/api/contacts", form={**bob.auth, "contact": alice.name}), 204)

    with hold(cluster, alice) as ha:
        wait_until(lambda: c.api().get(f"/api/presence/{alice.name}").json()["online"], 5,
                   "node c sees alice online")
        with hold(cluster, bob) as hb:
            ha.wait_for(f"msg update online {bob.name}", timeout=5)
            # any node answers /api/presence for either (each view within
            # one pub/sub delivery)
            for n in cluster:
                for u in (alice, bob):
                    wait_until(lambda: n.api().get(f"/api/presence/{u.name}").json()["online"],
                               5, f"{n.port} sees {u.name} online")
            sent = [f"a->b {i}" for i in range(10)]
            for text in sent:   # through a, which holds alice
                assert chat_ok(a.api(), alice, bob, text)["delivered"] == "online"
            got = chat_frames(hb.read_frames(10, timeout=5,
                                             pred=lambda f: f.kind == "chat"))
            assert [f.payload for f in got] == sent
            back = [f"b->a {i}" for i in range(10)]
            for text in back:   # through c, which holds neither of them
                assert chat_ok(c.api(), bob, alice, text)["delivered"] == "online"
            got = chat_frames(ha.read_frames(10, timeout=5,
                                             pred=lambda f: f.kind == "chat"))
            assert [f.payload for f in got] == back
            assert [f.words[2] for f in got] == [bob.name] * 10
            # a seq retried through other nodes: the first answer, sent once
            first = chat_ok(a.api(), alice, bob, "only once", seq="41")
            for n in (b, c):
                assert chat_ok(n.api(), alice, bob, "only once", seq="41") == first
            hb.wait_for(lambda f: f.kind == "chat" and f.payload == "only once", timeout=5)
            chat_ok(c.api(), alice, bob, "and then this", seq="42")
            later = hb.frames_until(lambda f: f.kind == "chat" and f.payload == "and then this",
                                    timeout=5)
            assert "only once" not in [f.payload for f in chat_frames(later)]
            # bob logs out through a node that does not hold his session
            expect(a.api().post("/api/logout", form=bob.auth), 204, "logout on a")
            ha.wait_for(f"msg update offline {bob.name}", timeout=5)
            assert hb.wait_end(5)
        for n in cluster:
            assert n.api().get(f"/api/presence/{bob.name}").json()["online"] is False


def test_presence_client_follows_its_session_to_the_box_that_holds_it(cluster, tmp_path):
    a, b, c = cluster
    alice = login(a.api(), register(a.api(), unique_name("alice")))   # on a
    bob = register(a.api(), unique_name("bob"))
    out = tmp_path / "client.out"
    # through a, which holds alice: bob's session is placed on b or c
    client = start_client(f"http://127.0.0.1:{a.port}", bob.name, bob.password, out=out)
    try:
        wait_until(lambda: a.api().get(f"/api/presence/{bob.name}").json()["online"], 20,
                   "bob online through presence-client")
        counts = boxes(a.api())
        assert counts[f"127.0.0.1:{a.port}"] == 1, counts     # alice only
        chat_ok(a.api(), alice, bob.name, "found you")
        wait_until(lambda: "found you" in out.read_text("utf-8", "replace"), 10,
                   "the chat printed by presence-client")
    finally:
        stop_client(client)


def test_login_is_placed_on_the_emptiest_box_and_a_wrong_heartbeat_is_redirected(cluster):
    a, b, c = cluster
    users = [register(a.api(), unique_name("p")) for _ in range(3)]
    for u in users:
        login(a.api(), u)
    # every login through a: one session on each box, each one the emptiest
    placed = sorted(u.login_body["host_box"] for u in users)
    assert placed == sorted(f"127.0.0.1:{n.port}" for n in cluster)
    for u in users:
        assert u.login_body["heartbeat"].startswith("/jchat?")
    wait_until(lambda: sorted(boxes(b.api()).values()) == [1, 1, 1], 10,
               "every box counts its session")
    far = next(u for u in users if u.login_body["host_box"] != f"127.0.0.1:{a.port}")
    home = node_of(cluster, far)
    reader = HeartbeatReader.open(a.host, a.port, far.name, far.session)
    r = reader.response()
    assert r.status == 307, r
    location = r.headers["Location"]
    assert location.startswith(f"http://127.0.0.1:{home.port}/jchat?"), location
    assert f"id={far.session}" in location
    # the right box holds it, and the user is online everywhere
    with hold(cluster, far):
        for n in cluster:
            wait_until(lambda: n.api().get(f"/api/presence/{far.name}").json()["online"],
                       5, f"{far.name} online on {n.port}")


def alice_on_a_watching_bob_on_b(cluster):
    """alice (on a) lists bob in her address book, then bob logs in on b
    (his groups come from the directory at login: no race with the change)."""
    a, b, _ = cluster
    alice, bob = register(a.api(), unique_name("alice")), register(b.api(), unique_name("bob"))
    login(a.api(), alice)
    expect(a.api().post("/api/contacts", form={**alice.auth, "contact": bob.name}), 204)
    login(b.api(), bob)
    assert node_of(cluster, bob) is b
    return alice, bob


def test_a_killed_box_is_noticed_within_30_s_and_its_unacknowledged_chat_is_kept(cluster):
    a, b, c = cluster
    alice, bob = alice_on_a_watching_bob_on_b(cluster)
    with hold(cluster, alice) as ha, hold(cluster, bob) as hb:
        ha.wait_for(f"msg update online {bob.name}", timeout=5)
        # c's view hears of it one pub/sub delivery later (a chat sent before
        # would be answered "stored", and kept in the message box)
        wait_until(lambda: c.api().get(f"/api/presence/{bob.name}").json()["online"], 5,
                   "c sees bob online")
        sent = [f"before the crash {i}" for i in range(3)]
        for text in sent:
            assert chat_ok(c.api(), alice, bob, text)["delivered"] == "online"
        # bob's client got them, but never acknowledged them
        got = chat_frames(hb.read_frames(3, timeout=5, pred=lambda f: f.kind == "chat"))
        assert [f.payload for f in got] == sent
        b.kill()
        killed = time.monotonic()
        ha.wait_for(f"msg update offline {bob.name}", timeout=30)
        noticed = time.monotonic() - killed
        assert noticed <= 30, noticed
        assert set(boxes(a.api())) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{c.port}"}
        assert c.api().get(f"/api/presence/{bob.name}").json()["online"] is False
    # bob comes back on another box: the three chats wait in his message box,
    # each once
    login(c.api(), bob)
    assert node_of(cluster, bob) is not b
    box = wait_until(lambda: [m for m in c.api().get("/api/messages", query=bob.auth)
                              .json()["messages"] if m["from"] == alice.name
                              and m["text"].startswith("before the crash")], 10,
                     "the chats in bob's message box")
    assert sorted(m["text"] for m in box) == sorted(sent)


def test_a_box_stopped_cleanly_leaves_at_once_and_hands_its_unread_chat_on(cluster):
    a, b, c = cluster
    alice, bob = alice_on_a_watching_bob_on_b(cluster)
    with hold(cluster, alice) as ha, hold(cluster, bob) as hb:
        ha.wait_for(f"msg update online {bob.name}", timeout=5)
        assert chat_ok(a.api(), alice, bob, "unread at the stop")["delivered"] == "online"
        hb.wait_for(lambda f: f.kind == "chat", timeout=5)
        stopped = time.monotonic()
        b.stop()
        # well before the box key's TTL (10 s) could have expired
        ha.wait_for(f"msg update offline {bob.name}", timeout=5)
        assert time.monotonic() - stopped < 8
        assert set(boxes(c.api())) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{c.port}"}
    login(c.api(), bob)
    texts = [m["text"] for m in c.api().get("/api/messages", query=bob.auth).json()["messages"]]
    assert texts.count("unread at the stop") == 1


def test_redis_restarted_local_delivery_goes_on_and_the_boxes_find_each_other_again(
        cluster, redis):
    a, b, c = cluster
    alice, bob = register(a.api(), unique_name("alice")), register(b.api(), unique_name("bob"))
    carol = register(a.api(), unique_name("carol"))
    login(a.api(), alice)
    login(b.api(), bob)
    login(a.api(), carol)          # b and c hold none... c gets carol
    near = next(u for u in (bob, carol) if node_of(cluster, u) is not a)
    with hold(cluster, alice) as ha, hold(cluster, near) as hn:
        redis.stop()
        try:
            # a request that needs Redis: 503 with a readable error, at once
            r = a.api().post("/api/login", form={"username": alice.name,
                                                 "password": alice.password})
            assert r.status == 503, r
            assert "error" in r.json()
            assert r.elapsed < 5
        finally:
            redis.start()
        # once Redis is back, the boxes see each other again and route
        wait_until(lambda: len(boxes(a.api())) == 3, 20, "the boxes are back")
        def routed():
            chat_ok(a.api(), alice, near, "after the outage")
            try:
                hn.wait_for(lambda f: f.kind == "chat" and f.payload == "after the outage",
                            timeout=1)
                return True
            except AssertionError:
                return False
        wait_until(routed, 20, "a chat routed across boxes after the outage")
    outage_lines = [line for line in a.output().splitlines()
                    if "the cluster's Redis is unavailable" in line]
    assert 1 <= len(outage_lines) <= 2, outage_lines


def test_a_password_change_on_one_node_ends_the_users_sessions_on_the_other_boxes(cluster):
    a, b, c = cluster
    alice = register(a.api(), unique_name("alice"))
    here = login(a.api(), User(alice.name, alice.password))     # on a
    there = login(b.api(), User(alice.name, alice.password))    # on b
    assert node_of(cluster, there) is b
    with hold(cluster, there) as h:
        expect(a.api().post("/api/password", form={**here.auth, "password": alice.password,
                                                   "new_password": unique_name("pw") + "x"}),
               204, "password change on a")
        h.wait_for("msg bye password", timeout=5)
    r = b.api().get("/api/session", query=there.auth)
    assert r.status == 403, r


def test_the_chat_limit_of_a_session_counts_every_node_it_is_used_through(redis, tmp_path):
    nodes = start_cluster(tmp_path, f"{redis.url}?prefix={fresh_prefix()}", ("a", "b"),
                          lambda: ("--chat-limit", "4:0.01"))
    try:
        a, b = nodes
        alice = login(a.api(), register(a.api(), unique_name("alice")))
        bob = register(a.api(), unique_name("bob"))
        answers = [chat(n.api(), alice, bob.name, f"chat {i}").status
                   for i, n in enumerate([a, b] * 4)]
        # a burst of 4 in all, not 4 per node: each node lets one more through
        # while Redis's answer that the bucket is empty is on its way (the
        # take does not hold a chat up), then refuses without asking
        assert answers == [202] * 6 + [429, 429], answers
    finally:
        for n in nodes:
            n.stop()


def test_a_logout_through_any_node_revokes_that_devices_resume_token(cluster):
    a, b, c = cluster
    alice = register(a.api(), unique_name("alice"))
    laptop = login(a.api(), User(alice.name, alice.password))
    phone = login(b.api(), User(alice.name, alice.password))
    for via, device in ((c, laptop), (a, phone)):
        # through a node that did not answer that login
        expect(via.api().post("/api/logout", form=device.auth), 204, "logout")
    for device in (laptop, phone):
        token = device.login_body["resume"]
        for n in cluster:
            r = n.api().post("/api/resume", form={"token": token})
            assert r.status == 401, (n.port, r)
    # a device that did not log out keeps its token, whichever node is asked
    tablet = login(c.api(), User(alice.name, alice.password))
    r = expect(a.api().post("/api/resume", form={"token": tablet.login_body["resume"]}), 200)
    assert r.json()["username"] == alice.name
