"""The real ``twistd -n presence`` and its listening ports.

* A port that is already taken ends the start at once, with status 1 and one
  line naming the option, its value and the port; no ``presence ready``, no
  traceback, no process left behind.
* Every port is bound before ``twistd -u`` drops privileges: started as root
  with ports below 1024 and ``-u nobody``, the server listens on them and
  runs (and writes its store) as nobody.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from presence_harness import ServerProcess, ServerStartError, unique_name, unique_password

START_LIMIT = 30.0  # seconds; the failure comes before the reactor runs


def fails_to_start(tmp_path: Path, *args: str) -> tuple[int, str, float]:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra_args=args)
    began = time.monotonic()
    try:
        server.start(timeout=START_LIMIT)
    except ServerStartError:
        pass
    else:  # pragma: no cover - the assertion below says what went wrong
        server.kill()
        pytest.fail(f"the server started although a port was taken: {args}")
    took = time.monotonic() - began
    output = server.output(since_start=True)
    return server._finish(), output, took


def taken_tcp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def assert_clear_failure(rc, output: str, took: float, *words: str) -> None:
    assert rc not in (0, None), output
    assert took < START_LIMIT
    line = next((l for l in output.splitlines() if "cannot listen on" in l), "")
    for word in words:
        assert word in line, (word, output[-3000:])
    assert "Address already in use" in line
    assert "presence ready" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("option", ["http", "smsc", "admin"])
def test_a_taken_tcp_port_ends_the_start_naming_the_option(tmp_path, option):
    with taken_tcp() as taken:
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        rc, output, took = fails_to_start(tmp_path, f"--{option}", endpoint)
    assert_clear_failure(rc, output, took, f"--{option} {endpoint}", str(port))


def test_a_taken_sip_udp_port_ends_the_start_naming_sip(tmp_path):
    # SIP listens on every interface: take the UDP port there
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("", 0))
        port = taken.getsockname()[1]
        rc, output, took = fails_to_start(tmp_path, "--sip", str(port))
    assert_clear_failure(rc, output, took, f"--sip {port} (UDP)")


def test_a_taken_sip_tcp_port_ends_the_start_naming_sip(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, output, took = fails_to_start(tmp_path, "--sip", str(port))
    assert_clear_failure(rc, output, took, f"--sip {port} (TCP)")


def _loopback_pair():
    """A UDP and a listening TCP socket on the same port of 127.0.0.1."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:  # that TCP port is someone else's: another one
            udp.close()
            tcp.close()
            continue
        tcp.listen()
        return udp, tcp, port
    pytest.fail("no port free for both UDP and TCP on 127.0.0.1")


def test_a_sip_port_another_server_holds_on_loopback_ends_the_start(tmp_path):
    # another SIP server on the machine, bound to 127.0.0.1 only, UDP and TCP
    # (as SIPp or a softphone is): the proxy's wildcard bind fails, clearly
    udp, tcp, port = _loopback_pair()
    with udp, tcp:
        rc, output, took = fails_to_start(tmp_path, "--sip", str(port))
    assert rc == 1, output
    assert_clear_failure(rc, output, took, f"--sip {port} (UDP)")


def _free_privileged_port(used: set) -> int:
    for port in range(700, 1000):
        if port in used:
            continue
        try:
            with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("", port))
                u.bind(("", port))
        except OSError:
            continue
        return port
    pytest.skip("no free port below 1024")


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None,
                    reason="needs root and a user 'nobody' to drop privileges to")
def test_ports_below_1024_are_bound_before_twistd_u_drops_privileges(tmp_path):
    nobody = _nobody()
    # pytest's tmp_path is root's alone: nobody needs a directory it can reach
    data = Path(tempfile.mkdtemp(prefix="presence-u-"))
    data.chmod(0o755)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    try:
        _run_as_nobody(tmp_path, data, nobody)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _run_as_nobody(tmp_path: Path, data: Path, nobody) -> None:
    used: set = set()
    for _ in range(3):
        used.add(_free_privileged_port(used))
    http, sip, smsc = sorted(used)
    json_log = tmp_path / "log.json"  # root's alone: opened before the drop
    server = ServerProcess(data, tmp_path / "server.log", extra_args=[
        "--http", f"tcp:{http}:interface=127.0.0.1", "--sip", str(sip),
        "--smsc", f"tcp:{smsc}:interface=127.0.0.1", "--json-log", str(json_log)])
    # twistd's own options come before the plugin name
    args = server.args
    server.args = lambda: ["-u", "nobody", *args()]  # type: ignore[method-assign]
    server.start()
    try:
        assert server.port == http
        output = server.output(since_start=True)
        assert f"sip-udp=0.0.0.0:{sip}" in output and f"smsc=127.0.0.1:{smsc}" in output
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        uid_line = next(l for l in status.splitlines() if l.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4  # real, effective, saved, fs
        # the store works as nobody
        name, password = unique_name(), unique_password()
        assert server.api().request("POST", "/api/register", form={
            "username": name, "password": password}).status == 201
        assert (data / "presence.sqlite3").stat().st_uid == nobody.pw_uid
        # the operator token is written after the drop: the server's user owns it
        token = (data / "admin-token").stat()
        assert (token.st_uid, stat.S_IMODE(token.st_mode)) == (nobody.pw_uid, 0o600)
        assert "presence ready" in json_log.read_text()  # written after the drop
    finally:
        server.stop()
