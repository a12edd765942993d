"""Texting a handset, in memory and on one fake clock: the presence server
calls the simulator's operator API over (in-memory) HTTP as a Kannel client
would, the simulator delivers to the handset and calls the delivery-report
URL back, and the sender gets ``msg initChat`` or ``msg wireless
unavailable``; mobile-originated texts become chats."""

from __future__ import annotations

import pytest

from helpers import BASE, logged_errors  # noqa: F401
from presence.wireless.keys import proof_for
from test_wireless_support import SIM, Net

BOB_PHONE = "+15550001"


@pytest.fixture
def net(logged_errors):
    n = Net(validity=30.0)
    assert n.world.register("bob", wireless=BOB_PHONE).status == 201
    n.handset("bob", BOB_PHONE)
    n.alice = n.world.user("alice")
    n.hb = n.alice.heartbeat()
    yield n
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def text(net, to="bob", user=None):
    user = user or net.alice
    return net.call("POST", BASE + "/api/wireless/text",
                    data={"me": user.name, "id": user.session, "to": to})


def open_link(net, href, secret=None):
    token = href.rsplit("/", 1)[1]
    proof = proof_for(secret or net.secrets[BOB_PHONE], token)
    return net.call("GET", href, headers={"X-Handset-Proof": [proof]})


def handset_poll(net, after=0):
    r = net.get(f"{SIM}/handset/{BOB_PHONE}/poll", after=str(after), wait="0")
    assert r.status == 200
    return r.json["messages"]


def test_text_push_delivered_then_init_chat(net):
    handset_poll(net)                        # bob's handset is on the network
    r = text(net)
    assert (r.status, r.json) == (202, {"status": "sent"})
    [push] = handset_poll(net)
    assert push["type"] == "push" and push["text"] == "alice wants to chat"
    assert push["href"].startswith(BASE + "/wml/t/")
    assert "msg initChat bob" not in net.hb.heads()
    handset_poll(net, after=push["seq"])    # acknowledged: delivered to the phone
    assert net.hb.heads()[-1] == "msg initChat bob"
    # the handset opens the link with its proof: bob is logged in there, once
    r = open_link(net, push["href"])
    assert r.status == 200 and b"alice wants to chat." in r.body
    assert open_link(net, push["href"]).status == 410


def test_detached_handset_gives_wireless_unavailable(net):
    handset_poll(net)
    net.call("POST", f"{SIM}/handset/{BOB_PHONE}/detach")
    assert text(net).status == 202
    net.clock.advance(29.9)
    assert "msg wireless unavailable bob" not in net.hb.heads()
    net.clock.advance(0.1)
    assert net.hb.heads()[-1] == "msg wireless unavailable bob"
    # the link of an undelivered push is void
    token = next(iter(net.gateway.tokens))
    assert open_link(net, f"{BASE}/wml/t/{token}").status == 410


def test_a_handset_never_seen_fails_at_once(net):
    assert text(net).status == 202
    assert net.hb.heads()[-1] == "msg wireless unavailable bob"


def test_sms_mode_carries_the_link(net):
    net.gateway.via = "sms"
    handset_poll(net)
    assert text(net).status == 202
    [sms] = handset_poll(net)
    assert sms["type"] == "sms" and sms["from"] == "7777"
    assert sms["text"].startswith("alice wants to chat: " + BASE + "/wml/t/")
    handset_poll(net, after=sms["seq"])
    assert net.hb.heads()[-1] == "msg initChat bob"


@pytest.mark.parametrize("to, status", [("nobody", 404), ("alice", 404), ("", 400)])
def test_text_errors(net, to, status):
    r = text(net, to)
    assert r.status == status and set(r.json) == {"error"}


def test_text_needs_a_session(net):
    r = net.call("POST", BASE + "/api/wireless/text",
                 data={"me": "alice", "id": "forged", "to": "bob"})
    assert r.status == 403
    assert "forged" not in r.text


def test_text_with_the_session_cookie(net):
    handset_poll(net)
    r = net.call("POST", BASE + "/api/wireless/text", data={"to": "bob"},
                 headers={"Cookie": [f"presence_session={net.alice.session}"]})
    assert r.status == 202


def test_operator_refusal_is_502_and_leaves_no_token(net):
    net.gateway.password = "Pw-not-this-one"
    r = text(net)
    assert r.status == 502 and "refused" in r.json["error"]
    assert "Pw-not-this-one" not in r.text
    assert not net.gateway.tokens and not net.gateway.pending


def test_operator_down_is_503(net):
    net.router.down.add("sim.test")
    r = text(net)
    assert r.status == 503 and not net.gateway.tokens


