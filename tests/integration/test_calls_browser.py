"""Browser calls in a real browser through a real TURN relay (issue 15's proof).

Headless Chromium with a fake microphone and camera
(``--use-fake-device-for-media-stream --use-fake-ui-for-media-stream``), one
browser context per person, against the real ``twistd -n presence``
started with ``--turn-url`` / ``--turn-secret-file`` / ``--turn-policy
relay`` and a short ``--ring-timeout``, and a real coturn
(``/usr/bin/turnserver``) started here on loopback with the REST-API
secret.  alice calls bob, bob accepts: both RTCPeerConnections reach
``connected`` with ``iceTransportPolicy: "relay"`` (their selected
candidates are relay candidates of that coturn) and getStats() shows
inbound audio packets growing on both sides.  Then decline, busy, no
answer, hang-up and the callee going offline each end the call on both
pages, with the reason of ``msg call end`` (``data-reason``) and a message.

coturn or Chromium missing: the module skips (fails under
PRESENCE_REQUIRE_ALL=1).  Every wait is a condition with a deadline.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser_support import (  # noqa: F401  (fixtures)
    CHROMIUM_ARGS, Launcher, browser_pages, chromium, log_in, pages_at, row, wait_live,
)
from presence_harness import Api, free_port, register, unique_name

pytestmark = pytest.mark.requires_program("chromium", "turnserver")

FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              "--autoplay-policy=no-user-gesture-required"]
RING_TIMEOUT = 4
#: a call through the relay connects within this (ms)
CONNECT_TIMEOUT = 20_000


@pytest.fixture(scope="module")
def _chromium_launcher() -> Iterator[Launcher]:
    launcher = Launcher(CHROMIUM_ARGS + FAKE_MEDIA)
    try:
        yield launcher
    finally:
        launcher.close()


def stun_answers(port: int) -> bool:
    """Whether a STUN Binding request to 127.0.0.1:port (UDP) is answered."""
    request = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(request, ("127.0.0.1", port))
            data = s.recv(2048)
        except OSError:
            return False
    return data[:2] == b"\x01\x01" and data[8:20] == request[8:20]


class Coturn:
    """A coturn on 127.0.0.1:<port> (UDP and TCP) with the REST-API secret."""

    def __init__(self, program: str, folder: Path) -> None:
        self.port = free_port()
        self.secret = secrets.token_hex(16)
        self.folder = folder
        self.log = folder / "turnserver.log"
        config = folder / "turnserver.conf"
        # a config file, not the command line: the secret stays out of `ps`
        config.write_text("\n".join([
            "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={self.port}",
            "use-auth-secret", f"static-auth-secret={self.secret}", "realm=presence.test",
            "allow-loopback-peers", "no-cli", "no-tls", "no-dtls", "fingerprint",
            "no-stdout-log", f"log-file={self.log}", "simple-log",
            f"pidfile={folder / 'turnserver.pid'}", f"userdb={folder / 'turndb'}", ""]))
        self.proc = subprocess.Popen([program, "-c", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not stun_answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise AssertionError(f"turnserver did not answer STUN on {self.port}: {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def coturn(require_program: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    relay = Coturn(require_program("turnserver"), tmp_path_factory.mktemp("coturn"))
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def server_options(coturn: Coturn, tmp_path_factory: pytest.TempPathFactory) -> dict:
    secret = tmp_path_factory.mktemp("turn-secret") / "secret"
    secret.write_text(coturn.secret + "\n")
    os.chmod(secret, 0o600)
    return {"keepalive": 5, "poll": 0.5, "linger": 1,
            "turn_url": f"turn:127.0.0.1:{coturn.port}?transport=udp",
            "turn_secret_file": str(secret), "turn_policy": "relay",
            "ring_timeout": RING_TIMEOUT}


def _expect():
    from playwright.sync_api import expect
    return expect


def person(api: Any, browser_pages: Any, prefix: str) -> tuple:
    """A registered user logged in on a live home page of their own context."""
    user = register(api, unique_name(prefix))
    page = browser_pages.new()
    log_in(page, user.name, user.password)
    wait_live(page)
    return user, page


def open_page_of(page: Any, other: Any) -> None:
    """``page`` shows ``other``'s communications page, with ``other`` online."""
    page.goto(f"/call?name={other.name}")
    wait_live(page)
    _expect()(row(page, other.name)).to_have_attribute("data-presence", "online")


def call(page: Any, other: Any) -> None:
    row(page, other.name).locator("[data-action=call]").click()


def alice_and_bob(api: Any, pages: Any) -> tuple:
    """alice on bob's page, bob on his home page: (alice, her page, bob, his)."""
    alice, alice_page = person(api, pages, "alice")
    bob, bob_page = person(api, pages, "bob")
    open_page_of(alice_page, bob)
    return alice, alice_page, bob, bob_page


def answered(caller_page: Any, callee: Any, callee_page: Any) -> None:
    """The caller calls, the callee accepts: both pages in the call."""
    expect = _expect()
    call(caller_page, callee)
    expect(panel(callee_page)).to_have_attribute("data-state", "incoming")
    callee_page.locator("#call .call-accept").click()
    for page in (caller_page, callee_page):
        expect(panel(page)).to_have_attribute("data-state", "active", timeout=CONNECT_TIMEOUT)


