"""``twistd presence``: the options and the service tree (no sockets).

``makeService`` is given a ``MemoryReactorClock``: starting the tree records
the TCP listen instead of opening a socket, and the sweep runs on the fake
clock.
"""

from __future__ import annotations

import json

import pytest
from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage

from helpers import RawConnection, dechunk, split_response
from presence import tap
from presence.gcpolicy import GCPolicy
from presence.sweep import SweepService
from presence.threads import Pool
from presence.web.http import PresenceSite
from presence.web.transport import TurnFlushServer

OPTIONS = ["http", "data", "domain", "host-box", "keepalive", "poll", "linger",
           "session-ttl", "mailbox", "hash-cost", "json-log", "gc-freeze-at", "gc-thaw"]


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


# -- options ----------------------------------------------------------------------

def test_defaults():
    o = parse()
    assert o["http"] == "tcp:8080"
    assert o["data"] == "./presence-data"
    assert o["domain"] == "localhost"
    assert o["host-box"] is None
    assert o["keepalive"] == 25.0
    assert o["poll"] == 4.0
    assert o["linger"] == 8.0  # two poll intervals
    assert o["session-ttl"] == 3600.0
    assert o["mailbox"] == 1000
    assert o["hash-cost"] == 14
    assert o["json-log"] is None
    assert o["gc-freeze-at"] == 20000
    assert o["gc-thaw"] == 0


def test_values_are_parsed(tmp_path):
    json_log = str(tmp_path / "log.json")
    o = parse("--http", "tcp:18081:interface=127.0.0.1", "--data", "/tmp/x",
              "--domain", "example.org", "--host-box", "box7:80", "--keepalive", "2.5",
              "--poll", "0.5", "--linger", "0", "--session-ttl", "60", "--mailbox", "5",
              "--hash-cost", "1", "--json-log", json_log,
              "--gc-freeze-at", "0", "--gc-thaw", "3600")
    assert o["http"] == "tcp:18081:interface=127.0.0.1"
    assert o["data"] == "/tmp/x"
    assert o["domain"] == "example.org"
    assert o["host-box"] == "box7:80"
    assert o["keepalive"] == 2.5
    assert o["poll"] == 0.5
    assert o["linger"] == 0
    assert o["session-ttl"] == 60
    assert o["mailbox"] == 5 and isinstance(o["mailbox"], int)
    assert o["hash-cost"] == 1 and isinstance(o["hash-cost"], int)
    assert o["json-log"] == json_log
    assert o["gc-freeze-at"] == 0 and isinstance(o["gc-freeze-at"], int)
    assert o["gc-thaw"] == 3600.0


def test_linger_defaults_to_two_polls():
    assert parse("--poll", "3")["linger"] == 6.0
    assert parse("--poll", "3", "--linger", "1")["linger"] == 1.0


@pytest.mark.parametrize("args", [
    ["--keepalive", "-1"], ["--keepalive", "0"], ["--keepalive", "soon"],
    ["--poll", "-4"], ["--poll", "0"], ["--linger", "-1"],
    ["--session-ttl", "0"], ["--mailbox", "0"], ["--mailbox", "1.5"],
    ["--hash-cost", "0"], ["--hash-cost", "21"], ["--hash-cost", "x"],
    ["--http", "bogus:1"], ["--http", "tcp:notaport"], ["--http", "tcp:"], ["--http", ""],
    ["--http", "tcp:8080:backlog=many"],
    ["--no-such-option"], ["surplus"],
    ["--gc-freeze-at", "-1"], ["--gc-freeze-at", "many"], ["--gc-freeze-at", "1.5"],
    ["--gc-thaw", "-1"], ["--gc-thaw", "hourly"],
])
def test_bad_options_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_bad_http_endpoint_message_names_the_option():
    with pytest.raises(usage.UsageError, match="--http"):
        parse("--http", "bogus:1")


