"""Self-tests of the integration harness (no server needed): the event-stream
reader's HTTP/chunked/SSE decoding over a real socket pair, and the
require_program rule of tests/conftest.py."""
from __future__ import annotations

import socket

import pytest

from presence_harness import HeartbeatReader, HeartbeatTimeout


def reader_pair() -> tuple[HeartbeatReader, socket.socket]:
    client, server = socket.socketpair()
    return HeartbeatReader(client, "127.0.0.1", 0, "/jchat?test"), server


def chunk(b: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(b), b)


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_reader_decodes_chunked_event_stream_split_anywhere():
    body = (
        "id: 1\ndata: msg chat alice 7\ndata: héllo ✓\ndata: \ndata: third\n\n"
        "\n"  # keep-alive
        "id: 2\ndata: msg update online bob\n\n"
    ).encode("utf-8")
    wire = HEAD + chunk(body[:20]) + chunk(body[20:23]) + chunk(body[23:]) + b"0\r\n\r\n"
    for step in (1, 2, 7, len(wire)):
        r, srv = reader_pair()
        try:
            # feed the whole response in tiny pieces: headers, sizes and UTF-8 cut mid-way
            srv.sendall(wire[:len(HEAD)])
            r._read_headers(1)
            rest = wire[len(HEAD):]
            for i in range(0, len(rest), step):
                srv.sendall(rest[i:i + step])
            f1 = r.next_frame(1)
            f2 = r.next_frame(1)
            assert (f1.id, f1.data) == (1, "msg chat alice 7\nhéllo ✓\n\nthird")
            assert f1.kind == "chat" and f1.words == ["msg", "chat", "alice", "7"]
            assert f1.payload == "héllo ✓\n\nthird"
            assert (f2.id, f2.first_line, f2.kind) == (2, "msg update online bob", "update")
            assert r.keepalives == 1
            assert r.wait_end(1) and r.ended
            assert r.header("content-type") == "text/event-stream; charset=utf-8"
            assert r.header("content-length") is None
        finally:
            r.close()
            srv.close()


def test_reader_timeouts_and_end():
    r, srv = reader_pair()
    try:
        srv.sendall(HEAD)
        r._read_headers(1)
        with pytest.raises(HeartbeatTimeout):
            r.next_frame(0.2)
        assert r.wait_keepalive(0.1) is None
        srv.sendall(chunk(b"\n"))
        assert r.wait_keepalive(1) is not None
        srv.sendall(chunk(b"id: 3\ndata: msg bye logout\n\n") + b"0\r\n\r\n")
        assert r.wait_for("msg bye logout", 1).id == 3
        assert r.wait_end(1)
        with pytest.raises(HeartbeatTimeout, match="ended"):
            r.next_frame(0.2)
    finally:
        r.close()
        srv.close()


def test_reader_error_response_with_content_length():
    r, srv = reader_pair()
    try:
        body = b'{"error": "bad session"}'
        srv.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        r._read_headers(1)
        assert r.status == 403
        resp = r.response(1)
        assert resp.json() == {"error": "bad session"}
        assert r.frames == []
    finally:
        r.close()
        srv.close()


def test_reader_close_delimited_body_and_peer_close():
    r, srv = reader_pair()
    try:
        srv.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\nid: 1\ndata: x\n\n")
        r._read_headers(1)
        assert r.next_frame(1).data == "x"
        srv.close()
        assert r.wait_end(1) and r.eof
    finally:
        r.close()


def test_require_program_skips_or_fails(require_program, monkeypatch):
    assert require_program("sh").endswith("/sh")
    missing = "presence-no-such-program-xyz"
    monkeypatch.delenv("PRESENCE_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_program(missing)
    monkeypatch.setenv("PRESENCE_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="PRESENCE_REQUIRE_ALL=1"):
        require_program(missing)
