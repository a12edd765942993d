"""The WML buddy list and chat card show presence states and status text
(spec section 12), escaped, in valid decks (``test_wireless_wml``)."""

from __future__ import annotations

from test_wireless_wml import HOSTILE, Phone, net, register, valid, texts  # noqa: F401
from helpers import logged_errors  # noqa: F401  (a fixture)
from presence.wireless import decks


def test_the_buddy_list_shows_each_state_and_text(net):
    for name in ("alice", "bob", "carol", "dave", "erin"):
        register(net, name)
    alice = net.world.login("alice")
    for name in ("bob", "carol", "dave", "erin"):
        alice.post("/api/contacts", contact=name)
    for name, state, text in (("bob", "away", "lunch"), ("carol", "busy", ""),
                              ("dave", "available", "around")):
        user = net.world.login(name)
        user.heartbeat()
        assert user.post("/api/status", state=state, text=text).status == 200
    phone = Phone(net)
    phone.go("POST", "/wml/login", username="alice", password="correct horse")
    shown = phone.go("GET", "/wml/buddies").shown
    assert "bob away: lunch" in shown
    assert "carol busy" in shown
    assert "dave on: around" in shown
    assert "erin off" in shown
    card = phone.go("GET", "/wml/chat", **{"with": "bob"}).shown
    assert "bob is away: lunch" in card
    assert "erin is offline" in phone.go("GET", "/wml/chat", **{"with": "erin"}).shown


def test_hostile_status_text_is_escaped_in_the_decks():
    root = valid(decks.buddies([("bob", "busy", HOSTILE)])[0])
    assert "bob busy: " in texts(root)
    root = valid(decks.chat("bob", "away", [], "", HOSTILE))
    assert "bob is away: " in texts(root)
    assert root.find(".//script") is None


def test_an_offline_buddy_shows_no_text():
    root = valid(decks.buddies([("bob", "offline", "stale")])[0])
    assert "stale" not in texts(root) and "bob off" in texts(root)
