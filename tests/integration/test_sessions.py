"""Sessions: cookies, guests, the per-user session cap, mailbox bounds and
session expiry (spec sections 2-4, docs/decisions-draft.md), plus the
process-level promises of section 1 (--help, no thread per heartbeat)."""
from __future__ import annotations

import http.cookies
import os
import subprocess
import time

import pytest

from presence_harness import (
    HeartbeatReader,
    User,
    assert_error_body,
    chat_ok,
    expect,
    login,
    new_user,
    register,
    twistd_command,
    unique_name,
)

pytestmark = pytest.mark.integration


def session_cookie(resp) -> tuple[str, str]:
    """(name, value) of the cookie whose value is the session ID."""
    session = resp.json()["session"]
    for header in resp.headers.get_all("Set-Cookie") or []:
        c = http.cookies.SimpleCookie()
        c.load(header)
        for name, morsel in c.items():
            if morsel.value == session:
                assert "httponly" in header.lower(), header
                return name, morsel.value
    raise AssertionError(f"login set no cookie carrying the session: {resp.headers.get_all('Set-Cookie')}")


def test_session_cookie_authenticates(api, server):
    alice = register(api, unique_name("alice"))
    r = api.post("/api/login", form={"username": alice.name, "password": alice.password})
    expect(r, 200)
    name, value = session_cookie(r)
    cookie = {"Cookie": f"{name}={value}"}
    expect(api.get("/api/welcome", query={"me": alice.name}, headers=cookie), 200, "welcome by cookie")
    # The heartbeat by cookie as well (what a page's EventSource does).
    with HeartbeatReader.open(server.host, server.port, alice.name, None, headers=cookie) as hb:
        assert hb.status == 200, hb.headers
    with HeartbeatReader.open(server.host, server.port, alice.name, None) as hb:
        assert hb.status == 403  # and without it: 403
    bob = new_user(api, "bob")
    r = api.post("/chat", form={"me": alice.name, "to": bob.name, "msg": "by cookie"}, headers=cookie)
    expect(r, 202, "chat by cookie")
    r = api.post("/chat", form={"me": alice.name, "to": bob.name, "msg": "x"},
                 headers={"Cookie": f"{name}=not-a-session"})
    expect(r, 403, "chat with a bad cookie")
    assert_error_body(r, value)


def test_guest_session_chats_both_ways(api, heartbeats):
    r = api.post("/api/guest")
    expect(r, 200, "POST /api/guest")
    body = r.json()
    assert body["username"].startswith("guest."), body
    guest = User(body["username"], "", body["session"], body)
    assert body["heartbeat"].startswith("/jchat?"), body
    bob = new_user(api, "bob")
    g_hb, b_hb = heartbeats(guest), heartbeats(bob)
    assert g_hb.status == 200
    sent = chat_ok(api, guest, bob, "hello from a guest")
    assert sent["delivered"] == "online"
    f = b_hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.first_line == f"msg chat {guest.name} {sent['msgid']}" and f.payload == "hello from a guest"
    sent = chat_ok(api, bob, guest, "answered")
    f = g_hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.first_line == f"msg chat {bob.name} {sent['msgid']}" and f.payload == "answered"
    # A guest is no account: it cannot log in and its name stays reserved.
    expect(api.post("/api/register", form={"username": guest.name, "password": "whatever-1"}), 400)


def test_guest_creation_is_rate_limited(server_factory):
    s = server_factory.start()
    api = s.api()
    statuses = []
    for _ in range(60):  # docs/decisions-draft.md: 30 per address, then 1 per 2 s
        r = api.post("/api/guest")
        statuses.append(r.status)
        if r.status == 429:
            break
        assert r.status == 200, statuses
    assert statuses[-1] == 429, f"no 429 after {len(statuses)} guests"
    assert_error_body(r)


