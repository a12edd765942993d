"""Listeners bind in ``privilegedStartService`` (before ``twistd -u`` drops
privileges) and report ready in ``startService``; a port that cannot be
bound ends the start with :class:`ListenFailed`, one line naming the option.

A ``MemoryReactorClock`` records the listens; one of its subclasses refuses
them as a taken port would."""

from __future__ import annotations

import pytest
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from presence import tap
from presence.listen import ListenFailed, ListenService
from presence.sip.frontend import SipTCPService, SipUDPService


class _UDPPort:
    def __init__(self, port: int) -> None:
        self.port = port

    def getHost(self):
        return IPv4Address("UDP", "0.0.0.0", self.port)

    def stopListening(self):
        return None


class Reactor(MemoryReactorClock):
    """Records UDP listens too; ``taken`` names the kinds ("tcp", "udp")
    whose listens fail as a port in use does."""

    def __init__(self, taken=()) -> None:
        super().__init__()
        self.taken = set(taken)
        self.udpServers = []

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if "tcp" in self.taken:
            raise error.CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if "udp" in self.taken:
            raise error.CannotListenError(interface, port, OSError(98, "Address already in use"))
        self.udpServers.append((port, protocol, interface, maxPacketSize))
        return _UDPPort(port)


def tree(tmp_path, reactor, *args):
    options = tap.Options()
    options.parseOptions(["--http", "tcp:18081:interface=127.0.0.1", "--data",
                          str(tmp_path / "data"), "--hash-cost", "1",
                          "--smsc", "tcp:18082:interface=127.0.0.1", "--sip", "15060",
                          "--admin", "tcp:18083:interface=127.0.0.1", *args])
    return tap.makeService(options, reactor=reactor)


def ready_lines(events):
    return [formatEvent(e) for e in events if "presence ready" in formatEvent(e)]


def test_every_port_is_bound_before_privileges_are_dropped_and_ready_comes_after(tmp_path):
    reactor = Reactor()
    top = tree(tmp_path, reactor)
    with capturedLogs() as events:
        top.privilegedStartService()
    assert sorted(s[0] for s in reactor.tcpServers) == [15060, 18081, 18082, 18083]
    assert [s[0] for s in reactor.udpServers] == [15060]
    assert ready_lines(events) == []  # not started yet: twistd drops privileges now
    # nothing opened on disk as the privileged user: the store opens at start
    assert not (tmp_path / "data").exists()
    for service in top:  # the directory's worker needs a running reactor
        if not isinstance(service, tap.DirectoryService):
            with capturedLogs() as events:
                service.startService()
            if ready_lines(events):
                break
    [line] = ready_lines(events)
    assert "http=0.0.0.0:18081" in line and "smsc=0.0.0.0:18082" in line  # memory ports
    assert "sip-udp=0.0.0.0:15060" in line and "sip-tcp=0.0.0.0:15060" in line
    # bound once, not again at start
    assert len(reactor.tcpServers) == 4 and len(reactor.udpServers) == 1
    for service in reversed(list(top)):
        if service.running:
            service.stopService()


class _FailingEndpoint:
    def listen(self, factory):
        return defer.fail(error.CannotListenError(
            "127.0.0.1", 8080, OSError(98, "Address already in use")))


def test_a_taken_port_is_one_line_naming_the_option_and_its_value():
    listen = ListenService("http", _FailingEndpoint(), object(), value="tcp:8080")
    with pytest.raises(ListenFailed) as failed:
        listen.privilegedStartService()
    message = str(failed.value)
    assert message.startswith("presence: cannot listen on --http tcp:8080: ")
    assert "127.0.0.1:8080" in message and "Address already in use" in message
    assert failed.value.code == message  # SystemExit: twistd prints it, status 1


def test_start_binds_when_nothing_called_the_privileged_step():
    reactor = Reactor()
    ready = []
    from twisted.internet import endpoints
    listen = ListenService("smsc", endpoints.TCP4ServerEndpoint(reactor, 18090), object(),
                           ready.append, value="tcp:18090")
    listen.startService()
    assert [s[0] for s in reactor.tcpServers] == [18090] and ready == [listen]
    listen.stopService()
    assert listen.port is None


class Slow:
    """An endpoint whose listen answers when the test fires ``later``."""

    def __init__(self, later: defer.Deferred) -> None:
        self.later = later

    def listen(self, factory):
        return self.later


def test_an_endpoint_that_answers_later_is_ready_when_it_does():
    later = defer.Deferred()

    ready = []
    listen = ListenService("http", Slow(later), object(), ready.append, value="x")
    listen.privilegedStartService()
    listen.startService()
    assert ready == []
    port = _UDPPort(1)
    later.callback(port)
    assert ready == [listen] and listen.port is port


def test_an_endpoint_that_fails_later_says_so_in_the_log():
    later = defer.Deferred()

    listen = ListenService("http", Slow(later), object(), value="x")
    listen.startService()
    with capturedLogs() as events:
        later.errback(error.CannotListenError("", 1, OSError(13, "Permission denied")))
    [line] = [formatEvent(e) for e in events]
    assert "cannot listen on --http x" in line and "Permission denied" in line


def test_a_listener_stopped_before_its_endpoint_answered_gives_up_quietly():
    cancelled = []
    later = defer.Deferred(cancelled.append)

    listen = ListenService("http", Slow(later), object(), value="x")
    listen.startService()
    with capturedLogs() as events:
        listen.stopService()
    assert cancelled == [later] and listen.port is None
    assert [formatEvent(e) for e in events if "cannot listen" in formatEvent(e)] == []


@pytest.mark.parametrize("taken, kind, service", [("udp", "UDP", SipUDPService),
                                                  ("tcp", "TCP", SipTCPService)])
def test_a_taken_sip_port_names_sip_and_the_protocol(tmp_path, taken, kind, service):
    top = tree(tmp_path, Reactor(taken=[taken]))
    sip = next(s for s in top if isinstance(s, service))
    with pytest.raises(ListenFailed) as failed:
        sip.privilegedStartService()
    assert str(failed.value).startswith(f"presence: cannot listen on --sip 15060 ({kind}): ")
    assert "Address already in use" in str(failed.value)
    assert sip.port is None


def test_the_whole_tree_stops_its_start_at_a_taken_port(tmp_path):
    top = tree(tmp_path, Reactor(taken=["udp"]))
    with pytest.raises(ListenFailed, match=r"--sip 15060 \(UDP\)"):
        top.privilegedStartService()
