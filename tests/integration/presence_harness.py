"""Harness for integration tests against the real ``twistd -n presence``.

Everything here talks to the server over real loopback sockets, exactly as a
user's client does:

* :class:`ServerProcess` starts ``twistd -n presence`` as a subprocess, waits
  (bounded) for its ``presence ready http=HOST:PORT`` log line, and kills it.
  Every listener with a fixed default port gets a free one or is off: the
  SMS simulator and the operator endpoint (``--admin``; ``admin_port``,
  ``admin_token()``) take a free loopback port, SIP is off, unless the test
  gives the option itself.
* :class:`Api` is a small synchronous JSON/form HTTP client (``http.client``).
* :class:`HeartbeatReader` holds ``GET /jchat`` over a raw socket speaking
  HTTP/1.1, decodes the chunked body incrementally and parses the event
  stream into :class:`Frame` objects (id + data) as they arrive; every read
  has a deadline, and no threads are used.

Set ``PRESENCE_IT_PLUGIN`` to run the suite against another twistd plugin
name (default ``presence``).

No function here sleeps for a fixed time: waits are for a condition (a log
line, a frame, the end of a response) with a deadline, in loops bounded both
in iterations and in time.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

# free ports outside the ephemeral range (tests/free_ports.py); re-exported
from free_ports import ephemeral_range, free_port  # noqa: F401

READY_TIMEOUT = 60.0  # generous: CI machines are shared and can be loaded
READY_RE = re.compile(
    r"presence ready\b.*?\bhttp=(?:\[(?P<host6>[^\]]+)\]|(?P<host>[^\s:]+)):(?P<port>\d+)"
)

SMSC_RE = re.compile(r"\bsmsc=\S*?:(\d+)")
ADMIN_RE = re.compile(r"\badmin=\S*?:(\d+)")
ADMIN_TOKEN_RE = re.compile(r"\badmin_token=(\S+)")

# A bound for every polling loop in this module, on top of its deadline.
MAX_LOOP = 100_000


# --------------------------------------------------------------------------
# names and ports

_counter = itertools.count(1)
_run_tag = secrets.token_hex(2)


def unique_name(prefix: str = "u") -> str:
    """A fresh user/group name matching ``[a-z0-9][a-z0-9._-]{0,31}``."""
    name = f"{prefix}{next(_counter)}x{_run_tag}"
    assert len(name) <= 32, name
    return name


def unique_password() -> str:
    """A distinctive password (easy to grep for in logs and responses)."""
    return "Pw-" + secrets.token_hex(10)


# --------------------------------------------------------------------------
# the server process


def twistd_command(args: Iterable[str]) -> list[str]:
    """``twistd`` run by the same interpreter as the tests."""
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'twistd'; "
        "from twisted.scripts.twistd import run; run()",
        *args,
    ]


class ServerStartError(AssertionError):
    pass



def relay_ports_outside_ephemeral(size: int = 1000) -> str:
    """A relay port range (LOW-HIGH) that no free port the kernel hands out
    (bind to port 0) can fall in: above its ephemeral range, or below."""
    low, high = ephemeral_range()
    if high + size <= 65535:
        return f"{high + 1}-{high + size}"
    return f"{max(1024, low - size)}-{low - 1}"


class ServerProcess:
    """One ``twistd -n presence`` subprocess; its output goes to a file."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        keepalive: float | None = 5,
        poll: float | None = 1,
        linger: float | None = 2,
        hash_cost: int | None = 1,
        extra_args: Iterable[str] = (),
        **options: Any,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.keepalive = keepalive
        self.poll = poll
        self.linger = linger
        self.hash_cost = hash_cost
        self.extra_args = list(extra_args)
        # any other option: mailbox=5 -> --mailbox 5, session_ttl=2 -> --session-ttl 2
        for k, v in options.items():
            self.extra_args += [f"--{k.replace('_', '-')}", _num(v) if isinstance(v, (int, float)) else str(v)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.smsc_port: int | None = None  # the wireless simulator's port, if on
        self.admin_port: int | None = None  # the operator endpoint's, if on
        self.admin_token_path: Path | None = None
        self._log_file = None

    # -- life cycle ---------------------------------------------------------

    def args(self) -> list[str]:
        a = [
            "-n",
            "--pidfile=",
            "--logfile=-",
            os.environ.get("PRESENCE_IT_PLUGIN", "presence"),
            "--http",
            "tcp:0:interface=127.0.0.1",
            "--data",
            str(self.data_dir),
        ]
        if self.hash_cost is not None:
            a += ["--hash-cost", str(self.hash_cost)]
        if self.keepalive is not None:
            a += ["--keepalive", _num(self.keepalive)]
        if self.poll is not None:
            a += ["--poll", _num(self.poll)]
        if self.linger is not None:
            a += ["--linger", _num(self.linger)]
        if "--smsc" not in self.extra_args:
            # the SMS / WAP push simulator on a free port, never the fixed default
            a += ["--smsc", "tcp:0:interface=127.0.0.1"]
        if "--admin" not in self.extra_args:
            # the operator endpoint on a free port, never the fixed 8081
            a += ["--admin", "tcp:0:interface=127.0.0.1"]
        if "--sip" not in self.extra_args:
            # SIP off unless a test asks for it (sip=<free port>): never the fixed 5060
            a += ["--sip", "0"]
        else:
            if "--relay" not in self.extra_args:
                # the media relay's ports on loopback, not every interface
                a += ["--relay", "127.0.0.1"]
            if "--relay-ports" not in self.extra_args:
                # outside the kernel's ephemeral range, where the free port a
                # test took for --sip comes from (the default 40000-40999 is
                # inside it, and the server refuses a --sip port in its range)
                a += ["--relay-ports", relay_ports_outside_ephemeral()]
        return a + self.extra_args

    def start(self, timeout: float = READY_TIMEOUT) -> "ServerProcess":
        assert self.proc is None, "already started"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # Append: a restarted server on the same log keeps the earlier output.
        self._log_file = open(self.log_path, "ab")
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            twistd_command(self.args()),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=str(self.data_dir.parent),
            env=env,
            start_new_session=True,  # our own process group: killed as one
        )
        _LIVE.add(self)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(MAX_LOOP):
            text = self.output(since_start=True)
            m = READY_RE.search(text)
            if m:
                self.host = m.group("host6") or m.group("host")
                self.port = int(m.group("port"))
                line = m.group(0) + text[m.end():].split("\n", 1)[0]
                smsc = SMSC_RE.search(line)
                self.smsc_port = int(smsc.group(1)) if smsc else None
                admin = ADMIN_RE.search(line)
                self.admin_port = int(admin.group(1)) if admin else None
                token = ADMIN_TOKEN_RE.search(line)
                self.admin_token_path = Path(token.group(1)) if token and admin else None
                return
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with code {self.proc.returncode} before "
                    f"'presence ready'.\ncommand: {' '.join(self.proc.args)}\n"
                    f"output:\n{text[-8000:]}"
                )
            if time.monotonic() >= deadline:
                out = self.output(since_start=True)
                command = " ".join(map(str, self.proc.args))
                self.kill()
                raise ServerStartError(
                    f"no 'presence ready http=HOST:PORT' line within {timeout} s.\n"
                    f"command: {command}\noutput:\n{out[-8000:]}"
                )
            time.sleep(0.05)  # polling interval of a condition wait
        raise ServerStartError("ready loop bound exceeded")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (graceful shutdown, flushes the store), then SIGKILL."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        return self._finish()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        self._finish()

    def _signal(self, sig: int) -> None:
        # Only while our child (the group leader) is not yet reaped is its pid
        # certain to name the process group we created (start_new_session).
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _finish(self) -> int | None:
        rc = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _LIVE.discard(self)
        self.proc = None
        return rc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, since_start: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        if since_start:
            data = data[getattr(self, "_log_offset", 0):]
        return data.decode("utf-8", "replace")

    # -- clients ------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_base(self) -> str:
        """The operator endpoint (``--admin``), on the loopback port it took."""
        assert self.admin_port is not None, "the operator endpoint is off"
        return f"http://127.0.0.1:{self.admin_port}"

    def admin_token(self) -> str:
        assert self.admin_token_path is not None, "the operator endpoint is off"
        return self.admin_token_path.read_text().strip()

    def api(self) -> "Api":
        assert self.port, "server not started"
        return Api(self.host, self.port)

    def heartbeat(self, user: "User", **kw: Any) -> "HeartbeatReader":
        return HeartbeatReader.open(self.host, self.port, user.name, user.session, **kw)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_LIVE: set[ServerProcess] = set()