def test_seventeenth_session_replaces_the_oldest(api, heartbeats):
    # docs/decisions-draft.md: at most 16 sessions; a 17th login ends the oldest.
    alice = new_user(api, "alice")
    oldest_hb = heartbeats(alice)
    sessions = [alice] + [login(api, User(alice.name, alice.password)) for _ in range(15)]
    assert len({u.session for u in sessions}) == 16
    login(api, User(alice.name, alice.password))
    oldest_hb.wait_for("msg bye replaced", timeout=3)
    assert oldest_hb.wait_end(3)
    expect(api.get("/api/welcome", query=alice.auth), 403, "the replaced session")
    expect(api.get("/api/welcome", query=sessions[1].auth), 200, "the second-oldest session")


def test_mailbox_overflow_moves_chat_to_the_message_box(server_factory, heartbeats):
    s = server_factory.start(mailbox=5, linger=10)
    api = s.api()
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    hb = heartbeats.open(bob, server=s)  # bob reads but never acknowledges
    texts = [f"overflow {i}" for i in range(12)]
    for t in texts:
        chat_ok(api, alice, bob, t)
    hb.wait_for(lambda f: f.kind == "chat" and f.payload == texts[-1], timeout=3)
    # The session is told to re-read presence.
    refresh = [f for f in hb.frames if f.kind == "refresh"]
    assert refresh, f"no msg refresh after the mailbox overflowed: {hb.frames}"
    hb.close()
    # Reconnect without ack: what is still in the mailbox is re-sent.
    hb2 = heartbeats.open(bob, server=s, mode="poll", wait=1)
    assert hb2.wait_end(3)
    resent = [f.payload for f in hb2.frames if f.kind == "chat"]
    assert len(hb2.frames) <= 5, hb2.frames
    r = expect(api.get("/api/messages", query=bob.auth), 200)
    boxed = [m["text"] for m in r.json()["messages"] if m["from"] == alice.name]
    # Chat text is never dropped: every message is in the mailbox or the box.
    assert sorted(resent + boxed) == sorted(texts), (resent, boxed)
    assert resent == texts[len(texts) - len(resent):], resent  # the newest stay
    assert boxed, "nothing moved to the message box"


def test_expired_session_moves_unacknowledged_chat_to_the_box(server_factory, heartbeats):
    s = server_factory.start(poll=1, linger=1, session_ttl=2)
    api = s.api()
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    hb = heartbeats.open(bob, server=s)
    chat_ok(api, alice, bob, "unacknowledged 1")
    chat_ok(api, alice, bob, "unacknowledged 2")
    hb.read_frames(2, timeout=3, pred=lambda f: f.kind == "chat")
    hb.close()
    # Wait (bounded) for the session to expire: ttl 2 s + a sweep.
    deadline = time.monotonic() + 10
    statuses = []
    for _ in range(200):
        statuses.append(api.get("/api/welcome", query=bob.auth).status)
        if statuses[-1] != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling interval of a condition wait
    assert statuses[-1] == 403, f"session did not expire within 10 s (ttl 2 s): {statuses[-5:]}"
    bob2 = login(api, User(bob.name, bob.password))
    r = expect(api.get("/api/messages", query=bob2.auth), 200)
    boxed = [m["text"] for m in r.json()["messages"] if m["from"] == alice.name]
    assert sorted(boxed) == ["unacknowledged 1", "unacknowledged 2"], r.json()


def test_no_thread_per_heartbeat(server, api, heartbeats):
    pid = server.proc.pid
    task_dir = f"/proc/{pid}/task"
    if not os.path.isdir(task_dir):
        pytest.skip("no /proc on this system")
    before = len(os.listdir(task_dir))
    readers = []
    for _ in range(6):
        u = new_user(api, "many")
        sessions = [u] + [login(api, User(u.name, u.password)) for _ in range(9)]
        readers += [heartbeats(x) for x in sessions]
    assert all(r.status == 200 for r in readers)
    during = len(os.listdir(task_dir))
    assert during - before < 10, f"{len(readers)} held heartbeats: threads {before} -> {during}"
    for r in readers:
        r.close()


def test_help_lists_the_options():
    r = subprocess.run(twistd_command(["-n", "presence", "--help"]), capture_output=True,
                       text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for opt in ("--http", "--data", "--domain", "--host-box", "--keepalive", "--poll"):
        assert opt in out, f"{opt} missing from --help:\n{out}"
