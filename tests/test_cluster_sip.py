"""SIP across the boxes of a cluster (``presence.cluster.sip``), in memory.

Two boxes, each a real in-memory presence server (``World``) with its own
proxy and :class:`~presence.sip.testing.FakeNetwork`; what one proxy sends
to the other box's address is handed to the other proxy as a TCP message
(:class:`Link`).  The proxies' :class:`~presence.cluster.sip.SipBoxes` are
the real ones, over a fake of the cluster hub's view and of its Redis seam
(:class:`FakeView`): no reactor, no sleeps.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Dict, List, Tuple

import pytest
import treq
from twisted.internet import defer
from zope.interface.verify import verifyObject

from helpers import BASE, World, result_of
from presence.cluster import sip as cluster_sip
from presence.cluster.sip import ADDRESSES, SipBoxes, parse_address
from presence.sip.message import NameAddr, Request, Response, SipURI, Via
from presence.sip.proxy import TCP, UDP, Hop, ISipBoxes, SipProxy
from presence.sip.testing import SDP, FakeNetwork, answer, invite, request
from presence.sip.web import SipTunnelResource

from test_sip_proxy import Tunnel, codes

A_BOX, B_BOX = "a.test:8080", "b.test:8080"
A_IP, B_IP = "10.0.0.1", "10.0.0.2"
CALLER = Hop(UDP, "198.51.100.7", 5062)


class Down(Exception):
    pass


class FakeRedis:
    """The keys ADDRESSES touches (``sip:<box>`` with a TTL), on a clock."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.values: Dict[bytes, Tuple[bytes, float]] = {}
        self.down = False
        self.calls = 0

    def eval(self, script: bytes, keys: List[bytes], args: List[bytes]):
        assert script is ADDRESSES
        self.calls += 1
        if self.down:
            return defer.fail(Down("connection refused"))
        now = self.clock.seconds()
        address, ttl, prefix = args[:3]
        self.values[keys[0]] = (address, now + float(ttl))
        out = []
        for box in args[3:]:
            found = self.values.get(prefix + box)
            out.append(found[0] if found is not None and found[1] > now else b"")
        return defer.succeed(out)


class FakeView:
    """What SipBoxes reads of the cluster hub: the box, the live boxes, the
    remote sessions in the view, keys and the Redis call."""

    prefix = "presence:"

    def __init__(self, me: str, redis: FakeRedis) -> None:
        self.me = me
        self.redis = redis
        self.live: Dict[str, int] = {me: 0}
        self.box_sessions: Dict[str, int] = {}
        self.remote: Dict[str, Dict[str, Tuple[str, ...]]] = {}
        self.failed: List[str] = []

    def key(self, *parts: str) -> bytes:
        return (self.prefix + ":".join(parts)).encode()

    def remote_boxes(self, name: str) -> Dict[str, Tuple[str, ...]]:
        """As ClusterHub.remote_boxes: the remote boxes holding sessions of
        ``name`` -> their session IDs there."""
        return dict(self.remote.get(name, {}))

    def _do(self, what, script, keys, args):
        args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        d = self.redis.eval(script, keys, args)

        def failed(f):
            self.failed.append(what)   # (the hub logs it once per outage)
        d.addErrback(failed)
        return d

    def hold(self, user: str, box: str) -> None:
        """``user`` has a session on ``box`` (an announced session)."""
        self.live.setdefault(box, 0)
        self.remote.setdefault(user, {})[box] = ("sid-" + user,)
        self.box_sessions[box] = self.box_sessions.get(box, 0) + 1

    def bury(self, box: str) -> None:
        self.live.pop(box, None)
        self.box_sessions.pop(box, None)
        for boxes in self.remote.values():
            boxes.pop(box, None)


class Conn:
    """A TCP connection as the proxy sees one (open)."""
    connected_ = True


