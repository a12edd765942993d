"""Browser calls over HTTP (presence.web.calls): POST /api/call, GET
/api/turn, POST /api/call-guests and the options, through StubTreq."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from twisted.python import usage

from presence.tap import Options
from presence.web.calls import OFFER_LIMIT, CallsWeb, turn_credentials

from helpers import World

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
SECRET = b"s3cret-for-tests"


@pytest.fixture
def net():
    w = World()
    w.calls = CallsWeb(w.service, w.clock, ["turn:127.0.0.1:3478?transport=udp"], SECRET,
                       turn_ttl=600, ring_timeout=30)
    w.calls.mount(w.site.resource)
    return w


def call_heads(hb, since: int = 0):
    return [e.text for e in hb.events()[since:] if e.head.startswith("msg call ")]


def test_a_whole_call_with_two_sessions_of_the_callee(net):
    alice, bob = net.user("alice"), net.user("bob")
    bob2 = net.login("bob")
    ha, hb1, hb2 = alice.heartbeat(), bob.heartbeat(), bob2.heartbeat()
    r = alice.post("/api/call", action="offer", to="bob", sdp=SDP, call="call-0001")
    assert r.status == 200, r.body
    assert r.json == {"call": "call-0001", "caller": "alice", "callee": "bob",
                      "state": "ringing"}
    offer = "msg call offer alice call-0001\nv=0\no=- 1 2 IN IP4 127.0.0.1\ns=-\nt=0 0"
    assert call_heads(hb1) == call_heads(hb2) == [offer]
    assert call_heads(ha) == ["msg call ringing bob call-0001"]
    assert alice.post("/api/call", action="ice", call="call-0001",
                      candidate='{"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ relay",'
                                ' "sdpMid": "0"}').status == 204
    r = bob2.post("/api/call", action="answer", call="call-0001", sdp=SDP)
    assert r.status == 200 and r.json["state"] == "active"
    assert call_heads(hb1)[1:] == ["msg call end alice call-0001 elsewhere"]
    assert call_heads(hb2)[1:] == [
        'msg call ice alice call-0001\n'
        '{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ relay","sdpMid":"0"}']
    assert call_heads(ha)[1].startswith("msg call answer bob call-0001\nv=0")
    r = bob.post("/api/call", action="answer", call="call-0001", sdp=SDP)
    assert r.status == 409 and "not ringing here" in r.error
    assert bob2.post("/api/call", action="hangup", call="call-0001").status == 204
    assert call_heads(ha)[-1] == "msg call end bob call-0001 hangup"
    assert call_heads(hb2)[-1] == "msg call end alice call-0001 hangup"
    r = alice.post("/api/call", action="hangup", call="call-0001")
    assert r.status == 404 and r.error == "no such call: it ended, or it never was"


def test_call_frames_are_direct_frames_not_fan_out(net, monkeypatch):
    """They go through channel.send (the urgent line of WritePacer), never
    send_bulk, which waits behind other sessions' presence updates."""
    from presence.web.heartbeat import HeartbeatChannel
    alice, bob = net.user("alice"), net.user("bob")
    alice.heartbeat()
    bob.heartbeat()
    seen = []
    for name in ("send", "send_bulk"):
        real = getattr(HeartbeatChannel, name)

        def spy(self, entries, real=real, name=name):
            seen.append((name, [f.kind for _, f in entries]))
            return real(self, entries)
        monkeypatch.setattr(HeartbeatChannel, name, spy)
    alice.post("/api/call", action="offer", to="bob", sdp=SDP)
    assert [name for name, kinds in seen if "call" in kinds] == ["send", "send"]


