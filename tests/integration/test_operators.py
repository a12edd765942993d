"""The operator endpoint (``--admin``) of the real ``twistd -n presence``:
``/metrics`` scraped and parsed with prometheus_client's own parser after a
scripted scenario, the token, the probes and the console's actions
(docs/operations.md, "Operators")."""
from __future__ import annotations

import json
import os
import stat
import time
from typing import Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from presence_harness import (
    Api, HeartbeatReader, HeartbeatTimeout, chat, chat_ok, expect, login, new_user,
    register,
)

pytestmark = pytest.mark.integration

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def server_options():
    # a small chat allowance: the scenario's sixth chat is refused (429)
    return {"keepalive": 30, "poll": 1, "linger": 1, "chat_limit": "5:0.001"}


def admin(server) -> Api:
    return Api("127.0.0.1", server.admin_port)


def bearer(server) -> dict:
    return {"Authorization": f"Bearer {server.admin_token()}"}


def scrape(server) -> Samples:
    r = expect(admin(server).get("/metrics", headers=bearer(server)), 200, "scrape")
    assert r.content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)  # polling a condition, with a deadline


def drain(reader: HeartbeatReader, quiet: float = 0.5) -> list:
    frames = []
    while True:
        try:
            frames.append(reader.next_frame(quiet))
        except HeartbeatTimeout:
            return frames


def test_counters_move_by_what_a_scripted_scenario_did(server, api):
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    carol = register(api)  # never logs in: chats to her are stored
    bob_hb = HeartbeatReader.open(server.host, server.port, bob.name, bob.session)
    wait_until(lambda: value(scrape(server), "presence_held_heartbeats") >= 1, "bob held")
    before = scrape(server)
    assert value(before, "presence_held_heartbeats") == 1
    dave = new_user(api, "dave")                       # one more login
    expect(api.post("/api/guest"), 200)                # a guest
    expect(api.post("/api/resume", form={"token": dave.login_body["resume"]}), 200)
    for i in range(4):
        chat_ok(api, alice, bob, f"hello {i}")         # 4 delivered online
    chat_ok(api, alice, carol.name, "for later")       # 1 stored
    expect(chat(api, alice, bob, "one too many"), 429)  # refused: chat allowance
    got = bob_hb.frames_until(lambda f: f.first_line.startswith("msg chat") and
                              f.payload == "hello 3")
    got += drain(bob_hb)
    expect(api.post("/ack", form={**bob.auth, "ack": "1"}), 204)
    bob_hb.close()                                     # a dropped heartbeat
    after = wait_until(lambda: (lambda s: s if value(s, "presence_held_heartbeats") == 0
                                else None)(scrape(server)), "bob's heartbeat gone")

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("presence_logins_total") == 1
    assert moved("presence_guest_logins_total") == 1
    assert moved("presence_resumes_total") == 1
    assert moved("presence_guests") == 1
    assert moved("presence_chats_total", delivered="online") == 4
    assert moved("presence_chats_total", delivered="stored") == 1
    assert moved("presence_refusals_total", kind="chat") == 1
    assert moved("presence_http_errors_total", family="chat", status="4xx") == 1
    assert moved("presence_acks_total") == 1
    assert moved("presence_heartbeat_releases_total", reason="lost") == 1
    assert moved("presence_held_heartbeats") == -1
    # every frame written went to bob's heartbeat, which read them all
    assert moved("presence_frames_written_total") == len(got)
    assert moved("presence_frames_per_write_count") >= 1
    # each chat delivered online was timed from acceptance to its write
    assert moved("presence_chat_latency_seconds_count") == 4
    # alice, bob (no heartbeat), dave twice (a login and a resume), the guest
    assert moved("presence_sessions") == 3 and value(after, "presence_sessions") == 5
    assert value(after, "presence_ready") == 1
    assert dave.session


def test_metrics_labels_are_bounded_and_carry_no_user_or_session(server, api):
    user = new_user(api, "labels")
    r = expect(admin(server).get("/metrics", headers=bearer(server)), 200)
    assert user.name not in r.text and user.session not in r.text
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            assert set(s.labels) <= {"reason", "kind", "family", "status", "delivered",
                                     "le", "outcome", "action", "side", "event", "box"}, s


def test_the_token_file_is_named_in_the_ready_line_and_only_its_owner_reads_it(server):
    path = server.admin_token_path
    assert path is not None and path.is_absolute()
    line = next(l for l in server.output().splitlines() if "presence ready" in l)
    assert f"admin_token={path}" in line and "admin=127.0.0.1:" in line
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert server.admin_token() not in server.output()