@pytest.mark.parametrize("endpoint", ["tcp:99999", "tcp6:70000", "tcp:-1"])
def test_a_port_out_of_range_is_a_usage_error_not_a_traceback_at_start(endpoint):
    with pytest.raises(usage.UsageError, match="--http: port -?[0-9]+ is not 0-65535"):
        parse("--http", endpoint)


def test_ports_at_the_ends_of_the_range_are_accepted():
    assert parse("--http", "tcp:65535")["http"] == "tcp:65535"
    assert parse("--http", "tcp:0:interface=127.0.0.1")["http"] == "tcp:0:interface=127.0.0.1"


def test_bad_ssl_endpoint_is_a_usage_error():
    with pytest.raises(usage.UsageError):
        parse("--http", "ssl:8443:privateKey=/nonexistent/server.pem")


def test_other_endpoint_types_are_accepted():
    assert parse("--http", "unix:/tmp/presence.sock")["http"] == "unix:/tmp/presence.sock"
    assert parse("--http", "tcp6:8080:interface=\\:\\:1")["http"].startswith("tcp6:")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit:
        parse("--help")
    assert exit.value.code in (0, None)
    text = capsys.readouterr().out
    for name in OPTIONS:
        assert f"--{name}=" in text, name
    assert "--help" in text
    # the defaults are shown
    assert "tcp:8080" in text and "./presence-data" in text


def test_plugin_is_found_by_twistd():
    from twisted.plugin import getPlugins
    from twisted import plugins

    makers = {p.tapname: p for p in getPlugins(IServiceMaker, plugins)}
    assert "presence" in makers
    maker = makers["presence"]
    assert maker.options is tap.Options
    assert maker.makeService is tap.makeService


# -- the service tree ----------------------------------------------------------------

@pytest.fixture
def built(tmp_path):
    """A service tree on a MemoryReactorClock; stopped at teardown if started."""
    made = []

    def build(*args: str):
        # the wireless simulator's listener is tested in test_wireless_tap.py,
        # the SIP listeners in test_sip_tap.py, the operator endpoint's in
        # test_admin.py
        options = parse("--http", "tcp:18081:interface=127.0.0.1",
                        "--data", str(tmp_path / "data"), "--hash-cost", "1",
                        "--smsc", "none", "--sip", "0", "--admin", "none", *args)
        reactor = MemoryReactorClock()
        top = tap.makeService(options, reactor=reactor)
        made.append(top)
        return top, reactor

    yield build
    for top in made:
        if top.running:
            top.stopService()


def children(top: MultiService):
    return list(top)


def test_service_tree(built, tmp_path):
    top, reactor = built()
    assert IService.providedBy(top)
    kinds = [type(s) for s in children(top)]
    assert kinds.count(tap.ListenService) == 1
    assert kinds.count(tap.DirectoryService) == 1
    assert kinds.count(SweepService) == 1
    listener = next(s for s in top if isinstance(s, tap.ListenService))
    assert isinstance(listener.factory, PresenceSite)
    sweep = next(s for s in top if isinstance(s, SweepService))
    assert sweep.interval == 4.0
    assert sweep.clock is reactor
    # nothing on disk before the tree starts (twistd -u has not dropped
    # privileges yet): the store and its directory are made at start
    assert not (tmp_path / "data").exists()
    # nothing listens before the tree is started
    assert reactor.tcpServers == []
    policy = next(s for s in top if isinstance(s, GCPolicy))
    assert (policy.freeze_at, policy.thaw_every, policy.clock) == (20000, 0, reactor)
    assert children(top)[-1] is policy  # started last: it freezes what was built


def test_gc_policy_options_reach_the_policy(built):
    top, reactor = built("--gc-freeze-at", "5000", "--gc-thaw", "7200")
    policy = next(s for s in top if isinstance(s, GCPolicy))
    assert (policy.freeze_at, policy.thaw_every) == (5000, 7200)
    top, reactor = built("--gc-freeze-at", "0")
    assert not next(s for s in top if isinstance(s, GCPolicy)).enabled


