"""SIP registration with digest authentication, end to end, with SIPp.

The real ``twistd -n presence --sip <free port> --sip-min-expires 1``; SIPp
plays a softphone (``sipp/register.xml``: REGISTER, 401, REGISTER with
``[authentication]`` from ``-au``/``-ap``, final) directly at the proxy and
at a ``presence-sip-bridge``.  The 200 must list the phone's own Contact
with an ``expires``; the user shows online in ``GET /api/presence/{user}``
while the binding lives and offline once it is removed or has expired; a
wrong password gets 401 again.  Through the bridge, a call for the user
then reaches a SIPp phone on the registered port, not ``--phone``.  Every
wait is bounded (SIPp's ``-timeout``, deadlines on each condition).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

from presence_harness import MAX_LOOP, Api, User, expect, new_user, register
from test_sipp import (
    SCENARIOS, SIPP_TIMEOUT, Bridge, Sipp, check, exchange, free_port, options, sipp_report,
    status_of, udp_port,
)

pytestmark = pytest.mark.requires_program("sipp")


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "sip": free_port(), "sip_min_expires": 1}


@pytest.fixture(scope="module")
def sip_port(server) -> int:
    return int(server.extra_args[server.extra_args.index("--sip") + 1])


@pytest.fixture
def sipp(tmp_path, server):
    s = Sipp(tmp_path)
    yield s
    s.close()
    assert server.running, f"the server died:\n{server.output()[-5000:]}"


def scenario(tmp: Path, final: int, user: str = "", port: int = 0, expires: int = 0) -> Path:
    """register.xml with its final status, and for a 200 that adds a
    binding the check that the 200 lists ours with an expires."""
    check_text = reference = ""
    if final == 200 and expires:
        reference = '<Reference variables="binding"/>'
        contact = rf"&lt;sip:{user}@127\.0\.0\.1:{port}&gt;;expires=[1-9][0-9]*"
        check_text = (f'<action><ereg regexp="{contact}" search_in="msg" check_it="true"'
                      ' assign_to="binding"/></action>')
    text = (SCENARIOS / "register.xml").read_text().replace("FINAL", str(final)) \
        .replace("CHECK", check_text).replace("REFERENCE", reference)
    path = tmp / f"register{final}_{time.time_ns()}.xml"
    path.write_text(text)
    return path


def sipp_register(sipp: Sipp, remote: str, user: User, *, ruri: str, aor: str, expires: int,
                  final: int = 200, password: Optional[str] = None,
                  port: Optional[int] = None) -> subprocess.CompletedProcess:
    port = port or udp_port()
    path = scenario(sipp.tmp, final, user.name, port, expires)
    extra = [remote, "-s", user.name, "-au", user.name, "-ap", password or user.password,
             "-key", "ruri", ruri, "-key", "aor", aor, "-key", "expires", str(expires)]
    return subprocess.run(sipp.args(path, port, 1, extra), stdin=subprocess.DEVNULL,
                          capture_output=True, cwd=sipp.tmp, timeout=SIPP_TIMEOUT + 30)


def online(api: Api, name: str) -> bool:
    r = api.get(f"/api/presence/{name}")
    assert r.status == 200, r
    return bool(r.json()["online"])


def wait_presence(api: Api, name: str, want: bool, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(MAX_LOOP):
        if online(api, name) == want:
            return
        assert time.monotonic() < deadline, f"{name} not {'online' if want else 'offline'}" \
                                            f" within {timeout} s"
        time.sleep(0.1)  # condition wait: polling the presence


def ok(result, what: str) -> None:
    assert result.returncode == 0, f"{what}: SIPp exit {result.returncode}\n{sipp_report(result)}"


# -- directly at the proxy ------------------------------------------------------------------

def test_a_softphone_registers_at_the_proxy_and_its_user_is_online_while_bound(
        sipp, server, sip_port):
    api = server.api()
    user = register(api)                       # never logged in: the phone is the only source
    assert not online(api, user.name)
    port = udp_port()
    remote = f"127.0.0.1:{sip_port}"
    ok(sipp_register(sipp, remote, user, ruri="sip:localhost", aor="localhost", expires=300,
                     port=port), "REGISTER with digest")
    assert online(api, user.name)
    # unregistering (Expires: 0, same Contact) takes the user offline
    ok(sipp_register(sipp, remote, user, ruri="sip:localhost", aor="localhost", expires=0,
                     port=port), "REGISTER with Expires: 0")
    wait_presence(api, user.name, False)
    # neither the password nor its HA1 is in the server's log
    import hashlib
    log = server.output()
    assert user.password not in log
    for h in (hashlib.md5, hashlib.sha256):
        assert h(f"{user.name}:localhost:{user.password}".encode()).hexdigest() not in log


def test_a_registration_expires_and_a_watcher_hears_online_then_offline(
        sipp, server, sip_port, heartbeats):
    api = server.api()
    user = register(api)
    watcher = new_user(api, "w")
    expect(api.post("/api/contacts", form={**watcher.auth, "contact": user.name}), 204)
    hb = heartbeats(watcher)
    ok(sipp_register(sipp, f"127.0.0.1:{sip_port}", user, ruri="sip:localhost",
                     aor="localhost", expires=2), "REGISTER for 2 s")
    assert online(api, user.name)
    hb.wait_for(f"msg update online {user.name}", timeout=10)
    hb.wait_for(f"msg update offline {user.name}", timeout=10)
    assert not online(api, user.name)


def test_a_wrong_password_gets_401_again(sipp, server, sip_port):
    api = server.api()
    user = register(api)
    ok(sipp_register(sipp, f"127.0.0.1:{sip_port}", user, ruri="sip:localhost",
                     aor="localhost", expires=300, final=401, password="not-the-password"),
       "REGISTER with a wrong password")
    assert not online(api, user.name)


def test_register_for_another_domain_is_403_and_bad_values_400(server, sip_port):
    def reg(uri: str, extra: str = "") -> bytes:
        return options(uri).replace(b"OPTIONS", b"REGISTER").replace(
            f"To: <{uri}>".encode(), b"To: <sip:t@localhost>").replace(
            b"Content-Length: 0", extra.encode() + b"Content-Length: 0")
    assert status_of(exchange(sip_port, reg("sip:elsewhere.example"))) == 403
    assert status_of(exchange(sip_port, reg("sip:localhost"))) == 401
    bad = 'Authorization: Digest username="t", realm="localhost", nonce="x\r\n'
    assert status_of(exchange(sip_port, reg("sip:localhost", bad))) == 400
    assert server.running


# -- through presence-sip-bridge --------------------------------------------------------------

@pytest.fixture
def bridge(server, tmp_path):
    api = server.api()
    user = register(api)
    b = Bridge(server.base, user.name, user.password, udp_port(), udp_port(),
               tmp_path / "bridge.log")
    yield user, b
    b.kill()


def test_a_softphone_registers_at_the_bridge_and_calls_reach_it(sipp, server, sip_port, bridge):
    user, b = bridge
    here = f"127.0.0.1:{b.listen}"
    wrong = sipp_register(sipp, here, user, ruri=f"sip:{here}", aor=here, expires=300,
                          final=401, password="not-the-password")
    ok(wrong, "REGISTER at the bridge with a wrong password")
    port = udp_port()                          # the phone's own port, not the bridge's --phone
    ok(sipp_register(sipp, here, user, ruri=f"sip:{here}", aor=here, expires=300, port=port),
       "REGISTER at the bridge")
    phone = sipp.phone(port, 1)
    result = sipp.call(f"127.0.0.1:{sip_port}", f"sip:{user.name}@localhost", 1)
    check(result, [phone], "a call to the phone registered at the bridge")
