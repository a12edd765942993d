"""The heartbeat between the boxes of a cluster (presence/web/boxes.py):
the scheme and the session of the 307, the origins a box allows, and the
``connect-src`` of the pages.  In memory: DummyRequest, a fake hub."""

from __future__ import annotations


from twisted.web.test.requesthelper import DummyRequest

from presence.core.hub import HubConfig
from presence.web.boxes import allow_box_origin, box_location, box_sources


class FakeHub:
    def __init__(self, me="10.0.0.5:8081", others=("10.0.0.6:8081",), scheme=None):
        self.config = HubConfig(host_box=me, box_scheme=scheme)
        self.live = [me, *others]

    def box_names(self):
        return sorted(self.live)


def request(uri=b"/jchat?me=bob", origin=None, secure=False):
    r = DummyRequest([b"jchat"])
    r.uri = uri
    if origin is not None:
        r.requestHeaders.setRawHeaders(b"origin", [origin])
    r.isSecure = lambda: secure
    return r


def test_the_307_keeps_the_clients_scheme_unless_one_is_configured():
    hub = FakeHub()
    assert box_location(request(), hub, "10.0.0.6:8081", None) == \
        b"http://10.0.0.6:8081/jchat?me=bob"
    assert box_location(request(secure=True), hub, "10.0.0.6:8081", None) == \
        b"https://10.0.0.6:8081/jchat?me=bob"
    configured = FakeHub(scheme="https")
    assert box_location(request(), configured, "10.0.0.6:8081", None).startswith(
        b"https://10.0.0.6:8081/")


def test_a_heartbeat_by_cookie_is_sent_on_with_its_session_named():
    location = box_location(request(b"/jchat?me=bob&ack=4"), FakeHub(), "10.0.0.6:8081",
                            "abc_DEF-123")
    assert location == b"http://10.0.0.6:8081/jchat?me=bob&ack=4&id=abc_DEF-123"
    assert box_location(request(b"/jchat"), FakeHub(), "b:1", "s") == b"http://b:1/jchat?id=s"


def allowed(hub, origin, secure=False):
    r = request(origin=origin, secure=secure)
    allow_box_origin(r, hub)
    return r.responseHeaders.getRawHeaders(b"access-control-allow-origin")


def test_only_the_origins_of_live_boxes_may_read_a_heartbeat():
    hub = FakeHub()
    assert allowed(hub, b"http://10.0.0.6:8081") == [b"http://10.0.0.6:8081"]
    assert allowed(hub, b"http://10.0.0.5:8081") == [b"http://10.0.0.5:8081"]
    # another port, another host, another scheme, junk, null: none
    for origin in (b"http://10.0.0.6:8082", b"http://evil.example", b"https://10.0.0.6:8081",
                   b"http://10.0.0.6:8081/path", b"null", b"\xff"):
        assert allowed(hub, origin) is None, origin
    # a box that left the cluster: no longer
    hub.live.remove("10.0.0.6:8081")
    assert allowed(hub, b"http://10.0.0.6:8081") is None
    # over https, the https origins
    assert allowed(FakeHub(), b"https://10.0.0.6:8081", secure=True) == \
        [b"https://10.0.0.6:8081"]


def test_no_origin_header_no_cors_headers_and_vary_with_one():
    r = request()
    allow_box_origin(r, FakeHub())
    assert r.responseHeaders.getRawHeaders(b"vary") is None
    r = request(origin=b"http://evil.example")
    allow_box_origin(r, FakeHub())
    assert r.responseHeaders.getRawHeaders(b"vary") == [b"Origin"]


def test_the_pages_may_connect_to_the_other_live_boxes_only():
    assert box_sources(request(), FakeHub(others=("b:2", "c:3"))) == b" http://b:2 http://c:3"
    assert box_sources(request(), FakeHub(others=())) == b""
    assert box_sources(request(secure=True), FakeHub()) == b" https://10.0.0.6:8081"


def test_one_node_alone_allows_no_other_origin():
    alone = FakeHub(others=())
    assert allowed(alone, b"http://10.0.0.5:8081") is None
