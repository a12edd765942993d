"""Chat over the heartbeat (spec section 4) and the message box (section 5)."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from presence_harness import (
    assert_error_body,
    chat,
    chat_frames,
    chat_ok,
    expect,
    login,
    register,
    unique_name,
)

pytestmark = pytest.mark.integration


def messages_of(api, user) -> list[dict]:
    r = expect(api.get("/api/messages", query=user.auth), 200, "GET /api/messages")
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("messages"), list), body
    return body["messages"]


def test_chat_both_ways(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    alice_hb, bob_hb = heartbeats(alice), heartbeats(bob)

    body = chat_ok(api, alice, bob, "hello bob")
    assert body["delivered"] == "online", body
    f = bob_hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.first_line == f"msg chat {alice.name} {body['msgid']}", f
    assert f.payload == "hello bob"
    assert f.id is not None and f.id >= 1

    body = chat_ok(api, bob, alice, "hi alice")
    assert body["delivered"] == "online", body
    f = alice_hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.first_line == f"msg chat {bob.name} {body['msgid']}", f
    assert f.payload == "hi alice"


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld — ünïcödé ✓ 日本語 🎉",
        "first line\nsecond line\n\nfourth line after an empty one\n  indented: with colon",
        "data: not a field\nid: 99\n: not a comment",
        "é" * 4096,  # the limit is in characters, not bytes
    ],
    ids=["non-ascii", "multi-line", "event-stream-lookalike", "4096-chars"],
)
def test_chat_text_arrives_intact(api, make_user, heartbeats, text):
    alice, bob = make_user("alice"), make_user("bob")
    bob_hb = heartbeats(bob)
    body = chat_ok(api, alice, bob, text)
    f = bob_hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.first_line == f"msg chat {alice.name} {body['msgid']}"
    assert f.payload == text


def test_chat_json_body(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    bob_hb = heartbeats(bob)
    r = api.post("/chat", json_body={**alice.auth, "to": bob.name, "msg": "via json ✓"})
    expect(r, 202, "chat with a JSON body")
    f = bob_hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.payload == "via json ✓"


def test_fifty_quick_messages_arrive_in_order(api, server, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    bob_hb = heartbeats(bob)
    # One keep-alive connection, requests back to back.
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    msgids = []
    try:
        for i in range(50):
            form = urllib.parse.urlencode({**alice.auth, "to": bob.name, "msg": f"message {i}"})
            conn.request("POST", "/chat", body=form,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            payload = resp.read()
            assert resp.status == 202, (i, resp.status, payload)
            msgids.append(str(json.loads(payload)["msgid"]))
    finally:
        conn.close()
    assert len(set(msgids)) == 50, msgids
    frames = bob_hb.read_frames(50, timeout=10, pred=lambda f: f.kind == "chat")
    assert [f.payload for f in frames] == [f"message {i}" for i in range(50)]
    assert [f.words[3] for f in frames] == msgids
    ids = [f.id for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == 50, ids


def test_repeated_seq_is_acknowledged_again_and_delivered_once(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    bob_hb = heartbeats(bob)
    first = chat_ok(api, alice, bob, "only once", seq=7)
    again = chat_ok(api, alice, bob, "only once", seq=7)
    assert str(again["msgid"]) == str(first["msgid"]), (first, again)
    third = chat_ok(api, alice, bob, "only once", seq=7)
    assert str(third["msgid"]) == str(first["msgid"]), (first, third)
    # A marker with a new seq: everything before it has arrived (order is kept).
    marker = chat_ok(api, alice, bob, "marker", seq=8)
    assert str(marker["msgid"]) != str(first["msgid"])
    frames = bob_hb.frames_until(lambda f: f.kind == "chat" and f.payload == "marker", timeout=3)
    chats = chat_frames(frames, alice.name)
    assert [f.payload for f in chats] == ["only once", "marker"], chats


def test_same_seq_from_another_session_is_a_new_message(api, make_user, heartbeats):
    """The key is (session, seq): two sessions of one user have their own counters."""
    alice, bob = make_user("alice"), make_user("bob")
    alice2 = login(api, type(alice)(alice.name, alice.password))
    bob_hb = heartbeats(bob)
    a = chat_ok(api, alice, bob, "from pc", seq=1)
    b = chat_ok(api, alice2, bob, "from phone", seq=1)
    assert str(a["msgid"]) != str(b["msgid"])
    frames = bob_hb.read_frames(2, timeout=3, pred=lambda f: f.kind == "chat")
    assert [f.payload for f in frames] == ["from pc", "from phone"]


def test_offline_recipient_gets_it_stored(api, make_user):
    alice = make_user("alice")
    carol = register(api, unique_name("carol"))  # never logged in: offline
    body = chat_ok(api, alice, carol, "while you were out ✓\nsecond line")
    assert body["delivered"] == "stored", body
    login(api, carol)
    msgs = messages_of(api, carol)
    texts = [(m.get("from"), m.get("text")) for m in msgs]
    assert (alice.name, "while you were out ✓\nsecond line") in texts, msgs


def test_chat_too_long_is_413(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    bob_hb = heartbeats(bob)
    r = chat(api, alice, bob, "x" * 4097)
    expect(r, 413, "4097-character chat")
    assert_error_body(r, alice.session, alice.password)
    r = chat(api, alice, bob, "é" * 4097)
    expect(r, 413, "4097 non-ASCII characters")
    # Nothing was delivered: the next message is the first chat bob sees.
    chat_ok(api, alice, bob, "after")
    f = bob_hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.payload == "after", bob_hb.skipped


def test_chat_to_unknown_user_is_404(api, make_user):
    alice = make_user("alice")
    r = chat(api, alice, unique_name("nobody"), "hello?")
    expect(r, 404)
    assert_error_body(r, alice.session)


def test_initchat(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    alice_hb, bob_hb = heartbeats(alice), heartbeats(bob)
    r = api.get("/initchat", query={"me": alice.name, "to": bob.name, "id": alice.session})
    expect(r, 204, "initchat")
    alice_hb.wait_for(f"msg initChat {bob.name}", timeout=3)
    bob_hb.wait_for(f"msg initChat {alice.name}", timeout=3)

    carol = register(api, unique_name("carol"))
    r = api.get("/initchat", query={"me": alice.name, "to": carol.name, "id": alice.session})
    expect(r, 200, "initchat to an offline user")
    assert r.json() == {"online": False}
    r = api.get("/initchat", query={"me": alice.name, "to": unique_name("nobody"), "id": alice.session})
    expect(r, 404, "initchat to an unknown user")


def test_message_box_post_and_notify(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    bob_hb = heartbeats(bob)
    r = api.post("/api/messages", form={**alice.auth, "to": bob.name, "text": "call me ✓"})
    expect(r, 201, "POST /api/messages")
    bob_hb.wait_for(f"msg message {alice.name}", timeout=3)
    r = api.post("/api/messages", form={"to": bob.name, "text": "anonymous note"})
    expect(r, 201, "anonymous POST /api/messages")
    msgs = messages_of(api, bob)
    assert [m["text"] for m in msgs][:2] == ["anonymous note", "call me ✓"], msgs  # newest first
    body = expect(api.get("/api/messages", query=bob.auth), 200).json()
    assert body["unread"] == 2, body
    r = api.post(f"/api/messages/{msgs[0]['id']}/read", form=bob.auth)
    assert r.status in (200, 204), r  # the spec gives no status; any success
    body = expect(api.get("/api/messages", query=bob.auth), 200).json()
    assert body["unread"] == 1, body
