"""A real Prometheus (the Debian package's ``prometheus``) scrapes the real
server's operator endpoint with the token as its bearer credentials, loads
the alert rules of ``docs/grafana``, and its HTTP API answers the held
heartbeats and the chat counter."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from presence_harness import HeartbeatReader, chat_ok, free_port, new_user

pytestmark = [pytest.mark.integration, pytest.mark.requires_program("prometheus")]

RULES = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "presence-alerts.yml"
DEADLINE = 60.0


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_until(condition, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except OSError as e:  # not listening yet
            last = e
        else:
            if last:
                return last
        time.sleep(0.2)  # polling a condition, with a deadline
    raise AssertionError(f"never: {what} (last: {last!r})")


@pytest.fixture
def prometheus(tmp_path, server_factory):
    server = server_factory.start()
    port = free_port()
    shutil.copy(RULES, tmp_path / "presence-alerts.yml")
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [presence-alerts.yml]
scrape_configs:
  - job_name: presence
    scrape_interval: 1s
    authorization:
      type: Bearer
      credentials_file: {server.admin_token_path}
    static_configs:
      - targets: ["127.0.0.1:{server.admin_port}"]
""")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [shutil.which("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and
                   urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200,
                   "Prometheus ready")
        yield server, base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def query(base: str, expr: str):
    answer = get_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


def test_prometheus_scrapes_held_heartbeats_and_chats_with_the_token(prometheus):
    server, base = prometheus
    api = server.api()
    alice, bob = new_user(api, "alice"), new_user(api, "bob")
    hb = HeartbeatReader.open(server.host, server.port, bob.name, bob.session)
    for i in range(3):
        chat_ok(api, alice, bob, f"hello {i}")
    hb.frames_until(lambda f: f.payload == "hello 2")

    def target_up():
        targets = get_json(base + "/api/v1/targets")["data"]["activeTargets"]
        return targets and targets[0]["health"] == "up" and targets

    wait_until(target_up, "the presence target is up (the token was accepted)")
    wait_until(lambda: query(base, 'presence_held_heartbeats{job="presence"}') and
               query(base, 'presence_held_heartbeats{job="presence"}')[0][1] == 1,
               "presence_held_heartbeats == 1")
    wait_until(lambda: [v for _, v in query(base, 'presence_chats_total{delivered="online"}')]
               == [3.0], "presence_chats_total{delivered=online} == 3")
    hb.close()
    wait_until(lambda: [v for _, v in query(base, "presence_held_heartbeats")] == [0.0],
               "presence_held_heartbeats back to 0")
    groups = get_json(base + "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups if g["name"] == "presence" for r in g["rules"]]
    assert len(rules) == 10 and all(r["health"] in ("ok", "unknown") for r in rules), rules
    # the scrapes were authorized: no wrong token was ever logged
    assert "a wrong token" not in server.output()
