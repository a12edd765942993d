"""The name service in cluster mode: two real nodes sharing a real
``redis-server``, each with ``--dns``, answer the same (docs/names.md,
"Cluster mode")."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presence_harness import (  # noqa: E402
    HeartbeatReader, ServerProcess, free_port, login, register, unique_name,
)
from redis_support import fresh_prefix, start_redis  # noqa: E402
from test_names_live import until  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.requires_program("dig", "redis-server")]
DOMAIN = "names.test"
PAGE = "127.0.0.3"


@pytest.fixture(scope="module")
def redis(request, tmp_path_factory):
    return start_redis(request, tmp_path_factory)


@pytest.fixture
def nodes(redis, tmp_path):
    url = f"{redis.url}?prefix={fresh_prefix()}"
    started = []
    try:
        for name in ("a", "b"):
            port = free_port()
            # port 0: the server picks one free for UDP and TCP, the ready line says it
            node = ServerProcess(tmp_path / name, tmp_path / f"{name}.log", extra_args=[
                "--http", f"tcp:{port}:interface=127.0.0.1", "--redis", url,
                "--host-box", f"127.0.0.1:{port}", "--dns", "127.0.0.1:0",
                "--domain", DOMAIN, "--page-address", PAGE, "--alive", "3"])
            started.append(node.start())
            ready = re.search(r"dns-udp=127\.0\.0\.1:(\d+) dns-tcp=127\.0\.0\.1:(\d+)",
                              node.output())
            assert ready and ready.group(1) == ready.group(2), node.output()[-2000:]
            node.dns_port = int(ready.group(1))
        yield started
    finally:
        for node in started:
            node.stop()


def answer(node, name: str) -> list:
    out = subprocess.run(["dig", "+short", "@127.0.0.1", "-p", str(node.dns_port), name,
                          "+time=2", "+tries=2"], capture_output=True, text=True,
                         timeout=20).stdout
    return out.split()


def test_every_node_answers_the_same_name(nodes):
    a, b = nodes
    alice = login(a.api(), register(a.api(), unique_name("alice")))
    name = f"{alice.name}.{DOMAIN}"
    assert answer(a, name) == answer(b, name) == [PAGE]
    box = alice.login_body["host_box"]
    home = next(n for n in nodes if f"127.0.0.1:{n.port}" == box)
    with HeartbeatReader.open(home.host, home.port, alice.name, alice.session):
        for node in nodes:
            until(lambda: answer(node, name) == ["127.0.0.1"], 5, f"{node.port} online")
    for node in nodes:
        until(lambda: answer(node, name) == [PAGE], 8, f"{node.port} offline")
    # a dyndns2 update through node b: both answer its address, then both go back
    auth = base64.b64encode(f"{alice.name}:{alice.password}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{b.port}/nic/update?hostname={name}&myip=198.51.100.77",
        headers={"Authorization": "Basic " + auth})
    assert urllib.request.urlopen(request, timeout=10).read() == b"good 198.51.100.77"
    for node in nodes:
        until(lambda: answer(node, name) == ["198.51.100.77"], 5, f"{node.port} dyndns")
    for node in nodes:
        until(lambda: answer(node, name) == [PAGE], 8, f"{node.port} after --alive")
    assert not re.search(re.escape(alice.password), a.output() + b.output())
