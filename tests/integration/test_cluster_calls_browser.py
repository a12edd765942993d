"""A browser call across the boxes of a cluster, in headless Chromium
through a real coturn (docs/calls.md, "Calls across boxes").

Two real nodes share one real ``redis-server``; alice's page and session
are on box A, bob's on box B. alice calls bob from his communications page:
the call is box A's, bob's answer and candidates, posted to box B, are
carried out there, and the frames cross Redis. Both RTCPeerConnections
connect through the relay and audio flows both ways; bob hangs up and both
pages end the call. coturn or Chromium missing: the module skips (fails
under PRESENCE_REQUIRE_ALL=1).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser_support import chromium, log_in, pages_at, wait_live  # noqa: E402,F401
from cluster_support import (  # noqa: E402,F401  (fixtures)
    box_of, boxes, redis, start_cluster, wait_until,
)
from presence_harness import register, unique_name  # noqa: E402
from redis_support import fresh_prefix  # noqa: E402
from test_calls_browser import (  # noqa: E402,F401  (fixtures: fake media, coturn)
    _chromium_launcher, coturn, open_page_of, relayed_call,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_program("chromium", "turnserver")]


@pytest.fixture
def relayed_nodes(redis, coturn, tmp_path) -> Iterator[list]:
    secret = tmp_path / "turn-secret"
    secret.write_text(coturn.secret + "\n")
    os.chmod(secret, 0o600)
    options = ["--turn-url", f"turn:127.0.0.1:{coturn.port}?transport=udp",
               "--turn-secret-file", str(secret), "--turn-policy", "relay"]
    nodes = start_cluster(tmp_path, f"{redis.url}?prefix={fresh_prefix()}", ("a", "b"),
                          extra=lambda: options)
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def person(chromium: Any, node: Any, prefix: str, held: list) -> tuple:
    """A user with a live home page served by ``node``."""
    user = register(node.api(), unique_name(prefix))
    pages = pages_at(chromium, node.base)
    held.append(pages)
    page = next(pages).new()
    log_in(page, user.name, user.password)
    wait_live(page)
    return user, page


def test_alice_on_box_a_calls_bob_on_box_b_in_chromium(relayed_nodes, chromium):
    a, b = relayed_nodes
    held: list = []
    try:
        alice, alice_page = person(chromium, a, "alice", held)     # a tie: box A
        wait_until(lambda: boxes(b.api()) == {box_of(a): 1, box_of(b): 0}, 10,
                   "b counts alice's session on a")
        bob, bob_page = person(chromium, b, "bob", held)           # the emptiest: B
        wait_until(lambda: boxes(a.api()) == {box_of(a): 1, box_of(b): 1}, 10,
                   "one session on each box")
        open_page_of(alice_page, bob)
        relayed_call(alice, alice_page, bob, bob_page)
    finally:
        for pages in held:
            for _ in pages:     # closes the contexts, fails on script errors
                pass
