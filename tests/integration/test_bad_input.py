"""Bad input gets a fitting status and a readable JSON error that never echoes
a password or a session ID, and never disturbs anyone else's heartbeat."""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable

import pytest

from presence_harness import (
    Api,
    Response,
    User,
    assert_error_body,
    chat_ok,
    expect,
    new_user,
    register,
    unique_name,
    unique_password,
)

pytestmark = pytest.mark.integration

BIG = 70 * 1024  # over the 64 KiB body limit


@dataclass
class Ctx:
    api: Api
    alice: User
    bob: User
    group: str
    protected: str
    protected_password: str

    def secrets(self) -> list[str]:
        return [self.alice.password, self.alice.session, self.bob.password, self.bob.session,
                self.protected_password]


@pytest.fixture(scope="module")
def ctx(server) -> Ctx:
    api = server.api()
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    group = unique_name("grp")
    expect(api.post("/api/groups", form={**alice.auth, "name": group}), 201)
    protected = unique_name("priv")
    gpw = unique_password()
    expect(api.post("/api/groups", form={**alice.auth, "name": protected, "password": gpw}), 201)
    return Ctx(api, alice, bob, group, protected, gpw)


def _json(body: bytes) -> dict:
    return {"body": body, "headers": {"Content-Type": "application/json"}}


