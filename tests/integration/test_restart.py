"""A restarted server keeps its accounts, groups, aliases and message boxes
(the embedded store under --data)."""
from __future__ import annotations

import pytest

from presence_harness import User, chat_ok, expect, login, register, unique_name

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_restart_keeps_accounts_groups_aliases_and_messages(server_factory, stop):
    data = server_factory.new_data_dir()
    s1 = server_factory.start(data_dir=data)
    api = s1.api()

    alice = login(api, register(api, unique_name("alice")))
    bob = login(api, register(api, unique_name("bob")))
    carol = register(api, unique_name("carol"))  # offline all along
    group = unique_name("grp")
    expect(api.post("/api/groups", form={**alice.auth, "name": group}), 201, "create group")
    expect(api.post(f"/api/groups/{group}/join", form=bob.auth), 204, "bob joins")
    alias = unique_name("nick")
    expect(api.post("/api/aliases", form={**alice.auth, "alias": alias}), 201, "add alias")
    expect(api.post("/api/contacts", form={**alice.auth, "contact": bob.name}), 204, "add contact")
    stored = chat_ok(api, alice, carol, "kept across restarts ✓")
    assert stored["delivered"] == "stored", stored
    r = api.post("/api/messages", form={**bob.auth, "to": carol.name, "text": "note from bob"})
    expect(r, 201, "POST /api/messages")

    old_sessions = (alice.session, bob.session)
    if stop == "sigterm":
        s1.stop()
    else:
        # An unclean end: what was acknowledged with 201/202/204 must be durable.
        s1.kill()
    assert not s1.running

    s2 = server_factory.start(data_dir=data)
    api2 = s2.api()

    # Accounts: old passwords work, wrong ones do not.
    carol2 = login(api2, User(carol.name, carol.password))
    login(api2, User(alice.name, alice.password))
    r = api2.post("/api/login", form={"username": bob.name, "password": alice.password})
    expect(r, 401, "login with a wrong password after restart")
    # Names stay taken.
    expect(api2.post("/api/register", form={"username": alice.name, "password": "another-pw-1"}), 409)
    # Aliases: still taken, as a user name and as another user's alias.
    expect(api2.post("/api/register", form={"username": alias, "password": "another-pw-1"}), 409,
           "register a name that is an alias")
    bob2 = login(api2, User(bob.name, bob.password))
    expect(api2.post("/api/aliases", form={**bob2.auth, "alias": alias}), 409, "re-use an alias")

    # Message box.
    r = expect(api2.get("/api/messages", query=carol2.auth), 200)
    msgs = {(m["from"], m["text"]) for m in r.json()["messages"]}
    assert (alice.name, "kept across restarts ✓") in msgs, r.json()
    assert (bob.name, "note from bob") in msgs, r.json()
    assert r.json()["unread"] == 2, r.json()

    # Groups and membership.
    r = expect(api2.get(f"/api/presence/{group}"), 200, "group presence after restart")
    members = {m["name"]: m["online"] for m in r.json()["members"]}
    assert set(members) == {alice.name, bob.name}, r.json()
    expect(api2.post("/api/groups", form={**bob2.auth, "name": group}), 409, "group name still taken")

    # Users are known (and offline: no heartbeat survived the restart).
    r = expect(api2.get(f"/api/presence/{carol.name}"), 200)
    assert r.json()["online"] is False

    # Sessions are dynamic state; an old session id may or may not survive, but
    # whatever the server says must be 200-something or 403, never a 500.
    r = api2.get("/api/messages", query={"me": alice.name, "id": old_sessions[0]})
    assert r.status in (200, 403), r


def test_a_clean_stop_keeps_unacknowledged_chat_in_the_message_box(server_factory):
    """Chat answered "delivered: online" but not yet acknowledged by the
    recipient is not lost when the server stops: it moves to the box."""
    data = server_factory.new_data_dir()
    s1 = server_factory.start(data_dir=data)
    api = s1.api()
    alice = login(api, register(api, unique_name("alice")))
    bob = login(api, register(api, unique_name("bob")))
    hb = s1.heartbeat(bob)
    sent = chat_ok(api, alice, bob, "still unread at shutdown")
    assert sent["delivered"] == "online", sent
    hb.wait_for(lambda f: f.kind == "chat", what="the chat frame")  # seen, never acked
    s1.stop()
    assert not s1.running

    s2 = server_factory.start(data_dir=data)
    api2 = s2.api()
    bob2 = login(api2, User(bob.name, bob.password))
    r = expect(api2.get("/api/messages", query=bob2.auth), 200)
    texts = [(m["from"], m["text"]) for m in r.json()["messages"]]
    assert texts == [(alice.name, "still unread at shutdown")], r.json()
    r = expect(api2.get(f"/api/presence/{bob.name}"), 200)
    assert r.json()["last_seen"] is not None, r.json()
