"""Session IDs and passwords never appear in the server's log (spec section 2)."""
from __future__ import annotations

import json
import urllib.parse

import pytest

from presence_harness import (
    Api, User, chat_ok, expect, login, register, unique_name, unique_password,
)

pytestmark = pytest.mark.integration


def test_log_never_contains_session_ids_or_passwords(server_factory, heartbeats):
    json_log = server_factory.base / "presence-log.json"
    # --json-log: docs/decisions-draft.md (JSON log lines for operators)
    s = server_factory.start(keepalive=1, poll=1, linger=2, json_log=str(json_log))
    api = s.api()
    secrets: list[str] = []

    users = [register(api, unique_name(p)) for p in ("alice", "bob", "carol")]
    secrets += [u.password for u in users]
    for u in users:
        login(api, u)
        secrets.append(u.session)
    alice, bob, carol = users
    # a second session for alice, a JSON-body login, and failed logins
    alice2 = login(api, User(alice.name, alice.password))
    secrets.append(alice2.session)
    r = api.post("/api/login", json_body={"username": bob.name, "password": bob.password})
    expect(r, 200)
    secrets.append(r.json()["session"])
    wrong = unique_password()
    secrets.append(wrong)
    expect(api.post("/api/login", form={"username": alice.name, "password": wrong}), 401)
    weak = "Wk" + unique_password()[-3:]
    secrets.append(weak)
    expect(api.post("/api/register", form={"username": unique_name("w"), "password": weak}), 400)
    # Credentials in the query string (a careless client): whatever the
    # server answers, the access log must not show them.
    q_user = User(unique_name("query"), unique_password())
    secrets.append(q_user.password)
    api.post("/api/register", query={"username": q_user.name, "password": q_user.password})
    r = api.post("/api/login", query={"username": q_user.name, "password": q_user.password})
    if r.status == 200:
        secrets.append(r.json()["session"])
    api.get("/api/login", query={"username": alice.name, "password": alice.password})
    made_up = "0123456789abcdef" + unique_password()
    secrets.append(made_up)
    expect(api.get("/api/messages", query={"me": alice.name, "id": made_up}), 403)

    expect(api.post("/api/contacts", form={**bob.auth, "contact": alice.name}), 204)
    hb_b = heartbeats.open(bob, server=s)
    hb_a = heartbeats.open(alice, server=s)
    hb_b.wait_for(f"msg update online {alice.name}", timeout=3)
    chat_ok(api, alice, bob, "hi")
    f = hb_b.wait_for(lambda f: f.kind == "chat", timeout=3)
    # the session ID in the query string of other calls, and the synonym
    expect(api.post("/ack", query={**bob.auth, "ack": f.id}), 204)
    r = api.post("/chat", query={"me": bob.name, "sessionId": bob.session, "to": alice.name, "msg": "yo"})
    expect(r, 202)
    hb_a.wait_for(lambda f: f.kind == "chat", timeout=3)
    hb_b2 = heartbeats.open(bob, server=s, last_event_id=f.id, mode="poll", wait=1)
    hb_b2.wait_end(3)
    hb_c = heartbeats.open(carol, server=s, mode="poll", wait=1)
    hb_c.wait_end(3)
    bad = heartbeats.open(User(carol.name, "", made_up), server=s)
    assert bad.status == 403
    expect(api.get("/api/welcome", query=alice.auth), 200)
    expect(api.post("/api/logout", form=alice2.auth), 204)
    hb_a.close()
    hb_b.close()

    s.stop()
    assert_no_secret_in_logs(s, json_log, secrets)


def assert_no_secret_in_logs(s, json_log, secrets) -> None:
    text_log = s.output()
    assert "presence ready" in text_log
    assert json_log.exists(), "--json-log wrote no file"
    log = text_log + "\n" + json_log.read_text("utf-8", "replace")
    for secret in secrets:
        for form in {secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret),
                     json.dumps(secret)[1:-1]}:
            if form in log:
                lines = "\n".join(line[:400] for line in log.splitlines() if form in line)
                pytest.fail(f"secret {secret!r} appears in the server log:\n{lines}", pytrace=False)


def test_session_id_in_referer_is_not_logged(server_factory):
    """A page whose own URL carries the session (the pattern of the heartbeat
    URL, /jchat?me=..&id=..) sends it as the Referer of the requests it makes;
    the access log must mask it there too."""
    json_log = server_factory.base / "presence-log.json"
    s = server_factory.start(json_log=str(json_log))
    api = s.api()
    alice = login(api, register(api, unique_name("alice")))
    page = f"{s.base}/jchat?me={alice.name}&id={alice.session}"
    expect(api.get("/api/welcome", query=alice.auth, headers={"Referer": page}), 200)
    expect(api.get(f"/api/presence/{alice.name}", headers={"Referer": page}), 200)
    s.stop()
    assert_no_secret_in_logs(s, json_log, [alice.password, alice.session])


