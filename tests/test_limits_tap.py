"""The abuse-limit options of ``twistd presence`` reach the service and the hub."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from presence import tap
from presence.service import Limits


def built(tmp_path, monkeypatch, *args: str):
    made = {}
    real = tap.PresenceService

    def capture(hub, store, hasher, **kw):
        made["service"] = service = real(hub, store, hasher, **kw)
        return service

    monkeypatch.setattr(tap, "PresenceService", capture)
    options = tap.Options()
    options.parseOptions(["--http", "tcp:18082:interface=127.0.0.1", "--data",
                          str(tmp_path / "data"), "--hash-cost", "1", "--smsc", "none",
                          "--sip", "0", *args])
    tap.makeService(options, reactor=MemoryReactorClock())
    return made["service"]


def test_the_defaults_are_the_documented_limits(tmp_path, monkeypatch):
    service = built(tmp_path, monkeypatch)
    assert service.limits == Limits()
    assert service.max_guests == 10000
    assert service.hub.config.guest_ttl == 300.0
    assert (service.chat_by_session.capacity, service.chat_by_session.rate) == (1200, 10)


def test_the_options_reach_the_service_and_the_hub(tmp_path, monkeypatch):
    service = built(tmp_path, monkeypatch, "--chat-limit", "10:0.5",
                    "--address-chat-limit", "40:2", "--box-quota", "50:65536",
                    "--guest-ttl", "60", "--max-guests", "500", "--guests-per-address", "7",
                    "--registrations-per-hour", "3")
    limits = service.limits
    assert limits.chat_session == (10, 0.5) and limits.chat_address == (40, 2.0)
    assert (limits.box_messages, limits.box_bytes) == (50, 65536)
    assert limits.guests_per_address == 7 and limits.registrations == 3
    assert service.max_guests == 500
    assert service.hub.config.guest_ttl == 60.0
    assert (service.chat_by_address.capacity, service.chat_by_address.rate) == (40, 2.0)
    assert service.register_limit.capacity == 3


@pytest.mark.parametrize("args", [
    ["--chat-limit", "30"], ["--chat-limit", "0:1"], ["--chat-limit", "a:b"],
    ["--address-chat-limit", "5:-1"], ["--box-quota", "10:1.5"], ["--box-quota", "0:10"],
    ["--guest-ttl", "0"], ["--max-guests", "0"], ["--guests-per-address", "-1"],
    ["--registrations-per-hour", "x"],
])
def test_bad_limits_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        tap.Options().parseOptions(args)


def test_help_names_the_limit_options(capsys):
    with pytest.raises(SystemExit):
        tap.Options().parseOptions(["--help"])
    text = capsys.readouterr().out
    for name in ("chat-limit", "address-chat-limit", "box-quota", "guest-ttl", "max-guests",
                 "guests-per-address", "registrations-per-hour"):
        assert f"--{name}=" in text, name
