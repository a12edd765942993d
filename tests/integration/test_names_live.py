"""Names for people against the real server (spec section 10, issue 13's proof).

The real ``twistd -n presence`` with ``--dns`` on a loopback port, queried
with ``dig`` over UDP and TCP; a real ``ddclient`` (dyndns2) updating a
name; headless Chromium opening ``http://<user>.<domain>:PORT/`` through a
``--host-resolver-rules`` mapping.  Every wait is a condition with a deadline.
"""
from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest

from browser_support import CHROMIUM_ARGS, DEFAULT_TIMEOUT, playwright_sync_api
from presence_harness import expect, free_port, login, register, unique_name, unique_password

DOMAIN = "names.test"
PAGE = "127.0.0.3"
ALIVE = 4


DNS_PORT = free_port()  # UDP and TCP


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    return {"keepalive": 5, "poll": 0.5, "linger": 1, "dns": f"127.0.0.1:{DNS_PORT}",
            "domain": DOMAIN, "page_address": PAGE, "alive": ALIVE, "dns_ttl": 5}


def dig(name: str, qtype: str = "A", tcp: bool = False) -> Tuple[str, str, List[str]]:
    """(status, flags, answer data) of one real ``dig`` query."""
    args = ["dig", "@127.0.0.1", "-p", str(DNS_PORT), name, qtype, "+time=2", "+tries=2"]
    if tcp:
        args.append("+tcp")
    out = subprocess.run(args, capture_output=True, text=True, timeout=20).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r"flags: ([a-z ]+);", out)
    answers = []
    section = re.search(r";; ANSWER SECTION:\n(.*?)\n\n", out, re.S)
    for line in (section.group(1).splitlines() if section else []):
        answers.append(line.split(None, 4)[4])
    assert status and flags, out
    return status.group(1), flags.group(1), answers


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout} s (last: {last!r})")


@pytest.mark.requires_program("dig")
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dig_sees_a_user_follow_presence(api, server, heartbeats, tcp):
    alice = login(api, register(api, unique_name("alice")))
    name = f"{alice.name}.{DOMAIN}"
    assert dig(name, tcp=tcp) == ("NOERROR", "qr aa", [PAGE])        # offline: the page
    assert dig(name, "TXT", tcp) == ("NOERROR", "qr aa", ['"presence=offline"'])
    hb = heartbeats(alice)
    until(lambda: dig(name, tcp=tcp)[2] == ["127.0.0.1"], 5, "the heartbeat's address")
    assert dig(name, "TXT", tcp)[2] == ['"presence=online"']
    hb.close()
    started = time.monotonic()
    # offline within linger + poll (1 + 0.5 s), like presence itself
    until(lambda: dig(name, tcp=tcp)[2] == [PAGE], 1 + 0.5 + 2, "the page address")
    assert time.monotonic() - started < 3.5
    assert dig(name, "TXT", tcp)[2] == ['"presence=offline"']
    status, flags, answers = dig(f"nobody-{alice.name}.{DOMAIN}", tcp=tcp)
    assert (status, answers) == ("NXDOMAIN", []) and "aa" in flags
    assert dig("example.com", tcp=tcp)[0] == "REFUSED"
    assert dig(DOMAIN, "SOA", tcp)[2][0].startswith(f"ns.{DOMAIN}. hostmaster.{DOMAIN}.")
    assert dig(DOMAIN, "NS", tcp)[2] == [f"ns.{DOMAIN}."]
    assert dig(name, "MX", tcp)[:2] == ("NOERROR", "qr aa") and dig(name, "MX", tcp)[2] == []