def panel(page: Any) -> Any:
    return page.locator("#call")


def ended(page: Any, reason: str, text: str, timeout: int = 10_000) -> None:
    expect = _expect()
    expect(panel(page)).to_have_attribute("data-state", "ended", timeout=timeout)
    expect(panel(page)).to_have_attribute("data-reason", reason)
    expect(panel(page).locator(".call-status")).to_have_text(text)


STATS = """async () => {
  const c = window.presenceCall;
  const pc = c.pc;
  const stats = await pc.getStats();
  let packets = 0, pair = null, local = {};
  stats.forEach(s => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') packets += s.packetsReceived || 0;
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = s.selectedCandidatePairId;
  });
  let kinds = null;
  if (pair) {
    const p = stats.get(pair);
    kinds = [stats.get(p.localCandidateId).candidateType,
             stats.get(p.remoteCandidateId).candidateType];
  }
  return {packets, kinds, policy: pc.getConfiguration().iceTransportPolicy,
          state: pc.connectionState};
}"""


def audio_flows(page: Any) -> dict:
    """The call's figures once inbound audio packets grow (within 10 s)."""
    first = page.evaluate(STATS)
    deadline = time.monotonic() + 10
    while True:
        page.wait_for_timeout(250)   # a sampling interval of getStats, not a wait for a state
        now = page.evaluate(STATS)
        if now["packets"] > first["packets"] > 0 or time.monotonic() > deadline:
            return {"first": first, "now": now}


def relayed_call(alice: Any, alice_page: Any, bob: Any, bob_page: Any) -> None:
    """alice (on bob's page) calls bob, who accepts: both connect through
    the relay and audio flows both ways; then bob hangs up."""
    expect = _expect()
    call(alice_page, bob)
    expect(panel(bob_page)).to_have_attribute("data-state", "incoming")
    expect(panel(bob_page).locator(".call-status")).to_have_text(
        f"{alice.name} is calling you.")
    expect(panel(alice_page)).to_have_attribute("data-state", "ringing")
    bob_page.locator("#call .call-accept").click()
    for page in (alice_page, bob_page):
        expect(panel(page)).to_have_attribute("data-state", "active", timeout=CONNECT_TIMEOUT)
        expect(panel(page)).to_have_attribute("data-connection", "connected",
                                              timeout=CONNECT_TIMEOUT)
    for page in (alice_page, bob_page):
        flow = audio_flows(page)
        now = flow["now"]
        assert now["policy"] == "relay" and now["state"] == "connected", flow
        assert now["kinds"] == ["relay", "relay"], flow
        assert now["packets"] > flow["first"]["packets"] > 0, flow
    # bob hangs up: both pages end the call
    bob_page.locator("#call .call-hangup").click()
    ended(bob_page, "hangup", "You hung up.")
    ended(alice_page, "hangup", f"{bob.name} hung up.")


def test_alice_calls_bob_through_coturn_and_audio_flows_both_ways(api, browser_pages,
                                                                  coturn, server):
    alice, alice_page, bob, bob_page = alice_and_bob(api, browser_pages)
    relayed_call(alice, alice_page, bob, bob_page)
    assert alice_page.evaluate("window.presenceCall.pc.connectionState") == "closed"
    # the TURN secret is in no line the server logged
    assert coturn.secret not in server.output()


def test_decline_busy_and_no_answer(api, browser_pages):
    expect = _expect()
    alice, alice_page, bob, bob_page = alice_and_bob(api, browser_pages)
    _, carol_page = person(api, browser_pages, "carol")
    open_page_of(carol_page, bob)

    # bob declines
    call(alice_page, bob)
    expect(panel(bob_page)).to_have_attribute("data-state", "incoming")
    bob_page.locator("#call .call-decline").click()
    ended(bob_page, "declined", "You declined the call.")
    ended(alice_page, "declined", f"{bob.name} declined the call.")

    # carol calls bob while alice's call rings there: busy; bob is not disturbed
    call(alice_page, bob)
    expect(panel(bob_page)).to_have_attribute("data-state", "incoming")
    call(carol_page, bob)
    ended(carol_page, "busy", f"{bob.name} is busy: in another call.")
    expect(panel(bob_page)).to_have_attribute("data-state", "incoming")
    expect(panel(bob_page).locator(".call-status")).to_have_text(
        f"{alice.name} is calling you.")

    # ... and nobody answers alice's call for --ring-timeout seconds
    ended(alice_page, "noanswer", f"{bob.name} did not answer.",
          timeout=(RING_TIMEOUT + 5) * 1000)
    ended(bob_page, "noanswer", f"Missed call from {alice.name}.")