def test_decline_busy_offline_and_noanswer(net):
    alice, bob, carol = net.user("alice"), net.user("bob"), net.user("carol")
    ha, hb, hc = alice.heartbeat(), bob.heartbeat(), carol.heartbeat()
    callid = alice.post("/api/call", action="offer", to="bob", sdp=SDP).json["call"]
    # carol calls bob, who is being rung: busy, bob is not disturbed
    r = carol.post("/api/call", action="offer", to="bob", sdp=SDP)
    assert r.json["state"] == "ended" and r.json["reason"] == "busy"
    assert call_heads(hc) == [f"msg call end bob {r.json['call']} busy"]
    assert len(call_heads(hb)) == 1
    assert bob.post("/api/call", action="decline", call=callid).status == 204
    assert call_heads(ha)[-1] == f"msg call end bob {callid} declined"
    assert call_heads(hb)[-1] == f"msg call end alice {callid} declined"
    # nobody answers for --ring-timeout seconds
    callid = alice.post("/api/call", action="offer", to="bob", sdp=SDP).json["call"]
    net.advance(30)
    assert call_heads(ha)[-1] == f"msg call end bob {callid} noanswer"
    assert call_heads(hb)[-1] == f"msg call end alice {callid} noanswer"
    # dave has no live session: offline at once
    net.user("dave")
    r = alice.post("/api/call", action="offer", to="dave", sdp=SDP)
    assert r.json["reason"] == "offline"
    assert call_heads(ha)[-1] == f"msg call end dave {r.json['call']} offline"


def test_the_callee_going_offline_mid_call(net):
    alice, bob = net.user("alice"), net.user("bob")
    ha, hb = alice.heartbeat(), bob.heartbeat()
    callid = alice.post("/api/call", action="offer", to="bob", sdp=SDP).json["call"]
    bob.post("/api/call", action="answer", call=callid, sdp=SDP)
    hb.drop()                       # bob's heartbeat ends: he lingers, then is gone
    net.advance(net.config.linger - 1)
    assert call_heads(ha)[-1].startswith("msg call answer")
    net.advance(1.5)
    assert call_heads(ha)[-1] == f"msg call end bob {callid} offline"
    # and a logout mid-ring ends it at once
    bob = net.login("bob")
    bob.heartbeat()
    callid = alice.post("/api/call", action="offer", to="bob", sdp=SDP).json["call"]
    assert bob.post("/api/logout").status == 204
    net.advance(1)
    assert call_heads(ha)[-1] == f"msg call end bob {callid} offline"


def test_guests_call_only_users_who_allow_it_and_are_never_called(net):
    alice = net.user("alice")
    alice.heartbeat()
    guest = net.guest()
    gh = guest.heartbeat()
    r = guest.post("/api/call", action="offer", to="alice", sdp=SDP)
    assert r.status == 403 and r.error == ("alice takes calls from members only: log in to"
                                           " call them")
    r = alice.post("/api/call", action="offer", to=guest.name, sdp=SDP)
    assert r.status == 403 and "guests cannot be called" in r.error
    assert guest.post("/api/call-guests", allow="1").status == 403  # guests have no setting
    assert alice.post("/api/call-guests", allow="maybe").status == 400
    assert alice.post("/api/call-guests", allow="1").status == 204
    r = guest.post("/api/call", action="offer", to="alice", sdp=SDP)
    assert r.status == 200 and r.json["state"] == "ringing"
    # alice answers the guest's call
    assert alice.post("/api/call", action="answer", call=r.json["call"],
                      sdp=SDP).status == 200
    assert call_heads(gh)[-1].startswith(f"msg call answer alice {r.json['call']}")
    assert result_account(net, alice)["guests_may_call"] is True
    assert alice.post("/api/call-guests", allow="0").status == 204
    assert result_account(net, alice)["guests_may_call"] is False


def result_account(net, user):
    from helpers import result_of
    return result_of(net.service.account(user.hub_session))


