"""The media relay's options in ``twistd presence`` (``--relay``,
``--relay-advertise``, ``--relay-ports``, ``--relay-calls``,
``--relay-timeout``) and its wiring into the SIP front-end."""

from __future__ import annotations

import pytest
from twisted.python import usage

from presence.sip.frontend import SipUDPService
from presence.sip.media import MediaAnchor
from presence.sip.proxy import TUNNEL, UDP, Hop
from presence.sip.relay import ReactorUdp
from test_sip_tap import built, parse, start  # noqa: F401  (fixture)


def test_defaults():
    options = parse()
    assert options["relay"] == "auto" and options["relay-advertise"] == ""
    assert options["relay-ports"] == (40000, 40999)
    assert options["relay-calls"] == 200 and options["relay-timeout"] == 60.0


def test_values_are_read():
    options = parse("--relay", "127.0.0.1", "--relay-advertise", "198.51.100.4",
                    "--relay-ports", "20000-20999", "--relay-calls", "50",
                    "--relay-timeout", "30")
    assert (options["relay"], options["relay-advertise"], options["relay-ports"],
            options["relay-calls"], options["relay-timeout"]) == (
        "127.0.0.1", "198.51.100.4", (20000, 20999), 50, 30.0)
    assert parse("--relay", "NONE")["relay"] == "none"


@pytest.mark.parametrize("bad", [
    ("--relay", "everywhere"), ("--relay", "0.0.0.0"), ("--relay", "224.0.0.1"),
    ("--relay", "::1"), ("--relay-advertise", "example.org"),
    ("--relay-ports", "40000"), ("--relay-ports", "1000-2000"), ("--relay-ports", "5-4"),
    ("--relay-ports", "40000-40001"), ("--relay-ports", "40000-70000"),
    ("--relay-calls", "0"), ("--relay-calls", "many"), ("--relay-timeout", "1"),
    ("--relay-ports", "5000-5100", "--sip", "5060"),
    ("--relay", "none", "--relay-advertise", "198.51.100.4"),
])
def test_bad_values_are_refused_with_a_message(bad):
    with pytest.raises(usage.UsageError) as e:
        parse(*bad)
    assert str(e.value)


def test_help_documents_them(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    for name in ("--relay=", "--relay-advertise=", "--relay-ports=", "--relay-calls=",
                 "--relay-timeout="):
        assert name in out


def front(top):
    return next(s for s in top if isinstance(s, SipUDPService)).front


def test_the_front_end_builds_the_relay_from_the_options(built):
    top, reactor = built("--sip", "15064", "--relay-ports", "21000-21099",
                         "--relay-calls", "7", "--relay-timeout", "20")
    sip = front(top)
    relay = sip.relay
    assert isinstance(sip.proxy.media, MediaAnchor) and sip.proxy.media.relay is relay
    assert relay.ports == (21000, 21099) and relay.max_calls == 7 and relay.timeout == 20
    assert isinstance(relay.udp, ReactorUdp) and relay.udp.interface == ""
    assert reactor.udpServers == []  # ports are bound per call, none at start
    start(top)
    assert "relay_calls" in sip.stats() and sip.stats()["relay_port_pairs_free"] == 50
    # the address written into SDP: the one facing each side
    class Session:
        ip = "127.0.0.1"
    assert sip._relay_address(Hop(TUNNEL, session=Session())) == "127.0.0.1"
    assert sip._relay_address(Hop(UDP, "127.0.0.1", 5062)) == "127.0.0.1"


def test_a_bound_or_advertised_address_is_used_as_given(built):
    top, _ = built("--sip", "15065", "--relay", "127.0.0.1")
    sip = front(top)
    assert sip.relay.udp.interface == "127.0.0.1"
    assert sip._relay_address(Hop(UDP, "198.51.100.9", 5060)) == "127.0.0.1"
    top, _ = built("--sip", "15066", "--relay-advertise", "198.51.100.4")
    sip = front(top)
    assert sip.relay.udp.interface == ""
    assert sip._relay_address(Hop(UDP, "127.0.0.1", 5060)) == "198.51.100.4"


def test_relay_none_leaves_sdp_alone(built):
    top, _ = built("--sip", "15067", "--relay", "none")
    sip = front(top)
    assert sip.relay is None and sip.proxy.media is None
    assert not any(k.startswith("relay_") for k in sip.stats())