def start_client(server: str, user: str, password: str | None, *args: str,
                 out: Path | None = None) -> subprocess.Popen:
    """``presence-client --no-stdin`` of this checkout for ``user`` at the
    base URL ``server``, in a process group of its own; its output goes to
    the file ``out`` (else nowhere)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PRESENCE_PASSWORD", None)
    if password:
        env["PRESENCE_PASSWORD"] = password
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]),
                                         env.get("PYTHONPATH", "")])
    sink = open(out, "wb") if out is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "presence.cli.client", "--server", server, "--user", user,
             "--no-stdin", *args],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    finally:
        if out is not None:
            sink.close()


def stop_client(client: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (a clean exit: it logs out), SIGKILL to its group if it hangs."""
    client.send_signal(signal.SIGTERM)
    try:
        client.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(client.pid, signal.SIGKILL)
        client.wait(5)


def kill_all_servers() -> None:
    for s in list(_LIVE):
        s.kill()


# --------------------------------------------------------------------------
# the JSON API client


@dataclass
class Response:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise AssertionError(
                f"response is not JSON ({e}): {self.status} {self.reason} "
                f"{self.headers.get('Content-Type')!r} {self.body[:500]!r}"
            ) from None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type!r} {self.body[:300]!r}>"


class Api:
    """Synchronous HTTP client; a fresh connection per request."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        form: Mapping[str, Any] | None = None,
        json_body: Any = None,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        if query:
            path = path + ("&" if "?" in path else "?") + urllib.parse.urlencode(
                {k: v for k, v in query.items() if v is not None}
            )
        hdrs = {"Host": f"{self.host}:{self.port}"}
        data: bytes | None = None
        if form is not None:
            data = urllib.parse.urlencode(
                {k: v for k, v in form.items() if v is not None}
            ).encode("ascii")
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        elif body is not None:
            data = body.encode("utf-8") if isinstance(body, str) else body
        if headers:
            hdrs.update(headers)
        if data is None and method in ("POST", "PUT"):
            data = b""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        t0 = time.monotonic()
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            return Response(resp.status, resp.reason, resp.headers, payload, time.monotonic() - t0)
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)


# --------------------------------------------------------------------------
# users


@dataclass
class User:
    name: str
    password: str
    session: str | None = None
    login_body: dict = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        assert self.session, f"{self.name} is not logged in"
        return {"me": self.name, "id": self.session}


def expect(resp: Response, status: int, what: str = "") -> Response:
    assert resp.status == status, (
        f"{what or 'request'}: expected HTTP {status}, got {resp.status} {resp.reason}: "
        f"{resp.body[:800]!r}"
    )
    return resp


def register(api: Api, name: str | None = None, password: str | None = None, **extra: Any) -> User:
    user = User(name or unique_name(), password or unique_password())
    r = api.post("/api/register", form={"username": user.name, "password": user.password, **extra})
    expect(r, 201, f"register {user.name}")
    assert r.json().get("username") == user.name, r
    return user


def login(api: Api, user: User) -> User:
    r = api.post("/api/login", form={"username": user.name, "password": user.password})
    expect(r, 200, f"login {user.name}")
    body = r.json()
    assert body.get("username") == user.name, body
    assert isinstance(body.get("session"), str) and body["session"], body
    user.session = body["session"]
    user.login_body = body
    return user


def new_user(api: Api, prefix: str = "u") -> User:
    return login(api, register(api, unique_name(prefix)))


def chat(api: Api, sender: User, to: User | str, text: str, **extra: Any) -> Response:
    to_name = to if isinstance(to, str) else to.name
    return api.post("/chat", form={**sender.auth, "to": to_name, "msg": text, **extra})


def chat_ok(api: Api, sender: User, to: User | str, text: str, **extra: Any) -> dict:
    r = chat(api, sender, to, text, **extra)
    expect(r, 202, f"chat {sender.name}->{to if isinstance(to, str) else to.name}")
    body = r.json()
    assert body.get("delivered") in ("online", "stored"), body
    assert "msgid" in body, body
    return body


# --------------------------------------------------------------------------
# the heartbeat reader


@dataclass
class Frame:
    id: int | None
    data: str
    event: str | None = None
    received_at: float = 0.0

    @property
    def first_line(self) -> str:
        return self.data.split("\n", 1)[0]

    @property
    def words(self) -> list[str]:
        return self.first_line.split(" ")

    @property
    def kind(self) -> str | None:
        w = self.words
        return w[1] if len(w) > 1 and w[0] == "msg" else None

    @property
    def payload(self) -> str:
        parts = self.data.split("\n", 1)
        return parts[1] if len(parts) > 1 else ""

    def __repr__(self) -> str:
        return f"Frame(id={self.id}, data={self.data[:120]!r})"


class HeartbeatTimeout(AssertionError):
    pass


class HeartbeatReader:
    """A held ``GET /jchat`` over a raw socket; frames are read as they arrive.

    ``status``/``headers`` are available once :meth:`open` returns.  Frames
    that arrive are appended to ``frames`` (every frame ever parsed) and queued
    for :meth:`next_frame`.  A keep-alive (an empty line outside an event) is
    counted in ``keepalives`` with its arrival time in ``keepalive_times``.
    """

    def __init__(self, sock: socket.socket, host: str, port: int, target: str) -> None:
        self.sock = sock
        self.host = host
        self.port = port
        self.target = target
        self.opened_at = time.monotonic()
        self.headers_at: float | None = None
        self.status: int | None = None
        self.reason = ""
        self.headers: dict[str, list[str]] = {}
        self.raw = bytearray()            # undecoded bytes from the socket
        self.body = bytearray()           # decoded body bytes (after chunking)
        self.body_log: list[tuple[float, bytes]] = []  # decoded pieces with arrival time
        self.frames: list[Frame] = []
        self.queue: list[Frame] = []
        self.keepalives = 0
        self.keepalive_times: list[float] = []
        self.comments: list[str] = []
        self.ended = False                # the response body is complete
        self.eof = False                  # the peer closed the connection
        self.ended_at: float | None = None
        # body framing
        self._chunked = False
        self._length: int | None = None
        self._chunk_left: int | None = None  # None: expecting a size line
        self._chunk_crlf = False
        # event-stream parser
        self._line = bytearray()
        self._ev_id: str | None = None
        self._ev_data: list[str] = []
        self._ev_event: str | None = None
        self._ev_has_fields = False

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        me: str | None,
        session: str | None,
        *,
        mode: str | None = None,
        ack: int | None = None,
        wait: float | None = None,
        last_event_id: int | str | None = None,
        extra_query: Mapping[str, Any] | None = None,
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
        header_timeout: float = 5.0,
    ) -> "HeartbeatReader":
        if path is None:
            q: dict[str, Any] = {}
            if me is not None:
                q["me"] = me
            if session is not None:
                q["id"] = session
            if mode is not None:
                q["mode"] = mode
            if ack is not None:
                q["ack"] = ack
            if wait is not None:
                q["wait"] = _num(wait)
            if extra_query:
                q.update(extra_query)
            path = "/jchat?" + urllib.parse.urlencode(q)
        sock = socket.create_connection((host, port), timeout=header_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        req = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        reader = cls(sock, host, port, path)
        sock.sendall(req)
        reader._read_headers(header_timeout)
        return reader

    def _recv(self, deadline: float) -> bool:
        """One recv before ``deadline``; False on timeout. Sets ``eof``."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, OSError):
            data = b""
        if not data:
            self.eof = True
            if self.status is not None:
                self._process()
                self._mark_ended()  # close-delimited body, or the server hung up
            return True
        self.raw += data
        return True

    def _read_headers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(MAX_LOOP):
            idx = self.raw.find(b"\r\n\r\n")
            if idx >= 0:
                break
            if self.eof:
                raise HeartbeatTimeout(
                    f"connection closed before response headers for {self.target}: {bytes(self.raw)!r}"
                )
            if time.monotonic() >= deadline:
                raise HeartbeatTimeout(
                    f"no response headers within {timeout} s for GET {self.target}; "
                    f"got {bytes(self.raw)[:500]!r}"
                )
            self._recv(deadline)
        else:  # pragma: no cover
            raise HeartbeatTimeout("header loop bound exceeded")
        head = bytes(self.raw[:idx]).decode("iso-8859-1")
        del self.raw[: idx + 4]
        self.headers_at = time.monotonic()
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        for line in header_lines:
            k, _, v = line.partition(":")
            self.headers.setdefault(k.strip().lower(), []).append(v.strip())
        te = ",".join(self.headers.get("transfer-encoding", [])).lower()
        self._chunked = "chunked" in te
        if not self._chunked and "content-length" in self.headers:
            self._length = int(self.headers["content-length"][0])
            if self._length == 0:
                self._mark_ended()
        self._process()

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower())
        return ", ".join(v) if v else None

    # -- decoding -----------------------------------------------------------

    def _mark_ended(self) -> None:
        if not self.ended:
            self.ended = True
            self.ended_at = time.monotonic()

    def _process(self) -> None:
        """Decode what is in ``raw`` into body bytes and events."""
        for _ in range(MAX_LOOP):
            if not self.raw or self.ended and self._chunked:
                break
            if self._chunked:
                if self._chunk_crlf:
                    if len(self.raw) < 2:
                        break
                    assert self.raw[:2] == b"\r\n", f"bad chunk trailer {bytes(self.raw[:20])!r}"
                    del self.raw[:2]
                    self._chunk_crlf = False
                    continue
                if self._chunk_left is None:
                    i = self.raw.find(b"\r\n")
                    if i < 0:
                        break
                    size_line = bytes(self.raw[:i]).split(b";")[0].strip()
                    del self.raw[: i + 2]
                    size = int(size_line, 16)
                    if size == 0:
                        self._mark_ended()  # trailers (if any) are ignored
                        break
                    self._chunk_left = size
                    continue
                take = bytes(self.raw[: self._chunk_left])
                del self.raw[: len(take)]
                self._chunk_left -= len(take)
                if self._chunk_left == 0:
                    self._chunk_left = None
                    self._chunk_crlf = True
                self._feed(take)
            else:
                take = bytes(self.raw)
                if self._length is not None:
                    take = take[: self._length - len(self.body)]
                self.raw.clear()
                self._feed(take)
                if self._length is not None and len(self.body) >= self._length:
                    self._mark_ended()
                break

    def _feed(self, data: bytes) -> None:
        if not data:
            return
        now = time.monotonic()
        self.body += data
        self.body_log.append((now, data))
        if self.status != 200:
            return  # error bodies are JSON, not an event stream
        for byte_line in self._split_lines(data):
            self._event_line(byte_line.decode("utf-8"), now)

    def _split_lines(self, data: bytes) -> list[bytes]:
        out = []
        self._line += data
        for _ in range(MAX_LOOP):
            i = self._line.find(b"\n")
            if i < 0:
                break
            line = bytes(self._line[:i])
            del self._line[: i + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            out.append(line)
        return out

    def _event_line(self, line: str, now: float) -> None:
        if line == "":
            if self._ev_has_fields:
                if self._ev_data:
                    f = Frame(
                        id=int(self._ev_id) if self._ev_id not in (None, "") else None,
                        data="\n".join(self._ev_data),
                        event=self._ev_event,
                        received_at=now,
                    )
                    self.frames.append(f)
                    self.queue.append(f)
                self._ev_id, self._ev_data, self._ev_event = None, [], None
                self._ev_has_fields = False
            else:
                self.keepalives += 1
                self.keepalive_times.append(now)
            return
        if line.startswith(":"):
            self.comments.append(line[1:])
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        self._ev_has_fields = True
        if name == "data":
            self._ev_data.append(value)
        elif name == "id":
            self._ev_id = value
        elif name == "event":
            self._ev_event = value

    # -- reading ------------------------------------------------------------

    def _pump(self, deadline: float) -> bool:
        got = self._recv(deadline)
        if got:
            self._process()
        return got

    def _context(self) -> str:
        return (
            f"GET {self.target} -> {self.status}; frames so far: {self.frames!r}; "
            f"keepalives={self.keepalives}; ended={self.ended} eof={self.eof}; "
            f"undecoded={bytes(self.raw[:200])!r} partial_line={bytes(self._line[:200])!r}"
        )

    def next_frame(self, timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        for _ in range(MAX_LOOP):
            if self.queue:
                return self.queue.pop(0)
            if self.ended or self.eof:
                raise HeartbeatTimeout(f"response ended while waiting for a frame; {self._context()}")
            if time.monotonic() >= deadline:
                break
            self._pump(deadline)
        raise HeartbeatTimeout(f"no frame within {timeout} s; {self._context()}")

    def poll_frame(self) -> Frame | None:
        """A frame already received, or None (does not block)."""
        return self.queue.pop(0) if self.queue else None

    def wait_for(
        self,
        pred: Callable[[Frame], bool] | str,
        timeout: float = 5.0,
        what: str | None = None,
    ) -> Frame:
        """The first queued/arriving frame matching ``pred`` (a predicate, or
        the exact first line); frames before it are consumed and kept in
        ``skipped``."""
        if isinstance(pred, str):
            line = pred
            what = what or repr(line)
            pred = lambda f: f.first_line == line  # noqa: E731
        deadline = time.monotonic() + timeout
        self.skipped: list[Frame] = []
        for _ in range(MAX_LOOP):
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self.queue:
                break
            try:
                f = self.next_frame(max(remaining, 0.001))
            except HeartbeatTimeout:
                break
            if pred(f):
                return f
            self.skipped.append(f)
        raise HeartbeatTimeout(f"no frame {what or 'matching'} within {timeout} s; {self._context()}")

    def read_frames(self, n: int, timeout: float = 5.0, pred: Callable[[Frame], bool] | None = None) -> list[Frame]:
        """The next ``n`` frames (matching ``pred``, others skipped)."""
        deadline = time.monotonic() + timeout
        out: list[Frame] = []
        for _ in range(n):
            remaining = max(deadline - time.monotonic(), 0.001)
            if pred is None:
                out.append(self.next_frame(remaining))
            else:
                out.append(self.wait_for(pred, remaining))
        return out

    def frames_until(self, pred: Callable[[Frame], bool] | str, timeout: float = 5.0) -> list[Frame]:
        """All frames up to and including the first that matches ``pred``."""
        last = self.wait_for(pred, timeout)
        return list(self.skipped) + [last]

    def assert_no_frame(self, pred: Callable[[Frame], bool] | str, duration: float) -> list[Frame]:
        """Read for ``duration`` seconds and fail if a frame matching ``pred``
        arrives (a bounded observation of a negative; use sparingly).
        Returns the frames read meanwhile."""
        if isinstance(pred, str):
            line = pred
            pred = lambda f: f.first_line == line  # noqa: E731
        deadline = time.monotonic() + duration
        seen: list[Frame] = []
        for _ in range(MAX_LOOP):
            while self.queue:
                f = self.queue.pop(0)
                assert not pred(f), f"unexpected frame {f!r}; {self._context()}"
                seen.append(f)
            if self.ended or self.eof or time.monotonic() >= deadline:
                break
            self._pump(deadline)
        return seen

    def wait_keepalive(self, timeout: float) -> float | None:
        """Time (monotonic) of the next keep-alive, or None on timeout/end."""
        start = self.keepalives
        deadline = time.monotonic() + timeout
        for _ in range(MAX_LOOP):
            if self.keepalives > start:
                return self.keepalive_times[start]
            if self.ended or self.eof or time.monotonic() >= deadline:
                return None
            self._pump(deadline)
        return None

    def wait_end(self, timeout: float = 5.0) -> bool:
        """Read until the response ends (or the connection closes)."""
        deadline = time.monotonic() + timeout
        for _ in range(MAX_LOOP):
            if self.ended or self.eof:
                return True
            if time.monotonic() >= deadline:
                return False
            self._pump(deadline)
        return False

    def read_body(self, timeout: float = 5.0) -> bytes:
        """The whole (finite) response body, e.g. of a 403."""
        if not self.wait_end(timeout):
            raise HeartbeatTimeout(f"response did not end within {timeout} s; {self._context()}")
        return bytes(self.body)

    def response(self, timeout: float = 5.0) -> Response:
        """The finished (non-stream) response, e.g. a 403, as a :class:`Response`."""
        body = self.read_body(timeout)
        msg = http.client.HTTPMessage()
        for k, vs in self.headers.items():
            for v in vs:
                msg[k] = v
        return Response(self.status or 0, self.reason, msg, body, 0.0)

    def drain(self) -> list[Frame]:
        out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        """Drop the connection (as a client that goes away does)."""
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self) -> None:
        """Drop the connection abruptly with a TCP RST."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self.close()

    def __enter__(self) -> "HeartbeatReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def chat_frames(frames: Iterable[Frame], sender: str | None = None) -> list[Frame]:
    return [
        f for f in frames
        if f.kind == "chat" and (sender is None or f.words[2:3] == [sender])
    ]


def assert_error_body(resp: Response, *secrets_: str | None) -> str:
    """The response is ``{"error": "<readable text>"}`` and echoes no secret."""
    assert "application/json" in resp.content_type.lower(), (
        f"error response Content-Type is {resp.content_type!r}, expected application/json: {resp!r}"
    )
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert body["error"].strip(), f"empty error text: {body}"
    for s in secrets_:
        if s:
            assert s not in resp.text, f"error response echoes a secret {s!r}: {resp.text!r}"
            assert urllib.parse.quote(s) not in resp.text, resp.text
    return body["error"]