class Box:
    """One box: a World, its proxy on a FakeNetwork at ``ip``, its SipBoxes."""

    def __init__(self, name: str, ip: str, redis: FakeRedis, **proxy_options) -> None:
        self.name, self.ip = name, ip
        self.world = World()
        self.net = FakeNetwork(local=ip)
        self.net.resolutions[name.rpartition(":")[0]] = [ip]
        self.proxy = SipProxy(self.world.service, self.net, self.world.clock, "example.org",
                              **proxy_options)
        self.world.site.resource.mount(b"sip", SipTunnelResource(self.world.service,
                                                                 self.proxy))
        self.view = FakeView(name, redis)
        self.boxes = SipBoxes(self.view, self.net.resolve, "example.org", self.world.clock)
        self.proxy.boxes = self.boxes
        self.boxes.listening({"sip-udp": "0.0.0.0:5060", "sip-tcp": "0.0.0.0:5060"})
        self.conn = Conn()

    def tunnel(self, name: str) -> Tunnel:
        return Tunnel(self.world, name)


class Link:
    """Hands what each box sends to the other box's address to that box,
    as a TCP message from the sender's address; keeps the rest."""

    def __init__(self, *boxes: Box) -> None:
        self.boxes = {b.ip: b for b in boxes}
        self.out: List[Tuple[object, Hop, str]] = []   # (message, hop, from box)
        self.between: List[Tuple[str, str, object]] = []

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for box in self.boxes.values():
                for message, hop in box.net.take():
                    target = self.boxes.get(hop.host)
                    if target is None:
                        self.out.append((message, hop, box.name))
                        continue
                    assert hop.transport == TCP, (message, hop)
                    self.between.append((box.name, target.name, message))
                    # from the sender's box: its address, a connection port
                    target.proxy.received(message.to_bytes(), Hop(TCP, box.ip, 40000,
                                                                   conn=box.conn))
                    moved = True

    def take(self) -> List[Tuple[object, Hop, str]]:
        out, self.out = self.out, []
        return out


@pytest.fixture
def cluster():
    redis = FakeRedis(World().clock)
    a = Box(A_BOX, A_IP, redis)
    b = Box(B_BOX, B_IP, redis)
    for box in (a, b):
        box.boxes.refresh()           # publishes its address
    a.view.live[B_BOX] = 1
    b.view.live[A_BOX] = 1
    for box in (a, b):
        box.boxes.refresh()           # reads the other's
    link = Link(a, b)
    yield SimpleNamespace(a=a, b=b, link=link, redis=redis)
    a.proxy.stop()
    b.proxy.stop()


# -- SipBoxes alone ----------------------------------------------------------------------

def test_sip_boxes_provide_the_proxys_interface(cluster):
    assert verifyObject(ISipBoxes, cluster.a.boxes)


def test_each_box_publishes_its_sip_address_and_reads_the_live_ones(cluster):
    a, b = cluster.a, cluster.b
    assert a.boxes.address == (A_IP, 5060)
    assert cluster.redis.values[b"presence:sip:a.test:8080"][0] == b"10.0.0.1:5060"
    assert a.boxes.addresses == {B_BOX: (B_IP, 5060)}
    assert b.boxes.addresses == {A_BOX: (A_IP, 5060)}
    assert a.boxes.is_box(B_IP, 5060) and a.boxes.is_box_ip(B_IP)
    # never itself, nor another port of the box, nor a stranger
    assert not a.boxes.is_box(A_IP, 5060)
    assert not a.boxes.is_box(B_IP, 5061) and not a.boxes.is_box("10.0.0.3", 5060)
    assert a.boxes.hop_of(SipURI(B_IP, None, 5060, [("transport", "tcp"), ("lr", None)])) \
        .__repr__() == f"<Hop TCP {B_IP}:5060>"
    assert a.boxes.hop_of(SipURI("10.0.0.3", None, 5060, [("lr", None)])) is None


def test_a_dead_box_is_no_next_hop_at_once(cluster):
    a = cluster.a
    a.view.hold("alice", B_BOX)
    assert [h.host for h in a.boxes.hops("alice", SipURI("example.org", "alice"))] == [B_IP]
    a.view.bury(B_BOX)     # the hub heard it died
    assert a.boxes.hops("alice", SipURI("example.org", "alice")) == []
    assert not a.boxes.is_box(B_IP, 5060) and not a.boxes.is_box_ip(B_IP)
    # and once its key expired, the next read forgets it
    a.view.live[B_BOX] = 1
    cluster.a.world.clock.advance(cluster_sip.BOX_TTL + 1)
    cluster.redis.clock.advance(cluster_sip.BOX_TTL + 1)
    a.boxes.refresh()
    assert a.boxes.addresses == {}