def ddclient(tmp_path: Path, server: Any, user: str, password: str, ip: str) -> str:
    """One foreground run of the real ddclient (dyndns2, its own cache); its output."""
    folder = tmp_path / f"ddclient-{unique_name('d')}"
    folder.mkdir()
    conf = folder / "ddclient.conf"
    conf.write_text(
        "daemon=0\nssl=no\nprotocol=dyndns2\n"
        f"use=ip, ip={ip}\nserver={server.host}:{server.port}\n"
        f"login={user}\npassword='{password}'\n{user}.{DOMAIN}\n")
    conf.chmod(0o600)
    run = subprocess.run(
        ["ddclient", "-foreground", "-file", str(conf), "-cache", str(folder / "cache"),
         "-daemon=0", "-verbose", "-noquiet"],
        capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


@pytest.mark.requires_program("dig", "ddclient")
def test_ddclient_updates_a_name_and_the_name_goes_offline_after_alive(
        api, server, heartbeats, tmp_path):
    alice = register(api, unique_name("alice"))
    bob = login(api, register(api, unique_name("bob")))
    expect(api.post("/api/contacts", form={**bob.auth, "contact": alice.name}), 204)
    watcher = heartbeats(bob)
    name = f"{alice.name}.{DOMAIN}"
    wrong = ddclient(tmp_path, server, alice.name, "not-" + alice.password, "203.0.113.45")
    assert "badauth" in wrong and "FAILED" in wrong, wrong
    assert dig(name)[2] == [PAGE]
    out = ddclient(tmp_path, server, alice.name, alice.password, "203.0.113.45")
    assert re.search(r"SUCCESS:.*good.*203\.0\.113\.45", out), out
    assert dig(name) == ("NOERROR", "qr aa", ["203.0.113.45"])
    assert dig(name, "TXT")[2] == ['"presence=online"']
    watcher.wait_for(f"msg update online {alice.name}", timeout=5)
    # no more updates: offline after --alive, and the watcher hears it
    watcher.wait_for(f"msg update offline {alice.name}", timeout=ALIVE + 3)
    assert dig(name)[2] == [PAGE]
    log = server.output()
    assert alice.password not in log
    assert f"no update of {alice.name} for" in log


@pytest.mark.requires_program("ddclient")
def test_ddclient_with_an_update_token(api, server, tmp_path):
    alice = login(api, register(api, unique_name("alice")))
    token = expect(api.post("/api/update-token", form=alice.auth), 201).json()["token"]
    out = ddclient(tmp_path, server, alice.name, token, "198.51.100.20")
    assert re.search(r"SUCCESS:.*good.*198\.51\.100\.20", out), out
    assert token not in server.output()


@pytest.mark.requires_program("chromium")
def test_chromium_opens_the_name_and_sees_the_greeting_while_she_is_offline(
        api, server, heartbeats, require_program):
    alice = login(api, register(api, unique_name("alice"), password=unique_password()))
    expect(api.post("/api/greeting", form={**alice.auth, "greeting":
                                           "Gone **sailing**. Leave me a message!"}), 200)
    sync_api = playwright_sync_api()
    rule = f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=require_program("chromium"),
                                    args=CHROMIUM_ARGS + [rule], timeout=30_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(DEFAULT_TIMEOUT)
            page.goto(f"http://{alice.name}.{DOMAIN}:{server.port}/")
            greeting = page.locator("#greeting")
            sync_api.expect(greeting).to_be_visible()
            sync_api.expect(greeting).to_contain_text("Gone sailing. Leave me a message!")
            assert greeting.locator("strong").inner_text() == "sailing"
            sync_api.expect(page.locator(f'li[data-user="{alice.name}"]')).to_have_attribute(
                "data-presence", "offline")
            sync_api.expect(page.locator("#message-form")).to_be_visible()
            # she comes online: the row changes in place and the greeting goes
            hb = heartbeats(alice)
            sync_api.expect(page.locator(f'li[data-user="{alice.name}"]')).to_have_attribute(
                "data-presence", "online", timeout=4000)
            sync_api.expect(greeting).to_be_hidden()
            hb.close()
        finally:
            browser.close()


@pytest.mark.requires_program("dig")
def test_garbage_over_udp_and_tcp_is_dropped_without_a_log_line(server):
    before = len(server.output())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for data in (b"\x00" * 3, b"\xff" * 40, b"\x01" * 600):
            u.sendto(data, ("127.0.0.1", DNS_PORT))
    with socket.create_connection(("127.0.0.1", DNS_PORT), timeout=5) as t:
        t.sendall(b"\x00\x05\xff\xff\xff\xff\xff" + b"\x00\x03abc")
    assert dig(DOMAIN, "SOA")[0] == "NOERROR"
    assert dig(DOMAIN, "SOA", tcp=True)[0] == "NOERROR"
    new = server.output()[before:]
    assert "Traceback" not in new and "Unhandled" not in new and "nvalid" not in new, new