def test_caller_hangs_up_and_callee_goes_offline(api, browser_pages):
    expect = _expect()
    alice, alice_page, bob, bob_page = alice_and_bob(api, browser_pages)

    # alice cancels while it rings
    call(alice_page, bob)
    expect(panel(bob_page)).to_have_attribute("data-state", "incoming")
    alice_page.locator("#call .call-hangup").click()
    ended(alice_page, "hangup", "Call cancelled.")
    ended(bob_page, "cancelled", f"{alice.name} hung up before you answered.")

    # a call in progress, then bob's session ends (he logs out elsewhere)
    answered(alice_page, bob, bob_page)
    assert bob_page.evaluate("""() => fetch('/api/logout', {method: 'POST',
        credentials: 'same-origin', body: new URLSearchParams({me: document.getElementById(
        'live').getAttribute('data-me')})}).then(r => r.status)""") == 204
    ended(alice_page, "offline", f"{bob.name} went offline: the call ended.")
    ended(bob_page, "offline", "Your session ended: so did the call.")

    # bob again, on a page he then closes while alice's call rings there
    bob_page2 = browser_pages.new()
    log_in(bob_page2, bob.name, bob.password)
    wait_live(bob_page2)
    open_page_of(alice_page, bob)
    call(alice_page, bob)
    expect(panel(bob_page2)).to_have_attribute("data-state", "incoming")
    bob_page2.close()
    ended(alice_page, "offline", f"{bob.name} went offline: the call ended.")


def test_a_guest_calls_only_once_the_user_allows_it(api, browser_pages):
    expect = _expect()
    alice, alice_page = person(api, browser_pages, "alice")
    guest = browser_pages.new()
    guest.goto(f"/call?name={alice.name}")
    wait_live(guest)
    expect(row(guest, alice.name)).to_have_attribute("data-presence", "online")
    call(guest, alice)
    ended(guest, "error", f"{alice.name} takes calls from members only: log in to call them")
    expect(panel(alice_page)).to_have_attribute("data-state", "idle")

    # alice lets guests call her (Settings, in another tab)
    settings = browser_pages.tab(alice_page.context)
    settings.goto("/settings")
    settings.check("#f-guest-calls")
    settings.locator("#guest-calls button[type=submit]").click()
    expect(settings.locator(".notice").first).to_have_text(
        "Saved: who may call you in the browser.")
    settings.close()

    call(guest, alice)
    guest_name = guest.locator("#live").get_attribute("data-me")
    expect(panel(alice_page)).to_have_attribute("data-state", "incoming")
    expect(panel(alice_page).locator(".call-status")).to_have_text(
        f"{guest_name} is calling you.")
    alice_page.locator("#call .call-accept").click()
    expect(panel(guest)).to_have_attribute("data-state", "active", timeout=CONNECT_TIMEOUT)
    guest.locator("#call .call-hangup").click()
    ended(guest, "hangup", "You hung up.")
    ended(alice_page, "hangup", f"{guest_name} hung up.")


VIDEO_FRAMES = """async () => {
  const stats = await window.presenceCall.pc.getStats();
  let frames = 0;
  stats.forEach(s => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0;
  });
  return frames > 0;
}"""


def test_a_video_call(api, browser_pages):
    expect = _expect()
    alice, alice_page, bob, bob_page = alice_and_bob(api, browser_pages)
    alice_page.check("#call .call-video")
    call(alice_page, bob)
    expect(panel(bob_page).locator(".call-status")).to_have_text(
        f"{alice.name} is calling you (video).")
    expect(bob_page.locator("#call .call-video")).to_be_checked()
    bob_page.locator("#call .call-accept").click()
    for page in (alice_page, bob_page):
        expect(panel(page)).to_have_attribute("data-state", "active", timeout=CONNECT_TIMEOUT)
        page.wait_for_function(VIDEO_FRAMES, timeout=10_000)
        expect(page.locator("#call .call-remote")).to_be_visible()
    alice_page.locator("#call .call-hangup").click()
    ended(bob_page, "hangup", f"{alice.name} hung up.")


RELAY_PROTOCOL = """async () => {
  const stats = await window.presenceCall.pc.getStats();
  let pair = null;
  stats.forEach(s => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = s.selectedCandidatePairId;
  });
  if (!pair) return null;
  const local = stats.get(stats.get(pair).localCandidateId);
  return [local.candidateType, local.relayProtocol];
}"""


def test_turn_over_tcp_for_a_browser_whose_udp_is_blocked(server_factory, server_options,
                                                         chromium):
    """The relay reached over TCP (``?transport=tcp``: what a UDP-blocking
    firewall leaves, and port 443 in the documented config)."""
    options = dict(server_options, turn_url=server_options["turn_url"].replace(
        "transport=udp", "transport=tcp"))
    server = server_factory.start(**options)
    api = Api(server.host, server.port)
    pages = pages_at(chromium, server.base)
    browser = next(pages)
    try:
        _, alice_page, bob, bob_page = alice_and_bob(api, browser)
        answered(alice_page, bob, bob_page)
        for page in (alice_page, bob_page):
            assert page.evaluate(RELAY_PROTOCOL) == ["relay", "tcp"]
            flow = audio_flows(page)
            assert flow["now"]["packets"] > flow["first"]["packets"] > 0, flow
        bob_page.locator("#call .call-hangup").click()
        ended(alice_page, "hangup", f"{bob.name} hung up.")
    finally:
        next(pages, None)