# (id, expected status, request) -- each request is a function of the context.
CASES: list[tuple[str, int, Callable[[Ctx], Response]]] = [
    # register
    ("register-missing-password", 400,
     lambda c: c.api.post("/api/register", form={"username": unique_name("n")})),
    ("register-missing-username", 400,
     lambda c: c.api.post("/api/register", form={"password": c.alice.password})),
    ("register-empty-body", 400, lambda c: c.api.post("/api/register", body=b"")),
    ("register-bad-name-space", 400,
     lambda c: c.api.post("/api/register", form={"username": "bad name", "password": c.alice.password})),
    ("register-bad-name-upper", 400,
     lambda c: c.api.post("/api/register", form={"username": "Alice", "password": c.alice.password})),
    ("register-bad-name-leading-dot", 400,
     lambda c: c.api.post("/api/register", form={"username": ".dot", "password": c.alice.password})),
    ("register-bad-name-too-long", 400,
     lambda c: c.api.post("/api/register", form={"username": "a" * 33, "password": c.alice.password})),
    ("register-reserved-guest-prefix", 400,
     lambda c: c.api.post("/api/register", form={"username": "guest.abc", "password": c.alice.password})),
    ("register-weak-password", 400,
     lambda c: c.api.post("/api/register", form={"username": unique_name("n"), "password": "q1w2e"})),
    ("register-password-equals-name", 400,
     lambda c: c.api.post("/api/register", form={"username": "samename1", "password": "samename1"})),
    ("register-taken", 409,
     lambda c: c.api.post("/api/register", form={"username": c.alice.name, "password": unique_password()})),
    ("register-group-name-taken", 409,
     lambda c: c.api.post("/api/register", form={"username": c.group, "password": unique_password()})),
    # login
    ("login-wrong-password", 401,
     lambda c: c.api.post("/api/login", form={"username": c.alice.name, "password": c.bob.password})),
    ("login-unknown-user", 401,
     lambda c: c.api.post("/api/login", form={"username": unique_name("ghost"), "password": c.alice.password})),
    # sessions
    ("chat-wrong-session", 403,
     lambda c: c.api.post("/chat", form={"me": c.alice.name, "id": c.bob.session, "to": c.bob.name, "msg": "x"})),
    ("chat-made-up-session", 403,
     lambda c: c.api.post("/chat", form={"me": c.alice.name, "id": "f" * 32, "to": c.bob.name, "msg": "x"})),
    ("chat-no-session", 403,
     lambda c: c.api.post("/chat", form={"me": c.alice.name, "to": c.bob.name, "msg": "x"})),
    ("logout-wrong-session", 403,
     lambda c: c.api.post("/api/logout", form={"me": c.alice.name, "id": c.alice.session[::-1]})),
    ("messages-wrong-session", 403,
     lambda c: c.api.get("/api/messages", query={"me": c.alice.name, "id": c.bob.session})),
    ("ack-wrong-session", 403,
     lambda c: c.api.post("/ack", query={"me": c.alice.name, "id": c.bob.session, "ack": 1})),
    # missing / malformed parameters
    ("chat-missing-to", 400,
     lambda c: c.api.post("/chat", form={**c.alice.auth, "msg": "x"})),
    ("chat-missing-msg", 400,
     lambda c: c.api.post("/chat", form={**c.alice.auth, "to": c.bob.name})),
    ("chat-seq-not-a-number", 400,
     lambda c: c.api.post("/chat", form={**c.alice.auth, "to": c.bob.name, "msg": "x", "seq": "seven"})),
    ("ack-not-a-number", 400,
     lambda c: c.api.post("/ack", query={**c.alice.auth, "ack": "lots"})),
    ("contacts-missing-contact", 400,
     lambda c: c.api.post("/api/contacts", form=c.alice.auth)),
    ("groups-missing-name", 400,
     lambda c: c.api.post("/api/groups", form=c.alice.auth)),
    ("groups-bad-name", 400,
     lambda c: c.api.post("/api/groups", form={**c.alice.auth, "name": "No Such Name!"})),
    ("active-missing-group", 400,
     lambda c: c.api.post("/api/active", form=c.alice.auth)),
    ("messages-post-missing-to", 400,
     lambda c: c.api.post("/api/messages", form={**c.alice.auth, "text": "x"})),
    # unknown users and groups
    ("chat-unknown-user", 404,
     lambda c: c.api.post("/chat", form={**c.alice.auth, "to": unique_name("ghost"), "msg": "x"})),
    ("contacts-unknown-user", 404,
     lambda c: c.api.post("/api/contacts", form={**c.alice.auth, "contact": unique_name("ghost")})),
    ("contacts-remove-unknown", 404,
     lambda c: c.api.post("/api/contacts/remove", form={**c.alice.auth, "contact": unique_name("ghost")})),
    ("active-unknown-group", 404,
     lambda c: c.api.post("/api/active", form={**c.alice.auth, "group": unique_name("nogrp")})),
    ("join-unknown-group", 404,
     lambda c: c.api.post(f"/api/groups/{unique_name('nogrp')}/join", form=c.alice.auth)),
    ("leave-unknown-group", 404,
     lambda c: c.api.post(f"/api/groups/{unique_name('nogrp')}/leave", form=c.alice.auth)),
    ("presence-unknown", 404, lambda c: c.api.get(f"/api/presence/{unique_name('ghost')}")),
    ("messages-to-unknown", 404,
     lambda c: c.api.post("/api/messages", form={**c.alice.auth, "to": unique_name("ghost"), "text": "x"})),
    ("initchat-unknown", 404,
     lambda c: c.api.get("/initchat", query={**c.alice.auth, "to": unique_name("ghost")})),
    # groups
    ("group-taken", 409,
     lambda c: c.api.post("/api/groups", form={**c.bob.auth, "name": c.group})),
    ("group-named-like-a-user", 409,
     lambda c: c.api.post("/api/groups", form={**c.bob.auth, "name": c.alice.name})),
    ("alias-taken-by-user-name", 409,
     lambda c: c.api.post("/api/aliases", form={**c.bob.auth, "alias": c.alice.name})),
    ("join-protected-wrong-password", 403,
     lambda c: c.api.post(f"/api/groups/{c.protected}/join", form={**c.bob.auth, "password": c.bob.password})),
    ("join-protected-no-password", 403,
     lambda c: c.api.post(f"/api/groups/{c.protected}/join", form=c.bob.auth)),
    ("presence-protected-no-password", 401, lambda c: c.api.get(f"/api/presence/{c.protected}")),
    # oversized
    ("register-body-over-64k", 413,
     lambda c: c.api.post("/api/register", form={"username": unique_name("n"), "password": "p" * BIG})),
    ("chat-body-over-64k", 413,
     lambda c: c.api.post("/chat", form={**c.alice.auth, "to": c.bob.name, "msg": "m" * BIG})),
    ("messages-body-over-64k", 413,
     lambda c: c.api.post("/api/messages", form={**c.alice.auth, "to": c.bob.name, "text": "t" * BIG})),
    ("json-body-over-64k", 413,
     lambda c: c.api.post("/api/register", json_body={"username": unique_name("n"), "password": "p" * BIG})),
    # broken JSON with Content-Type: application/json
    ("json-truncated", 400, lambda c: c.api.post("/api/register", **_json(b'{"username": "abc", '))),
    ("json-not-json", 400, lambda c: c.api.post("/api/register", **_json(b"username=abc&password=x"))),
    ("json-array", 400, lambda c: c.api.post("/api/register", **_json(b'["abc", "defghij"]'))),
    ("json-string", 400, lambda c: c.api.post("/api/register", **_json(b'"just a string"'))),
    ("json-bad-utf8", 400, lambda c: c.api.post("/api/register", **_json(b'{"username": "\xff\xfe"}'))),
    ("json-empty", 400, lambda c: c.api.post("/api/register", **_json(b""))),
    ("json-wrong-types", 400,
     lambda c: c.api.post("/api/register", json_body={"username": ["a"], "password": {"x": 1}})),
    # issue 11, item 6: each of these was a 500 with a logged traceback
    ("json-20000-deep", 400,
     lambda c: c.api.post("/chat", query=c.alice.auth, **_json(
         b'{"to": "bob", "msg": ' + b"[" * 20000 + b"]" * 20000 + b"}"))),
    ("ack-5000-digits", 400,
     lambda c: c.api.post("/ack", query={**c.alice.auth, "ack": "1" * 5000})),
    ("heartbeat-ack-5000-digits", 400,
     lambda c: c.api.get("/jchat", query={**c.alice.auth, "ack": "1" * 5000})),
    ("message-id-past-2^63", 400,
     lambda c: c.api.post(f"/api/messages/{2 ** 63}/read", query=c.alice.auth)),
    ("register-lone-surrogate-password", 400,
     lambda c: c.api.post("/api/register", **_json(
         b'{"username": "%s", "password": "abcdef\\udc00"}' % unique_name("n").encode()))),
    ("login-lone-surrogate-password", 400,
     lambda c: c.api.post("/api/login", **_json(
         b'{"username": "%s", "password": "\\udc00"}' % c.alice.name.encode()))),
    ("chat-lone-surrogate", 400,
     lambda c: c.api.post("/chat", query=c.alice.auth, **_json(
         b'{"to": "%s", "msg": "\\udc00"}' % c.bob.name.encode()))),
    ("messages-lone-surrogate-utf8", 400,
     lambda c: c.api.post("/api/messages", query=c.alice.auth,
                          body=b"to=" + c.bob.name.encode() + b"&text=%ED%B0%80",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})),
    ("json-chat-broken", 400,
     lambda c: c.api.post("/chat", **_json(b'{"me": "%s", "id": "%s", "to": ' % (
         c.alice.name.encode(), c.alice.session.encode())))),
]


