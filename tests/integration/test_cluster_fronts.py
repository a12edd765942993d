"""The handset emulator and the SIP bridge against a cluster of two real
nodes sharing one real ``redis-server`` (issue 12): a handset user whose
session is on one box chats with a user held on the other, and back; a
SIP phone behind a bridge on one box calls one behind a bridge on the
other (the two boxes' proxies relay it: docs/cluster.md, "SIP across
boxes").
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster_support import (  # noqa: E402,F401  (fixtures)
    box_of, boxes, node_of, start_cluster, wait_until, redis, two_nodes,
)
from presence_harness import (  # noqa: E402
    Api, HeartbeatReader, expect, login, register, unique_name,
)
from test_wireless import (  # noqa: E402
    handset_status, new_number, start_handset, text_handset, Handset,
)

pytestmark = pytest.mark.integration


HANDSET = """\
wait-for "msg initChat {alice}" 30
wait-for "^  hi from the other box$" 30
reply hello {alice}, from a handset
wait-for "^Sent\\.$" 30
quit
"""


@pytest.mark.parametrize("far", [False, True], ids=["held-by-its-node", "held-elsewhere"])
def test_a_handset_user_on_one_box_chats_with_a_user_on_the_other(two_nodes, tmp_path, far):
    """The handset's operator and browser are on node a; alice's session
    is on the other box than the handset's (which, ``far``, is b: its
    heartbeat sent to a is redirected there)."""
    a, b = two_nodes
    here, there = (a, b) if far else (b, a)
    # alice's session on ``here`` (the emptiest, asked through it)
    alice = login(here.api(), register(here.api(), unique_name("alice")))
    assert node_of(two_nodes, alice) is here
    number = new_number()
    bob = register(a.api(), unique_name("bob"), wireless=number)
    # bob's secret, through a session he ends again (a logout on a)
    login(a.api(), bob)
    r = expect(a.api().post("/api/wireless/secret", form=bob.auth), 201)
    hs = Handset(bob, number, r.json()["secret"])
    expect(a.api().post("/api/logout", form=bob.auth), 204)
    wait_until(lambda: boxes(a.api()) == {box_of(there): 0, box_of(here): 1}, 10,
               "only alice's")

    # bob's handset is on a's simulator, its browser on a
    proc, out = start_handset(a, hs, HANDSET.format(alice=alice.name), tmp_path)
    try:
        with HeartbeatReader.open(here.host, here.port, alice.name, alice.session) as ha:
            wait_until(lambda: handset_status(Api(a.host, a.smsc_port), hs)["attached"], 20,
                       "the handset attached")
            # alice texts him through the node of his handset's operator
            r = text_handset(a.api(), alice, bob.name)
            assert (r.status, r.json()) == (202, {"status": "sent"}), r
            ha.wait_for(f"msg initChat {bob.name}", timeout=20)
            # the handset holds its heartbeat: bob is online on every node
            for n in two_nodes:
                wait_until(lambda: n.api().get(f"/api/presence/{bob.name}").json()["online"],
                           20, f"bob online on {n.port}")
            assert boxes(b.api())[box_of(there)] == 1, boxes(b.api())
            r = expect(here.api().post("/chat", form={**alice.auth, "to": bob.name,
                                                      "msg": "hi from the other box"}), 202)
            assert r.json()["delivered"] == "online"
            f = ha.wait_for(lambda f: f.kind == "chat" and f.words[2] == bob.name, timeout=30)
            assert f.payload == f"hello {alice.name}, from a handset"
            assert proc.wait(timeout=30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert f"* holding the heartbeat of {bob.name}" in out.read_text()


@pytest.fixture
def sip_nodes(redis, tmp_path):
    from test_sipp import free_port as sip_free_port
    from redis_support import fresh_prefix
    url = f"{redis.url}?prefix={fresh_prefix()}"
    nodes = start_cluster(tmp_path, url, ("a", "b"), lambda: ("--sip", str(sip_free_port())))
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.requires_program("sipp")
@pytest.mark.parametrize("alice_via", ["b", "a"], ids=["each-bridge-on-its-box",
                                                       "both-bridges-on-a"])
def test_a_sip_phone_behind_a_bridge_on_one_box_calls_one_on_the_other(sip_nodes, tmp_path,
                                                                        alice_via):
    """``alice_via`` "a": alice's bridge talks to node a while her session
    is on box b (its heartbeat and its POST /sip are redirected there)."""
    from test_sipp import Bridge, Sipp, check, sipp_report, udp_port
    a, b = sip_nodes
    bob, alice = register(a.api(), unique_name("bob")), register(a.api(), unique_name("alice"))
    bridges = []
    sipp = Sipp(tmp_path)
    try:
        # each bridge on its own node: bob's session on a, alice's on b
        bridges.append(Bridge(a.base, bob.name, bob.password, udp_port(), udp_port(),
                              tmp_path / "bridge-bob.log"))
        wait_until(lambda: boxes(b.api()).get(box_of(a)) == 1, 10, "bob's session on a")
        bridges.append(Bridge((b if alice_via == "b" else a).base, alice.name,
                              alice.password, udp_port(), udp_port(),
                              tmp_path / "bridge-alice.log"))
        wait_until(lambda: boxes(a.api()) == {box_of(a): 1, box_of(b): 1}, 10,
                   "alice's session on b")
        bob_bridge, alice_bridge = bridges
        for n in sip_nodes:
            wait_until(lambda: n.api().get(f"/api/presence/{alice.name}").json()["online"],
                       20, f"alice online on {n.port}")
        phone = sipp.phone(alice_bridge.phone, 3)
        result = sipp.call(f"127.0.0.1:{bob_bridge.listen}", f"sip:{alice.name}@localhost", 3,
                           port=bob_bridge.phone)
        # (the caller's verdict first: a refused call need not wait for the phone)
        assert result.returncode == 0, sipp_report(result)
        check(result, [phone], "bob's phone on a calls alice's on b through two bridges")
    finally:
        sipp.close()
        for bridge in bridges:
            bridge.kill()


@pytest.mark.requires_program("sipp")
@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_a_sip_phone_on_the_network_calls_a_user_held_by_the_other_box(
        sip_nodes, tmp_path, transport):
    """A plain SIP caller (no bridge, UDP or TCP) sends its INVITE to box a
    for alice, whose bridge session is on box b: a forks it to b's proxy,
    and the caller's ACK and BYE follow the route set through both."""
    from test_sipp import Bridge, Sipp, check, sipp_report, udp_port
    a, b = sip_nodes
    a_sip = int(a.extra_args[a.extra_args.index("--sip") + 1])
    alice = register(a.api(), unique_name("alice"))
    wait_until(lambda: boxes(a.api()) == {box_of(a): 0, box_of(b): 0}, 10, "no sessions")
    sipp = Sipp(tmp_path)
    # alice's session on b (asked through b, the emptiest on a tie is the node asked)
    bridge = Bridge(b.base, alice.name, alice.password, udp_port(), udp_port(),
                    tmp_path / "bridge-alice.log")
    try:
        wait_until(lambda: boxes(a.api()).get(box_of(b)) == 1, 10, "alice's session on b")
        wait_until(lambda: a.api().get(f"/api/presence/{alice.name}").json()["online"],
                   20, "alice online on a")
        phone = sipp.phone(bridge.phone, 3)
        result = sipp.call(f"127.0.0.1:{a_sip}", f"sip:{alice.name}@localhost", 3,
                           transport=transport)
        assert result.returncode == 0, sipp_report(result)
        check(result, [phone], "a network caller on a calls alice on b")
    finally:
        sipp.close()
        bridge.kill()
