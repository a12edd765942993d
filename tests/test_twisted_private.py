"""Every private Twisted name the server relies on, checked in one place so
that a Twisted upgrade that moves one fails here, loudly, by name, instead of
slowing the server down or breaking it quietly.

For each: where the code uses it, and what it relies on.  A test checks
that the name exists and, where cheap, that Twisted still uses it the way
the code assumes (its source refers to it, or its behaviour shows it).
``tox -e twisted-latest`` and ``.ci/run`` run this module against the newest
Twisted release.

Found with ``grep -rn "\\._[a-z]" presence | grep -v "self\\._"`` and by
reading what ``presence`` overrides or assigns on Twisted objects.
"""

from __future__ import annotations

import inspect
import socket

import pytest
from twisted.internet import abstract, endpoints, protocol, tcp
from twisted.internet.testing import MemoryReactorClock
from twisted.python import components, threadpool
from twisted.web import client, http, server
from twisted.web.test.requesthelper import DummyChannel

from presence import threads
from presence.endpoint_option import _ParseOnly


def source(obj) -> str:
    return inspect.getsource(obj)


# -- presence/threads.py: ThreadPool._team -------------------------------------

def test_threadpool_hands_its_work_to_team_do():
    """``Pool.callInThreadWithCallback`` calls ``self._team.do(callable)``
    as ``ThreadPool``'s does, with a callable of its own."""
    pool = threadpool.ThreadPool(0, 1)
    assert callable(pool._team.do)
    assert "self._team.do(" in source(threadpool.ThreadPool.callInThreadWithCallback)
    assert hasattr(pool, "joined")


def test_the_pool_runs_its_fast_path_on_this_twisted(monkeypatch):
    pool = threads.Pool(0, 1)
    done = []
    monkeypatch.setattr(threadpool.ThreadPool, "callInThreadWithCallback",
                        lambda *a, **kw: pytest.fail("fell back to Twisted's own"))
    pool.start()
    try:
        import threading
        ran = threading.Event()

        def on_result(ok, result):
            done.append((ok, result))
            ran.set()

        pool.callInThreadWithCallback(on_result, lambda: 42)
        assert ran.wait(10)
    finally:
        pool.stop()
    assert done == [(True, 42)]


def test_without_team_the_pool_falls_back_and_warns_once(monkeypatch):
    from twisted.logger import capturedLogs, formatEvent

    calls = []
    monkeypatch.setattr(threadpool.ThreadPool, "callInThreadWithCallback",
                        lambda self, *a, **kw: calls.append(a))
    monkeypatch.setattr(threads, "_warned", [])
    pool = threads.Pool(0, 1)
    del pool._team  # a Twisted laid out otherwise
    with capturedLogs() as events:
        pool.callInThreadWithCallback(None, print, 1)
        pool.callInThreadWithCallback(None, print, 2)
    assert len(calls) == 2  # Twisted's own method did the work
    warnings = [formatEvent(e) for e in events if "_team" in formatEvent(e)]
    assert len(warnings) == 1


def test_the_context_tracker_still_has_a_context_stack():
    from twisted.python import context

    assert isinstance(context.theContextTracker.currentContext().contexts, list)


# -- presence/web/transport.py: tcp.Server and tcp.Port ------------------------

