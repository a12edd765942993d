"""Two users see each other come online and go offline (spec sections 2 and 3).

Server: --poll 1 --linger 2, so a dropped heartbeat must turn into
``msg update offline`` within linger + poll + 1 s.
"""
from __future__ import annotations

import time

import pytest

from presence_harness import Api, User, chat_ok, expect, login, new_user, unique_name

POLL = 1
LINGER = 2
OFFLINE_BOUND = LINGER + POLL + 1.0  # seconds after the client drops its socket

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": POLL, "linger": LINGER}


def add_contact(api: Api, user: User, contact: User) -> None:
    r = api.post("/api/contacts", form={**user.auth, "contact": contact.name})
    expect(r, 204, f"{user.name} adds contact {contact.name}")


def contacts_pair(api: Api) -> tuple[User, User]:
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    add_contact(api, alice, bob)
    add_contact(api, bob, alice)
    return alice, bob


def group_pair(api: Api) -> tuple[User, User, str]:
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    group = unique_name("grp")
    expect(api.post("/api/groups", form={**alice.auth, "name": group}), 201, "create group")
    expect(api.post(f"/api/groups/{group}/join", form=bob.auth), 204, "bob joins")
    for u in (alice, bob):
        expect(api.post("/api/active", form={**u.auth, "group": group}), 204, f"{u.name} active={group}")
    return alice, bob, group


def test_contacts_are_in_the_address_book(api):
    alice, bob = contacts_pair(api)
    # The address book is visible as a presence group named after its owner
    # (docs/decisions-draft.md: GET /api/contacts).
    r = expect(api.get("/api/contacts", query=alice.auth), 200, "GET /api/contacts")
    names = [m["name"] for m in r.json()["members"]]
    assert bob.name in names, r.json()


@pytest.mark.parametrize("variant", ["contacts", "group"])
def test_two_users_see_each_other_online_and_offline(api, heartbeats, variant):
    if variant == "contacts":
        alice, bob = contacts_pair(api)
    else:
        alice, bob, group = group_pair(api)

    bob_hb = heartbeats(bob)
    assert bob_hb.status == 200
    # alice's session is live (logged in) though she holds no heartbeat yet:
    # the change is queued in her mailbox and delivered when she connects.
    alice_hb = heartbeats(alice)
    assert alice_hb.status == 200

    bob_hb.wait_for(f"msg update online {alice.name}", timeout=3)
    alice_hb.wait_for(f"msg update online {bob.name}", timeout=3)

    # alice's client goes away: bob learns it after linger, within linger + poll + 1 s.
    dropped = time.monotonic()
    alice_hb.close()
    f = bob_hb.wait_for(f"msg update offline {alice.name}", timeout=OFFLINE_BOUND + 2)
    elapsed = f.received_at - dropped
    assert elapsed <= OFFLINE_BOUND, f"offline after {elapsed:.2f} s, bound {OFFLINE_BOUND} s"
    # "online ... while ... ended its last one less than linger seconds ago"
    assert elapsed >= LINGER - 0.5, f"offline after only {elapsed:.2f} s; linger is {LINGER} s"
    # bob never saw his own presence.
    assert not [x for x in bob_hb.frames if x.first_line.endswith(f" {bob.name}") and x.kind == "update"]

    r = expect(api.get(f"/api/presence/{alice.name}"), 200)
    assert r.json()["online"] is False, r.json()
    r = expect(api.get(f"/api/presence/{bob.name}"), 200)
    assert r.json()["online"] is True, r.json()
    if variant == "group":
        r = expect(api.get(f"/api/presence/{group}"), 200)
        members = {m["name"]: m["online"] for m in r.json()["members"]}
        assert members == {alice.name: False, bob.name: True}, r.json()

    # alice comes back with the same session: bob sees her online again.
    alice_hb2 = heartbeats(alice)
    bob_hb.wait_for(f"msg update online {alice.name}", timeout=3)
    alice_hb2.close()


def test_logout_goes_offline_promptly(api, heartbeats):
    alice, bob = contacts_pair(api)
    bob_hb = heartbeats(bob)
    alice_hb = heartbeats(alice)
    bob_hb.wait_for(f"msg update online {alice.name}", timeout=3)

    t0 = time.monotonic()
    r = api.post("/api/logout", form=alice.auth)
    expect(r, 204, "logout")
    f = bob_hb.wait_for(f"msg update offline {alice.name}", timeout=OFFLINE_BOUND + 2)
    elapsed = f.received_at - t0
    # An explicit logout does not wait for the linger period.
    assert elapsed < LINGER, f"offline {elapsed:.2f} s after logout (linger {LINGER} s)"

    # The logged-out session is gone: its heartbeat ends and it can act no more.
    assert alice_hb.wait_end(3), f"alice's heartbeat still open after logout: {alice_hb.frames}"
    expect(api.post("/api/logout", form=alice.auth), 403, "second logout")
    expect(api.post("/chat", form={**alice.auth, "to": bob.name, "msg": "x"}), 403, "chat after logout")