def test_bad_requests_get_clear_errors(net):
    alice, bob = net.user("alice"), net.user("bob")
    alice.heartbeat()
    bob.heartbeat()
    cases = [
        ({}, 400, "action is required: offer, answer, ice, hangup or decline"),
        ({"action": "dance"}, 400, "action must be offer, answer, ice, hangup or decline"),
        ({"action": "offer"}, 400, "to is required: whom to call"),
        ({"action": "offer", "to": "nobody"}, 404, "no such user: nobody"),
        ({"action": "offer", "to": "bob"}, 400,
         "sdp is required: the session description (SDP)"),
        ({"action": "offer", "to": "bob", "sdp": "hello"}, 400,
         "sdp is not SDP: it must start with v=0"),
        ({"action": "offer", "to": "bob", "sdp": "v=0\n" + "a=x\n" * 5000}, 413,
         "sdp is longer than 16384 characters"),
        ({"action": "offer", "to": "alice", "sdp": SDP}, 400, "you cannot call yourself"),
        ({"action": "offer", "to": "bob", "sdp": SDP, "call": "x y"}, 400,
         "call must be 8-64 characters of A-Z, a-z, 0-9, '_' and '-'"),
        ({"action": "hangup"}, 400, "call is required: the call's id"),
        ({"action": "ice", "call": "nonesuch1"}, 400,
         "candidate is required: the ICE candidate as JSON"),
        ({"action": "ice", "call": "nonesuch1", "candidate": "{"}, 400,
         "candidate is not JSON"),
        ({"action": "answer", "call": "nonesuch1", "sdp": SDP}, 404,
         "no such call: it ended, or it never was"),
    ]
    for data, status, error in cases:
        r = alice.post("/api/call", **data)
        assert (r.status, r.error) == (status, error), data
    assert net.browser().post("/api/call", action="offer", to="bob",
                              sdp=SDP).status == 403
    assert alice.get("/api/call").status == 405
    assert alice.post("/api/turn").status == 405


def test_offers_are_rate_limited(net):
    alice, bob = net.user("alice"), net.user("bob")
    alice.heartbeat()
    for _ in range(int(OFFER_LIMIT[0])):   # bob has no heartbeat: each ends offline
        assert alice.post("/api/call", action="offer", to="bob",
                          sdp=SDP).json["reason"] == "offline"
    r = alice.post("/api/call", action="offer", to="bob", sdp=SDP)
    assert r.status == 429 and r.error == "you are calling or signalling too fast; slow down"
    assert int(r.header("retry-after")) >= 1


def test_turn_credentials_in_the_coturn_rest_scheme(net):
    alice = net.user("alice")
    r = alice.get("/api/turn")
    assert r.status == 200
    body = r.json
    server = body["iceServers"][0]
    expires = int(net.clock.seconds() + 600)
    assert body["iceTransportPolicy"] == "all"
    assert body["turn"] is True and body["ttl"] == 600 and body["expires"] == expires
    assert server["urls"] == ["turn:127.0.0.1:3478?transport=udp"]
    assert server["username"] == f"{expires}:alice"
    digest = hmac.new(SECRET, server["username"].encode(), hashlib.sha1).digest()
    assert server["credential"] == base64.b64encode(digest).decode()
    assert SECRET.decode() not in r.body.decode()
    assert net.browser().get("/api/turn").status == 403
    # coturn's own example (turnserver --help / the RFC draft's scheme)
    assert turn_credentials(b"north", "ninefingers", 1433895918, 0)["credential"] == (
        base64.b64encode(hmac.new(b"north", b"1433895918:ninefingers",
                                  hashlib.sha1).digest()).decode())


def test_no_turn_configured_says_so():
    w = World()
    CallsWeb(w.service, w.clock).mount(w.site.resource)
    r = w.user("alice").get("/api/turn")
    assert r.status == 200 and r.json["turn"] is False and r.json["iceServers"] == []
    assert "no TURN relay" in r.json["message"]