def test_no_access_log_flag_reaches_the_site(built, capsys):
    def site(top):
        return next(s for s in top if isinstance(s, tap.ListenService)).factory

    top, _ = built()
    assert site(top).access_log is True
    top, _ = built("--no-access-log")
    assert site(top).access_log is False
    with pytest.raises(SystemExit):
        parse("--help")
    assert "--no-access-log" in capsys.readouterr().out


def test_access_log_option_reaches_the_site(built, tmp_path, capsys):
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    top, _ = built("--access-log", str(path))
    site = next(s for s in top if isinstance(s, tap.ListenService)).factory
    assert site.access_log == str(path) and site.logPath == str(path)
    with pytest.raises(usage.UsageError, match="contradict"):
        parse("--access-log", str(path), "--no-access-log")
    with pytest.raises(usage.UsageError, match="cannot append"):
        parse("--access-log", str(tmp_path / "missing" / "access.log"))
    with pytest.raises(SystemExit):
        parse("--help")
    assert "--access-log=" in capsys.readouterr().out


def test_json_log_lives_with_the_service_tree(built, tmp_path):
    from twisted.logger import LogPublisher, Logger
    path = tmp_path / "log.json"
    top, _ = built("--json-log", str(path))
    service = list(top)[0]
    assert isinstance(service, tap.JsonLogService)  # first to start, last to stop
    publisher = LogPublisher()
    service.publisher = publisher
    log = Logger(observer=publisher)
    log.info("before {n}", n=0)
    service.startService()
    log.info("during {n}", n=1)
    service.stopService()
    log.info("after {n}", n=2)
    from twisted.logger import eventsFromJSONLogFile
    with open(path) as f:
        events = list(eventsFromJSONLogFile(f))
    assert [e["n"] for e in events] == [1]
    assert service.observer is None and service._file is None
    with pytest.raises(usage.UsageError, match="--json-log: cannot append"):
        parse("--json-log", str(tmp_path / "missing" / "log.json"))


def test_json_log_is_opened_before_privileges_are_dropped(built, tmp_path):
    from twisted.logger import LogPublisher, Logger, eventsFromJSONLogFile
    path = tmp_path / "log.json"
    top, _ = built("--json-log", str(path))
    service = list(top)[0]
    service.publisher = publisher = LogPublisher()
    service.privilegedStartService()  # twistd -u: as root
    opened = service._file
    assert opened is not None
    service.startService()  # as the user: the same file, observed once
    assert service._file is opened
    Logger(observer=publisher).info("once {n}", n=1)
    service.stopService()
    with open(path) as f:
        assert [e["n"] for e in eventsFromJSONLogFile(f)] == [1]


def test_gc_policy_begins_only_with_the_reactor(built):
    # twistd starts the services, then runs the reactor; this test process's
    # own collector must not be frozen by a tree started here
    top, reactor = built()
    top.startService()
    reactor.advance(10)
    policy = next(s for s in top if isinstance(s, GCPolicy))
    assert policy.freezes == 0
    assert [hook for hook, _, _ in reactor.whenRunningHooks] == [policy._begin]


def test_blocking_work_runs_on_cycle_free_pools(built):
    top, reactor = built()
    pools = [s.pool for s in top if isinstance(s, tap.PoolService)]
    assert len(pools) == 1 and isinstance(pools[0], Pool)  # password hashing
    assert pools[0].max == 10
    top.startService()
    directory = next(s for s in top if isinstance(s, tap.DirectoryService))
    assert isinstance(directory.store._pool, Pool)  # SQL


def test_start_listens_and_logs_ready(built, tmp_path):
    top, reactor = built()
    with capturedLogs() as events:
        top.startService()
    assert len(reactor.tcpServers) == 1
    port, factory, backlog, interface = reactor.tcpServers[0]
    assert port == 18081
    assert interface == "127.0.0.1"
    assert isinstance(factory, PresenceSite)
    ready = [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]
    assert len(ready) == 1
    assert ":18081" in ready[0]
    # the store is open: its file exists under --data
    assert (tmp_path / "data" / "presence.sqlite3").exists()
    top.stopService()
    assert not top.running


