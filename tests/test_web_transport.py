"""``TurnFlushServer``: what a turn wrote leaves in one send at the end of the
turn, without asking the reactor to watch the socket; whatever the socket
does not take, a failure and a closing connection stay the reactor's.

A real socket pair stands for the connection; the reactor is a
``MemoryReactorClock`` (its ``advance(0)`` ends the turn)."""

from __future__ import annotations

import contextlib
import socket

import pytest
from twisted.internet import error, main, protocol, tcp
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from presence.web.transport import TurnFlushServer, use_turn_flush


class Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.lost = []

    def connectionLost(self, reason) -> None:
        self.lost.append(reason)


def received(peer: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = peer.recv(1 << 20)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


@pytest.fixture
def conn():
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    peer.setblocking(False)
    reactor = MemoryReactorClock()
    proto = Recorder()
    transport = TurnFlushServer(mine, proto, ("127.0.0.1", 40000), None, 1, reactor)
    proto.makeConnection(transport)
    yield transport, peer, reactor, proto
    mine.close()
    peer.close()


def test_the_writes_of_one_turn_leave_together_at_its_end(conn):
    transport, peer, reactor, _ = conn
    transport.write(b"HTTP/1.1 200 OK\r\n")
    transport.writeSequence([b"id: 1\n", b"data: msg chat bob 1\n\n"])
    assert received(peer) == b""  # nothing before the turn ends
    reactor.advance(0)
    assert received(peer) == b"HTTP/1.1 200 OK\r\nid: 1\ndata: msg chat bob 1\n\n"
    # the socket took it all: the reactor was never asked to watch it
    assert transport not in reactor.getWriters()
    assert transport.dataBuffer == b"" and transport._tempDataLen == 0


def test_the_end_of_the_turn_sends_without_dowrite(conn, monkeypatch):
    transport, peer, reactor, _ = conn
    monkeypatch.setattr(transport, "doWrite", lambda: pytest.fail("not the short way"))
    transport.write(b"one ")
    transport.write(b"two")
    reactor.advance(0)
    assert received(peer) == b"one two"
    assert transport._tempDataBuffer == [] and transport._tempDataLen == 0


def test_the_rest_of_a_partial_send_is_the_reactors_in_order(conn):
    transport, peer, reactor, _ = conn
    real = transport.writeSomeData
    transport.writeSomeData = lambda data: real(bytes(data)[:4])
    transport.write(b"abcdefgh")
    reactor.advance(0)
    assert received(peer) == b"abcd"
    assert transport in reactor.getWriters()
    transport.write(b"ij")                      # behind the rest
    del transport.writeSomeData
    assert transport.doWrite() is None          # what the reactor does when writable
    assert received(peer) == b"efghij"
    assert transport not in reactor.getWriters()


def test_a_connection_written_to_again_next_turn_is_sent_to_again(conn):
    transport, peer, reactor, _ = conn
    transport.write(b"one")
    reactor.advance(0)
    transport.write(b"two")
    reactor.advance(0)
    assert received(peer) == b"onetwo"
    assert not reactor.getDelayedCalls()


def test_what_the_socket_does_not_take_is_sent_when_the_reactor_says_writable(conn):
    transport, peer, reactor, _ = conn
    blob = bytes(range(256)) * 16384  # 4 MiB, more than a socket buffer
    transport.write(blob)
    reactor.advance(0)
    assert transport in reactor.getWriters()  # the rest waits for the reactor
    got = [received(peer)]
    while transport in reactor.getWriters():  # what the reactor would do
        assert transport.doWrite() is None
        got.append(received(peer))
    assert b"".join(got) == blob


def test_a_closing_connection_is_sent_and_closed_by_the_reactor(conn):
    transport, peer, reactor, _ = conn
    transport.write(b"last words")
    transport.loseConnection()
    reactor.advance(0)
    assert transport in reactor.getWriters()
    # the reactor's doWrite sends the buffer, then reports the close
    assert transport.doWrite() is main.CONNECTION_DONE
    assert received(peer) == b"last words"


def test_a_failed_send_is_left_to_the_reactor_to_disconnect(conn):
    transport, peer, reactor, _ = conn
    peer.close()
    transport.write(b"to nobody")
    reactor.advance(0)
    assert transport in reactor.getWriters()
    assert transport.doWrite() is main.CONNECTION_LOST  # what the reactor acts on


def test_a_connection_lost_before_the_turn_ends_sends_nothing(conn):
    transport, peer, reactor, proto = conn
    transport.write(b"too late")
    transport.connectionLost(Failure(error.ConnectionDone()))
    reactor.advance(0)
    assert received(peer) == b""
    assert len(proto.lost) == 1
    assert transport not in reactor.getWriters()


def test_an_aborted_connection_drops_what_it_had_to_send(conn):
    transport, peer, reactor, proto = conn
    transport.write(b"never")
    transport.abortConnection()
    reactor.advance(0)  # the turn ends, then the abort's connectionLost runs
    assert received(peer) == b""
    assert transport not in reactor.getWriters()
    assert len(proto.lost) == 1 and proto.lost[0].check(error.ConnectionAborted)


def test_a_send_that_raises_loses_that_connection_and_the_others_are_still_sent(conn):
    transport, peer, reactor, proto = conn
    mine2, peer2 = socket.socketpair()
    mine2.setblocking(False)
    peer2.setblocking(False)
    try:
        broken, proto2 = None, Recorder()
        broken = TurnFlushServer(mine2, proto2, ("127.0.0.1", 40001), None, 2, reactor)
        proto2.makeConnection(broken)

        def send_raises(data):
            raise RuntimeError("the send broke")

        broken.writeSomeData = send_raises
        broken.write(b"lost")        # first in the turn's list
        transport.write(b"delivered")
        with capturedLogs() as events:
            reactor.advance(0)
        assert received(peer) == b"delivered"
        assert len(proto2.lost) == 1 and proto2.lost[0].check(RuntimeError)
        assert not broken.connected and broken not in reactor.getWriters()
        assert proto.lost == []  # the good connection is still open
        failures = [e for e in events if "log_failure" in e]
        assert len(failures) == 1
        assert failures[0]["log_failure"].check(RuntimeError)
        assert "127.0.0.1:40001" in formatEvent(failures[0])
    finally:
        mine2.close()
        peer2.close()


def test_a_protocol_that_raises_while_told_of_the_loss_stops_nothing_else(conn):
    transport, peer, reactor, proto = conn
    mine2, peer2 = socket.socketpair()
    mine2.setblocking(False)
    try:
        class Raising(Recorder):
            def connectionLost(self, reason):
                raise ValueError("and this too")

        broken = TurnFlushServer(mine2, Raising(), ("127.0.0.1", 40002), None, 3, reactor)
        broken.protocol.makeConnection(broken)
        broken.writeSomeData = lambda data: 1 / 0
        broken.write(b"lost")
        transport.write(b"delivered")
        with capturedLogs() as events:
            reactor.advance(0)  # nothing escapes into the reactor
        assert received(peer) == b"delivered"
        logged = [e["log_failure"].type for e in events if "log_failure" in e]
        assert logged == [ZeroDivisionError, ValueError]
    finally:
        mine2.close()
        peer2.close()


@contextlib.contextmanager
def turn_flush_port(interface: str):
    """A listening TCP port (on a memory reactor) switched over."""
    reactor = MemoryReactorClock()
    port = tcp.Port(0, protocol.Factory(), interface=interface, reactor=reactor)
    port.startListening()
    try:
        assert use_turn_flush(port) is True
        assert port.transport is TurnFlushServer
        yield port, reactor
    finally:
        port.stopListening()
        reactor.advance(0)


def test_connections_of_a_port_on_one_address_share_the_port_address():
    with turn_flush_port("127.0.0.1") as (port, reactor):
        mine, peer = socket.socketpair()  # a local address that is no IPv4 one
        try:
            transport = TurnFlushServer(mine, Recorder(), ("127.0.0.1", 40000), port, 1,
                                        reactor)
            assert transport.getHost() == port.getHost()  # no getsockname asked
        finally:
            mine.close()
            peer.close()


def test_a_port_on_every_address_asks_each_connection_for_its_own():
    with turn_flush_port("0.0.0.0") as (port, reactor):
        assert not hasattr(port, "presence_host")
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        accepted, _ = port.socket.accept()
        try:
            transport = TurnFlushServer(accepted, Recorder(), ("127.0.0.1", 40000), port, 1,
                                        reactor)
            assert transport.getHost().host == "127.0.0.1"
        finally:
            accepted.close()
            client.close()


def test_only_a_plain_tcp_port_is_changed():
    class Other:
        transport = tcp.Server

    assert use_turn_flush(Other()) is False
    assert Other.transport is tcp.Server
