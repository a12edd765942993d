"""The SIP proxy and presence states (spec section 12, docs/sip.md): a new
INVITE to a busy user is answered ``486 Busy Here`` without ringing any of
their sessions; away still rings; ``480`` stays "no live session"; requests
other than a new INVITE go through.  In memory, as ``test_sip_proxy``."""

from __future__ import annotations

from test_sip_proxy import codes, sip  # noqa: F401  (a fixture)
from helpers import logged_errors, world  # noqa: F401  (fixtures)
from presence.sip.testing import invite, request


def test_a_busy_user_is_486_without_ringing(sip):
    bob = sip.tunnel("bob")
    assert bob.user.post("/api/status", state="busy", text="in a meeting").status == 200
    sip.send(invite("sip:bob@example.org"))
    out = sip.sent(1)
    assert codes(out) == [486]
    assert out[0][0].reason == "Busy Here" and "tag=" in out[0][0].get("to")
    assert bob.frames() == []                  # no sipreq: nothing rang
    assert sip.proxy.counters.get("busy") == 1


def test_busy_on_one_device_and_available_on_another_rings(sip):
    bob = sip.tunnel("bob")
    phone = sip.world.login("bob")
    phone.heartbeat()
    assert phone.post("/api/status", state="busy").status == 200
    sip.send(invite("sip:bob@example.org"))   # the combined state is available
    assert bob.one().what == "INVITE"


def test_away_rings_and_back_from_busy_rings_again(sip):
    bob = sip.tunnel("bob")
    bob.user.post("/api/status", state="away")
    sip.send(invite("sip:bob@example.org"))
    assert bob.one().what == "INVITE"
    bob.user.post("/api/status", state="busy")
    sip.send(invite("sip:bob@example.org"))
    assert 486 in codes(sip.sent())
    bob.user.post("/api/status", state="available")
    sip.send(invite("sip:bob@example.org"))
    assert bob.one().what == "INVITE"


def test_other_requests_reach_a_busy_user(sip):
    bob = sip.tunnel("bob")
    bob.user.post("/api/status", state="busy")
    sip.send(request("MESSAGE", "sip:bob@example.org"))
    assert bob.one().what == "MESSAGE"


def test_offline_is_still_480(sip, world):
    gone = world.user("gone")
    gone.post("/api/status", state="busy")
    sip.send(invite("sip:gone@example.org"))
    assert codes(sip.sent()) == [480]