def test_wireless_off_is_503(net):
    net.gateway.operator = None
    assert text(net).status == 503
    assert net.get(BASE + "/api/wireless").json == {"enabled": False, "via": "push"}


def test_texts_to_one_handset_are_limited_whatever_the_sender(net):
    handset_poll(net)
    # five senders, guests among them: the receiving handset's bound counts
    senders = [net.world.user(f"s{i}") for i in range(3)] + [net.world.guest()
                                                            for _ in range(3)]
    statuses = [text(net, user=u).status for u in senders]
    assert statuses == [202] * 5 + [429]
    net.clock.advance(30)
    assert text(net).status == 202


def gateway_text(net, user, to, ip) -> int:
    """``WirelessGateway.text`` for ``user``'s session from address ``ip``:
    202 or the error's status."""
    from twisted.internet import defer

    from presence.errors import ClientError

    d = defer.ensureDeferred(net.gateway.text(net.world.hub.session(user.session), to, ip))
    net.router.flush()
    box = []
    d.addBoth(box.append)
    [outcome] = box
    if isinstance(outcome, dict):
        return 202
    assert outcome.check(ClientError), outcome
    return outcome.value.status


def test_texts_are_limited_per_client_address_not_per_sender_name(net):
    for i in range(12):
        assert net.world.register(f"r{i}", wireless=f"+1555000{i + 100}").status == 201
    flood = "198.51.100.7"
    statuses = [gateway_text(net, net.world.guest(), f"r{i}", flood) for i in range(12)]
    # a new guest name for every text does not help: the address counts
    assert statuses[:10] == [202] * 10 and statuses[10:] == [429, 429]
    # a normal user elsewhere still texts while that address floods
    assert gateway_text(net, net.alice, "bob", "192.0.2.1") == 202
    assert gateway_text(net, net.world.guest(), "r11", flood) == 429
    net.clock.advance(6)
    assert gateway_text(net, net.world.guest(), "r11", flood) == 202


def test_delivery_report_endpoint(net):
    assert net.get(BASE + "/api/wireless/dlr", ref="nope", status="1").status == 404
    handset_poll(net)
    text(net)
    [ref] = list(net.gateway.pending)
    # intermediate reports change nothing
    assert net.get(BASE + "/api/wireless/dlr", ref=ref, status="8").status == 204
    assert net.get(BASE + "/api/wireless/dlr", ref=ref, status="x").status == 204
    assert ref in net.gateway.pending
    assert net.get(BASE + "/api/wireless/dlr", ref=ref, status="1").status == 204
    assert net.hb.heads()[-1] == "msg initChat bob"
    assert net.get(BASE + "/api/wireless/dlr", ref=ref, status="2").status == 404


def test_info(net):
    assert net.get(BASE + "/api/wireless").json == {"enabled": True, "via": "push"}


def test_the_json_api_still_answers_beside_the_wireless_calls(net):
    assert net.get(BASE + "/api/presence/alice").json["online"] is True
    assert net.get(BASE + "/api/wireless/nothing").status == 404


# -- mobile-originated texts ----------------------------------------------------------

def mo(net, text, number=BOB_PHONE, to="7777"):
    return net.post(f"{SIM}/handset/{number}/send", to=to, text=text)


def test_mo_chat_to_an_online_user(net):
    handset_poll(net)
    assert mo(net, "@alice hello from my phone").status == 202
    head, _, payload = net.hb.events()[-1].text.partition("\n")
    assert head.startswith("msg chat bob ") and payload == "hello from my phone"
    [reply] = handset_poll(net)
    assert reply["from"] == "7777" and reply["text"] == "To alice: delivered"


def test_mo_to_an_offline_user_is_kept(net):
    assert net.world.register("carol").status == 201
    handset_poll(net)
    assert mo(net, "carol: see you").status == 202
    assert net.world.store.messages("carol").result[0]["from"] == "bob"
    assert handset_poll(net)[0]["text"] == "carol is offline: left in their message box"


@pytest.mark.parametrize("message, number, answer", [
    ("hello", BOB_PHONE, "To chat, text: @name your message"),
    ("@nobody hi", BOB_PHONE, "No such user: nobody"),
])
def test_mo_answers(net, message, number, answer):
    r = net.get(f"{SIM}/handset/{number}/poll", wait="0")
    assert r.status == 200
    assert mo(net, message, number).status == 202
    r = net.get(f"{SIM}/handset/{number}/poll", wait="0")
    assert r.json["messages"][-1]["text"] == answer