def test_hops_name_the_box_in_the_request_uri_and_stop_at_a_forked_request(cluster):
    a = cluster.a
    a.view.hold("alice", B_BOX)
    [hop] = a.boxes.hops("alice", SipURI.parse("sip:Alice@192.0.2.9:5060;user=phone"))
    assert (hop.transport, hop.host, hop.port) == (TCP, B_IP, 5060)
    assert hop.uri == f"sip:Alice@example.org;box={B_BOX}"
    assert a.boxes.hops("alice", SipURI.parse(hop.uri)) == []
    assert a.boxes.hops("carol", SipURI("example.org", "carol")) == []


def test_a_box_that_joined_since_the_last_read_is_read_before_the_call_goes(cluster):
    a = cluster.a
    c = Box("c.test:8080", "10.0.0.3", cluster.redis)
    c.boxes.refresh()
    a.view.hold("carol", "c.test:8080")
    calls = cluster.redis.calls
    d = a.boxes.hops("carol", SipURI("example.org", "carol"))
    assert isinstance(d, defer.Deferred) and cluster.redis.calls == calls + 1
    assert [h.host for h in d.result] == ["10.0.0.3"]
    # a box asked for that has no SIP listener (--sip 0) is not read again per call
    a.view.hold("dave", "d.test:8080")
    d = a.boxes.hops("dave", SipURI("example.org", "dave"))
    assert d.result == [] and cluster.redis.calls == calls + 2
    assert a.boxes.hops("dave", SipURI("example.org", "dave")) == []
    assert cluster.redis.calls == calls + 2


def test_redis_away_keeps_the_addresses_last_read(cluster):
    a = cluster.a
    cluster.redis.down = True
    a.boxes.refresh()
    assert a.view.failed == ["sharing this box's SIP address"]
    assert a.boxes.addresses == {B_BOX: (B_IP, 5060)}


def test_reads_in_flight_are_shared():
    world = World()
    redis = FakeRedis(world.clock)
    view = FakeView(A_BOX, redis)
    pending = defer.Deferred()
    view._do = lambda *args: pending
    boxes = SipBoxes(view, FakeNetwork().resolve, "example.org", world.clock)
    boxes.address = (A_IP, 5060)
    first, second = boxes.refresh(), boxes.refresh()
    assert not first.called and not second.called
    pending.callback([])
    assert first.called and second.called


def test_published_addresses_are_checked():
    assert parse_address("10.0.0.2:5060") == ("10.0.0.2", 5060)
    assert parse_address("[2001:db8::1]:5062") == ("2001:db8::1", 5062)
    for bad in ("", "10.0.0.2", "10.0.0.2:0", "10.0.0.2:70000", ":5060", "x:y"):
        assert parse_address(bad) is None, bad


# -- calls between two boxes -------------------------------------------------------------