@pytest.mark.parametrize("status,call", [(s, f) for _, s, f in CASES], ids=[i for i, _, _ in CASES])
def test_bad_input_status_and_error_body(ctx, status, call):
    resp = call(ctx)
    assert resp.status == status, f"expected {status}, got {resp.status}: {resp.body[:300]!r}"
    assert_error_body(resp, *ctx.secrets())


def test_error_never_echoes_the_wrong_password_or_session(api, make_user):
    alice = make_user("alice")
    wrong_pw = unique_password()
    r = api.post("/api/login", form={"username": alice.name, "password": wrong_pw})
    expect(r, 401)
    assert_error_body(r, wrong_pw, alice.password)
    weak = "Zq9"  # too short to be accepted
    r = api.post("/api/register", form={"username": unique_name("n"), "password": weak})
    expect(r, 400)
    assert_error_body(r, weak)
    made_up = "s3cr3t-" + unique_password()
    for call in (
        lambda: api.post("/chat", form={"me": alice.name, "id": made_up, "to": alice.name, "msg": "x"}),
        lambda: api.post("/chat", form={"me": alice.name, "sessionId": made_up, "to": alice.name, "msg": "x"}),
        lambda: api.get("/api/welcome", query={"me": alice.name, "id": made_up}),
        lambda: api.post("/api/logout", form={"me": alice.name, "id": made_up}),
    ):
        r = call()
        expect(r, 403)
        assert_error_body(r, made_up, alice.session)


