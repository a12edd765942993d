"""No reference cycles per connection or per request (tier 1, in memory).

``presence.gcpolicy`` freezes long-lived objects (``gc.freeze()``); a frozen
object that later becomes cyclic garbage is never reclaimed.  So the life of
a session must leave no cyclic garbage: login on a keep-alive connection, a
heartbeat that the client drops, one that a newer heartbeat replaces, chat
and acknowledgements, logout releasing the held heartbeat.  Everything must
be freed by reference counting alone.

Each test runs its scenario once to warm caches up, then ``N`` more times
with the collector disabled, and then collects with ``gc.DEBUG_SAVEALL``:
whatever the collector finds is cyclic garbage the scenario made.  A cycle
reintroduced (a bound method of the request stored on the request, a
closure over it kept on a long-lived object, a Failure with its traceback
kept by a frame it refers to, ...) fails here with the types involved.

Routes served through Klein (all of ``/api`` except the per-session ones in
``presence.web.site.DIRECT_API``) do leave a cycle per request, inside
Klein's ``KleinResource.render``; they are short-lived and are not tested.
"""

from __future__ import annotations

import gc
import json
import threading
from collections import Counter
from typing import Callable, List, Tuple
from urllib.parse import urlencode

import pytest

from helpers import RawConnection, World, dechunk, split_response
from presence.threads import Pool, _Call

N = 20


def cyclic_garbage(scenario: Callable[[int], None], n: int = N) -> List[object]:
    """The objects that only the cyclic collector would have freed after
    ``n`` runs of ``scenario`` (after one run to warm up)."""
    scenario(-1)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.garbage.clear()
    gc.disable()
    try:
        for i in range(n):
            scenario(i)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
    finally:
        gc.set_debug(0)
        if was_enabled:
            gc.enable()
    found = list(gc.garbage)
    gc.garbage.clear()
    return found


def describe(garbage: List[object]) -> str:
    kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage)
    return ", ".join(f"{count} {kind}" for kind, count in kinds.most_common(15))


def assert_no_cycles(garbage: List[object]) -> None:
    ours = [o for o in garbage
            if type(o).__module__.startswith(("presence.", "twisted.", "klein.", "treq."))]
    assert not ours, f"cyclic garbage of our classes: {describe(ours)}"
    assert not garbage, f"cyclic garbage: {describe(garbage)}"


# -- HTTP over the real PresenceSite (BoundedRequest, HTTPChannel) ---------------------

class Conn(RawConnection):
    def __init__(self, world: World, port: int) -> None:
        super().__init__(world.site, peer=("127.0.0.1", port))

    def request(self, method: str, path: str, json_body: object = None,
                **form: str) -> Tuple[int, bytes]:
        self.transport.clear()
        head = f"{method} {path} HTTP/1.1\r\nHost: presence.test\r\n"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        elif form:
            body = urlencode(form).encode()
            head += ("Content-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {len(body)}\r\n")
        else:
            body = b""
        raw = self.send(head.encode() + b"\r\n" + body)
        status, headers, content = split_response(raw)
        if headers.get("transfer-encoding") == "chunked":
            content = dechunk(content)
        return status, content

    def close(self) -> None:
        super().close()
        # as a real transport (tcp.Server) does once its connection is lost:
        # it forgets its producer, the HTTPChannel
        if self.transport.producer is not None:
            self.transport.unregisterProducer()

    def hold(self, path: str) -> None:
        self.transport.clear()
        raw = self.send(f"GET {path} HTTP/1.1\r\nHost: presence.test\r\n\r\n".encode())
        assert split_response(raw)[0] == 200, raw


@pytest.fixture
def world() -> World:
    w = World()
    w.user("alice")
    w.user("bob")
    return w