def test_a_tunnel_user_on_one_box_calls_one_on_the_other_and_back(cluster):
    a, b, link = cluster.a, cluster.b, cluster.link
    bob = a.tunnel("bob")
    a.world.register("alice")              # one directory: alice known to a too
    alice = b.tunnel("alice")
    a.view.hold("alice", B_BOX)
    inv = invite("sip:alice@example.org", via_host="127.0.0.1", via_port=5080,
                 from_uri="sip:bob@example.org", contact="<sip:bob@127.0.0.1:5080>")
    bob.ok(inv)
    link.pump()
    # a forked it to b's proxy over TCP, b to alice's session
    [(src, dst, there)] = [x for x in link.between if isinstance(x[2], Request)]
    assert (src, dst) == (A_BOX, B_BOX)
    assert there.uri == f"sip:alice@example.org;box={B_BOX}"
    assert Via.parse(there.values("via")[0]).sent_by == (A_IP, 5060)
    assert there.get("record-route") == f"<sip:{A_IP}:5060;transport=tcp;lr>"
    fwd = alice.one().message
    assert [Via.parse(v).sent_by for v in fwd.values("via")[:2]] == [("example.org", 5060),
                                                                      (A_IP, 5060)]
    assert fwd.values("record-route") == [f"<sip:{B_IP}:5060;transport=tcp;lr>",
                                          f"<sip:{A_IP}:5060;transport=tcp;lr>"]
    assert [f.message.code for f in bob.frames("sipresp")] == [100]
    alice.ok(answer(fwd, 180, contact="<sip:alice@127.0.0.1:6080>"))
    alice.ok(answer(fwd, 200, contact="<sip:alice@127.0.0.1:6080>", body=SDP))
    link.pump()
    ringing, ok = [f.message for f in bob.frames("sipresp")]
    assert (ringing.code, ok.code) == (180, 200) and ok.body == SDP.encode()
    assert len(ok.values("via")) == 1          # both proxies' Vias taken off
    contact = NameAddr.parse(ok.get("contact")).sip_uri()
    assert (contact.host, contact.port) == (B_IP, 5060) and contact.param("tun")
    route = list(reversed(ok.values("record-route")))
    assert link.take() == []                   # nothing went anywhere else

    # bob's ACK and BYE: through a, then b, to alice's session
    dialog = dict(via_host="127.0.0.1", via_port=5080, from_uri="sip:bob@example.org",
                  to_uri="sip:alice@example.org", to_tag="callee1", call_id=inv.call_id,
                  extra=tuple(("Route", r) for r in route))
    bob.ok(request("ACK", str(contact), cseq=1, **dialog))
    link.pump()
    ack = alice.one()
    assert ack.what == "ACK" and ack.message.get("route") is None
    # alice hangs up: her route set is the Record-Route as she got it
    bye = request("BYE", NameAddr.parse(fwd.get("contact")).uri, via_host="127.0.0.1",
                  via_port=6080, from_uri="sip:alice@example.org", from_tag="callee1",
                  to_uri="sip:bob@example.org", to_tag="ft1", call_id=inv.call_id, cseq=1,
                  extra=tuple(("Route", r) for r in fwd.values("record-route")))
    txid = alice.ok(bye)["txid"]
    link.pump()
    got = bob.one()
    assert got.what == "BYE" and got.message.get("route") is None
    bob.ok(answer(got.message, 200))
    link.pump()
    [done] = alice.frames("sipresp")
    assert (done.message.code, done.txid) == (200, txid)
    assert link.take() == []
    assert a.proxy.counters.get("refused_outside") is None
    assert b.proxy.counters.get("refused_outside") is None


def test_a_network_caller_reaches_a_user_held_by_the_other_box(cluster):
    a, b, link = cluster.a, cluster.b, cluster.link
    a.world.register("alice")
    alice = b.tunnel("alice")
    a.view.hold("alice", B_BOX)
    inv = invite("sip:alice@example.org")
    a.proxy.received(inv.to_bytes(), CALLER)
    link.pump()
    fwd = alice.one().message
    alice.ok(answer(fwd, 200, contact="<sip:alice@127.0.0.1:6080>"))
    link.pump()
    sent = link.take()
    assert codes([(m, h) for m, h, _ in sent]) == [100, 200]
    final, hop, src = sent[-1]
    assert (hop.host, hop.port, src) == ("198.51.100.7", 5062, A_BOX)
    contact = NameAddr.parse(final.get("contact")).sip_uri()
    route = list(reversed(final.values("record-route")))
    assert route == [f"<sip:{A_IP}:5060;lr>", f"<sip:{B_IP}:5060;transport=tcp;lr>"]
    # the caller's ACK (Route: a, then b) is taken from the network by a,
    # which is no open relay for anyone else
    dialog = dict(to_uri="sip:alice@example.org", to_tag="callee1", call_id=inv.call_id)
    a.proxy.received(request("ACK", str(contact), cseq=1,
                             extra=tuple(("Route", r) for r in route), **dialog).to_bytes(),
                     CALLER)
    link.pump()
    assert alice.one().what == "ACK"
    stranger = request("BYE", "sip:x@10.0.0.3:5060", cseq=2, to_uri="sip:x@10.0.0.3",
                       to_tag="t", extra=(("Route", f"<sip:{A_IP}:5060;lr>"),
                                          ("Route", "<sip:10.0.0.3:5060;lr>")))
    a.proxy.received(stranger.to_bytes(), CALLER)
    link.pump()
    [(refused, _, _)] = link.take()
    assert refused.code == 403 and "open relay" in refused.reason