def test_probes_answer_without_a_token_and_everything_else_needs_it(server):
    a = admin(server)
    assert expect(a.get("/healthz"), 200).body == b"ok\n"
    assert expect(a.get("/readyz"), 200).body == b"ready\n"
    assert expect(a.get("/metrics"), 401).json()["error"]
    assert expect(a.get("/api/gauges"), 401).json()["error"]
    # never on the public port
    expect(server.api().get("/metrics"), 404)


def test_wrong_tokens_are_throttled_and_logged_without_the_token(server_factory):
    server = server_factory.start()
    a = admin(server)
    wrong = "not-the-token-" + "x" * 20
    codes = [a.get("/metrics", headers={"Authorization": f"Bearer {wrong}{i}"}).status
             for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    # throttled: even the right token waits now (its address is the one guessing)
    r = a.get("/metrics", headers=bearer(server))
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    out = server.output()
    assert out.count("admin: a wrong token from 127.0.0.1 for /metrics") == 10
    assert wrong not in out and server.admin_token() not in out


def test_a_given_token_file_is_used_and_a_bad_one_is_a_usage_error(server_factory, tmp_path):
    good = tmp_path / "token"
    good.write_text("s3cret-operator-token-0123456789\n")
    server = server_factory.start(admin_token_file=str(good))
    expect(admin(server).get("/api/gauges", headers={
        "Authorization": "Bearer s3cret-operator-token-0123456789"}), 200)
    assert f"admin_token={good}" in server.output()
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(AssertionError, match="admin-token-file"):
        server_factory.start(admin_token_file=str(short))


def test_admin_none_turns_the_endpoint_off(server_factory):
    server = server_factory.start(admin="none")
    assert server.admin_port is None
    line = next(l for l in server.output().splitlines() if "presence ready" in l)
    assert " admin=" not in line and "admin_token=" not in line


def post(server, path, **form):
    return admin(server).post(path, json_body=form, headers=bearer(server))


def test_ending_a_session_from_the_endpoint_drops_its_heartbeat_and_is_logged(server, api):
    user = new_user(api, "ended")
    hb = HeartbeatReader.open(server.host, server.port, user.name, user.session)
    listed = expect(admin(server).get("/api/user", query={"name": user.name},
                                      headers=bearer(server)), 200).json()
    [session] = listed["sessions"]
    # the console names a session by a handle, never by its ID (a credential)
    assert user.session not in json.dumps(listed) and len(session["handle"]) == 16
    assert session["heartbeat"] is True and session["mailbox"] == 0
    expect(post(server, "/api/session/end", name=user.name, handle=user.session), 404)
    answer = expect(post(server, "/api/session/end", name=user.name,
                         handle=session["handle"]), 200).json()
    assert answer == {"ended": user.name}
    hb.wait_for("msg bye admin")
    expect(api.get("/api/session", query=user.auth), 403)
    assert f"admin token@127.0.0.1 ended a session of {user.name}" in server.output()
    expect(post(server, "/api/session/end", name=user.name, handle=session["handle"]), 404)


def test_a_notice_reaches_every_held_heartbeat(server, api):
    one, two = new_user(api, "n1"), new_user(api, "n2")
    readers = [HeartbeatReader.open(server.host, server.port, u.name, u.session)
               for u in (one, two)]
    sent = expect(post(server, "/api/notice", text="maintenance at 22:00\nback by 22:15"),
                  200).json()
    assert sent["sessions"] >= 2
    for r in readers:
        frame = r.wait_for(lambda f: f.first_line == "msg notice")
        assert frame.payload == "maintenance at 22:00\nback by 22:15"
        r.close()
    expect(post(server, "/api/notice", text=""), 400)
    expect(post(server, "/api/notice", text="x" * 5000), 413)


def test_a_locked_account_cannot_log_in_until_it_is_unlocked(server, api):
    user = new_user(api, "locked")
    hb = HeartbeatReader.open(server.host, server.port, user.name, user.session)
    assert expect(post(server, "/api/user/lock", name=user.name), 200).json() == {
        "locked": True, "sessions_ended": 1}
    hb.wait_for("msg bye locked")
    r = api.post("/api/login", form={"username": user.name, "password": user.password})
    assert r.status == 403 and "locked" in r.json()["error"]
    looked = expect(admin(server).get("/api/user", query={"name": user.name},
                                      headers=bearer(server)), 200).json()
    assert looked["locked"] is True and looked["sessions"] == []
    expect(post(server, "/api/user/unlock", name=user.name), 200)
    login(api, user)
    expect(post(server, "/api/user/lock", name="nobody-here"), 404)


def test_a_message_box_flood_is_removed(server, api):
    target = register(api)
    flooder, friend = new_user(api, "flood"), new_user(api, "friend")
    for i in range(3):
        chat_ok(api, flooder, target.name, f"spam {i}")
    chat_ok(api, friend, target.name, "a real message")
    user = expect(admin(server).get("/api/user", query={"name": target.name},
                                    headers=bearer(server)), 200).json()
    assert user["unread"] == 4 and user["registered"] is True
    removed = expect(post(server, "/api/user/purge", name=target.name,
                          **{"from": flooder.name}), 200).json()
    assert removed == {"removed": 3}
    login(api, target)
    left = expect(api.get("/api/messages", query=target.auth), 200).json()
    assert [m["text"] for m in left["messages"]] == ["a real message"]
    assert f"removed 3 unread messages from {target.name}'s message box" in server.output()


def test_the_console_needs_its_header_for_actions_and_lists_refusals(server, api):
    a = admin(server)
    r = a.post("/login", form={"token": server.admin_token(), "name": "ops-test"})
    assert r.status == 303
    cookie = r.headers["Set-Cookie"].split(";", 1)[0]
    assert "HttpOnly" in r.headers["Set-Cookie"]
    assert "samesite=strict" in r.headers["Set-Cookie"].lower()
    # a cross-site form post cannot send the header: refused
    expect(a.post("/api/notice", json_body={"text": "hi"}, headers={"Cookie": cookie}), 403)
    expect(a.post("/api/notice", json_body={"text": "hi"},
                  headers={"Cookie": cookie, "X-Presence-Admin": "1"}), 200)
    assert "admin ops-test@127.0.0.1 sent a notice" in server.output()
    refusals = expect(a.get("/api/refusals", headers={"Cookie": cookie}), 200).json()
    assert any(x["kind"] == "chat" and x["address"] == "127.0.0.1"
               for x in refusals["refusals"])
    page = expect(a.get("/", headers={"Cookie": cookie}), 200)
    assert b"operator console" in page.body and b"console.js" in page.body
    wrong = a.post("/login", form={"token": "nope", "name": "x"})
    assert wrong.status == 401 and b"not the operator token" in wrong.body


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/session/end", {}),
    ("POST", "/api/session/end", {"name": "bob", "handle": "x" * 5000}),
    ("POST", "/api/user/lock", {"name": "Not A Name"}),
    ("POST", "/api/user/lock", {"name": ""}),
    ("POST", "/api/user/unlock", {"name": "a" * 100}),
    ("POST", "/api/user/purge", {"name": "bob", "from": "y" * 65}),
    ("POST", "/api/notice", {"text": "\ud800"}),
    ("POST", "/api/notice", {}),
    ("GET", "/api/user?name=" + "z" * 65, None),
    ("GET", "/api/user?name=%ff", None),
    ("GET", "/api/user?name=nobody-at-all", None),
    ("POST", "/api/gauges", None),
    ("GET", "/api/nothing-here", None),
])
def test_bad_input_to_the_operator_api_is_a_clear_4xx(server, method, path, body):
    headers = {**bearer(server)}
    if body is not None:
        data = json.dumps(body).encode("utf-8", "surrogatepass")
        headers["Content-Type"] = "application/json"
    else:
        data = None
    r = admin(server).request(method, path, body=data, headers=headers)
    assert 400 <= r.status < 500, (r.status, r.body)
    assert r.json()["error"]
    assert "Traceback" not in server.output()


def test_sip_and_wireless_figures_are_exposed_when_those_front_ends_are_on(server_factory):
    from test_sipp import free_port   # free for TCP and UDP on every interface
    server = server_factory.start(sip=free_port())
    samples = scrape(server)
    assert value(samples, "presence_sip_transactions", side="server") == 0
    assert value(samples, "presence_sip_calls") == 0
    assert value(samples, "presence_sip_subscriptions") == 0
    assert ("presence_wireless_pending", ()) in samples      # the simulator is on
    assert ("presence_wireless_texts_total", (("outcome", "delivered"),)) in samples
    off = server_factory.start(sip=0, smsc="none")
    names = {name for name, _ in scrape(off)}
    assert "presence_sip_calls" not in names and "presence_wireless_pending" not in names
