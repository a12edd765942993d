"""Real clusters for the integration tests: nodes of ``twistd presence``
sharing one real ``redis-server`` (tests/redis_support.py starts it).

Used by test_cluster.py, test_cluster_pages.py and test_cluster_fronts.py.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, List

import pytest

from presence_harness import Api, ServerProcess, User, expect, free_port
from redis_support import fresh_prefix, start_redis


def start_node(tmp: Path, url: str, name: str, extra: Iterable[str] = ()) -> ServerProcess:
    port = free_port()
    node = ServerProcess(tmp / name, tmp / f"{name}.log",
                         extra_args=["--http", f"tcp:{port}:interface=127.0.0.1",
                                     "--redis", url, "--host-box", f"127.0.0.1:{port}",
                                     *extra])
    return node.start()


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)   # polling a condition, with a deadline


def boxes(api: Api) -> dict:
    r = expect(api.get("/api/cluster"), 200, "GET /api/cluster")
    return {b["box"]: b["sessions"] for b in r.json()["boxes"]}


def box_of(node: ServerProcess) -> str:
    return f"127.0.0.1:{node.port}"


def start_cluster(tmp: Path, url: str, names: Iterable[str],
                  extra: Callable[[], Iterable[str]] = tuple) -> List[ServerProcess]:
    """Nodes (``extra()``: more options for each), once each of them sees
    all of them; the caller stops them (this does if it raises)."""
    nodes: List[ServerProcess] = []
    try:
        for name in names:
            nodes.append(start_node(tmp, url, name, extra()))
        everyone = {box_of(n) for n in nodes}
        for n in nodes:
            wait_until(lambda: set(boxes(n.api())) == everyone, 15,
                       f"{n.port} sees every box")
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return nodes


def node_of(nodes, user: User) -> ServerProcess:
    box = user.login_body["host_box"]
    return next(n for n in nodes if box_of(n) == box)


# -- fixtures (import them into a test module by name) ---------------------------------

@pytest.fixture(scope="module")
def redis(request, tmp_path_factory):
    return start_redis(request, tmp_path_factory)


@pytest.fixture
def two_nodes(redis, tmp_path):
    nodes = start_cluster(tmp_path, f"{redis.url}?prefix={fresh_prefix()}", ("a", "b"))
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()
