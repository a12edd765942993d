"""presence-client's presence state (``--state``, ``--status``,
``--away-after``, ``/state``): :class:`presence.cli.client.StateReporter` on
a Clock with a fake client that records its calls (no reactor, no sleep)."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from presence.cli.client import CommandHandler, StateReporter, build_parser


class FakeClient:
    def __init__(self) -> None:
        self.session: Any = None
        self.calls: List[Tuple[str, str, dict]] = []
        self.refuse = False

    def call(self, method: str, path: str, fields: dict):
        self.calls.append((method, path, fields))
        return fail(RuntimeError("down")) if self.refuse else succeed(None)

    def sent(self) -> List[Tuple[str, str]]:
        return [(f["state"], f["text"]) for m, p, f in self.calls
                if (m, p) == ("POST", "/api/status")]


def reporter(**kw):
    clock, client, said = Clock(), FakeClient(), []
    r = StateReporter(client, clock, said.append, **kw)
    r.start()
    return clock, client, r, said


def test_nothing_is_sent_for_available_and_busy_is_sent_once_per_session():
    clock, client, r, _ = reporter()
    client.session = object()
    clock.advance(10)
    assert client.sent() == []
    clock, client, r, _ = reporter(state="busy", text="deep work")
    clock.advance(5)                           # no session yet
    assert client.sent() == []
    client.session = object()
    clock.advance(5)
    clock.advance(5)
    assert client.sent() == [("busy", "deep work")]
    client.session = object()                  # a new session starts available
    clock.advance(5)
    assert client.sent() == [("busy", "deep work")] * 2


def test_idle_turns_away_and_input_brings_it_back():
    clock, client, r, _ = reporter(idle=60)
    client.session = object()
    clock.advance(45)
    assert client.sent() == []
    clock.advance(15)
    assert client.sent() == [("away", "")]
    clock.advance(60)
    assert client.sent() == [("away", "")]     # once
    r.input()                                   # a command was typed
    assert client.sent() == [("away", ""), ("available", "")]
    r.choose("busy", "call")                    # busy is never turned away
    clock.advance(600)
    assert client.sent()[-1] == ("busy", "call") and len(client.sent()) == 3


def test_a_failed_report_is_said_and_tried_again():
    clock, client, r, said = reporter(state="away")
    client.session = object()
    client.refuse = True
    clock.advance(5)
    assert said and "state not set" in said[0]
    client.refuse = False
    clock.advance(5)
    assert client.sent()[-1] == ("away", "") and len(client.sent()) == 2


def test_the_state_command():
    clock, client, r, _ = reporter()
    client.session = object()
    said: List[str] = []
    handler = CommandHandler(client, said.append, r)
    handler.line("/state away back at 3")
    assert client.sent() == [("away", "back at 3")] and said == ["state: away"]
    handler.line("/state online")
    assert "error: state must be" in said[-1]
    handler.line("/state busy " + "x" * 141)
    assert "at most 140" in said[-1] and len(client.sent()) == 1


def test_the_command_line():
    args = build_parser().parse_args(["--user", "bob", "--state", "busy", "--status", "call",
                                      "--away-after", "2.5"])
    assert (args.state, args.status, args.away_after) == ("busy", "call", 2.5)
    for bad in (["--state", "online"], ["--away-after", "0"], ["--away-after", "inf"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--user", "bob", *bad])