def test_session_id_synonym_and_json_bodies_are_accepted(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    hb = heartbeats(bob)
    r = api.post("/chat", form={"me": alice.name, "sessionId": alice.session, "to": bob.name, "msg": "syn"})
    expect(r, 202, "chat with sessionId")
    r = api.post("/chat", json_body={"me": alice.name, "id": alice.session, "to": bob.name, "msg": "json"})
    expect(r, 202, "chat with a JSON body")
    frames = hb.read_frames(2, timeout=3, pred=lambda f: f.kind == "chat")
    assert [f.payload for f in frames] == ["syn", "json"]
    u = User(unique_name("jay"), unique_password())
    r = api.post("/api/register", json_body={"username": u.name, "password": u.password})
    expect(r, 201, "register with a JSON body")
    r = api.post("/api/login", json_body={"username": u.name, "password": u.password})
    expect(r, 200, "login with a JSON body")
    assert r.headers.get("Content-Type", "").startswith("application/json")


def test_protected_group_with_password(api, ctx):
    r = api.post(f"/api/groups/{ctx.protected}/join", form={**ctx.bob.auth, "password": ctx.protected_password})
    expect(r, 204, "join a protected group with its password")
    r = api.get(f"/api/presence/{ctx.protected}", query={"password": ctx.protected_password})
    expect(r, 200, "presence of a protected group with its password")
    assert ctx.protected_password not in r.text


def raw_garbage(server) -> None:
    """Requests that are not HTTP, or stop half-way, on raw sockets."""
    payloads = [
        b"GARBAGE\r\n\r\n",
        b"GET /jchat?me=x HTTP/1.1\r\nHost: x\r\n",  # headers never end
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nme=a",  # body cut short
        b"\x00\xff\x16\x03\x01\x02\x00" * 10,  # a TLS-ish handshake
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",  # a huge request line
    ]
    for p in payloads:
        with socket.create_connection((server.host, server.port), timeout=3) as s:
            try:
                s.sendall(p)
            except OSError:
                pass


def test_bad_input_does_not_disturb_a_held_heartbeat(server, api, ctx, heartbeats):
    witness, sender = new_user(api, "wit"), new_user(api, "snd")
    hb = heartbeats(witness)
    first = chat_ok(api, sender, witness, "before")
    f1 = hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f1.payload == "before"

    statuses = []
    for name, status, call in CASES:
        if name.startswith("login-"):
            continue  # failed logins are rate-limited per address; see the 429 test
        statuses.append((name, call(ctx).status))
        # Bad requests aimed at the witness's own session name, too.
        if name == "chat-made-up-session":
            r = api.post("/chat", form={"me": witness.name, "id": "0" * 32, "to": sender.name, "msg": "x"})
            statuses.append(("witness-wrong-session", r.status))
    raw_garbage(server)
    assert all(s < 500 for _, s in statuses), [x for x in statuses if x[1] >= 500]

    chat_ok(api, sender, witness, "after")
    f2 = hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f2.payload == "after", hb.skipped
    assert f2.id > f1.id
    assert not hb.ended, "the witness's heartbeat ended"
    assert server.running


def test_failed_logins_get_429_without_disturbing_others(server_factory, heartbeats):
    s = server_factory.start(keepalive=5, poll=1, linger=2)
    api = s.api()
    victim = register(api, unique_name("vic"))
    witness, sender = new_user(api, "wit"), new_user(api, "snd")
    hb = heartbeats.open(witness, server=s)
    chat_ok(api, sender, witness, "before")
    assert hb.wait_for(lambda f: f.kind == "chat", timeout=3).payload == "before"

    seen = []
    wrong = unique_password()
    for _ in range(40):  # the limit is 10 failures (docs/decisions-draft.md)
        r = api.post("/api/login", form={"username": victim.name, "password": wrong})
        seen.append(r.status)
        if r.status == 429:
            break
        assert r.status == 401, seen
    assert seen[-1] == 429, f"no 429 after {len(seen)} failed logins: {seen}"
    assert len(seen) >= 5, f"429 already after {len(seen)} attempts: {seen}"
    assert_error_body(r, wrong, victim.password)
    # From this address, even the right password is refused for a while.
    r = api.post("/api/login", form={"username": victim.name, "password": victim.password})
    assert r.status == 429, r
    assert_error_body(r, victim.password)

    # The held heartbeat of another user still receives frames.
    chat_ok(api, sender, witness, "after")
    f = hb.wait_for(lambda f: f.kind == "chat", timeout=3)
    assert f.payload == "after"
    assert not hb.ended


def test_a_lone_surrogate_never_poisons_the_recipients_heartbeat(server, api, heartbeats):
    """Issue 11, item 4: a JSON chat with "\\udc00" was taken (202) and every
    later heartbeat of the recipient answered "Processing Failed"."""
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    hb = heartbeats(bob)
    r = api.post("/chat", query=alice.auth,
                 **_json(b'{"to": "%s", "msg": "x\\udc00y"}' % bob.name.encode()))
    assert r.status == 400 and "surrogate" in assert_error_body(r, alice.session)
    chat_ok(api, alice, bob, "after")
    assert hb.wait_for(lambda f: f.kind == "chat", timeout=3).payload == "after"
    hb.close()
    again = heartbeats(bob)  # a new heartbeat of bob is healthy
    chat_ok(api, alice, bob, "again")
    assert again.wait_for(lambda f: f.kind == "chat" and f.payload == "again", timeout=3)
    log = server.output()
    assert "Processing Failed" not in log and "UnicodeEncodeError" not in log


def test_a_cookie_state_change_from_another_port_is_403(server, api):
    """Issue 11, item 5: a page on the same host, another port (the same
    site for SameSite=Lax, another origin), cannot act with the cookie."""
    alice = new_user(api, "alice")
    cookie = {"Cookie": f"presence_session={alice.session}"}
    other = {**cookie, "Origin": f"http://{server.host}:{server.port + 1}"}
    for path, form in (("/api/aliases", {"alias": unique_name("al")}),
                       ("/chat", {"to": alice.name, "msg": "forged"})):
        r = api.post(path, form=form, headers=other)
        assert r.status == 403, (path, r)
        assert "another site" in assert_error_body(r, alice.session, alice.password)
        r = api.post(path, form=form, headers={**cookie, "Sec-Fetch-Site": "same-site"})
        assert r.status == 403, (path, r)
    own = {**cookie, "Origin": f"http://{server.host}:{server.port}"}
    expect(api.post("/api/aliases", form={"alias": unique_name("al")}, headers=own), 201)
    expect(api.post("/chat", form={"to": alice.name, "msg": "mine"}, headers=own), 202)
    # me and id from a client that sends no Origin work as ever
    expect(api.post("/api/aliases", form={**alice.auth, "alias": unique_name("al")}), 201)
