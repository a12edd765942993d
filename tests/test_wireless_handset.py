"""The handset emulator in memory on a fake clock: it attaches, prints what
arrives, opens push links in its WML browser, holds the session's heartbeat,
replies through the chat card, sends texts, detaches; commands and
``wait-for`` as a script uses them."""

from __future__ import annotations

from typing import List

import pytest
from twisted.internet import defer

from helpers import BASE, failure_of, logged_errors, result_of  # noqa: F401
from presence.cli.handset import HandsetEmulator, WaitTimeout, build_parser
from test_wireless_support import SIM, Net

BOB_PHONE = "+15550001"


def pump(net, rounds: int = 12) -> None:
    for _ in range(rounds):
        net.router.flush()


@pytest.fixture
def net(logged_errors):
    n = Net(validity=30.0)
    assert n.world.register("bob", wireless=BOB_PHONE).status == 201
    n.handset("bob", BOB_PHONE)
    n.alice = n.world.user("alice")
    n.hb = n.alice.heartbeat()
    yield n
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


@pytest.fixture
def phone(net):
    lines: List[str] = []
    em = HandsetEmulator(net.clock, SIM, BOB_PHONE, server=BASE, http=net.router,
                         heartbeat_http=net.router, out=lines.append,
                         secret=net.secrets[BOB_PHONE])
    em.printed = lines
    em.attach()
    pump(net)
    yield em
    defer.ensureDeferred(em.stop())
    pump(net)


def command(net, em, line: str) -> bool:
    d = defer.ensureDeferred(em.command(line))
    pump(net)
    return result_of(d)


def texted(net):
    r = net.call("POST", BASE + "/api/wireless/text",
                 data={"me": "alice", "id": net.alice.session, "to": "bob"})
    assert r.status == 202
    pump(net)


def test_push_link_heartbeat_and_chat_both_ways(net, phone):
    assert net.sim.status(BOB_PHONE)["attached"] is True
    texted(net)
    out = "\n".join(phone.printed)
    assert "<< PUSH from 7777: alice wants to chat <http://presence.test/wml/t/" in out
    assert "== Chat alice ==" in out and "alice wants to chat." in out
    assert "* holding the heartbeat of bob on http://presence.test" in out
    assert "msg initChat alice" in out
    # delivered: the sender was told
    assert "msg initChat bob" in net.hb.heads()
    assert net.world.hub.is_online("bob")
    net.alice.post("/chat", to="bob", msg="hi bob")
    pump(net)
    assert result_of(phone.wait_for(r"^  hi bob$", 1)) == "  hi bob"
    assert any(line.startswith("[") and " msg chat alice " in line for line in phone.printed)
    assert command(net, phone, "reply hello alice") is True
    head, _, payload = net.hb.events()[-1].text.partition("\n")
    assert head.startswith("msg chat bob ") and payload == "hello alice"


def test_wait_for_sees_earlier_lines_once_and_times_out(net, phone):
    phone.say("alpha")
    phone.say("beta")
    assert result_of(phone.wait_for("alpha")) == "alpha"
    assert result_of(phone.wait_for("beta")) == "beta"
    d = phone.wait_for("alpha", 5)   # consumed already: waits for a new one
    net.clock.advance(5)
    failure_of(d, WaitTimeout)
    d = phone.wait_for("gamma", 5)
    phone.say("gamma ray")
    assert result_of(d) == "gamma ray"


def test_a_script_style_wait_for_command(net, phone):
    d = defer.ensureDeferred(phone.command('wait-for "PUSH from" 10'))
    assert not d.called
    texted(net)
    assert result_of(d) is True


def test_sms_arrives_and_mo_text_reaches_alice(net, phone):
    assert command(net, phone, "sms 7777 @alice from the keypad")
    head, _, payload = net.hb.events()[-1].text.partition("\n")
    assert head.startswith("msg chat bob ") and payload == "from the keypad"
    assert "<< SMS from 7777: To alice: delivered" in phone.printed
    assert ">> SMS to 7777: accepted" in phone.printed
    command(net, phone, "sms +19999999 anyone?")
    assert any("refused (404)" in line for line in phone.printed)


def test_detach_and_attach(net, phone):
    command(net, phone, "detach")
    assert net.sim.status(BOB_PHONE)["attached"] is False
    texted(net)
    net.clock.advance(30)
    pump(net)
    assert net.hb.heads()[-1] == "msg wireless unavailable bob"
    command(net, phone, "attach")
    assert net.sim.status(BOB_PHONE)["attached"] is True


def test_messages_queued_while_away_arrive_in_order_on_attach(net, phone):
    command(net, phone, "detach")
    for i in range(3):
        net.post(SIM + "/cgi-bin/sendsms", username="presence", password="sim-secret",
                 to=BOB_PHONE, text=f"queued {i}")
    command(net, phone, "attach")
    pump(net)
    got = [line for line in phone.printed if line.startswith("<< SMS")]
    assert got == [f"<< SMS from 7777: queued {i}" for i in range(3)]
    assert phone.after == 3


def test_browsing_commands(net, phone):
    command(net, phone, "login bob correct horse")
    assert any("Hello bob" in line for line in phone.printed)
    command(net, phone, "chat alice")
    assert "alice is online" in phone.printed
    command(net, phone, "set msg typed by hand")
    command(net, phone, "accept")
    assert net.hb.events()[-1].text.endswith("\ntyped by hand")
    command(net, phone, "show")
    command(net, phone, "back")
    command(net, phone, "3")
    command(net, phone, "bogus")
    assert any(line.startswith("* commands:") for line in phone.printed)
    assert command(net, phone, "# a comment") is True
    assert command(net, phone, "quit") is False


def test_network_errors_are_retried(net):
    lines: List[str] = []
    net.router.down.add("sim.test")
    em = HandsetEmulator(net.clock, SIM, BOB_PHONE, http=net.router, out=lines.append,
                         secret=net.secrets[BOB_PHONE])
    em.attach()
    pump(net)
    assert any("retrying in 0.5s" in line for line in lines)
    net.router.down.discard("sim.test")
    net.clock.advance(0.5)
    pump(net)
    assert net.sim.status(BOB_PHONE)["attached"] is True
    result_of(defer.ensureDeferred(em.stop()))


def test_the_command_line():
    args = build_parser().parse_args(["--number", "+15550001", "--smsc", "http://s:1",
                                      "--script", "f.txt", "--no-follow"])
    assert args.number == "+15550001" and args.script == "f.txt" and args.no_follow
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