def test_logout_ends_held_heartbeat_with_bye(api, heartbeats):
    # docs/decisions-draft.md: "msg bye logout ends a session that logged out".
    alice = new_user(api, "alice")
    hb = heartbeats(alice)
    expect(api.post("/api/logout", form=alice.auth), 204)
    hb.wait_for("msg bye logout", timeout=3)
    assert hb.wait_end(3)


def test_second_session_keeps_user_online(api, heartbeats):
    """Presence is per user: one of two sessions going away changes nothing."""
    alice, bob = contacts_pair(api)
    alice_pc = alice
    alice_phone = login(api, User(alice.name, alice.password))
    bob_hb = heartbeats(bob)
    pc_hb = heartbeats(alice_pc)
    bob_hb.wait_for(f"msg update online {alice.name}", timeout=3)
    phone_hb = heartbeats(alice_phone)
    # The PC logs out; the handset still holds a heartbeat: no offline, even
    # after the linger period and a sweep.
    expect(api.post("/api/logout", form=alice_pc.auth), 204)
    bob_hb.assert_no_frame(f"msg update offline {alice.name}", LINGER + POLL + 0.5)
    # Then the handset logs out too: now offline.
    expect(api.post("/api/logout", form=alice_phone.auth), 204)
    bob_hb.wait_for(f"msg update offline {alice.name}", timeout=OFFLINE_BOUND + 2)
    pc_hb.close()
    phone_hb.close()


def test_membership_change_refreshes_watchers(api, heartbeats):
    alice, bob, group = group_pair(api)
    bob_hb = heartbeats(bob)
    carol = new_user(api, "carol")
    expect(api.post(f"/api/groups/{group}/join", form=carol.auth), 204)
    bob_hb.wait_for(f"msg refresh {group}", timeout=3)
    r = expect(api.get(f"/api/presence/{group}"), 200)
    assert {m["name"] for m in r.json()["members"]} == {alice.name, bob.name, carol.name}
    expect(api.post(f"/api/groups/{group}/leave", form=carol.auth), 204)
    bob_hb.wait_for(f"msg refresh {group}", timeout=3)
    r = expect(api.get(f"/api/presence/{group}"), 200)
    assert {m["name"] for m in r.json()["members"]} == {alice.name, bob.name}


def test_watching_a_single_user(api, heartbeats):
    """A session may watch one user instead of a group (what a communications
    page does for its visitor): POST /api/active group=<that user>."""
    alice, carol = new_user(api, "alice"), new_user(api, "carol")
    expect(api.post("/api/active", form={**carol.auth, "group": alice.name}), 204, "watch alice")
    carol_hb = heartbeats(carol)
    alice_hb = heartbeats(alice)
    carol_hb.wait_for(f"msg update online {alice.name}", timeout=3)
    alice_hb.close()
    carol_hb.wait_for(f"msg update offline {alice.name}", timeout=OFFLINE_BOUND + 2)
    r = expect(api.get(f"/api/presence/{alice.name}"), 200).json()
    assert r["name"] == alice.name and r["online"] is False, r
    assert isinstance(r["last_seen"], (int, float)) and abs(r["last_seen"] - time.time()) < 30, r


def test_removing_a_contact(api, heartbeats):
    alice, bob = contacts_pair(api)
    alice_hb = heartbeats(alice)
    expect(api.post("/api/contacts/remove", form={**alice.auth, "contact": bob.name}), 204)
    alice_hb.wait_for(f"msg refresh {alice.name}", timeout=3)
    r = expect(api.get("/api/contacts", query=alice.auth), 200)
    assert bob.name not in [m["name"] for m in r.json()["members"]], r.json()
    # bob is no longer watched: his coming online is not sent to alice.
    bob_hb = heartbeats(bob)
    marker_sender = new_user(api, "mark")
    chat_ok(api, marker_sender, alice, "marker")
    frames = alice_hb.frames_until(lambda f: f.kind == "chat", timeout=3)
    assert f"msg update online {bob.name}" not in [f.first_line for f in frames], frames
    bob_hb.close()