def options(*argv):
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_the_options(tmp_path):
    o = options()
    assert o["turn-url"] is None and o["ring-timeout"] == 30.0
    secret = tmp_path / "turn-secret"
    secret.write_text("file-secret\n")
    o = options("--turn-url", "turn:t.example.org:3478?transport=udp, turns:t.example.org:443"
                "?transport=tcp", "--turn-secret-file", str(secret), "--ring-timeout", "5")
    assert o["turn-urls"] == ["turn:t.example.org:3478?transport=udp",
                              "turns:t.example.org:443?transport=tcp"]
    assert o["turn-key"] == b"file-secret" and o["ring-timeout"] == 5.0
    assert options("--turn-url", "turn:127.0.0.1", "--turn-secret", "x")["turn-key"] == b"x"
    bad = [
        (["--turn-url", "http://x"], "--turn-url: not a TURN URL"),
        (["--turn-url", "turn:x"], "--turn-url needs --turn-secret-file"),
        (["--turn-secret", "x"], "need --turn-url"),
        (["--turn-url", "turn:x", "--turn-secret", "x", "--turn-secret-file", str(secret)],
         "give one of them"),
        (["--turn-url", "turn:x", "--turn-secret-file", str(tmp_path / "none")],
         "--turn-secret-file: cannot read"),
        (["--turn-policy", "relay"], "--turn-policy relay needs --turn-url"),
        (["--turn-policy", "some"], "--turn-policy must be all or relay"),
        (["--ring-timeout", "0"], "--ring-timeout: must be positive"),
        (["--turn-ttl", "soon"], "--turn-ttl: must be a number"),
    ]
    for argv, words in bad:
        with pytest.raises(usage.UsageError) as e:
            options(*argv)
        assert words in str(e.value), argv


def test_an_attacker_can_neither_touch_anothers_call_nor_break_the_frames(net):
    """A stranger (another user, a guest, a page of another origin with the
    victim's cookie) cannot ring, answer, hang up or inject candidates into
    a call, nor get TURN credentials; SDP lines never end the event."""
    alice, bob, carol = net.user("alice"), net.user("bob"), net.user("carol")
    guest = net.guest()
    ha, hb = alice.heartbeat(), bob.heartbeat()
    evil = SDP + "\r\n\r\nmsg call end alice call-0002 hangup\r\nid: 99\r\ndata: x\r\n"
    r = alice.post("/api/call", action="offer", to="bob", sdp=evil, call="call-0002")
    assert r.status == 200, r.body
    [offer] = [e for e in hb.events() if e.head.startswith("msg call ")]
    assert offer.head == "msg call offer alice call-0002"
    assert "msg call end alice call-0002 hangup" in offer.text.split("\n", 1)[1]
    for who in (carol, guest):
        for action, extra in (("hangup", {}), ("decline", {}), ("answer", {"sdp": SDP}),
                              ("ice", {"candidate": '{"candidate": "candidate:x"}'})):
            r = who.post("/api/call", action=action, call="call-0002", **extra)
            assert r.status in (403, 409), (who.name, action, r.status, r.body)
    cross = {"Origin": ["http://evil.example"]}
    for data in ({"action": "hangup", "call": "call-0002"},
                 {"action": "offer", "to": "carol", "sdp": SDP}):
        r = alice.browser.request("POST", "/api/call", data=data, headers=cross)
        assert r.status == 403, r.body
    r = bob.browser.request("POST", "/api/call-guests", data={"allow": "1"}, headers=cross)
    assert r.status == 403
    assert net.calls.calls.calls["call-0002"].state == "ringing"
    assert not any(e.head.startswith("msg call end") for e in ha.events() + hb.events())
    assert net.browser().get("/api/turn").status == 403
    # candidates are re-serialised: one line whatever came in
    r = bob.post("/api/call", action="answer", call="call-0002", sdp=SDP)
    assert r.status == 200
    assert bob.post("/api/call", action="ice", call="call-0002",
                    candidate='{"candidate": "a\\nmsg call end bob x hangup\\r\\n"}').status == 204
    ice = [e for e in ha.events() if e.head.startswith("msg call ice")][-1]
    assert "\n" not in ice.text.split("\n", 1)[1]
