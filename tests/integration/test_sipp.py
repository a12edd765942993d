"""SIP through the HTTP tunnel, end to end, with SIPp (spec section 7).

The real ``twistd -n presence --sip <free port>``; ``presence-sip-bridge``
processes logged in as bob (and alice), each with a SIPp acting as the
user's phone (a UAS scenario on the bridge's ``--phone`` port); SIPp as the
caller.  Every wait is bounded: SIPp runs with ``-timeout ... -timeout_error``
and ``-m`` calls, so its exit code says whether every call completed, and each
subprocess has a deadline of its own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from free_ports import free_port, udp_bound, udp_port  # noqa: F401 (re-exported)
from presence_harness import MAX_LOOP, Api, expect, register

pytestmark = pytest.mark.requires_program("sipp")

SCENARIOS = Path(__file__).parent / "sipp"
SIPP_TIMEOUT = 60  # seconds SIPp may run (-timeout); the process gets a little more


class Bridge:
    """One ``presence-sip-bridge`` process."""

    def __init__(self, server_base: str, user: str, password: str, listen: int, phone: int,
                 log: Path, extra: List[str] = ()) -> None:
        self.listen = listen
        self.phone = phone
        self.log = log
        self._file = open(log, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PRESENCE_PASSWORD=password)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "presence.cli.sip_bridge", "--server", server_base,
             "--user", user, "--listen", f"127.0.0.1:{listen}", "--phone",
             f"127.0.0.1:{phone}", *extra],
            stdin=subprocess.DEVNULL, stdout=self._file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        deadline = time.monotonic() + 30
        for _ in range(MAX_LOOP):
            if "bridge ready" in self.output():
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.output()
                self.kill()
                raise AssertionError(f"the bridge did not come up:\n{out[-3000:]}")
            time.sleep(0.05)  # condition wait: polling the log

    def output(self) -> str:
        return self.log.read_bytes().decode("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self._file.close()


class Sipp:
    """SIPp runs; background ones (phones) are killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.background: List[subprocess.Popen] = []
        self.runs = 0

    def args(self, scenario: Path, port: int, calls: int, extra: List[str]) -> List[str]:
        self.runs += 1
        return ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port),
                "-m", str(calls), "-nostdin", "-timeout", f"{SIPP_TIMEOUT}s", "-timeout_error",
                "-trace_err", "-trace_msg",
                *extra]

    def phone(self, port: int, calls: int, scenario: str = "phone.xml",
              extra: List[str] = ()) -> subprocess.Popen:
        """A UAS answering ``calls`` calls on ``port``; started, not waited for."""
        out = open(self.tmp / f"phone{port}_{self.runs}.out", "wb")
        proc = subprocess.Popen(self.args(SCENARIOS / scenario, port, calls, list(extra)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=self.tmp, start_new_session=True)
        proc.out_path = out.name  # type: ignore[attr-defined]
        out.close()
        self.background.append(proc)
        wait_udp_bound(port, proc)
        return proc

    def call(self, remote: str, ruri: str, calls: int, *, concurrent: int = 1,
             rate: Optional[float] = None, transport: str = "u1",
             scenario: Path = SCENARIOS / "caller.xml",
             port: Optional[int] = None) -> subprocess.CompletedProcess:
        if port is None:
            port = free_port() if transport.startswith("t") else udp_port()
        extra = [remote, "-key", "ruri", ruri, "-l", str(concurrent), "-t", transport]
        if rate is not None:
            extra += ["-r", str(rate)]
        return subprocess.run(self.args(scenario, port, calls, extra), stdin=subprocess.DEVNULL,
                              capture_output=True, cwd=self.tmp, timeout=SIPP_TIMEOUT + 30)

    def close(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)


def wait_udp_bound(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    """Wait until something listens on UDP ``port`` (SIPp started)."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_LOOP):
        if udp_bound(port):
            return  # SIPp holds it
        if proc.poll() is not None:
            raise AssertionError(f"SIPp exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise AssertionError(f"SIPp did not bind UDP {port} within {timeout} s")
        time.sleep(0.05)  # condition wait: polling the port


def sipp_report(result, errors: Optional[Path] = None) -> str:
    text = (result.stdout or b"").decode("utf-8", "replace")[-3000:] + \
        (result.stderr or b"").decode("utf-8", "replace")[-2000:]
    return text


def finished(proc: subprocess.Popen, timeout: float = SIPP_TIMEOUT + 30) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return -999


def phone_report(proc: subprocess.Popen) -> str:
    return Path(proc.out_path).read_bytes().decode("utf-8", "replace")[-3000:]  # type: ignore


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 2, "sip": free_port()}


@pytest.fixture(scope="module")
def sip_port(server) -> int:
    return int(server.extra_args[server.extra_args.index("--sip") + 1])


@pytest.fixture(scope="module")
def bridges(server, tmp_path_factory) -> Iterator[dict]:
    api = server.api()
    tmp = tmp_path_factory.mktemp("bridges")
    out = {}
    started = []
    try:
        for name in ("bob", "alice"):
            user = register(api, name + "x" + str(os.getpid() % 1000))
            bridge = Bridge(server.base, user.name, user.password, udp_port(), udp_port(),
                            tmp / f"bridge-{name}.log")
            started.append(bridge)
            out[name] = (user, bridge)
        yield out
    finally:
        for bridge in started:
            bridge.kill()


@pytest.fixture
def sipp(tmp_path, server, bridges) -> Iterator[Sipp]:
    s = Sipp(tmp_path)
    yield s
    s.close()
    assert server.running, f"the server died:\n{server.output()[-5000:]}"


def check(result, phones=(), what="calls") -> None:
    rcs = [finished(p) for p in phones]
    assert result.returncode == 0 and all(rc == 0 for rc in rcs), (
        f"{what}: caller SIPp exit {result.returncode}, phones {rcs}\n"
        f"caller:\n{sipp_report(result)}\n"
        + "\n".join(f"phone:\n{phone_report(p)}" for p in phones))


# -- calls into the tunnel ------------------------------------------------------------------

def test_twenty_calls_in_a_row_over_udp(sipp, server, sip_port, bridges):
    bob, bridge = bridges["bob"]
    phone = sipp.phone(bridge.phone, 20)
    result = sipp.call(f"127.0.0.1:{sip_port}", f"sip:{bob.name}@localhost", 20)
    check(result, [phone], "20 calls in a row")


def test_a_handful_of_calls_at_once(sipp, server, sip_port, bridges):
    bob, bridge = bridges["bob"]
    phone = sipp.phone(bridge.phone, 6)
    result = sipp.call(f"127.0.0.1:{sip_port}", f"sip:{bob.name}@127.0.0.1:{sip_port}", 6,
                       concurrent=6, rate=100)
    check(result, [phone], "6 calls at once")


def test_calls_over_tcp(sipp, server, sip_port, bridges):
    bob, bridge = bridges["bob"]
    phone = sipp.phone(bridge.phone, 10)
    result = sipp.call(f"127.0.0.1:{sip_port}", f"sip:{bob.name}@localhost", 10,
                       concurrent=3, rate=50, transport="t1")
    check(result, [phone], "10 calls over TCP")


# -- calls out of the tunnel -----------------------------------------------------------------

def test_bobs_phone_calls_another_tunnel_user(sipp, server, bridges):
    bob, bob_bridge = bridges["bob"]
    alice, alice_bridge = bridges["alice"]
    phone = sipp.phone(alice_bridge.phone, 5)
    # bob's phone is the SIPp on the bridge's --phone port, calling out
    result = sipp.call(f"127.0.0.1:{bob_bridge.listen}", f"sip:{alice.name}@localhost", 5,
                       port=bob_bridge.phone)
    check(result, [phone], "bob's phone calls alice through two bridges")


def test_bobs_phone_cannot_call_a_loopback_address(sipp, server, bridges, tmp_path):
    """Not an SSRF tool: a SIP address on loopback (here a UDP socket that
    would be a local service) is refused with 403, and nothing reaches it."""
    bob, bob_bridge = bridges["bob"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
        victim.bind(("127.0.0.1", 0))
        port = victim.getsockname()[1]
        result = sipp.call(f"127.0.0.1:{bob_bridge.listen}", f"sip:uas@127.0.0.1:{port}", 2,
                           port=bob_bridge.phone, scenario=rejected(tmp_path, 403))
        check(result, what="403 for a loopback address")
        victim.setblocking(False)
        with pytest.raises(BlockingIOError):
            victim.recv(65535)


# -- refusals as SIPp sees them ------------------------------------------------------------------

def rejected(tmp_path: Path, code: int) -> Path:
    text = (SCENARIOS / "rejected.xml").read_text().replace("EXPECTED", str(code))
    path = tmp_path / f"rejected{code}.xml"
    path.write_text(text)
    return path


def test_unknown_user_is_404_and_offline_user_is_480(sipp, server, sip_port, tmp_path):
    api = server.api()
    offline = register(api)  # registered, never logged in
    result = sipp.call(f"127.0.0.1:{sip_port}", "sip:nobody.here@localhost", 2,
                       scenario=rejected(tmp_path, 404))
    check(result, what="404 for an unknown user")
    result = sipp.call(f"127.0.0.1:{sip_port}", f"sip:{offline.name}@localhost", 2,
                       scenario=rejected(tmp_path, 480))
    check(result, what="480 for an offline user")
    result = sipp.call(f"127.0.0.1:{sip_port}", f"sip:{offline.name}@elsewhere.example", 1,
                       scenario=rejected(tmp_path, 403))
    check(result, what="403: not an open relay")


# -- bad input over the wire -----------------------------------------------------------------------

def exchange(port: int, data: bytes, timeout: float = 5.0) -> Optional[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recvfrom(65535)[0]
        except socket.timeout:
            return None


def options(uri: str, port: int = 5999, **replace: bytes) -> bytes:
    text = (f"OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{time.time_ns()}"
            f"\r\nMax-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <{uri}>\r\n"
            f"Call-ID: {time.time_ns()}@t\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    for old, new in replace.items():
        text = text.replace(old.encode(), new)
    return text


def status_of(reply: Optional[bytes]) -> Optional[int]:
    if reply is None:
        return None
    m = re.match(rb"SIP/2\.0 (\d{3}) ", reply)
    return int(m.group(1)) if m else None


def test_bad_input_gets_the_rfc_answers_and_breaks_nothing(sipp, server, sip_port, bridges):
    bob, bridge = bridges["bob"]
    uri = f"sip:{bob.name}@localhost"
    assert status_of(exchange(sip_port, options("sip:localhost"))) == 200
    assert status_of(exchange(sip_port, options(uri, **{"CSeq: 1 OPTIONS": b"CSeq: x"}))) == 400
    assert status_of(exchange(sip_port, options(uri, **{"Content-Length: 0": b"Content-Length: 50"}))) == 400
    assert status_of(exchange(sip_port, options(uri, **{"Max-Forwards: 70": b"Max-Forwards: 0"}))) == 483
    assert status_of(exchange(sip_port, options(uri, **{
        "Max-Forwards: 70": b"Max-Forwards: 70\r\nX-Huge: " + b"x" * 40000}))) == 513
    assert status_of(exchange(sip_port, options(uri, **{" SIP/2.0\r\nVia": b" SIP/7.0\r\nVia"}))) == 505
    assert status_of(exchange(sip_port, options("sip:someone@elsewhere.example"))) == 403
    assert status_of(exchange(sip_port, options("sip:nobody.here@localhost"))) == 404
    # an unknown method for the proxy itself: 405 with Allow
    frob = options("sip:localhost").replace(b"OPTIONS", b"FROBNICATE")
    reply = exchange(sip_port, frob)
    assert status_of(reply) == 405 and b"Allow: OPTIONS" in reply
    for junk in (b"\x00" * 50, b"garbage\r\n\r\n", os.urandom(1200), b"INVITE sip:x SIP/2.0\r\n"):
        assert exchange(sip_port, junk, timeout=0.5) is None
    # TCP: no Content-Length is 400, then the connection is closed
    with socket.create_connection(("127.0.0.1", sip_port), timeout=5) as c:
        c.sendall(options(uri).replace(b"Content-Length: 0\r\n", b""))
        data = b""
        for _ in range(100):
            chunk = c.recv(65535)
            if not chunk:
                break
            data += chunk
    assert status_of(data) == 400
    # POST /sip with a bad session: a clear HTTP error
    api: Api = server.api()
    r = api.post("/sip", query={"me": bob.name, "id": "no-such-session"},
                 body=options(uri), headers={"Content-Type": "message/sip"})
    expect(r, 403, "POST /sip with a bad session")
    assert "error" in r.json()
    # and calls still work
    phone = sipp.phone(bridge.phone, 2)
    result = sipp.call(f"127.0.0.1:{sip_port}", uri, 2)
    check(result, [phone], "calls after bad input")