def test_a_data_directory_that_cannot_be_made_is_one_line_naming_data(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    options = parse("--data", str(blocker / "data"), "--smsc", "none", "--sip", "0")
    top = tap.makeService(options, reactor=MemoryReactorClock())
    with pytest.raises(SystemExit) as stopped:
        top.startService()
    message = str(stopped.value.code)
    assert message.startswith(f"presence: cannot open the store in --data {blocker / 'data'}: ")
    assert "Not a directory" in message


@pytest.mark.parametrize("bad", ["", "exa mple.org", "-x.org", "x-.org", "a..b", "x.org.",
                                 "a" * 64 + ".org", "ex_ample.org", "http://x.org",
                                 "x.org:80", "\u00e9t\u00e9.fr", "[::1]", ".".join(["a" * 63] * 4)])
def test_a_domain_that_is_no_host_name_is_a_usage_error(bad):
    with pytest.raises(usage.UsageError, match="domain"):
        parse("--domain", bad)


def test_a_domain_is_a_host_name_kept_in_lower_case():
    assert parse("--domain", "Chat.Example.ORG")["domain"] == "chat.example.org"
    assert parse("--domain", "192.168.1.20")["domain"] == "192.168.1.20"
    assert parse("--domain", "a" * 63 + ".example")["domain"] == "a" * 63 + ".example"


HINT = "set --domain NAME so that other devices can reach SIP URIs and links"


@pytest.mark.parametrize("domain, hint", [("localhost", True), ("chat.example.org", False)])
def test_the_ready_line_says_what_to_set_when_the_domain_is_this_machines_alone(
        built, domain, hint):
    top, _ = built("--http", "tcp:18081", "--domain", domain)  # every interface
    with capturedLogs() as events:
        top.startService()
    [ready] = [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]
    assert f"domain={domain}" in ready
    assert (HINT in ready) is hint


@pytest.mark.parametrize("domain, http_host, hint", [
    ("localhost", "0.0.0.0", True), ("localhost", "::", True),
    ("localhost", "192.0.2.7", True),       # an address other devices reach
    ("127.0.0.1", "0.0.0.0", True),
    ("localhost", "127.0.0.1", False),      # this machine only
    ("localhost", "::1", False),
    ("localhost", "?", False),              # a unix socket: who reaches it is unknown
    ("chat.example.org", "0.0.0.0", False),
])
def test_the_hint_is_given_when_others_reach_http_but_not_the_domain(domain, http_host, hint):
    detail = tap.domain_detail(domain, http_host)
    assert detail.startswith(domain)
    assert (HINT in detail) is hint


def test_host_box_option_is_reported(built):
    top, reactor = built("--host-box", "box7.example:80")
    with capturedLogs() as events:
        top.startService()
    ready = [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]
    assert "box7.example:80" in ready[0]


def test_sweep_runs_every_poll_interval(built):
    top, reactor = built("--poll", "2")
    top.startService()
    sweep = next(s for s in top if isinstance(s, SweepService))
    reactor.advance(1.9)
    assert sweep.sweeps == 0
    reactor.advance(0.1)
    assert sweep.sweeps == 1
    reactor.advance(2)
    reactor.advance(2)
    assert sweep.sweeps == 3
    top.stopService()
    reactor.advance(10)
    assert sweep.sweeps == 3  # stopped with the tree


def test_listening_site_serves_the_heartbeat_and_stats(built):
    top, reactor = built()
    top.startService()
    factory = reactor.tcpServers[0][1]
    conn = RawConnection(factory)
    raw = conn.send(b"GET /jchat?me=alice&id=nope HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\n\r\n")
    status, headers, body = split_response(raw)
    assert status == 403
    assert headers["content-type"] == "application/json"
    conn = RawConnection(factory)
    raw = conn.send(b"GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = split_response(raw)
    assert status == 200
    payload = body if "content-length" in headers else dechunk(body)
    stats = json.loads(payload)
    for key in ("sessions", "held", "online_users", "sweeps", "sweep_max_ms", "uptime",
                "gc_frozen", "gc_freezes", "gc_thaws", "gc_pause_max_ms"):
        assert key in stats, key


def test_stop_closes_the_store(built):
    top, reactor = built()
    top.startService()
    directory = next(s for s in top if isinstance(s, tap.DirectoryService))
    assert directory.store._pool is not None  # SQL on a worker thread while running
    top.stopService()
    assert directory.store._pool is None


def test_the_http_listener_sends_at_the_end_of_the_turn_unless_turned_off(built, monkeypatch):
    def listener(top):
        return next(s for s in top if isinstance(s, tap.ListenService))

    top, _ = built()
    assert listener(top).turn_flush is True
    top, _ = built("--no-turn-flush")
    assert listener(top).turn_flush is False
    # the environment switch it replaced has no effect any more
    monkeypatch.setenv("PRESENCE_TURN_FLUSH", "0")
    top, _ = built()
    assert listener(top).turn_flush is True


@pytest.mark.parametrize("turn_flush, transport", [(True, TurnFlushServer),
                                                   (False, tcp.Server)])
def test_a_listener_switches_its_tcp_port_once_listening(turn_flush, transport):
    reactor = MemoryReactorClock()
    port = tcp.Port(0, protocol.Factory(), interface="127.0.0.1", reactor=reactor)
    port.startListening()
    try:
        ready = []
        tap.ListenService("http", None, None, ready.append, turn_flush=turn_flush)._listening(port)
        assert port.transport is transport and len(ready) == 1
    finally:
        port.stopListening()
        reactor.advance(0)


@pytest.mark.parametrize("args, message", [
    (["--redis", "http://x"], "--redis: the Redis URL must start with redis://"),
    (["--redis", "redis://:s3cret@127.0.0.1:1/0"], "--redis needs --host-box HOST:PORT"),
    (["--redis", "redis://127.0.0.1/0", "--host-box", "node-1"], "needs --host-box HOST:PORT"),
    (["--redis", "redis://127.0.0.1/0", "--host-box", "a/b:80"], "needs --host-box HOST:PORT"),
    (["--redis", "redis://127.0.0.1/0", "--host-box", "h:99999"], "needs --host-box HOST:PORT"),
])
def test_cluster_options_are_checked_and_never_echo_the_password(args, message):
    with pytest.raises(usage.UsageError) as e:
        parse(*args)
    assert message in str(e.value)
    assert "s3cret" not in str(e.value)


def test_cluster_options_accepted_and_without_them_nothing_changes():
    o = parse("--redis", "redis://:pw@127.0.0.1:6379/2", "--host-box", "10.0.0.5:8081")
    assert o["redis"] == "redis://:pw@127.0.0.1:6379/2" and o["host-box"] == "10.0.0.5:8081"
    assert parse()["redis"] is None


def test_host_box_may_name_the_scheme_clients_reach_the_boxes_with():
    o = parse("--redis", "redis://127.0.0.1/0", "--host-box", "https://10.0.0.5:8443")
    assert o["host-box"] == "10.0.0.5:8443" and o["box-scheme"] == "https"
    assert parse("--host-box", "10.0.0.5:80")["box-scheme"] is None
    for bad in ("ftp://10.0.0.5:21", "https://10.0.0.5:8443/x"):
        with pytest.raises(usage.UsageError):
            parse("--redis", "redis://127.0.0.1/0", "--host-box", bad)


def test_the_directory_service_waits_for_the_store_to_stop():
    from twisted.internet import defer
    stopped = defer.Deferred()

    class Store:
        def start(self, reactor):
            pass

        def stop(self):
            return stopped      # the directory in Redis: batches sent, then closed

    service = tap.DirectoryService(Store(), None)
    service.startService()
    d = service.stopService()
    assert isinstance(d, defer.Deferred) and not d.called
    stopped.callback(None)
    assert d.called
