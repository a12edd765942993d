"""GET /api/welcome (spec section 5): what happened while the user was away."""
from __future__ import annotations

import time

import pytest

from presence_harness import User, expect, login, new_user, register, unique_name

KEEPALIVE = 1

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": KEEPALIVE, "poll": 1, "linger": 2}


def welcome(api, user) -> dict:
    r = expect(api.get("/api/welcome", query=user.auth), 200, "GET /api/welcome")
    body = r.json()
    for key in ("last_login", "offline_seconds", "hits_while_offline", "unread"):
        assert key in body, (key, body)
    return body


def test_welcome_after_relogin(api, heartbeats):
    alice = register(api, unique_name("alice"))
    t_before = time.time()
    login(api, alice)
    t_after = time.time()
    first = welcome(api, alice)
    assert first["last_login"] is None, first  # no login before this session
    assert first["unread"] == 0, first

    bob = new_user(api, "bob")
    expect(api.post("/api/contacts", form={**bob.auth, "contact": alice.name}), 204)
    bob_hb = heartbeats(bob)
    alice_hb = heartbeats(alice)
    bob_hb.wait_for(f"msg update online {alice.name}", timeout=3)
    expect(api.post("/api/logout", form=alice.auth), 204, "logout")
    t_logout = time.time()
    bob_hb.wait_for(f"msg update offline {alice.name}", timeout=5)
    alice_hb.close()

    expect(api.post("/api/messages", form={**bob.auth, "to": alice.name, "text": "where are you?"}), 201)
    expect(api.post("/api/messages", form={"to": alice.name, "text": "anonymous hello"}), 201)
    # Let the server's clock move on: bob's stream is idle now, so its next
    # keep-alive comes at least --keepalive seconds after the last frame.
    bob_hb.wait_keepalive(timeout=KEEPALIVE + 2)

    again = login(api, User(alice.name, alice.password))
    t_relogin = time.time()
    w = welcome(api, again)
    assert isinstance(w["last_login"], (int, float)), w
    assert t_before - 2 <= w["last_login"] <= t_after + 2, (t_before, t_after, w)
    assert isinstance(w["offline_seconds"], (int, float)), w
    assert w["offline_seconds"] > 0, w
    assert w["offline_seconds"] <= (t_relogin - t_logout) + 2, (t_relogin - t_logout, w)
    assert w["unread"] == 2, w
    assert isinstance(w["hits_while_offline"], int) and w["hits_while_offline"] >= 0, w


def test_welcome_needs_a_session(api):
    alice = new_user(api, "alice")
    r = api.get("/api/welcome", query={"me": alice.name, "id": "0" * 32})
    expect(r, 403)