@pytest.fixture
def server_connection():
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    reactor = MemoryReactorClock()
    conn = tcp.Server(mine, protocol.Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    yield conn
    mine.close()
    peer.close()


@pytest.mark.parametrize("name", ["_writeDisconnecting", "_tempDataLen", "_aborting",
                                  "dataBuffer", "disconnecting", "connected",
                                  "_writeDisconnected", "socket", "_tempDataBuffer",
                                  "offset", "producerPaused", "streamingProducer",
                                  "producer"])
def test_a_tcp_server_connection_has_the_state_the_turn_flush_reads(server_connection, name):
    assert hasattr(server_connection, name), name


def test_filedescriptor_write_buffers_as_the_turn_flush_assumes():
    # write() buffers in _tempData and asks startWriting; doWrite sends it
    write = source(abstract.FileDescriptor.write)
    assert "_tempDataLen" in write and "startWriting()" in write
    assert "_tempDataLen" in source(abstract.FileDescriptor.doWrite)
    assert "_writeDisconnecting" in source(abstract.FileDescriptor.doWrite)
    assert "_aborting" in source(tcp.Connection.abortConnection) or \
        "_aborting" in source(abstract.FileDescriptor)


def test_an_empty_buffer_is_what_send_now_takes_it_to_be():
    """``send_now`` sends directly only when ``dataBuffer`` is empty (falsy)
    and ``_tempDataLen`` is 0: ``doWrite`` resets ``dataBuffer`` to ``b""``
    once all is sent, and ``write`` drops data on a half-closed connection
    (``_writeDisconnected``), which ``send_now`` declines likewise."""
    do_write = source(abstract.FileDescriptor.doWrite)
    assert 'self.dataBuffer = b""' in do_write
    assert "_writeDisconnected" in source(abstract.FileDescriptor.write)
    assert "self.socket.send" in source(tcp.Connection.writeSomeData)
    # the turn's flush empties the list buffer itself, as doWrite does
    assert "self._tempDataBuffer = []" in do_write
    assert "self.offset" in do_write


def test_a_chunked_response_is_written_as_send_now_frames_it():
    """The heartbeat writes ``b"%x\\r\\n" + data + b"\\r\\n"`` itself, and counts
    ``sentLength``, as ``Request.write`` does for a chunked response."""
    assert b"".join(http.toChunk(b"abc")) == b"3\r\nabc\r\n"
    write = source(http.Request.write)
    for name in ("self.chunked", "self.sentLength", "self._disconnected", "toChunk",
                 "startedWriting"):
        assert name in write, name


def test_a_port_builds_connections_from_its_transport_attribute():
    assert tcp.Port.transport is tcp.Server
    assert "self.transport(" in source(tcp.Port.doRead)


# -- presence/web/http.py ------------------------------------------------------

def test_http_escape_quotes_for_the_combined_log():
    assert http._escape(b'a"b') == 'a\\"b'
    assert "_escape" in source(http.combinedLogFormatter)


def test_request_parses_post_forms_only_when_told():
    """``BoundedRequest.requestReceived`` sets ``_parsePOSTFormSubmission``
    to ``False`` to skip Twisted's Content-Type parsing."""
    assert http.Request(DummyChannel())._parsePOSTFormSubmission is True
    assert "_parsePOSTFormSubmission" in source(http.Request.requestReceived)


def test_requests_keep_their_adapters_in_adapter_cache():
    assert issubclass(server.Request, components.Componentized)
    assert components.Componentized()._adapterCache == {}
    assert "_adapterCache" in source(components.Componentized.setComponent)


def test_httpfactory_opens_its_log_file_with_open_log_file():
    assert callable(http.HTTPFactory._openLogFile)
    assert "_openLogFile" in source(http.HTTPFactory.startFactory)


def test_a_request_knows_it_was_disconnected():
    request = server.Request(DummyChannel())
    assert request._disconnected is False
    assert "_disconnected = True" in source(http.Request.connectionLost)


# -- presence/web/heartbeat.py: the attributes _slim replaces --------------------

SLIMMED = ["args", "requestHeaders", "responseHeaders", "content", "prepath", "postpath",
           "sitepath", "cookies", "notifications", "client", "host"]


@pytest.mark.parametrize("name", SLIMMED)
def test_a_request_has_each_attribute_slim_replaces(name):
    from twisted.web.resource import Resource

    class Held(Resource):
        isLeaf = True

        def render(self, request):
            return server.NOT_DONE_YET  # held, as a heartbeat is

    channel = DummyChannel()
    channel.site = server.Site(Held())
    request = server.Request(channel)
    request.gotLength(0)  # what the channel does: makes ``content``
    request.requestReceived(b"GET", b"/jchat?me=a", b"HTTP/1.1")
    assert name in vars(request), name  # an attribute of its own, replaceable


def test_the_access_log_line_needs_none_of_what_slim_drops():
    # the masked formatter reads method, uri, code, sentLength, clientproto and
    # the headers for referer and agent: Twisted's formatter reads the same
    text = source(http.combinedLogFormatter)
    for name in ("request.method", "request.uri", "request.code", "request.sentLength",
                 "request.clientproto"):
        assert name in text, name


# -- presence/endpoint_option.py: the endpoint's port ----------------------------

@pytest.mark.parametrize("description, port", [
    ("tcp:8080", 8080), ("tcp6:8081", 8081), ("tcp:99999", 99999),
])
def test_tcp_endpoints_keep_their_port_number_as_port(description, port):
    assert endpoints.serverFromString(_ParseOnly(), description)._port == port


def test_ssl_endpoints_keep_their_port_number_as_port_too():
    endpoint = endpoints.SSL4ServerEndpoint(MemoryReactorClock(), 70000, sslContextFactory=None)
    assert endpoint._port == 70000


# -- presence/client/heartbeat.py: the connection pool's factory --------------------

def test_the_connection_pool_builds_connections_with_its_factory():
    assert issubclass(client._HTTP11ClientFactory, protocol.Factory)
    pool = client.HTTPConnectionPool(MemoryReactorClock())
    assert pool._factory is client._HTTP11ClientFactory
    assert "self._factory(" in source(client.HTTPConnectionPool._newConnection)
