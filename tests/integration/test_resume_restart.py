"""Resume tokens against the real server (spec section 9; docs/protocol.md):
tokens are durable (a killed and restarted server takes them), and
``presence-client`` gets its session back by itself with its token, not its
password, after the server restarts under it."""
from __future__ import annotations

import os
import signal
import time

import pytest

from presence_harness import (
    User, chat_ok, expect, free_port, login, register, start_client, stop_client, unique_name,
)

pytestmark = pytest.mark.integration


def resume(api, token: str):
    return api.post("/api/resume", form={"token": token})


def test_a_resume_token_works_after_the_server_was_killed(server_factory):
    data = server_factory.new_data_dir()
    http = f"tcp:{free_port()}:interface=127.0.0.1"
    s1 = server_factory.start(data_dir=data, http=http)
    api = s1.api()
    alice = login(api, register(api, unique_name("alice")))
    token = alice.login_body["resume"]
    laptop = login(api, User(alice.name, alice.password))
    s1.kill()                                   # SIGKILL: no clean stop

    s2 = server_factory.start(data_dir=data, http=http)
    api2 = s2.api()
    r = expect(resume(api2, token), 200, "resume after the restart")
    body = r.json()
    assert body["username"] == alice.name and body["resume"] == token
    back = User(alice.name, alice.password, body["session"], body)
    expect(api2.get("/api/welcome", query=back.auth), 200)
    hb = s2.heartbeat(back)
    bob = login(api2, register(api2, unique_name("bob")))
    chat_ok(api2, bob, back, "welcome back")
    assert hb.wait_for(lambda f: f.kind == "chat", what="the chat frame").payload == "welcome back"
    hb.close()
    # logout revokes this device's token, not the laptop's
    expect(api2.post("/api/logout", form=back.auth), 204)
    expect(resume(api2, token), 401, "the logged-out device's token")
    expect(resume(api2, laptop.login_body["resume"]), 200, "another device's token")
    assert "resumed a session" in s2.output()


@pytest.mark.parametrize("stop", ["sigkill", "sigterm"])
def test_presence_client_resumes_by_itself_after_a_restart(server_factory, tmp_path, stop):
    data = server_factory.new_data_dir()
    port = free_port()
    http = f"tcp:{port}:interface=127.0.0.1"
    s1 = server_factory.start(data_dir=data, http=http)
    api = s1.api()
    alice = register(api, unique_name("alice"))
    bob = login(api, register(api, unique_name("bob")))
    out = tmp_path / "client.out"
    token_file = tmp_path / "alice.resume"
    client = start_client(f"http://127.0.0.1:{port}", alice.name, alice.password,
                          "--resume-file", str(token_file), out=out)
    try:
        wait_for(lambda: online(api, alice.name), "alice online through presence-client")
        assert token_file.exists() and token_file.stat().st_mode & 0o777 == 0o600
        if stop == "sigkill":
            s1.kill()
        else:
            s1.stop()                           # msg bye shutdown to the client
        s2 = server_factory.start(data_dir=data, http=http)
        api2 = s2.api()
        wait_for(lambda: online(api2, alice.name), "alice back online by herself", 60)
        log = s2.output(since_start=True)
        assert f"{alice.name} resumed a session" in log, log[-2000:]
        assert f"{alice.name} logged in from" not in log   # not with the password
        bob2 = login(api2, User(bob.name, bob.password))
        chat_ok(api2, bob2, alice.name, "are you back?")
        wait_for(lambda: "are you back?" in out.read_text("utf-8", "replace"),
                 "the chat printed by presence-client")
    finally:
        stop_client(client)                  # a clean exit: logs out
    assert not token_file.exists()          # logged out: the token is revoked and gone


def test_presence_client_started_again_resumes_from_its_file_without_a_password(
        server_factory, tmp_path):
    """After a crash of the client (SIGKILL: no logout), the next run finds
    the token in --resume-file and needs no password at all."""
    s = server_factory.start()
    api = s.api()
    alice = register(api, unique_name("alice"))
    token_file = tmp_path / "alice.resume"

    def run(password):
        return start_client(s.base, alice.name, password, "--resume-file", str(token_file))

    first = run(alice.password)
    try:
        wait_for(token_file.exists, "the resume file")
        wait_for(lambda: online(api, alice.name), "alice online")
    finally:
        os.killpg(first.pid, signal.SIGKILL)         # a crash: no logout
        first.wait(5)
    assert token_file.exists()
    second = run(None)                               # no password anywhere
    try:
        wait_for(lambda: s.output().count(f"{alice.name} resumed a session") == 1,
                 "a resumed session")
        assert second.poll() is None                 # it runs, holding its session
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
    assert second.returncode == 0 and not token_file.exists()
    assert s.output().count(f"{alice.name} logged in from") == 1   # the first run only


def online(api, name: str) -> bool:
    r = api.get(f"/api/presence/{name}")
    return r.status == 200 and r.json()["online"] is True


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}", pytrace=False)
