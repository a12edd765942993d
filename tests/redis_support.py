"""A real ``redis-server`` for the tests of the directory in Redis.

:class:`RedisServer` starts ``redis-server`` on a free loopback port with
append-only persistence in a temporary directory and no RDB snapshots
(``--save ""``), waits until it answers ``PING`` (never a fixed sleep), and
can be stopped, killed (SIGKILL) and started again on the same port and
files.  The fixtures skip with a clear reason when ``redis-server`` is
missing (a failure under ``PRESENCE_REQUIRE_ALL=1``, see ``conftest.py``).

The Redis client (txredisapi) runs on the real reactor, which pytest-twisted
runs in a greenlet of its own.  Tests marked ``blocking`` run their body
outside that greenlet (see ``conftest.py``), so that :func:`settle` can wait
for a Deferred with ``pytest_twisted.blockon`` while the reactor turns; a
Deferred that has fired already (SQLite's, with ``run_now``) is left as it is.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time
from typing import Any, List, Optional

import pytest
from twisted.internet import defer

from free_ports import tcp_port as free_port

#: seconds the server may take to answer PING after it was started
START_TIMEOUT = 15.0
#: seconds a Deferred of a test may take (the directory's own bound is 2 s)
WAIT_TIMEOUT = 30.0


def ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, program: str, directory: str, appendfsync: str = "everysec",
                 password: Optional[str] = None, unixsocket: bool = False) -> None:
        self.program = program
        self.directory = directory
        self.appendfsync = appendfsync
        self.password = password
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None
        self.log = os.path.join(directory, "redis.log")
        #: the path of its unix socket too, if asked for
        self.socket = os.path.join(directory, "redis.sock") if unixsocket else None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.program, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync,
                "--dir", self.directory, "--logfile", self.log]
        if self.password:
            args += ["--requirepass", self.password]
        if self.socket:
            args += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.process.returncode}): "
                                   f"{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING: {self._log_tail()}")
            time.sleep(0.02)   # polling a condition, with a deadline
        return self

    def _answers(self) -> bool:
        if not self.password:
            return ping(self.port)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"AUTH %s\r\nPING\r\n" % self.password.encode())
                got = b""
                while got.count(b"\r\n") < 2:
                    chunk = s.recv(64)
                    if not chunk:
                        return False
                    got += chunk
                return got.endswith(b"+PONG\r\n")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()[-800:]
        except OSError:
            return "(no log)"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGTERM: it writes its AOF and exits; SIGKILL:
        it dies at once) and wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def command(self, *args: str) -> bytes:
        """One command over a plain socket, its raw reply (for test checks)."""
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            if self.password:
                s.sendall(b"AUTH %s\r\n" % self.password.encode())
                s.recv(64)
            s.sendall(b"".join(parts))
            return s.recv(1 << 16)


def start_redis(request: pytest.FixtureRequest, tmp_path_factory: Any, **kw: Any) -> RedisServer:
    program = request.getfixturevalue("require_program")("redis-server")
    server = RedisServer(program, str(tmp_path_factory.mktemp("redis")), **kw).start()
    request.addfinalizer(server.stop)
    return server


_prefixes = itertools.count(1)


def fresh_prefix() -> str:
    """A key prefix no other test of this run uses (one server, many tests)."""
    return f"t{os.getpid()}-{next(_prefixes)}:"


def settle(d: Any) -> defer.Deferred:
    """``d`` once it has fired: at once if it has, else after the reactor
    turned until it did (``blockon``; only outside the reactor's greenlet)."""
    if not isinstance(d, defer.Deferred):
        d = defer.ensureDeferred(d) if hasattr(d, "send") else defer.succeed(d)
    box: List[Any] = []

    def seen(result: Any) -> Any:
        box.append(True)
        return result
    d.addBoth(seen)
    if not box:
        import pytest_twisted
        from twisted.internet import reactor

        done: defer.Deferred = defer.Deferred()

        def fire(result: Any) -> Any:
            # after d's callbacks have run: blockon switches greenlets, and
            # a switch in the middle of d's chain would leave d paused
            reactor.callLater(0, lambda: done.called or done.callback(None))
            return result
        d.addBoth(fire)
        timer = reactor.callLater(WAIT_TIMEOUT, lambda: done.called or done.errback(
            AssertionError(f"{d!r} did not fire within {WAIT_TIMEOUT:g} s")))
        try:
            pytest_twisted.blockon(done)
        finally:
            if timer.active():
                timer.cancel()
    return d


def wait(d: Any) -> Any:
    """The result of ``d`` (waiting as :func:`settle` does); raise its failure."""
    import pytest_twisted
    return pytest_twisted.blockon(settle(d))
