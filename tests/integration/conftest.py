"""Fixtures for integration tests that run the real ``twistd -n presence``.

* ``server`` (module scope): one server per test module, started with the
  options of the module's ``server_options`` fixture (override it in a module
  to change ``--keepalive``, ``--poll``, ``--linger``...).
* ``server_factory`` (function scope): start extra servers (own data dir,
  restarts on the same data dir); every one is killed at teardown.
* ``api``: an :class:`Api` for ``server``; ``make_user``: register + login.
* ``heartbeats``: opens :class:`HeartbeatReader` s that are closed at teardown.

Every server is started in its own process group and killed at teardown (and
at interpreter exit as a last resort), so no process outlives the tests.
"""
from __future__ import annotations

import atexit
import itertools
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from presence_harness import (  # noqa: E402
    Api,
    HeartbeatReader,
    ServerProcess,
    User,
    kill_all_servers,
    new_user,
)

atexit.register(kill_all_servers)

_server_seq = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


class ServerFactory:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[ServerProcess] = []

    def new_data_dir(self) -> Path:
        d = self.base / f"data{next(_server_seq)}"
        d.mkdir(parents=True)
        return d

    def start(self, data_dir: Path | None = None, log_path: Path | None = None, **options: Any) -> ServerProcess:
        data_dir = data_dir or self.new_data_dir()
        log_path = log_path or self.base / f"server{next(_server_seq)}.log"
        s = ServerProcess(data_dir, log_path, **options)
        self.servers.append(s)
        s.start()
        return s

    def close(self) -> None:
        for s in self.servers:
            s.kill()


def _dump_on_failure(request: pytest.FixtureRequest, servers: list[ServerProcess]) -> None:
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for s in servers:
            sys.stderr.write(f"\n----- server output ({s.log_path}) -----\n{s.output()[-6000:]}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    f = ServerFactory(tmp_path)
    try:
        yield f
    finally:
        _dump_on_failure(request, f.servers)
        f.close()


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    """Options of the module's ``server``; override in a test module."""
    return {"keepalive": 5, "poll": 1, "linger": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_options: dict[str, Any]) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("presence")
    f = ServerFactory(base)
    try:
        yield f.start(**server_options)
    finally:
        f.close()


@pytest.fixture
def api(server: ServerProcess, request: pytest.FixtureRequest) -> Iterator[Api]:
    yield server.api()
    _dump_on_failure(request, [server])
    assert server.running, f"the server died during the test; output:\n{server.output()[-6000:]}"


@pytest.fixture
def make_user(api: Api) -> Callable[..., User]:
    def make(prefix: str = "u") -> User:
        return new_user(api, prefix)

    return make


class Heartbeats:
    """Opens heartbeats on a server; all of them are closed at teardown."""

    def __init__(self, default_server: Callable[[], ServerProcess]) -> None:
        self._default_server = default_server
        self.readers: list[HeartbeatReader] = []

    def open(self, user: User, server: ServerProcess | None = None, **kw: Any) -> HeartbeatReader:
        s = server or self._default_server()
        r = HeartbeatReader.open(s.host, s.port, user.name, user.session, **kw)
        self.readers.append(r)
        return r

    def __call__(self, user: User, **kw: Any) -> HeartbeatReader:
        return self.open(user, **kw)

    def close(self) -> None:
        for r in self.readers:
            r.close()


@pytest.fixture
def heartbeats(request: pytest.FixtureRequest) -> Iterator[Heartbeats]:
    """Heartbeat opener; uses the module ``server`` unless given ``server=``."""
    h = Heartbeats(lambda: request.getfixturevalue("server"))
    try:
        yield h
    finally:
        h.close()
