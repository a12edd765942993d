"""``send_now``: a held heartbeat's frame goes to its socket at once when
nothing waits in the connection's buffer, and through Twisted's buffer
otherwise; whatever the socket does not take, and every failure, stay
Twisted's (presence/web/transport.py, docs/architecture.md "Large groups").

Real loopback TCP sockets stand for the connections, with sockets that take
part of a send, refuse it (EAGAIN) or fail wrapped around them; the reactor
is a ``MemoryReactorClock`` (its ``advance(0)`` ends the turn)."""

from __future__ import annotations

import errno
import socket

import pytest
from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport

from helpers import (  # noqa: F401  (fixtures)
    RawConnection, dechunk, logged_errors, parse_stream, split_response, world,
)
from presence.web.transport import TurnFlushServer, direct, send_now
from test_web_transport import received


def tcp_pair():
    """A connected loopback TCP pair: (server side, client side), non-blocking."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    mine, _ = listener.accept()
    listener.close()
    mine.setblocking(False)
    client.setblocking(False)
    return mine, client


class Socket:
    """A real socket whose ``send`` can be told to take only ``take`` bytes,
    or to raise ``fail`` (an errno)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.take = None
        self.fail = None
        self.sends = []

    def send(self, data) -> int:
        self.sends.append(bytes(data))
        if self.fail is not None:
            raise OSError(self.fail, errno.errorcode.get(self.fail, "?"))
        if self.take is not None:
            data = bytes(data)[:self.take]
        return self.sock.send(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.fixture
def conn():
    mine, peer = tcp_pair()
    reactor = MemoryReactorClock()
    proto = protocol.Protocol()
    transport = TurnFlushServer(mine, proto, ("127.0.0.1", 40000), None, 1, reactor)
    proto.makeConnection(transport)
    wrapped = transport.socket = Socket(mine)
    yield transport, peer, reactor, wrapped
    mine.close()
    peer.close()


def test_an_empty_connection_is_sent_to_at_once(conn):
    transport, peer, reactor, sock = conn
    assert send_now(transport, b"id: 1\n") is True
    assert send_now(transport, b"id: 2\n") is True
    assert received(peer) == b"id: 1\nid: 2\n"  # before the turn ends
    assert sock.sends == [b"id: 1\n", b"id: 2\n"]
    # nothing buffered, nothing asked of the reactor
    assert transport.dataBuffer == b"" and transport._tempDataLen == 0
    assert transport not in reactor.getWriters()
    assert not reactor.getDelayedCalls()


def test_behind_buffered_data_it_declines_and_order_is_kept(conn):
    transport, peer, reactor, sock = conn
    transport.write(b"headers\r\n")          # waits for the end of the turn
    assert send_now(transport, b"frame") is False
    assert sock.sends == []                  # the caller writes it through the buffer
    transport.write(b"frame")
    reactor.advance(0)
    assert received(peer) == b"headers\r\nframe"
    assert send_now(transport, b"next") is True  # the buffer is empty again
    assert received(peer) == b"next"


def test_what_a_partial_send_leaves_goes_through_the_buffer_in_order(conn):
    transport, peer, reactor, sock = conn
    sock.take = 3
    assert send_now(transport, b"abcdefgh") is True
    assert received(peer) == b"abc"
    assert transport._tempDataLen == 5
    # a later frame must not overtake the rest: declined while it waits
    assert send_now(transport, b"XYZ") is False
    transport.write(b"XYZ")
    sock.take = None
    reactor.advance(0)                       # the turn's flush sends the rest
    assert received(peer) == b"defghXYZ"
    assert send_now(transport, b"!") is True
    assert received(peer) == b"!"


def test_a_send_the_socket_refuses_for_now_is_buffered(conn):
    transport, peer, reactor, sock = conn
    sock.fail = errno.EAGAIN
    assert send_now(transport, b"later") is True
    assert received(peer) == b""
    assert transport._tempDataLen == 5
    sock.fail = None
    reactor.advance(0)
    assert received(peer) == b"later"


@pytest.mark.parametrize("code", [errno.EPIPE, errno.ECONNRESET])
def test_a_failed_send_is_declined_and_left_to_twisted(conn, code):
    transport, peer, reactor, sock = conn
    sock.fail = code
    assert send_now(transport, b"lost") is False
    assert transport._tempDataLen == 0       # nothing taken: the caller's write
    transport.write(b"lost")                 # meets the failure as Twisted does
    reactor.advance(0)
    assert transport in reactor.getWriters()  # the reactor's doWrite disconnects
    assert transport.doWrite() is not None


@pytest.mark.parametrize("how", ["loseConnection", "abortConnection", "connectionLost"])
def test_a_closing_or_closed_connection_is_declined(conn, how):
    transport, peer, reactor, sock = conn
    if how == "connectionLost":
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone
        transport.connectionLost(Failure(ConnectionDone()))
    else:
        getattr(transport, how)()
    assert send_now(transport, b"no") is False
    assert sock.sends == []


def test_only_tcp_connections_are_written_directly():
    assert direct(StringTransport()) is None
    assert direct(None) is None
    mine, peer = tcp_pair()
    try:
        conn = tcp.Server(mine, protocol.Protocol(), ("127.0.0.1", 1), None, 1,
                          MemoryReactorClock())
        assert direct(conn) is conn
    finally:
        mine.close()
        peer.close()


# -- the heartbeat over a real connection --------------------------------------------

@pytest.fixture
def held(world):
    """alice's heartbeat held on a real loopback TCP connection."""
    mine, peer = tcp_pair()
    reactor = MemoryReactorClock()
    transport = TurnFlushServer(mine, None, ("127.0.0.1", 40000), None, 1, reactor)
    transport.socket = sock = Socket(mine)
    alice = world.user("alice")
    conn = RawConnection(world.site, transport=transport)
    transport.protocol = conn.protocol
    conn.protocol.dataReceived(f"GET /jchat?me=alice&id={alice.session} HTTP/1.1\r\n"
                               "Host: presence.test\r\n\r\n".encode())
    yield world, alice, transport, peer, reactor, sock
    mine.close()
    peer.close()


def chats(raw: bytes):
    """(id, text) of the chat events in a chunked body."""
    events = parse_stream(dechunk(raw))[0]
    return [(e.id, e.text.split("\n")[1]) for e in events if e.head.startswith("msg chat")]


def headers_sent(peer, reactor, sock) -> None:
    reactor.advance(0)                       # the headers leave at the end of the turn
    status, headers, body = split_response(received(peer))
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b""
    sock.sends.clear()


def test_frames_after_the_headers_are_sent_at_once_as_chunks(held):
    world, alice, transport, peer, reactor, sock = held
    headers_sent(peer, reactor, sock)
    bob = world.user("bob")
    bob.post("/chat", to="alice", msg="one")
    bob.post("/chat", to="alice", msg="two")
    raw = received(peer)                     # no turn ended: sent directly
    assert len(sock.sends) == 2 and not reactor.getDelayedCalls()
    # each send is one whole chunk: size line, the event, CRLF
    for data in sock.sends:
        size, _, rest = data.partition(b"\r\n")
        assert int(size, 16) == len(rest) - 2 and rest.endswith(b"\n\n\r\n")
    assert chats(raw) == [(1, "one"), (2, "two")]
    request = alice.hub_session.channel.request
    assert request.sentLength == len(dechunk(raw))  # the access log's length


def test_a_frame_in_the_turn_of_the_headers_goes_behind_them(held):
    world, alice, transport, peer, reactor, sock = held
    world.user("bob").post("/chat", to="alice", msg="early")   # headers still buffered
    assert sock.sends == []
    reactor.advance(0)
    status, _, body = split_response(received(peer))
    assert status == 200
    assert chats(body) == [(1, "early")]


def test_after_a_partial_send_frames_keep_their_order(held):
    world, alice, transport, peer, reactor, sock = held
    headers_sent(peer, reactor, sock)
    bob = world.user("bob")
    sock.take = 7
    bob.post("/chat", to="alice", msg="first")
    sock.take = None
    bob.post("/chat", to="alice", msg="second")               # behind the rest
    bob.post("/chat", to="alice", msg="third")
    assert len(sock.sends) == 1              # the others were buffered behind the rest
    reactor.advance(0)
    assert chats(received(peer)) == [(1, "first"), (2, "second"), (3, "third")]


def test_a_failing_send_ends_the_heartbeat_and_the_frame_comes_again(held):
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    world, alice, transport, peer, reactor, sock = held
    headers_sent(peer, reactor, sock)
    sock.fail = errno.ECONNRESET
    reply = world.user("bob").post("/chat", to="alice", msg="are you there?")
    assert reply.status == 202
    reactor.advance(0)                        # Twisted's write path meets the failure
    assert transport in reactor.getWriters()
    assert transport.doWrite() is not None    # what the reactor acts on: it disconnects
    transport.connectionLost(Failure(ConnectionLost()))
    assert world.hub.held == 0
    # never acknowledged: the next heartbeat of the session has it again
    back = alice.heartbeat()
    assert [e.text.split("\n")[1] for e in back.events() if e.head.startswith("msg chat")] \
        == ["are you there?"]