def test_a_user_on_both_boxes_rings_on_both(cluster):
    a, b, link = cluster.a, cluster.b, cluster.link
    here = a.tunnel("alice")
    b.world.register("alice")
    there = b.world.login("alice")
    far = Tunnel(b.world, "alice", user=there)
    a.view.hold("alice", B_BOX)
    b.view.hold("alice", A_BOX)
    a.proxy.received(invite("sip:alice@example.org").to_bytes(), CALLER)
    link.pump()
    # once on each box: b does not fork back to a
    assert here.one().what == "INVITE" and far.one().what == "INVITE"
    assert len([x for x in link.between if isinstance(x[2], Request)]) == 1


def test_an_offline_user_is_480_and_a_box_down_is_no_hop(cluster):
    a, link = cluster.a, cluster.link
    a.world.register("alice")
    a.proxy.received(invite("sip:alice@example.org").to_bytes(), CALLER)
    link.pump()
    assert codes([(m, h) for m, h, _ in link.take()]) == [480]


def test_a_tunnel_user_may_not_reach_a_box_port_that_is_not_its_listener(cluster):
    a, link = cluster.a, cluster.link
    bob = a.tunnel("bob")
    bob.ok(invite(f"sip:x@{B_IP}:5070", via_host="127.0.0.1", via_port=5080,
                  from_uri="sip:bob@example.org"))
    link.pump()
    *_, resp = bob.frames("sipresp")
    assert resp.message.code == 403 and link.between == []


def test_another_boxs_tcp_is_not_rate_limited_as_one_source():
    redis = FakeRedis(World().clock)
    a = Box(A_BOX, A_IP, redis, source_rate=1)
    a.boxes.refresh()
    a.view.live[B_BOX] = 1
    b = Box(B_BOX, B_IP, redis)
    b.boxes.refresh()
    a.boxes.refresh()
    try:
        for transport, conn in ((TCP, Conn()), (UDP, None)):
            for _ in range(20):
                options = request("OPTIONS", "sip:example.org", via_host=B_IP, via_port=5060,
                                  transport=transport)
                a.proxy.received(options.to_bytes(), Hop(transport, B_IP, 40000, conn=conn))
        answered = [h.transport for m, h in a.net.take() if isinstance(m, Response)]
        assert answered.count(TCP) == 20
        assert answered.count(UDP) == 5      # the burst of one a second: 5
    finally:
        a.proxy.stop()
        b.proxy.stop()


def test_post_sip_for_a_session_another_box_holds_is_sent_there(cluster):
    """The session's SIP is its box's proxy's (its transactions, dialogs and
    Contact tokens): a POST /sip through another node gets a 307 there."""
    a = cluster.a
    bob = a.tunnel("bob")
    session = bob.user.hub_session
    msg = invite("sip:alice@example.org", via_host="127.0.0.1", via_port=5080)
    session.host_box = B_BOX        # as a stand-in of a session held by b is
    browser = bob.user.browser
    d = browser.stub.request("POST", BASE + "/sip", params=bob.user.creds,
                             data=msg.to_text().encode(), allow_redirects=False,
                             headers={"Content-Type": "message/sip"})
    browser.flush()
    response = result_of(d)
    assert response.code == 307
    assert response.headers.getRawHeaders("location") == \
        [f"http://{B_BOX}/sip?me=bob&id={session.id}"]
    assert json.loads(result_of(treq.content(response)))["host_box"] == B_BOX
    assert a.proxy.counters.get("requests") is None and a.net.take() == []
    session.host_box = a.world.config.host_box
    assert bob.post(msg).status == 202


def test_the_boxes_to_fork_to_come_from_the_real_cluster_hubs_view():
    """SipBoxes over a real ClusterHub (not the fake view): a user held on
    the other box is forked there, one held here only is not."""
    from presence.sip.message import SipURI as URI
    from test_cluster_hub import Cluster
    c = Cluster(2)
    a, b = c.hubs
    bob = c.login(0, "bob")
    c.login(0, "carol")
    holder = c.hub_of(bob)
    other = b if holder is a else a
    boxes = SipBoxes(other, FakeNetwork().resolve, "example.org", c.clock)
    boxes.addresses = {holder.me: ("10.0.0.9", 5060)}
    boxes.asked = frozenset([holder.me])
    [hop] = boxes.hops("bob", URI.parse("sip:bob@example.org"))
    assert (hop.transport, hop.host, hop.port) == (TCP, "10.0.0.9", 5060)
    assert f";box={holder.me}" in hop.uri
    assert boxes.hops("nobody", URI.parse("sip:nobody@example.org")) == []
