"""SIP presence end to end with SIPp (docs/calls.md, "SIP presence").

The real ``twistd -n presence --sip <free port>``; bob is the watched user,
logged in with a held heartbeat.  A SIPp watcher (``sipp/subscriber.xml``)
SUBSCRIBEs to ``sip:<bob>@localhost`` and must get ``200``, a NOTIFY whose
PIDF says ``open``; once that NOTIFY is in SIPp's message log the test logs
bob out, and the next NOTIFY must say ``closed``; then SIPp unsubscribes
(``Expires: 0``) and gets the final ``terminated;reason=timeout``.

* behind ``presence-sip-bridge`` logged in as alice: the session is the
  authentication, NOTIFYs come down the tunnel;
* directly at the server's SIP port with the digest credentials of another
  user (alice; the registrar's ``DigestAuth``): a ``401`` round first, and
  a SUBSCRIBE without credentials gets only the ``401``.

Every wait is bounded (SIPp's ``-timeout``, deadlines on the log polls).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from presence_harness import MAX_LOOP, expect, login, register
from test_sipp import SCENARIOS, SIPP_TIMEOUT, Bridge, finished, free_port, udp_port

pytestmark = pytest.mark.requires_program("sipp")

AUTH_ROUND = """
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[

      SUBSCRIBE [ruri] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: watcher <sip:watcher@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <[ruri]>
      Call-ID: [call_id]
      CSeq: 2 SUBSCRIBE
      Contact: <sip:watcher@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Event: presence
      Accept: application/pidf+xml
      Expires: 120
      [authentication]
      Content-Length: 0

    ]]>
  </send>
"""


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 1, "sip": free_port()}


@pytest.fixture(scope="module")
def sip_port(server) -> int:
    return int(server.extra_args[server.extra_args.index("--sip") + 1])


def scenario(tmp: Path, digest: bool) -> Path:
    text = (SCENARIOS / "subscriber.xml").read_text()
    text = text.replace("AUTH2\n", "      [authentication]\n" if digest else "")
    text = text.replace("AUTH\n", AUTH_ROUND if digest else "")
    path = tmp / ("watcher_digest.xml" if digest else "watcher.xml")
    path.write_text(text)
    return path


def wait_for_log(tmp: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until SIPp's message log (``-trace_msg``) holds ``text``."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_LOOP):
        for log in tmp.glob("*_messages.log"):
            if text in log.read_text(errors="replace"):
                return
        if proc.poll() is not None:
            raise AssertionError(f"SIPp exited with {proc.returncode} first:\n{report(tmp)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in SIPp's log within {timeout} s:\n{report(tmp)}")
        time.sleep(0.05)  # condition wait: polling the log


def report(tmp: Path) -> str:
    out = []
    for path in sorted(tmp.glob("*.log")) + sorted(tmp.glob("*.out")):
        out.append(f"== {path.name}\n" + path.read_text(errors="replace")[-4000:])
    return "\n".join(out)


def watch(tmp: Path, server, bob, remote: str, port: int, extra=()) -> None:
    """Run the watcher scenario against ``remote``; log bob out after the
    first NOTIFY; SIPp must pass."""
    api = server.api()
    out = open(tmp / "sipp.out", "wb")
    args = ["sipp", "-sf", str(scenario(tmp, bool(extra))), "-i", "127.0.0.1",
            "-p", str(port), "-m", "1", "-nostdin", "-timeout", f"{SIPP_TIMEOUT}s",
            "-timeout_error", "-trace_err", "-trace_msg", "-key", "ruri",
            f"sip:{bob.name}@localhost", *extra, remote]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    out.close()
    try:
        wait_for_log(tmp, "<basic>open</basic>", proc)
        expect(api.post("/api/logout", form=bob.auth), 204, "bob logs out")
        rc = finished(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert rc == 0, f"SIPp watcher exit {rc}\n{report(tmp)}"
    log = "\n".join(p.read_text(errors="replace") for p in tmp.glob("*_messages.log"))
    assert "<basic>closed</basic>" in log
    assert "Subscription-State: terminated;reason=timeout" in log


def test_a_watcher_behind_the_bridge_sees_open_then_closed(server, tmp_path):
    api = server.api()
    bob = login(api, register(api))
    alice = register(api)
    bridge = Bridge(server.base, alice.name, alice.password, udp_port(), udp_port(),
                    tmp_path / "bridge.log")
    try:
        with server.heartbeat(bob):
            watch(tmp_path, server, bob, f"127.0.0.1:{bridge.listen}", bridge.phone)
    finally:
        bridge.kill()


def test_a_phone_with_another_users_digest_credentials_sees_open_then_closed(
        server, sip_port, tmp_path):
    api = server.api()
    bob = login(api, register(api))
    alice = login(api, register(api))  # a login keeps the HA1s digest needs
    # without credentials: a digest challenge, never a NOTIFY
    probe = exchange_subscribe(sip_port, bob.name)
    assert probe is not None and probe.startswith(b"SIP/2.0 401"), probe
    assert b"WWW-Authenticate: Digest" in probe, probe
    with server.heartbeat(bob):
        watch(tmp_path, server, bob, f"127.0.0.1:{sip_port}", udp_port(),
              ["-au", alice.name, "-ap", alice.password])


def exchange_subscribe(port: int, user: str):
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        mine = s.getsockname()[1]
        text = (f"SUBSCRIBE sip:{user}@localhost SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{mine};rport;branch=z9hG4bK{time.time_ns()}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\n"
                f"To: <sip:{user}@localhost>\r\nCall-ID: {time.time_ns()}@probe\r\n"
                f"CSeq: 1 SUBSCRIBE\r\nContact: <sip:probe@127.0.0.1:{mine}>\r\n"
                f"Event: presence\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n")
        s.sendto(text.encode(), ("127.0.0.1", port))
        try:
            return s.recvfrom(65535)[0]
        except socket.timeout:
            return None
