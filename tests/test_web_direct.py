"""The ``Direct`` resource that serves ``POST /chat`` and ``POST /ack``
without Klein: answers at once or later, and a failing handler is a JSON
``500``, never a request left hanging."""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from presence.web.site import Direct


def post(path=b"") -> DummyRequest:
    r = DummyRequest([path] if path else [])
    r.method = b"POST"
    return r


def test_an_immediate_answer_is_returned_in_the_same_turn():
    async def handler(request):
        return b'{"ok": true}'

    assert Direct(handler).render(post()) == b'{"ok": true}'


def test_a_later_answer_is_written_and_finishes_the_request():
    waiting = defer.Deferred()

    async def handler(request):
        return await waiting

    r = post()
    assert Direct(handler).render(r) is NOT_DONE_YET
    assert r.finished == 0
    waiting.callback(b'{"late": 1}')
    assert b"".join(r.written) == b'{"late": 1}' and r.finished == 1


def test_a_failing_handler_is_a_json_500_and_is_logged():
    async def handler(request):
        raise RuntimeError("boom")

    r = post()
    body = Direct(handler).render(r)
    assert r.responseCode == 500
    assert "not carried out" in json.loads(body)["error"]
    assert b"boom" not in body


def test_a_handler_failing_later_still_finishes_the_request():
    waiting = defer.Deferred()

    async def handler(request):
        await waiting
        raise RuntimeError("boom")

    r = post()
    assert Direct(handler).render(r) is NOT_DONE_YET
    waiting.callback(None)
    assert r.responseCode == 500 and r.finished == 1
    assert "error" in json.loads(b"".join(r.written))


def test_wrong_method_and_extra_segments():
    async def handler(request):
        raise AssertionError("not called")

    r = post()
    r.method = b"GET"
    assert Direct(handler).render(r).startswith(b'{"error"') and r.responseCode == 405
    r = post(b"extra")
    assert Direct(handler).render(r).startswith(b'{"error"') and r.responseCode == 404
