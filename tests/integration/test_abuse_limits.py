"""Abuse limits against the real server (issue 11, "Bound every abuse").

A probe user logs in and chats while another client floods a recipient who
never reads: the probe's login and chat stay under a second (18.9 s before
spills were batched), the flood is bounded (429s, ``msg bye overflow``), and
no chat the server accepted is lost.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from typing import Any

import pytest

from presence_harness import (
    Api, ServerProcess, chat_ok, expect, login, new_user, register, unique_name,
)

FLOOD_SECONDS = 5.0
TEXT = "x" * 4000


def _flood(server: ServerProcess, creds: dict, to: str, stop: threading.Event,
           counts: dict, lock: threading.Lock) -> None:
    """POST /chat back to back on one keep-alive connection until ``stop``."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        while not stop.is_set():
            body = urllib.parse.urlencode({**creds, "to": to, "msg": TEXT})
            conn.request("POST", "/chat", body=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            payload = resp.read()
            with lock:
                key = resp.status
                if resp.status == 202:
                    key = json.loads(payload)["delivered"]
                counts[key] = counts.get(key, 0) + 1
    finally:
        conn.close()


def _until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _probe(api: Api, server: ServerProcess, heartbeats: Any, flood: list[dict]) -> dict:
    """While the flood runs: log in and chat to a reading friend, again and
    again; the slowest login, chat and delivery."""
    probe = register(api, unique_name("probe"))
    friend = new_user(api, "friend")
    hb = heartbeats(friend)
    stop = threading.Event()
    counts: dict = {}
    lock = threading.Lock()
    threads = [threading.Thread(target=_flood, args=(server, creds, flood_to, stop, counts, lock),
                                daemon=True) for creds, flood_to in flood]
    for t in threads:
        t.start()
    worst = {"login": 0.0, "chat": 0.0, "delivery": 0.0, "rounds": 0}
    try:
        _until(lambda: sum(counts.values()) >= 100, "the flood to be under way")
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            login(api, probe)
            worst["login"] = max(worst["login"], time.monotonic() - t0)
            t0 = time.monotonic()
            sent = chat_ok(api, probe, friend, f"round {worst['rounds']}")
            worst["chat"] = max(worst["chat"], time.monotonic() - t0)
            got = hb.wait_for(lambda f: f.kind == "chat" and sent["msgid"] in f.first_line,
                              timeout=5)
            worst["delivery"] = max(worst["delivery"], time.monotonic() - t0)
            expect(api.post("/ack", form={**friend.auth, "ack": got.id}), 204, "ack")
            worst["rounds"] += 1
            api.post("/api/logout", form=probe.auth)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    worst["flood"] = counts
    return worst


@pytest.fixture
def flood_server(server_factory):
    def start(**options: Any) -> ServerProcess:
        return server_factory.start(**options)
    return start


def test_a_probe_stays_fast_while_a_never_reading_session_is_flooded_without_limits(
        flood_server, heartbeats):
    """The spill path alone: chat limits raised out of the way, so that the
    flood pushes thousands of 4-KB chats out of the victim's mailbox."""
    server = flood_server(mailbox=200, chat_limit="1000000000:1000000",
                          address_chat_limit="1000000000:1000000")
    api = server.api()
    victim = new_user(api, "victim")
    never_reads = heartbeats(victim, server=server)   # held, never read, never acked
    flooders = [new_user(api, "flood") for _ in range(4)]
    worst = _probe(api, server, lambda u: heartbeats(u, server=server),
                   [(f.auth, victim.name) for f in flooders])
    print("spill flood, no chat limits:", worst)
    assert worst["rounds"] >= 3, worst
    assert worst["login"] < 1.0, worst
    assert worst["chat"] < 1.0, worst
    assert worst["delivery"] < 1.0, worst
    flood = worst["flood"]
    assert flood.get("online", 0) > 400, flood        # the mailbox overflowed
    # the victim's session was released once two mailboxes' worth left it unread
    never_reads.wait_for("msg bye overflow", timeout=30)
    # every chat accepted while it was online was kept: online ones spilled
    # (the mailbox held at most 200 when it ended), stored ones within the quota
    login(api, victim)
    unread = api.get("/api/welcome", query=victim.auth).json()["unread"]
    assert unread >= flood["online"] + min(flood.get("stored", 0), 1000) - 200, (unread, flood)
    assert unread <= flood["online"] + flood.get("stored", 0)
    assert "Traceback" not in server.output()


def test_with_the_default_limits_a_flood_gets_429_and_the_probe_is_unaffected(
        flood_server, heartbeats):
    server = flood_server(mailbox=50)
    api = server.api()
    victim = new_user(api, "victim")
    heartbeats(victim, server=server)
    flooder = new_user(api, "flood")
    worst = _probe(api, server, lambda u: heartbeats(u, server=server),
                   [(flooder.auth, victim.name)] * 3)
    print("flood with the default limits:", worst)
    assert worst["login"] < 1.0, worst
    assert worst["chat"] < 1.0, worst
    flood = worst["flood"]
    accepted = flood.get("online", 0) + flood.get("stored", 0)
    # a burst of 1,200, then 10 a second for the session
    assert accepted <= 1200 + 10 * (FLOOD_SECONDS + 3), flood
    assert flood.get(429, 0) > accepted, flood
    r = api.post("/chat", form={**flooder.auth, "to": victim.name, "msg": "more"})
    expect(r, 429, "a flooder over its limit")
    assert "too fast" in r.json()["error"]
    assert int(r.headers["Retry-After"]) >= 1


def _post_from(server: ServerProcess, source: str, path: str, **form: Any) -> tuple:
    """POST a form from the loopback address ``source`` (127.0.0.x)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("POST", path, body=urllib.parse.urlencode(form),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.headers, json.loads(body) if body else None
    finally:
        conn.close()


def test_guessing_an_account_from_many_addresses_never_locks_out_its_owner(server, api):
    owner = register(api, unique_name("owner"))
    login(api, owner)                                   # from 127.0.0.1: a known address
    for i in range(20):                                 # 10 from each of two addresses
        status, _, _ = _post_from(server, f"127.0.0.{2 + i // 10}", "/api/login",
                                  username=owner.name, password=f"guess {i}")
        assert status == 401, i
    status, headers, body = _post_from(server, "127.0.0.4", "/api/login",
                                       username=owner.name, password=owner.password)
    assert status == 429 and "this account" in body["error"], body
    assert owner.password not in json.dumps(body)
    assert int(headers["Retry-After"]) >= 1
    login(api, owner)                                   # the owner's usual address
    other = register(api, unique_name("other"))         # another account is untouched
    status, _, body = _post_from(server, "127.0.0.4", "/api/login", username=other.name,
                                 password=other.password)
    assert status == 200, body


def test_an_idle_guest_expires_after_guest_ttl(server_factory):
    server = server_factory.start(guest_ttl=1, poll=0.2, linger=0)
    api = server.api()
    guest = api.post("/api/guest").json()
    user = new_user(api, "stays")
    creds = {"me": guest["username"], "id": guest["session"]}
    _until(lambda: api.get("/api/session", query=creds).status == 403,
           "the idle guest to expire", timeout=15)
    expect(api.get("/api/session", query=user.auth), 200, "a user's session stays")
