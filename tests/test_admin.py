"""The operator endpoint in memory: the counters, the collector, the
options, readiness, the token file, and the alert rules and dashboard in
``docs/grafana/`` against what ``/metrics`` really exposes."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import treq
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.python import usage

from helpers import World, result_of
from presence import tap
from presence.admin import AdminFrontEnd, metrics
from presence.admin.token import generate_token
from presence.core.counters import Counters, Histogram
from presence.tap import ReadyGate

DOCS = Path(__file__).resolve().parent.parent / "docs" / "grafana"


def parse(*args: str):
    options = tap.Options()
    options.parseOptions(["--http", "tcp:18081:interface=127.0.0.1", "--data", "/tmp/x",
                          *args])
    return options


def families(registry) -> dict:
    text = metrics.exposition(registry).decode("utf-8")
    return {f.name: f for f in text_string_to_metric_families(text)}


# -- counters --------------------------------------------------------------------------

def test_a_histogram_counts_cumulatively_up_to_inf():
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert (h.count, h.sum) == (4, pytest.approx(3.65))


def test_labels_come_from_fixed_sets_whatever_is_counted():
    c = Counters()
    c.release("replaced")
    c.release("made up by a client")
    c.refused("chat", "10.0.0.1", 5.0)
    c.refused("<script>", "10.0.0.2" * 20, 6.0)
    c.http_error("jchat", 403)
    c.http_error("alice", 500)          # a name page: "pages", never the name
    assert c.releases == {"replaced": 1, "other": 1}
    assert c.refusals == {"chat": 1, "other": 1}
    assert c.http_errors == {("heartbeat", "4xx"): 1, ("pages", "5xx"): 1}
    assert [r[1] for r in c.recent] == ["chat", "other"]
    assert len(c.recent[1][2]) == 64


def test_chat_latency_is_bounded_when_chats_are_never_written_here():
    c = Counters()
    c.clock = iter(range(10**6)).__next__   # type: ignore[method-assign]
    for i in range(5000):
        c.chat_accepting(f"m{i}")
        c.chat_accepted(f"m{i}", "online")
    assert len(c._pending) <= 4096
    c.chat_written("m4999", 10**6)
    assert c.chat_latency.count == 1 and c.chats_online == 5000


def test_the_hub_counts_frames_pushed_out_of_a_full_mailbox():
    w = World(mailbox=3)
    alice, bob = w.user("alice"), w.user("bob")
    hb = bob.heartbeat()
    for i in range(5):
        assert alice.post("/chat", to="bob", msg=f"m{i}").status == 202
    entries = bob.hub_session.mailbox.pending()
    assert len(entries) == 3
    # every frame bob's mailbox was given but no longer holds was pushed out
    assert w.hub.overflows == entries[-1][0] - 3 > 0
    assert hb.events()


# -- the collector ----------------------------------------------------------------------

class FakeSip:
    def stats(self):
        return {"requests": 7, "refused_403": 2, "server_transactions": 1,
                "client_transactions": 2, "dialogs": 1}


class FakeGateway:
    pending = {"ref1": object(), "ref2": object()}


class FakeCluster:
    redis_up = True


def full_sources(world: World) -> metrics.Sources:
    world.hub.pubsub_lag = Histogram((0.1,))
    world.hub.pubsub_lag.observe(0.05)
    sweep = world.sweep_service()
    return metrics.Sources(world.hub, world.service.counters, sweep=sweep, sip=FakeSip(),
                           wireless=FakeGateway(), cluster=FakeCluster(), ready=lambda: True)


def test_the_collector_reads_the_hub_and_the_counters_at_scrape_time():
    w = World()
    registry = metrics.registry_for(metrics.Sources(w.hub, w.service.counters))
    alice, bob = w.user("alice"), w.user("bob")
    bob.heartbeat()
    alice.post("/chat", to="bob", msg="hi")
    got = families(registry)
    assert got["presence_held_heartbeats"].samples[0].value == 1
    assert got["presence_sessions"].samples[0].value == 2
    assert got["presence_logins"].samples[0].value == 2   # the family name has no _total
    chats = {s.labels["delivered"]: s.value for s in got["presence_chats"].samples}
    assert chats == {"online": 1, "stored": 0}
    assert "process_cpu_seconds" in got   # the process collector too


def test_every_metric_the_dashboard_and_the_alerts_use_is_exposed():
    registry = metrics.registry_for(full_sources(World()))
    exposed = set()
    for f in families(registry).values():
        exposed |= {s.name for s in f.samples} | {f.name}
    dashboard = json.loads((DOCS / "presence-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += re.findall(r"expr: (.+)", (DOCS / "presence-alerts.yml").read_text())
    used = set()
    for expr in exprs:
        used |= set(re.findall(r"\b((?:presence|process)_[a-z_]+)", expr))
    assert used and used - exposed == set()
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])


@pytest.mark.requires_program("promtool")
def test_the_alert_rules_pass_promtool():
    r = subprocess.run(["promtool", "check", "rules", str(DOCS / "presence-alerts.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 10 rules found" in r.stdout


# -- options -------------------------------------------------------------------------

def test_the_admin_option_defaults_to_loopback_8081_and_none_turns_it_off(tmp_path):
    assert parse()["admin"] == "tcp:8081:interface=127.0.0.1"
    options = parse("--admin", "none", "--data", str(tmp_path), "--smsc", "none", "--sip", "0")
    top = tap.makeService(options, reactor=_reactor())
    assert not any(getattr(s, "label", None) == "admin" for s in top)


@pytest.mark.parametrize("args, message", [
    (["--admin", "bogus:1"], "--admin: not a server endpoint string (or none)"),
    (["--admin", "tcp:99999"], "--admin: port 99999"),
    (["--admin", "tcp:18081:interface=127.0.0.1"], "--admin must not be the --http endpoint"),
    (["--admin-token-file", "/nonexistent/token"], "--admin-token-file: cannot read"),
])
def test_bad_admin_options_are_usage_errors(args, message):
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        parse(*args)


def test_a_token_file_must_hold_one_long_enough_token(tmp_path):
    for text in ("short\n", "two words in it are not one token\n", "é" * 20):
        path = tmp_path / "t"
        path.write_text(text)
        with pytest.raises(usage.UsageError, match="one token of 16-256"):
            parse("--admin-token-file", str(path))
    path.write_text("  a-good-token-0123456789  \n")
    assert parse("--admin-token-file", str(path))["admin-token"] == "a-good-token-0123456789"


def test_a_generated_token_is_new_at_each_start_and_mode_0600(tmp_path):
    first, path = generate_token(str(tmp_path / "data"))
    second, again = generate_token(str(tmp_path / "data"))
    assert path == again and first != second and len(first) >= 43
    assert Path(path).read_text() == second + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# -- readiness and the probes ------------------------------------------------------------

def _reactor():
    from twisted.internet.testing import MemoryReactorClock
    return MemoryReactorClock()


class Probed:
    """A service whose directory probe succeeds or fails as told."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.hub = world.hub
        self.counters = world.service.counters
        self.fail = False
        self.hang = False
        self.probes = 0

    def probe_directory(self):
        self.probes += 1
        if self.hang:
            return defer.Deferred()
        if self.fail:
            return defer.fail(OSError("disk gone"))
        return defer.succeed(False)

    def __getattr__(self, name):
        return getattr(self.world.service, name)