def test_access_log_in_a_file_of_its_own(server_factory):
    """--access-log PATH: the request lines go to that file (masked, written
    within a second and at stop), not to the server's log."""
    path = server_factory.base / "access.log"
    s = server_factory.start(access_log=str(path))
    api = s.api()
    alice = login(api, register(api, unique_name("alice")))
    expect(api.get("/api/welcome", query=alice.auth), 200)
    expect(api.get(f"/api/presence/{unique_name('nobody')}"), 404)
    s.stop()
    text = path.read_text("utf-8")
    lines = text.splitlines()
    assert any(f'"GET /api/welcome?me={alice.name}&id=*** HTTP/1.1" 200' in x for x in lines), text
    assert any("/api/presence/nobody" in x and '" 404 ' in x for x in lines), text
    assert alice.session not in text and alice.password not in text
    assert "/api/welcome" not in s.output()


@pytest.mark.parametrize("where", ["server-log", "access-log-file"])
def test_secrets_are_masked_however_the_request_writes_them(server_factory, where):
    """Issue 11, item 7: names percent-encoded or in another case, ``pass=``
    on sendsms, ``password2=`` of the register form, a one-time
    ``/wml/t/<token>`` link and a Referer carrying them: the log (the
    server's, or the ``--access-log`` file) shows none of the values."""
    json_log = server_factory.base / f"presence-log-{where}.json"
    options = {"json_log": str(json_log)}
    access = server_factory.base / f"access-{where}.log"
    if where == "access-log-file":
        options["access_log"] = str(access)
    s = server_factory.start(**options)
    api = s.api()
    alice = login(api, register(api, unique_name("alice")))
    secrets = [alice.password, alice.session]
    pw2, token, op_pw, made_up = (unique_password() for _ in range(4))
    secrets += [pw2, token, op_pw, made_up]
    sid = alice.session
    expect(api.get(f"/api/welcome?me={alice.name}&%69d={sid}"), 200)
    api.get(f"/api/welcome?me={alice.name}&%49D={sid}")  # not a name we read: masked still
    api.post(f"/api/login?username={alice.name}&pass%77ord="
             + urllib.parse.quote(alice.password))
    api.get(f"/register?username=x&PASSWORD={made_up}&password2={pw2}")
    api.get(f"/wml/t/{token}")
    api.get(f"/wml/%74/{token}x")
    api.get("/api/presence/" + alice.name,
            headers={"Referer": f"{s.base}/jchat?me={alice.name}&%69d={sid}&next=/wml/t/{token}"})
    api.get("/login?next=" + urllib.parse.quote(f"/jchat?me={alice.name}&id={sid}", safe=""))
    assert s.smsc_port, "the harness starts the simulator"
    smsc = Api(s.host, s.smsc_port)
    smsc.get(f"/cgi-bin/sendsms?username=op&pass={op_pw}&to=%2B4917012345&text=hi")
    smsc.get(f"/cgi-bin/sendsms?username=op&Pass%77ord={op_pw}x&to=%2B4917012345&text=hi")
    s.stop()
    if where == "access-log-file":
        text = access.read_text("utf-8")
        assert "/api/welcome" in text and "/wml/t/***" in text, text
        for secret in secrets:
            assert secret not in text, (secret, text)
    assert_no_secret_in_logs(s, json_log, secrets)
    assert "pass=***" in s.output()  # the simulator's access log: the server's log


def test_resume_tokens_and_new_passwords_are_not_logged(server_factory):
    """Issue 12: resume tokens (a login's answer, ``token=`` of /api/resume in
    a form, a JSON body, the query string or the pages' cookie) and the old
    and new passwords of ``POST /api/password`` never reach the log."""
    json_log = server_factory.base / "presence-log-resume.json"
    s = server_factory.start(json_log=str(json_log))
    api = s.api()
    alice = login(api, register(api, unique_name("alice")))
    token = alice.login_body["resume"]
    secrets = [alice.password, alice.session, token]
    for r in (api.post("/api/resume", form={"token": token}),
              api.post("/api/resume", json_body={"token": token}),
              api.post("/api/resume", query={"token": token}),
              api.post("/api/resume", headers={"Cookie": f"presence_resume={token}"})):
        expect(r, 200)
        secrets.append(r.json()["session"])
    wrong = unique_password()
    secrets.append(wrong)
    expect(api.post("/api/resume", form={"token": wrong}), 401)
    expect(api.post("/api/resume", query={"TOKEN": wrong}), 400)  # not a name we read
    new, bad_old = unique_password(), unique_password()
    secrets += [new, bad_old]
    expect(api.post("/api/password", form={**alice.auth, "password": bad_old,
                                           "new_password": new}), 401)
    expect(api.post("/api/password", query={**alice.auth, "password": alice.password,
                                            "new_password": new}), 204)
    expect(api.post("/api/resume", form={"token": token}), 401)   # revoked
    again = login(api, User(alice.name, new))
    secrets += [again.session, again.login_body["resume"]]
    expect(api.post("/api/logout", form=again.auth), 204)
    s.stop()
    assert_no_secret_in_logs(s, json_log, secrets)
