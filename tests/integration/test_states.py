"""Presence states end to end (spec section 12): the real ``twistd -n
presence``, heartbeats held over real sockets, ``presence-client`` processes
and a SIP caller over real UDP.

- ``POST /api/status`` reaches a watcher as ``msg update <state> <user>``
  with the text as the second line, and a second session of the user
  combines with the first (the most available wins; no frame when the
  combination stays);
- ``presence-client --state busy --status ...`` and ``--away-after``;
- a call to a busy user is ``486 Busy Here`` and nothing rings.
"""
from __future__ import annotations

import socket
import time

import pytest

from presence.sip.message import parse
from presence.sip.testing import invite
from presence_harness import (
    Api, User, expect, login, new_user, start_client, stop_client,
)
from test_sipp import free_port

pytestmark = pytest.mark.integration

SIP_PORT = free_port()


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "sip": SIP_PORT}


def watching(api: Api) -> tuple[User, User]:
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    expect(api.post("/api/contacts", form={**alice.auth, "contact": bob.name}), 204)
    return alice, bob


def status(api: Api, user: User, state: str, text: str = "") -> dict:
    return expect(api.post("/api/status", form={**user.auth, "state": state, "text": text}),
                  200, f"{user.name} is {state}").json()


def updates(frames) -> list[str]:
    return [f.data for f in frames if f.kind == "update"]


def test_states_reach_a_watcher_and_two_sessions_combine(api, heartbeats):
    alice, bob = watching(api)
    ha = heartbeats(alice)
    heartbeats(bob)
    ha.wait_for(f"msg update online {bob.name}", timeout=5)
    status(api, bob, "away", "back in 10 – ☕")
    frame = ha.wait_for(f"msg update away {bob.name}", timeout=3)
    assert frame.payload == "back in 10 – ☕"
    body = expect(api.get(f"/api/presence/{bob.name}"), 200).json()
    assert (body["online"], body["state"], body["text"]) == (True, "away", "back in 10 – ☕")

    # bob's phone: a second session, available, wins over away
    phone = login(api, User(bob.name, bob.password))
    heartbeats(phone)
    ha.wait_for(f"msg update online {bob.name}", timeout=3)
    status(api, bob, "busy")                  # the PC: still available overall
    status(api, phone, "busy", "driving")     # now busy overall
    later = ha.frames_until(lambda f: f.kind == "update" and f.words[2] == "busy", timeout=3)
    assert updates(later) == [f"msg update busy {bob.name}\ndriving"]
    book = expect(api.get("/api/contacts", query=alice.auth), 200).json()["members"]
    assert book == [{"name": bob.name, "online": True, "state": "busy", "text": "driving"}]

    # bad input: 400, nothing sent, nothing changed
    r = api.post("/api/status", form={**bob.auth, "state": "away", "text": "a\nmsg bye x"})
    assert r.status == 400 and "one line" in r.json()["error"]
    expect(api.post("/api/logout", form=phone.auth), 204)
    later = ha.frames_until(lambda f: f.kind == "update", timeout=3)
    assert updates(later) == [f"msg update busy {bob.name}"]     # the PC's, without text
    expect(api.post("/api/logout", form=bob.auth), 204)
    ha.wait_for(f"msg update offline {bob.name}", timeout=3)


def test_presence_client_sets_its_state_and_turns_away_when_idle(api, heartbeats, server,
                                                                  tmp_path):
    alice, bob = watching(api)
    ha = heartbeats(alice)
    busy = start_client(server.base, bob.name, bob.password, "--state", "busy", "--status",
                        "compiling", out=tmp_path / "busy.out")
    try:
        frame = ha.wait_for(f"msg update busy {bob.name}", timeout=10)
        assert frame.payload == "compiling"
    finally:
        stop_client(busy)
    ha.wait_for(f"msg update offline {bob.name}", timeout=10)

    started = time.monotonic()
    idle = start_client(server.base, bob.name, bob.password, "--away-after", "1",
                        out=tmp_path / "idle.out")
    try:
        ha.wait_for(f"msg update online {bob.name}", timeout=10)
        ha.wait_for(f"msg update away {bob.name}", timeout=5)
        # (no command is ever typed with --no-stdin: away after a second)
        assert time.monotonic() - started >= 1
    finally:
        stop_client(idle)


def test_a_call_to_a_busy_user_is_486_and_nothing_rings(api, heartbeats):
    bob = new_user(api, "bob")
    hb = heartbeats(bob)
    status(api, bob, "busy", "in a meeting")
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(5)
    try:
        port = caller.getsockname()[1]
        call = invite(f"sip:{bob.name}@localhost", via_host="127.0.0.1", via_port=port,
                      contact=f"<sip:carol@127.0.0.1:{port}>")
        caller.sendto(call.to_bytes(), ("127.0.0.1", SIP_PORT))
        answer = parse(caller.recv(65536))
        assert (answer.code, answer.reason) == (486, "Busy Here")
        # away rings: the INVITE reaches bob's heartbeat as a frame
        status(api, bob, "away")
        again = invite(f"sip:{bob.name}@localhost", via_host="127.0.0.1", via_port=port,
                       contact=f"<sip:carol@127.0.0.1:{port}>", call_id="second-call")
        caller.sendto(again.to_bytes(), ("127.0.0.1", SIP_PORT))
        ring = hb.wait_for(lambda f: f.kind == "sipreq", timeout=5)
        assert ring.words[2] == "INVITE" and "second-call" in ring.payload
        assert not [f for f in hb.skipped if f.kind == "sipreq"]   # the first never rang
    finally:
        caller.close()