def test_a_session_life_leaves_no_cycles(world):
    bob = world.login("bob")
    bob_hb = Conn(world, 39999)
    bob_hb.hold(f"/jchat?me=bob&id={bob.session}")

    def life(i: int) -> None:
        port = 40000 + 10 * (i + 1)
        api = Conn(world, port)
        status, body = api.request("POST", "/api/login", username="alice",
                                   password="correct horse")
        assert status == 200, body
        sid = json.loads(body)["session"]
        me = {"me": "alice", "id": sid}
        beat = f"/jchat?me=alice&id={sid}"
        dropped = Conn(world, port + 1)
        dropped.hold(beat)
        dropped.close()                                  # lost while held
        first = Conn(world, port + 2)
        first.hold(beat)
        assert api.request("POST", "/chat", to="bob", msg=f"hi {i}", **me)[0] == 202
        assert api.request("POST", "/ack", ack="1", **me)[0] == 204
        second = Conn(world, port + 3)
        second.hold(beat)                                # releases the first
        first.close()
        assert api.request("POST", "/api/logout", **me)[0] == 204   # releases the second
        second.close()
        api.close()
        assert world.hub.session(sid) is None

    assert_no_cycles(cyclic_garbage(life))
    assert world.hub.held == 1


def test_chat_and_ack_on_a_keep_alive_connection_leave_no_cycles(world):
    alice, bob = world.login("alice"), world.login("bob")
    held = Conn(world, 39999)
    held.hold(f"/jchat?me=bob&id={bob.session}")
    api = Conn(world, 40000)
    me = {"me": "alice", "id": alice.session}

    def chat(i: int) -> None:
        assert api.request("POST", "/chat", to="bob", msg=f"hi {i}", seq=str(i + 1), **me)[0] == 202
        assert api.request("POST", "/ack", ack=str(i + 2), **me)[0] == 204
        assert api.request("POST", "/chat", to="nobody-here", msg="x", **me)[0] == 404
        # a JSON body: Twisted would parse its Content-Type with the e-mail
        # package, which makes a new class (cyclic garbage) every time
        assert api.request("POST", "/chat", json_body={"to": "bob", "msg": "json", **me})[0] == 202

    assert_no_cycles(cyclic_garbage(chat, n=50))


def test_guest_and_register_leave_no_cycles(world):
    def account(i: int) -> None:
        api = Conn(world, 41000 + i + 1)
        status, body = api.request("POST", "/api/register", username=f"user{i + 1}",
                                   password="correct horse")
        assert status == 201, body
        status, body = api.request("POST", "/api/guest")
        assert status == 200, body
        guest = json.loads(body)
        assert api.request("POST", "/api/logout", me=guest["username"],
                           id=guest["session"])[0] == 204
        api.close()

    assert_no_cycles(cyclic_garbage(account))


# -- SIP transactions ---------------------------------------------------------------

def test_sip_calls_leave_no_cycles_in_the_proxy(world):
    """A call through the SIP proxy, forked to two tunnel sessions: its
    transactions and their context refer to each other until all ended.
    (The tunnel's test client, StubTreq over a plain Site, leaves cycles of
    its own: only the proxy's objects are checked.)"""
    from test_sip_proxy import CALLER, Tunnel
    from presence.sip import proxy as proxy_mod
    from presence.sip.message import Response
    from presence.sip.proxy import SipProxy
    from presence.sip.testing import FakeNetwork, answer, invite, request
    from presence.sip.web import SipTunnelResource

    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    world.site.resource.mount(b"sip", SipTunnelResource(world.service, proxy))
    world.register("carol")
    first = Tunnel(world, "carol", world.login("carol"))
    second = Tunnel(world, "carol", world.login("carol"))
    world.register("dave")
    dave = Tunnel(world, "dave", world.login("dave"))

    def codes() -> List[int]:
        return [m.code for m, _ in net.take() if isinstance(m, Response)]

    def calls(i: int) -> None:
        # forked to carol's two sessions and declined by both, the second
        # after the first branch has ended: the best final response goes back
        inv = invite("sip:carol@example.org")
        proxy.received(inv.to_bytes(), CALLER)
        a, b = first.one(), second.one()
        first.ok(answer(a.message, 486))
        world.clock.advance(1)
        second.ok(answer(b.message, 404))
        assert codes()[-1] == 486
        proxy.received(request("ACK", "sip:carol@example.org", call_id=inv.call_id,
                               to_tag="x", branch_id=inv.top_via().branch).to_bytes(), CALLER)
        # dave answers, then the caller hangs up
        inv = invite("sip:dave@example.org")
        proxy.received(inv.to_bytes(), CALLER)
        dave.ok(answer(dave.one().message, 200, contact="<sip:dave@127.0.0.1:5080>"))
        proxy.received(request("BYE", "sip:dave@example.org", call_id=inv.call_id, cseq=2,
                               to_tag="callee1").to_bytes(), CALLER)
        dave.ok(answer(dave.one().message, 200))
        assert codes()[-2:] == [200, 200]
        world.clock.advance(proxy_mod.TIMER_C + 1)   # every transaction ends
        stats = proxy.stats()
        assert stats["server_transactions"] == stats["client_transactions"] == 0

    garbage = cyclic_garbage(calls, n=10)
    proxy.stop()
    ours = [o for o in garbage if type(o).__module__.startswith("presence.")]
    assert not ours, f"cyclic garbage of the SIP proxy: {describe(ours)}"


