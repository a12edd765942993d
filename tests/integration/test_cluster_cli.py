"""``presence-cluster``: one command starts Redis and K nodes, prints where
they are, and stops them all on Ctrl-C (docs/cluster.md)."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from presence_harness import Api, ephemeral_range, expect

pytestmark = [pytest.mark.integration, pytest.mark.requires_program("redis-server")]


def two_free_ports() -> int:
    """Two consecutive free ports above the kernel's ephemeral range: a port
    in it could be taken, between this check and the node's bind, as the
    source port of another connection (the first node's to Redis)."""
    above = ephemeral_range()[1] + 1
    for _ in range(200):
        port = random.randrange(above, 65534)
        try:
            with socket.socket() as s, socket.socket() as t:
                s.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_one_command_starts_two_nodes_and_ctrl_c_stops_everything(tmp_path):
    port = two_free_ports()
    admin = two_free_ports()
    while admin in (port - 1, port, port + 1):
        admin = two_free_ports()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "presence.cli.cluster", "--nodes", "2", "--port", str(port),
         "--data", str(tmp_path / "c"), "--admin-port", str(admin),
         "--", "--hash-cost", "1", "--sip", "0",
         "--smsc", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        while not any("nodes ready" in line for line in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        assert "redis    redis://127.0.0.1:" in text
        assert f"http://127.0.0.1:{port}/" in text and f"http://127.0.0.1:{port + 1}/" in text
        # each node its own operator endpoint, never the default 8081 twice
        for n in (admin, admin + 1):
            assert f"admin http://127.0.0.1:{n}/" in text
            assert urllib.request.urlopen(f"http://127.0.0.1:{n}/healthz", timeout=5).read() \
                == b"ok\n"
        api = Api("127.0.0.1", port)
        expected = {f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"}
        while {b["box"] for b in expect(api.get("/api/cluster"), 200).json()["boxes"]} != expected:
            assert time.monotonic() < deadline, "the nodes never saw each other"
            time.sleep(0.1)   # polling a condition, with a deadline
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        rest = proc.stdout.read()
        assert "presence-cluster: stopped" in rest
        assert not answers(port) and not answers(port + 1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
