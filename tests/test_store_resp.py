"""presence/store/resp.py: Redis replies read in one pass give exactly what
txredisapi's own parser gives, whole or cut anywhere, in one call (no
reactor turn per bulk string)."""

from __future__ import annotations

import random
from typing import Any, List

import pytest
import txredisapi
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from presence.store.resp import FastReplies, Reader, fast_protocol

STREAM = (
    b"+OK\r\n"
    b"+QUEUED\r\n"
    b"-ERR unknown command 'FOO'\r\n"
    b"-NOSCRIPT No matching script\r\n"
    b":42\r\n"
    b":-7\r\n"
    b"$5\r\nhello\r\n"
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b"$4\r\n\xff\x00\r\n\r\n"
    b"*0\r\n"
    b"*-1\r\n"
    b"*3\r\n$7\r\nmessage\r\n$13\r\npresence:to:a\r\n$15\r\n[{\"e\":\"frame\"}]\r\n"
    b"*2\r\n*2\r\n$1\r\na\r\n:1\r\n*3\r\n$-1\r\n+OK\r\n-ERR x\r\n"
    b"*2\r\n$1\r\n0\r\n*4\r\n$2\r\ns1\r\n$3\r\n{1}\r\n$2\r\ns2\r\n$3\r\n{2}\r\n"
)


def _shown(reply: Any) -> Any:
    """Replies compared by value (errors by class and text)."""
    if isinstance(reply, list):
        return [_shown(r) for r in reply]
    if isinstance(reply, Exception):
        return (type(reply).__name__, str(reply))
    return reply


def _txredisapi_replies(chunks: List[bytes]) -> list:
    clock = Clock()
    proto = txredisapi.BaseRedisProtocol(charset=None, convertNumbers=False)
    proto.callLater = clock.callLater        # its parser resumes in later turns
    proto.transport = StringTransport()
    got: list = []
    proto.replyReceived = got.append
    for chunk in chunks:
        proto.dataReceived(chunk)
        for _ in range(1000):
            clock.advance(0)
    return [_shown(r) for r in got]


def _fast_replies(chunks: List[bytes]) -> list:
    proto = fast_protocol()(charset=None, convertNumbers=False)
    proto.transport = None
    got: list = []
    proto.replyReceived = got.append
    for chunk in chunks:
        proto.dataReceived(chunk)        # no clock: all in the call
    return [_shown(r) for r in got]


def test_the_same_replies_as_txredisapis_parser_in_one_call():
    expected = _txredisapi_replies([STREAM])
    assert len(expected) == 15
    assert _fast_replies([STREAM]) == expected
    assert expected[:6] == ["OK", "QUEUED", ("ResponseError", "ERR unknown command 'FOO'"),
                            ("ResponseError", "NOSCRIPT No matching script"), 42, -7]
    assert expected[6:12] == [b"hello", b"", None, b"\xff\x00\r\n", [], None]


@pytest.mark.parametrize("seed", range(20))
def test_replies_cut_anywhere(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 30)))
    chunks = [STREAM[i:j] for i, j in zip([0] + cuts, cuts + [len(STREAM)])]
    assert _fast_replies(chunks) == _txredisapi_replies([STREAM])


def test_the_reader_alone():
    reader = Reader(lambda b: b, ValueError)
    assert reader.gets() is False
    reader.feed(b"*2\r\n$3\r\nab")
    assert reader.gets() is False
    reader.feed(b"c\r\n:5\r\n+x")
    assert reader.gets() == [b"abc", 5]
    assert reader.gets() is False
    reader.feed(b"\r\n")
    assert reader.gets() == "x" and reader.gets() is False
    reader.feed(b"?junk\r\n")
    with pytest.raises(ValueError):
        reader.gets()


def test_a_large_reply_in_small_pieces_and_the_buffer_compacted():
    body = b"".join(b"$3\r\n%03d\r\n" % (i % 1000) for i in range(5000))
    data = b"*5000\r\n" + body + b":1\r\n"
    reader = Reader(lambda b: b, ValueError)
    replies = []
    for i in range(0, len(data), 4096):
        reader.feed(data[i:i + 4096])
        while (r := reader.gets()) is not False:
            replies.append(r)
    assert len(replies) == 2 and len(replies[0]) == 5000 and replies[1] == 1
    assert len(reader._buf) == 0


def test_the_subscribers_messages_arrive_in_one_call():
    sub = type("Sub", (FastReplies, txredisapi.SubscriberProtocol), {})(
        charset=None, convertNumbers=False)
    sub.transport = None
    got = []
    sub.messageReceived = lambda pattern, channel, message: got.append((channel, message))
    sub.dataReceived(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nm1\r\n"
                     b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nm2\r\n")
    assert got == [(b"c", b"m1"), (b"c", b"m2")]

