"""The operator endpoint of cluster nodes (``--redis``): each node its own
port; the Redis round trip, pub/sub lag and readiness follow Redis; a
notice from one node's console reaches sessions held by another."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presence_harness import Api, HeartbeatReader, expect, login, register  # noqa: E402
from redis_support import fresh_prefix, start_redis  # noqa: E402
from cluster_support import start_node, wait_until  # noqa: E402
from test_operators import admin, bearer, post, scrape, value  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.requires_program("redis-server")]


@pytest.fixture
def redis(request, tmp_path_factory):
    return start_redis(request, tmp_path_factory)


def test_two_nodes_report_redis_and_share_a_notice(redis, tmp_path):
    url = f"{redis.url}?prefix={fresh_prefix()}"
    a = start_node(tmp_path, url, "a")
    b = start_node(tmp_path, url, "b")
    try:
        assert a.admin_port != b.admin_port
        for node in (a, b):
            wait_until(lambda: value(scrape(node), "presence_cluster_redis_up") == 1, 10,
                       "Redis up")
        samples = wait_until(lambda: (lambda s: s if value(s, "presence_cluster_boxes") == 2
                                      else None)(scrape(a)), 15, "a sees two boxes")
        assert value(samples, "presence_redis_rtt_seconds_count",
                     box=f"127.0.0.1:{a.port}") >= 1
        # a login through a is placed on b (a has one session already)
        api_a = a.api()
        first, second = register(api_a), register(api_a)
        login(api_a, first)
        login(api_a, second)
        placed = second.login_body["host_box"]
        other = b if placed == f"127.0.0.1:{b.port}" else a
        hb = HeartbeatReader.open(other.host, other.port, second.name, second.session)
        sent = expect(Api("127.0.0.1", a.admin_port).post(
            "/api/notice", json_body={"text": "cluster-wide"}, headers=bearer(a)), 200).json()
        assert sent["sessions"] >= 1
        assert hb.wait_for("msg notice").payload == "cluster-wide"
        # the console of the box that does not hold the session lists it
        # (on its box) and ends it there
        console = a if other is b else b
        listed = wait_until(lambda: (lambda u: u if u["sessions"] else None)(expect(
            admin(console).get("/api/user", query={"name": second.name},
                               headers=bearer(console)), 200).json()), 10, "listed")
        (row,) = listed["sessions"]
        assert row["host_box"] == placed and row["mailbox"] is None
        assert second.session not in str(listed)
        ended = expect(post(console, "/api/session/end", name=second.name,
                            handle=row["handle"]), 200).json()
        assert ended == {"ended": second.name}
        hb.wait_for("msg bye admin")
        hb.close()
        wait_until(lambda: value(scrape(b), "presence_pubsub_lag_seconds_count",
                                 box=f"127.0.0.1:{b.port}") >= 1, 10, "pub/sub lag timed")
        # Redis goes: not ready, and the gauge says why
        redis.stop()
        wait_until(lambda: Api("127.0.0.1", a.admin_port).get("/readyz").text ==
                   "not ready: directory, redis\n", 20, "a not ready: directory, redis")
        assert value(scrape(a), "presence_cluster_redis_up") == 0
        redis.start()
        wait_until(lambda: Api("127.0.0.1", a.admin_port).get("/readyz").status == 200, 30,
                   "a ready again")
    finally:
        a.stop()
        b.stop()
