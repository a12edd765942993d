"""TCP connections that send what a reactor turn wrote at the end of that turn.

Twisted's TCP transport buffers every ``write`` and asks the reactor to say
when the socket is writable: two ``epoll_ctl`` calls, one more event from
``epoll_wait`` and its dispatch for every response, although a socket whose
buffer is empty is writable at once.  :class:`TurnFlushServer` buffers the
same way, but a connection with data to send joins one list per reactor, and
one call at the end of the turn (``callLater(0)``, which the reactor runs
before it waits again) sends each listed connection's buffer directly.  All
that one turn wrote to a connection still leaves in one ``send``.  What the
socket does not take at once, a failed send and a connection that is closing
are left to the reactor, as for any Twisted transport.  An exception while
sending to one connection is handled as the reactor handles one from
``doWrite``: logged, and that connection lost with the failure; the others
are still sent to.  Measured: 0.1005
against 0.1215 ms of server CPU per chat, a sixth less (docs/benchmarks.md).

It also answers ``getHost()`` without a ``getsockname`` call when the port
listens on one address (not a wildcard): every connection it accepts has
that local address.  Twisted asks for it on every request.

:func:`send_now` sends one write of a held heartbeat straight to its
socket when nothing waits in the connection's buffer (the fan-out's frames:
one ``send`` each, made inside the fan-out's slice, no list and no flush).

:func:`use_turn_flush` turns a listening TCP port over to these connections
(Twisted's documented hook: a port builds its connections with its
``transport`` attribute).
"""

from __future__ import annotations

import errno
from typing import Any, Dict

from twisted.internet import address, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: hosts of a port that listens on every address
WILDCARDS = ("", "0.0.0.0", "::")


class _TurnQueue:
    """The connections of one reactor that were written to in this turn."""

    __slots__ = ("reactor", "pending")

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        #: in the order they were first written to (a dict keeps it, no
        #: duplicates: a connection written to twice is sent to once)
        self.pending: Dict["TurnFlushServer", None] = {}

    def add(self, transport: "TurnFlushServer") -> None:
        if not self.pending:
            self.reactor.callLater(0, self.flush)
        self.pending[transport] = None

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for transport in pending:
            try:
                transport._flushTurn()
            except Exception:
                # as the reactor does when a doWrite raises: log it, lose
                # that connection with the failure, go on with the others
                failure = Failure()
                log.failure("sending at the end of the turn failed; closing {peer}",
                            failure, peer=_peer(transport))
                _lose(transport, failure)


def _peer(transport: "TurnFlushServer") -> str:
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"


def _lose(transport: "TurnFlushServer", failure: Failure) -> None:
    """``connectionLost(failure)``, which stops reading and writing, closes
    the socket and tells the protocol (the reactor's
    ``_disconnectSelectable`` for a write); an error there is logged too."""
    try:
        transport.connectionLost(failure)
    except Exception:
        log.failure("closing {peer} after a failed send", peer=_peer(transport))


#: one queue per reactor (there is one reactor in a server; tests make more)
_queues: Dict[Any, _TurnQueue] = {}


class TurnFlushServer(tcp.Server):
    """A server-side TCP connection whose writes leave at the end of the
    reactor turn that made them (see the module's docstring)."""

    def startWriting(self) -> None:
        # called by write(), writeSequence() and loseConnection(); only a
        # plain write is ours, and loseConnection() sets ``disconnecting``
        # after this call, which the flush checks again
        if self.disconnecting or self._writeDisconnecting:
            tcp.Server.startWriting(self)
            return
        queue = _queues.get(self.reactor)
        if queue is None:
            queue = _queues[self.reactor] = _TurnQueue(self.reactor)
        queue.add(self)

    def _flushTurn(self) -> None:
        if not self.connected or self._aborting:
            return  # lost or aborted meanwhile: nothing to send
        if self.disconnecting or self._writeDisconnecting:
            tcp.Server.startWriting(self)  # the reactor sends the rest, then closes
            return
        if not self.dataBuffer and not self.producerPaused and (
                self.producer is None or self.streamingProducer):
            # all is in this turn's list: one send, and when the socket takes
            # it all, nothing more (what doWrite does, without its slicing,
            # joining into dataBuffer and stopWriting)
            parts = self._tempDataBuffer
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            sent = self.writeSomeData(data)  # a failure: doWrite meets it again, reports it
            if type(sent) is int and sent >= 0:
                self._tempDataBuffer = []
                self._tempDataLen = 0
                if sent < len(data):
                    # the rest is the reactor's, sent when the socket is writable
                    self.dataBuffer = data
                    self.offset = sent
                    tcp.Server.startWriting(self)
                return
        failed = self.doWrite()  # stops writing (a no-op here) once all is sent
        if failed is not None or self.dataBuffer or self._tempDataLen:
            # the rest, or the failure, is the reactor's: it calls doWrite
            # again when the socket is writable and disconnects on failure
            tcp.Server.startWriting(self)

    def getHost(self):
        host = getattr(self.server, "presence_host", None)
        if host is not None:
            return host
        return tcp.Server.getHost(self)


#: send errors that mean "not now": the bytes are buffered, the reactor sends
#: them when the socket is writable
_NOT_NOW = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


def direct(transport: Any) -> Any:
    """``transport`` if :func:`send_now` may write to it (a TCP connection
    of Twisted's, ours or its own kind), else ``None`` (TLS, UNIX sockets,
    the test doubles): those keep Twisted's write path."""
    return transport if isinstance(transport, tcp.Connection) and \
        hasattr(transport, "socket") else None


def send_now(transport: tcp.Connection, data: bytes) -> bool:
    """Send ``data`` on ``transport``'s socket at once when nothing waits in
    its buffer; what the socket does not take goes to ``transport.write`` (so
    it is sent when the socket is writable, ahead of anything written later:
    the bytes keep their order).  ``False``, and nothing done, when the connection has
    data waiting (the bytes must go behind it), is closing or closed, or the
    send failed for another reason than "not now" (``transport.write`` then
    meets the failure and loses the connection, as Twisted does).

    The held heartbeats' frames: one ``send`` while the frame is built, not a
    buffer, a place on the turn's list and a ``doWrite`` at the end of the
    turn (``_TurnQueue``), nor Twisted's ``epoll`` register, wake-up and
    unregister (docs/architecture.md, "Large groups")."""
    if (transport.dataBuffer or transport._tempDataLen or not transport.connected
            or transport.disconnecting or transport._writeDisconnecting
            or transport._writeDisconnected or transport._aborting):
        return False
    try:
        sent = transport.socket.send(data)
    except OSError as e:
        if e.errno not in _NOT_NOW:
            return False
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])
    return True


def use_turn_flush(port: Any) -> bool:
    """Have the listening TCP ``port`` make :class:`TurnFlushServer`
    connections.  ``False``, and nothing changed, for any other port."""
    if not isinstance(port, tcp.Port) or port.transport is not tcp.Server:
        return False
    host = port.getHost()
    if isinstance(host, (address.IPv4Address, address.IPv6Address)) and \
            host.host not in WILDCARDS:
        port.presence_host = host
    port.transport = TurnFlushServer
    return True
