"""``twistd presence`` with the wireless front-end: its options, the
simulator's listener in the service tree, and the ready line that waits for
it (no sockets: a MemoryReactorClock records the listens)."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage

from presence import tap
from presence.wireless.frontend import WirelessFrontEnd


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_defaults():
    o = parse()
    assert o["smsc"] == "tcp:13013:interface=127.0.0.1"   # loopback unless told
    assert o["smsc-user"] == "presence" and o["smsc-password"] is None  # no default
    assert o["dlr-allow"] == ""
    assert o["smsc-validity"] == 60.0
    assert o["wireless-via"] == "push"
    assert o["wml-base"] is None


def test_values():
    o = parse("--smsc", "tcp:0:interface=127.0.0.1", "--smsc-user", "u", "--smsc-password",
              "p", "--smsc-validity", "2.5", "--wireless-via", "sms", "--wml-base",
              "https://presence.example")
    assert (o["smsc"], o["smsc-user"], o["smsc-password"]) == ("tcp:0:interface=127.0.0.1",
                                                                "u", "p")
    assert o["smsc-validity"] == 2.5 and o["wireless-via"] == "sms"
    assert o["wml-base"] == "https://presence.example"
    assert parse("--smsc", "none")["smsc"] == "none"


@pytest.mark.parametrize("args", [
    ["--smsc", "bogus:1"], ["--smsc", ""], ["--smsc-validity", "0"],
    ["--smsc-validity", "-1"], ["--smsc-validity", "soon"], ["--wireless-via", "pigeon"],
    ["--wml-base", "ftp://x"], ["--smsc-user", ""], ["--smsc-password", ""],
])
def test_bad_options(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_smsc_port_out_of_range_names_the_option():
    with pytest.raises(usage.UsageError, match="--smsc: port 99999 is not 0-65535"):
        parse("--smsc", "tcp:99999")


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    text = capsys.readouterr().out
    for name in ("smsc", "smsc-user", "smsc-password", "smsc-validity", "wireless-via",
                 "wml-base"):
        assert f"--{name}=" in text, name
    assert "tcp:13013" in text


@pytest.fixture
def build(tmp_path):
    """makeService on a MemoryReactorClock; every tree is stopped at teardown."""
    made = []

    def make(*args: str):
        extra = ["--sip", "0"] if "sip" in dict(tap.Options()) else []
        options = parse("--http", "tcp:18081:interface=127.0.0.1", "--data",
                        str(tmp_path / "d"), "--hash-cost", "1", *extra, *args)
        reactor = MemoryReactorClock()
        # results from the store's worker thread are not needed here (the
        # memory reactor has no callFromThread; teardown closes the store)
        reactor.callFromThread = lambda *a, **kw: None
        top = tap.makeService(options, reactor=reactor)
        made.append(top)
        return top, reactor

    yield make
    for top in made:
        if top.running:
            top.stopService()
        # the store's worker thread must end even if a stop step waits on the
        # (fake) reactor
        for service in top:
            if isinstance(service, tap.DirectoryService) and service.store._pool is not None:
                service.store.stop()


def test_the_simulator_listens_and_ready_waits_for_it(build):
    top, reactor = build("--smsc", "tcp:13099:interface=127.0.0.1")
    front = next(s for s in top if isinstance(s, WirelessFrontEnd))
    listeners = [s for s in top if isinstance(s, tap.ListenService)]
    assert "smsc" in [s.label for s in listeners]
    with capturedLogs() as events:
        top.startService()
    ports = {port: factory for port, factory, _, _ in reactor.tcpServers}
    assert 13099 in ports and 18081 in ports
    ready = [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]
    assert len(ready) == 1
    assert ":18081" in ready[0] and ":13099" in ready[0]
    assert ready[0].index("http=") < ready[0].index("smsc=")
    g = front.gateway
    # (the memory reactor reports its listens on 0.0.0.0: the wildcard rules apply)
    assert (g.operator, g.callback, g.public) == (
        "http://127.0.0.1:13099", "http://127.0.0.1:18081", "http://localhost:18081")
    top.stopService()
    assert front.simulator.stopped


def test_wml_base_and_wildcard_addresses(build):
    top, reactor = build("--smsc", "tcp:13099", "--domain", "presence.example",
                         "--wml-base", "https://phones.example/")
    front = next(s for s in top if isinstance(s, WirelessFrontEnd))
    front.ready({"http": "0.0.0.0:8080", "smsc": "0.0.0.0:13013"})
    assert front.gateway.public == "https://phones.example"
    assert front.gateway.operator == "http://127.0.0.1:13013"
    front.options = dict(front.options, **{"wml-base": None})
    front.ready({"http": "0.0.0.0:8080", "smsc": "::1:13013"})
    assert front.gateway.public == "http://presence.example:8080"
    assert front.gateway.operator == "http://[::1]:13013"


def test_smsc_none_turns_wireless_off(build):
    top, reactor = build("--smsc", "none")
    assert "smsc" not in [s.label for s in top if isinstance(s, tap.ListenService)]
    with capturedLogs() as events:
        top.startService()
    ready = [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]
    assert len(ready) == 1 and "smsc=" not in ready[0]
    front = next(s for s in top if isinstance(s, WirelessFrontEnd))
    assert front.simulator is None and not front.gateway.ready
    top.stopService()


def test_a_unix_http_endpoint_leaves_texting_off(build):
    top, reactor = build("--smsc", "tcp:13099")
    front = next(s for s in top if isinstance(s, WirelessFrontEnd))
    with capturedLogs() as events:
        front.ready({"http": "?:?", "smsc": "127.0.0.1:13099"})
    assert not front.gateway.ready
    assert any("wireless texting is off" in formatEvent(e) for e in events)