# -- the thread pool of the store and of password hashing ------------------------------

def test_sip_registrations_leave_no_cycles_in_the_registrar(world):
    """A phone registers (401, 200: a presence source opens), a call forks
    to it, it unregisters (the source ends), and a binding expires: none
    of the registrar's or the digest's objects needs the cyclic collector."""
    from types import SimpleNamespace
    from test_sip_registrar import Phone
    from presence.sip import proxy as proxy_mod
    from presence.sip.message import Request
    from presence.sip.proxy import SipProxy
    from presence.sip.testing import FakeNetwork, answer, invite

    net = FakeNetwork()
    proxy = SipProxy(world.service, net, world.clock, "example.org")
    world.register("erin")
    rig = SimpleNamespace(send=lambda m, hop: proxy.received(m.to_bytes(), hop),
                          sent=net.take)

    def registrations(i: int) -> None:
        phone = Phone(rig, user="erin")
        phone.cseq = 10 * (i + 2)
        phone.register(expires="120")
        inv = invite("sip:erin@example.org")
        proxy.received(inv.to_bytes(), phone.hop)
        forwarded = [m for m, _ in net.take() if isinstance(m, Request)]
        proxy.received(answer(forwarded[0], 486).to_bytes(), phone.hop)
        net.take()                                     # the 486 upstream and our ACK
        phone.register(expires="0")
        phone.register(expires="60")
        world.clock.advance(proxy_mod.TIMER_B + 61)   # the binding expires, transactions end
        net.take()
        assert proxy.stats()["bindings"] == 0 and proxy.stats()["server_transactions"] == 0

    garbage = cyclic_garbage(registrations, n=10)
    proxy.stop()
    ours = [o for o in garbage if type(o).__module__.startswith("presence.")]
    assert not ours, f"cyclic garbage of the registrar: {describe(ours)}"


def test_pool_calls_leave_no_cycles():
    """``ThreadPool.callInThreadWithCallback`` leaves a self-referencing
    closure per call; ``presence.threads.Pool`` does not."""
    results: list = []

    def call(i: int) -> None:
        _Call(None, lambda ok, value: results.append((ok, value)), divmod, (7, 2), {})()

    assert_no_cycles(cyclic_garbage(call))
    assert results[-1] == (True, (3, 1))


def test_a_failing_pool_call_reports_its_failure():
    results: list = []
    _Call(None, lambda ok, value: results.append((ok, value)), divmod, (1, 0), {})()
    ok, failure = results[0]
    assert not ok and failure.check(ZeroDivisionError)


def test_pool_runs_calls_on_its_threads():
    pool = Pool(1, 1, name="test-pool")
    pool.start()
    try:
        done = threading.Event()
        box: list = []

        def on_result(ok, value):
            box.append((ok, value, threading.current_thread().name))
            done.set()

        pool.callInThreadWithCallback(on_result, pow, 2, 10)
        assert done.wait(10)
        ok, value, thread = box[0]
        assert ok and value == 1024 and "test-pool" in thread
    finally:
        pool.stop()
    # once stopped, calls are dropped, as ThreadPool does
    pool.callInThreadWithCallback(lambda *a: box.append(a), pow, 2, 2)
    assert len(box) == 1