def front(tmp_path, world: World):
    gate = ReadyGate()
    options = {"admin": "tcp:0", "data": str(tmp_path), "admin-token-file": None}
    service = Probed(world)
    f = AdminFrontEnd(options, service, world.clock, gate)
    listener = f.listener()
    return f, gate, service, listener


def test_readyz_says_what_is_not_ready_and_healthz_only_that_it_answers(tmp_path):
    w = World()
    f, gate, service, listener = front(tmp_path, w)
    stub = StubTreq(listener.factory.resource)

    def get(path):
        response = result_of(stub.get("http://admin.test" + path))
        return response.code, result_of(treq.content(response))

    f.startService()
    try:
        assert get("/readyz") == (503, b"not ready: listeners\n")   # before the ready line
        gate.up("admin", "127.0.0.1:1")
        assert get("/readyz") == (200, b"ready\n")
        service.fail = True
        w.clock.advance(7)                                          # three probes fail
        assert get("/readyz") == (503, b"not ready: directory\n")
        assert get("/healthz") == (200, b"ok\n")
        # a probe that never answers times out; they never pile up
        service.fail = False
        w.clock.advance(2)
        assert get("/readyz") == (200, b"ready\n")   # the directory is back
        service.hang = True
        calls = service.probes
        for _ in range(8):
            w.clock.advance(1)
        assert service.probes - calls <= 4           # one in flight at a time
        assert get("/readyz") == (503, b"not ready: directory\n")
        token = (tmp_path / "admin-token").read_text().strip()
        code, body = get("/metrics")
        assert code == 401
        response = result_of(stub.get("http://admin.test/metrics",
                                      headers={"Authorization": f"Bearer {token}"}))
        text = result_of(treq.content(response)).decode()
        assert "presence_ready 0.0" in text
    finally:
        f.stopService()


# -- cluster mode ------------------------------------------------------------------------

def test_a_notice_reaches_every_box_and_arrivals_time_the_pubsub_lag():
    from test_cluster_hub import Cluster, lines
    c = Cluster(2)
    a, b = c.hubs
    alice = c.login(0, "alice")                 # on a
    bob = c.login(0, "bob")                     # placed on b
    ha, hb = c.hold(alice), c.hold(bob)
    c.clock.advance(0.25)
    from presence.core import frames
    assert a.broadcast(frames.notice("maintenance")) == 1   # a's own session
    c.redis.pump()
    assert "msg notice" in lines(ha) and "msg notice" in lines(hb)
    assert [f.payload for _, f in hb.sent if f.kind == "notice"] == ["maintenance"]
    assert lines(ha).count("msg notice") == 1   # not a second time from the channel
    # events that carry their publication time ("t") were timed on arrival
    assert b.pubsub_lag.count >= 1 and b.pubsub_lag.sum >= 0


def test_presence_cluster_gives_each_node_its_own_operator_port():
    from presence.cli.cluster import Cluster, build_parser
    nodes = Cluster(build_parser().parse_args(["--nodes", "3", "--port", "8080"]))
    assert [nodes.admin_port(i) for i in range(3)] == [9080, 9081, 9082]
    chosen = Cluster(build_parser().parse_args(["--port", "8080", "--admin-port", "7000"]))
    assert chosen.admin_port(1) == 7001
    off = Cluster(build_parser().parse_args(["--admin-port", "0"]))
    assert off.admin_port(0) == 0
    bad = Cluster(build_parser().parse_args(["--nodes", "2", "--admin-port", "65535"]))
    with pytest.raises(SystemExit, match="--admin-port leaves no room"):
        bad.run()
