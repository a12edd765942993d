#!/usr/bin/env python3
"""Load-generator process for the presence benchmark (stdlib asyncio only).

One process logs in a slice of users and holds their heartbeats
(``GET /jchat``, stream mode) on raw asyncio protocols, a few thousand
connections per process.  It is driven by ``bench/run.py`` through JSON lines:
one command per line on stdin, one answer per line on stdout, matched by
``rid``.  Commands run as concurrent tasks, so the orchestrator can poll
``counts`` while a ``burst`` is running.  Every command is bounded in count
and in time; the process exits on ``exit``, on end of stdin, or after
``--max-seconds``, whichever comes first.

Wire format understood (protocol.md section 3): HTTP/1.1 responses with
Content-Length, chunked transfer coding or read-until-close; inside a held
heartbeat an ``text/event-stream``: ``id: n`` / ``data: ...`` lines closed by
an empty line; a lone ``\\n`` outside a frame is a keep-alive.  Chat frames
whose text is ``B<burst> <monotonic send time>`` are timed on arrival:
CLOCK_MONOTONIC is one clock for every process on the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from urllib.parse import quote

mono = time.monotonic
PASSWORD = "benchpass1"


class HTTPError(Exception):
    pass


# ---------------------------------------------------------------- HTTP/1.1


class HTTPConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection, one request at a time.

    ``request`` returns a future for ``(status, headers, body)``.  With
    ``stream`` set, a 200 response resolves the future as soon as its headers
    arrive (body None) and every later body byte goes to ``stream.feed``;
    ``stream.ended(reason)`` is called when the response ends or the
    connection is lost.
    """

    __slots__ = ("transport", "buf", "fut", "stream", "streaming", "mode",
                 "remaining", "body", "status", "headers", "keep", "alive",
                 "is_stream")

    def __init__(self) -> None:
        self.transport = None
        self.buf = bytearray()
        self.fut = None
        self.stream = None
        self.streaming = False
        self.is_stream = False
        self.mode = 0
        self.remaining = 0
        self.body = bytearray()
        self.status = 0
        self.headers = None
        self.keep = True
        self.alive = False

    # asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.alive = True

    def connection_lost(self, exc) -> None:
        self.alive = False
        if self.mode == 4:  # body delimited by close
            self._finish()
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_exception(ConnectionError("connection lost"))
        if self.streaming:
            self.streaming = False
            self.stream.ended("lost")

    def data_received(self, data: bytes) -> None:
        if (self.mode == 3 and self.streaming and not self.buf
                and len(data) <= self.remaining):
            # fast path: chunk body bytes with nothing buffered
            self.remaining -= len(data)
            self.stream.feed(data)
            if self.remaining == 0:
                self.mode = 5
            return
        self.buf += data
        try:
            self._parse()
        except Exception as e:  # malformed response: drop the connection
            fut, self.fut = self.fut, None
            if fut is not None and not fut.done():
                fut.set_exception(HTTPError(f"parse error: {e!r}"))
            if self.transport is not None:
                self.transport.abort()

    # client API
    def request(self, data: bytes, stream=None) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if not self.alive:
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self.fut = fut
        self.stream = stream
        self.is_stream = stream is not None
        self.transport.write(data)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # parser
    def _emit(self, chunk) -> None:
        if self.streaming:
            self.stream.feed(bytes(chunk))
        else:
            self.body += chunk

    def _finish(self) -> None:
        self.mode = 0
        if self.streaming:
            self.streaming = False
            self.stream.ended("ended")
        else:
            fut, self.fut = self.fut, None
            body = bytes(self.body)
            self.body.clear()
            if fut is not None and not fut.done():
                fut.set_result((self.status, self.headers, body))
        if not self.keep and self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        buf = self.buf
        while buf:
            mode = self.mode
            if mode == 0:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    if len(buf) > 65536:
                        raise HTTPError("header too long")
                    return
                head = bytes(buf[:i]).decode("latin-1")
                del buf[:i + 4]
                lines = head.split("\r\n")
                parts = lines[0].split(" ", 2)
                version, status = parts[0], int(parts[1])
                if 100 <= status < 200:
                    continue
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                self.status, self.headers = status, headers
                conn = headers.get("connection", "").lower()
                self.keep = not ("close" in conn or
                                 (version == "HTTP/1.0" and "keep-alive" not in conn))
                if self.is_stream and status == 200:
                    self.streaming = True
                    fut, self.fut = self.fut, None
                    if fut is not None and not fut.done():
                        fut.set_result((status, headers, None))
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self.mode = 2
                elif "content-length" in headers:
                    self.remaining = int(headers["content-length"])
                    if self.remaining == 0:
                        self._finish()
                    else:
                        self.mode = 1
                elif status in (204, 304):
                    self._finish()
                else:
                    self.keep = False
                    self.mode = 4
            elif mode == 1 or mode == 3:
                take = min(self.remaining, len(buf))
                self._emit(buf[:take])
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    if mode == 1:
                        self._finish()
                    else:
                        self.mode = 5
            elif mode == 2:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                size = int(bytes(buf[:i]).split(b";")[0].strip() or b"0", 16)
                del buf[:i + 2]
                if size == 0:
                    self.mode = 6
                else:
                    self.remaining = size
                    self.mode = 3
            elif mode == 5:
                if len(buf) < 2:
                    return
                del buf[:2]
                self.mode = 2
            elif mode == 6:
                i = buf.find(b"\r\n")
                if i < 0:
                    return
                line = buf[:i]
                del buf[:i + 2]
                if not line:
                    self._finish()
            elif mode == 4:
                self._emit(buf)
                buf.clear()
                return


def build(method: str, path: str, form: dict | None = None,
          extra: str = "") -> bytes:
    body = b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
    if method == "POST":
        if form:
            body = "&".join(f"{k}={quote(str(v), safe='')}"
                            for k, v in form.items()).encode()
        head += ("Content-Type: application/x-www-form-urlencoded\r\n"
                 f"Content-Length: {len(body)}\r\n")
    return (head + "\r\n").encode() + body


# ---------------------------------------------------------------- sessions


class Session:
    """One logged-in user: its connection and its event-stream parser."""

    __slots__ = ("name", "sid", "qsid", "conn", "sbuf", "cur_id", "cur_data",
                 "last_id", "acked", "held", "client", "frames", "keepalives")

    def __init__(self, client, name: str) -> None:
        self.client = client
        self.name = name
        self.sid = None
        self.qsid = None
        self.conn = None
        self.sbuf = b""
        self.cur_id = 0
        self.cur_data = None
        self.last_id = 0
        self.acked = 0
        self.held = False
        self.frames = 0
        self.keepalives = 0

    # stream callbacks
    def feed(self, data: bytes) -> None:
        if data == b"\n" and not self.sbuf and self.cur_data is None:
            self.keepalives += 1
            self.client.keepalives += 1
            return
        sbuf = self.sbuf + data if self.sbuf else data
        start = 0
        while True:
            i = sbuf.find(b"\n", start)
            if i < 0:
                break
            line = sbuf[start:i]
            start = i + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self.cur_data is not None:
                    self._dispatch()
                else:
                    self.keepalives += 1
                    self.client.keepalives += 1
            elif line.startswith(b"data:"):
                v = line[5:]
                if v.startswith(b" "):
                    v = v[1:]
                if self.cur_data is None:
                    self.cur_data = [v]
                else:
                    self.cur_data.append(v)
            elif line.startswith(b"id:"):
                try:
                    self.cur_id = int(line[3:])
                except ValueError:
                    pass
                if self.cur_data is None:
                    self.cur_data = []
        self.sbuf = sbuf[start:]

    def _dispatch(self) -> None:
        data, self.cur_data = self.cur_data, None
        if self.cur_id > self.last_id:
            self.last_id = self.cur_id
        self.frames += 1
        self.client.on_frame(self, data)

    def ended(self, reason: str) -> None:
        if self.held:
            self.held = False
            self.client.held_now -= 1
            self.client.released[reason] = self.client.released.get(reason, 0) + 1


# ---------------------------------------------------------------- client


class Client:
    def __init__(self, args) -> None:
        self.args = args
        self.host, self.port, self.src = args.host, args.port, args.src
        self.sessions: dict[str, Session] = {}
        self.users = [f"{args.prefix}{i}" for i in
                      range(args.first, args.first + args.count)]
        self.senders: list[Session] = []
        self.control: list[HTTPConn] = []
        self.keepalives = 0
        self.busy = 0  # 429 answers retried
        self.held_now = 0  # heartbeats open now, and the most open at once
        self.held_peak = 0
        self.stop_at = math.inf  # cmd_join starts no user after this
        self.frames_total = 0
        self.kinds: dict[str, int] = {}
        self.released: dict[str, int] = {}
        self.chat_count: dict[int, int] = {}
        self.chat_last: dict[int, float] = {}
        self.lat: dict[int, list] = {}
        self.watch = None
        self.watch_count = 0
        self.watch_first = None
        self.watch_last = None
        self.out_lock = asyncio.Lock()
        #: more of the heartbeat's query (bench/fanout_client.py: "&bundle=1")
        self.hold_extra = ""

    # ------------------------------------------------ frames
    def on_frame(self, s: Session, data: list) -> None:
        self.frames_total += 1
        if not data:
            return
        first = data[0]
        if first.startswith(b"msg chat ") and len(data) > 1:
            text = data[1]
            if text.startswith(b"B"):
                now = mono()
                try:
                    b, t = text[1:].split(b" ", 1)
                    bid = int(b)
                    sent = float(t)
                except ValueError:
                    return
                self.chat_count[bid] = self.chat_count.get(bid, 0) + 1
                self.chat_last[bid] = now
                self.lat.setdefault(bid, []).append(now - sent)
            return
        if first == self.watch:
            now = mono()
            self.watch_count += 1
            if self.watch_first is None:
                self.watch_first = now
            self.watch_last = now
            return
        kind = first.split(b" ", 2)[:2]
        k = b" ".join(kind).decode("latin-1")
        self.kinds[k] = self.kinds.get(k, 0) + 1

    # ------------------------------------------------ connections
    async def connect(self, tries: int = 6) -> HTTPConn:
        loop = asyncio.get_running_loop()
        delay = 0.05
        last = None
        for _ in range(tries):
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(
                    HTTPConn, self.host, self.port,
                    local_addr=(self.src, 0) if self.src else None), 10)
                return proto
            except (OSError, asyncio.TimeoutError) as e:
                last = e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise ConnectionError(f"connect failed: {last!r}")

    async def call(self, conn_holder, data: bytes, timeout: float = 30.0,
                   stream=None):
        """Send one request on ``conn_holder.conn`` (reconnecting if the
        server closed it) and wait for the answer."""
        fresh = False
        if conn_holder.conn is None or not conn_holder.conn.alive:
            conn_holder.conn = await self.connect()
            fresh = True
        fut = conn_holder.conn.request(data, stream)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn_holder.conn.transport.abort()
            conn_holder.conn = None
            raise
        except ConnectionError:
            if fresh:
                raise
            # the server closed an idle keep-alive connection (Twisted times
            # them out after 60 s) as the request went out: once more, anew
            conn_holder.conn = await self.connect()
            fut = conn_holder.conn.request(data, stream)
            return await asyncio.wait_for(fut, timeout)

    # ------------------------------------------------ helpers
    def closing(self) -> None:
        """Called once before the process exits."""

    async def bounded(self, items, fn, conc: int, deadline: float):
        """Run fn(item) for each item with at most ``conc`` at once; stop
        starting new ones at ``deadline``.  Returns (ok, errors, sample)."""
        it = iter(items)
        ok = 0
        errors: dict[str, int] = {}
        sample: list[str] = []

        async def worker():
            nonlocal ok
            for item in it:
                left = deadline - mono()
                if left <= 0:
                    errors["deadline"] = errors.get("deadline", 0) + 1
                    continue
                try:
                    await asyncio.wait_for(fn(item), left)
                    ok += 1
                except Exception as e:  # counted, never raised
                    key = type(e).__name__ + (f":{e}" if isinstance(e, HTTPError) else "")
                    key = key[:80]
                    errors[key] = errors.get(key, 0) + 1
                    if len(sample) < 5:
                        sample.append(f"{item if isinstance(item, str) else getattr(item, 'name', '?')}: {e!r}"[:200])
        await asyncio.gather(*(worker() for _ in range(max(1, conc))))
        return ok, errors, sample

    def _pick(self, spec) -> list[Session]:
        """Sessions named by a spec: {"range": [a, b]} (indices into this
        process's users) and/or {"names": [...]}."""
        out = []
        if "range" in spec:
            a, b = spec["range"]
            out += [self.sessions[n] for n in self.users[a:b] if n in self.sessions
                    and self.sessions[n].sid
                    and (self.sessions[n].held or not spec.get("held"))]
        for n in spec.get("names", []):
            s = self.sessions.get(n)
            if s is not None and s.sid:
                out.append(s)
        return out

    async def call_busy(self, s, data: bytes, tries: int = 12):
        """``call``, retried with backoff while the server answers 429 (busy),
        as a client would; at most ``tries`` times (about 40 s in all)."""
        delay = 0.1
        for _ in range(tries):
            st, h, body = await self.call(s, data)
            if st != 429:
                return st, h, body
            self.busy += 1
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)
        return st, h, body

    async def login_one(self, s: Session, register: bool) -> None:
        if register:
            st, _, body = await self.call_busy(s, build(
                "POST", "/api/register", {"username": s.name, "password": PASSWORD}))
            if st not in (200, 201, 409):
                raise HTTPError(f"register {st} {body[:80]!r}")
        st, _, body = await self.call_busy(s, build(
            "POST", "/api/login", {"username": s.name, "password": PASSWORD}))
        if st != 200:
            raise HTTPError(f"login {st} {body[:80]!r}")
        s.sid = json.loads(body)["session"]
        s.qsid = quote(s.sid, safe="")

    async def hold_one(self, s: Session) -> None:
        if s.held:
            return
        st, _, body = await self.call(s, build(
            "GET", f"/jchat?me={s.name}&id={s.qsid}&mode=stream{self.hold_extra}",
            extra="Accept: text/event-stream\r\n"), stream=s)
        if st != 200:
            raise HTTPError(f"jchat {st} {body[:80]!r}")
        s.held = True
        self.held_now += 1
        if self.held_now > self.held_peak:
            self.held_peak = self.held_now

    # ------------------------------------------------ commands
    async def cmd_login(self, register=True, conc=32, seconds=300, names=None):
        t0 = mono()
        names = names if names is not None else self.users
        for n in names:
            if n not in self.sessions:
                self.sessions[n] = Session(self, n)
        todo = [self.sessions[n] for n in names if not self.sessions[n].sid]
        ok, errors, sample = await self.bounded(
            todo, lambda s: self.login_one(s, register), conc, t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample,
                "busy_retries": self.busy, "elapsed": mono() - t0}

    async def cmd_hold(self, conc=64, seconds=300, names=None):
        t0 = mono()
        names = names if names is not None else self.users
        todo = [self.sessions[n] for n in names
                if n in self.sessions and self.sessions[n].sid]
        ok, errors, sample = await self.bounded(todo, self.hold_one, conc,
                                                t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample,
                "held": sum(1 for s in self.sessions.values() if s.held),
            "held_peak": self.held_peak,
                "elapsed": mono() - t0}

    async def cmd_join(self, conc=32, seconds=300):
        """Register, log in and at once hold the heartbeat, user after user,
        until all hold one, ``seconds`` pass or ``cmd_stop_join`` (the
        same-memory run, where the server may be stopped part way)."""
        t0 = mono()
        self.stop_at = math.inf
        for n in self.users:
            if n not in self.sessions:
                self.sessions[n] = Session(self, n)

        async def one(s: Session) -> None:
            if mono() > self.stop_at:
                raise ConnectionError("stopped")
            if not s.sid:
                await self.login_one(s, True)
            await self.hold_one(s)
        ok, errors, sample = await self.bounded(
            [self.sessions[n] for n in self.users], one, conc, t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample,
                "held": self.held_now, "held_peak": self.held_peak,
                "elapsed": mono() - t0}

    async def cmd_stop_join(self):
        self.stop_at = 0.0
        return {"held": self.held_now, "held_peak": self.held_peak}

    async def cmd_open(self, name):
        """Open one heartbeat; report when the request left and when the
        headers came back (fan-out timing starts at t_sent)."""
        s = self.sessions[name]
        t_sent = mono()
        await self.hold_one(s)
        return {"t_sent": t_sent, "t_headers": mono()}

    async def cmd_senders(self, n, prefix, conc=16, seconds=120):
        names = [f"{prefix}{i}" for i in range(n)]
        r = await self.cmd_login(True, conc, seconds, names)
        self.senders = [self.sessions[x] for x in names if self.sessions[x].sid]
        r["senders"] = len(self.senders)
        return r

    async def cmd_api(self, calls, conc=16, seconds=120):
        """calls: list of [method, path, form] with form values "$me"/"$id"
        replaced from the session named by form["me"] ("$user:<name>")."""
        t0 = mono()
        holders = [type("H", (), {"conn": None})() for _ in range(max(1, conc))]
        free = asyncio.Queue()
        for h in holders:
            free.put_nowait(h)
        statuses: dict[int, int] = {}

        async def one(c):
            method, path, form, expect = c
            form = dict(form)
            if "me" in form:
                s = self.sessions[form["me"]]
                form["id"] = s.sid
            h = await free.get()
            try:
                st, _, body = await self.call(h, build(method, path, form))
            finally:
                free.put_nowait(h)
            statuses[st] = statuses.get(st, 0) + 1
            if expect and st not in expect:
                raise HTTPError(f"{method} {path} -> {st} {body[:80]!r}")
        ok, errors, sample = await self.bounded(calls, one, conc, t0 + seconds)
        for h in holders:
            if h.conn is not None:
                h.conn.close()
        return {"n_ok": ok, "errors": errors, "sample": sample,
                "statuses": statuses, "elapsed": mono() - t0}

    async def cmd_members(self, group, spec, action, conc=16, seconds=120):
        """action join: POST /api/groups/{group}/join; action active: POST
        /api/active group=<group>, for the sessions picked by spec."""
        calls = []
        for s in self._pick(spec):
            if action == "join":
                calls.append(["POST", f"/api/groups/{group}/join", {"me": s.name}, [200, 201, 204]])
            else:
                calls.append(["POST", "/api/active", {"me": s.name, "group": group}, [200, 204]])
        return await self.cmd_api(calls, conc, seconds)

    async def cmd_burst(self, bid, total, conc, target_prefix, target_n,
                        start_at=None, rate=0.0, seed=1, seconds=120,
                        target_first=0):
        """Send ``total`` chats over ``conc`` sender connections to random
        users ``<target_prefix><target_first..target_first+target_n-1>``;
        paced at ``rate``/s if rate > 0, else as fast as answers come."""
        senders = self.senders[:conc]
        if not senders:
            return {"error": "no senders"}
        rng = random.Random(seed)
        targets = [f"{target_prefix}{target_first + rng.randrange(target_n)}"
                   for _ in range(total)]
        nxt = 0
        statuses: dict[int, int] = {}
        online = 0
        resp_lat: list[float] = []
        late = 0
        errors: dict[str, int] = {}
        if start_at is None:
            start_at = mono()
        deadline = start_at + seconds
        t_first = None
        t_last = None

        async def worker(s: Session):
            nonlocal nxt, online, late, t_first, t_last
            pre = f"me={s.name}&id={s.qsid}&to=".encode()
            while True:
                j = nxt
                if j >= total:
                    return
                nxt += 1
                if rate:
                    d = start_at + j / rate - mono()
                    if d > 0:
                        await asyncio.sleep(d)
                    elif d < -0.002:
                        late += 1
                if mono() > deadline:
                    errors["deadline"] = errors.get("deadline", 0) + 1
                    continue
                t = mono()
                body = pre + targets[j].encode() + f"&msg=B{bid}+{t:.6f}".encode()
                data = (b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\n"
                        b"Content-Length: " + str(len(body)).encode() +
                        b"\r\n\r\n" + body)
                if t_first is None:
                    t_first = t
                try:
                    st, _, rb = await self.call(s, data, timeout=15)
                except Exception as e:
                    k = type(e).__name__
                    errors[k] = errors.get(k, 0) + 1
                    continue
                now = mono()
                t_last = now
                resp_lat.append(now - t)
                statuses[st] = statuses.get(st, 0) + 1
                if st == 202 and b'"online"' in rb:
                    online += 1

        d = start_at - mono()
        if d > 0:
            await asyncio.sleep(d)
        await asyncio.gather(*(worker(s) for s in senders))
        resp_lat.sort()
        return {"sent": total, "statuses": statuses, "online": online,
                "late": late, "errors": errors, "t_first": t_first,
                "t_last": t_last, "resp_ms": pct_ms(resp_lat)}

    async def cmd_counts(self):
        return {
            "held": sum(1 for s in self.sessions.values() if s.held),
            "held_peak": self.held_peak,
            "released": self.released,
            "keepalives": self.keepalives,
            "frames": self.frames_total,
            "kinds": self.kinds,
            "chat_count": self.chat_count,
            "chat_last": self.chat_last,
            "watch_count": self.watch_count,
            "watch_first": self.watch_first,
            "watch_last": self.watch_last,
        }

    async def cmd_watch(self, line):
        self.watch = line.encode()
        self.watch_count = 0
        self.watch_first = self.watch_last = None
        return {}

    async def cmd_latencies(self, bid):
        lat = self.lat.pop(bid, [])
        return {"ms": [round(x * 1000, 4) for x in lat]}

    async def cmd_ack_all(self, conc=8, seconds=120):
        calls = []
        for s in self.sessions.values():
            if s.sid and s.last_id > s.acked:
                calls.append(["POST", f"/ack?me={s.name}&id={s.qsid}&ack={s.last_id}",
                              {}, [200, 204]])
                s.acked = s.last_id
        return await self.cmd_api(calls, conc, seconds)

    async def cmd_probe(self, name, interval=0.005, duration=20.0, path=None):
        """One keep-alive connection; a tiny request every ``interval`` s
        for ``duration`` s; the latency of each answer."""
        s = self.sessions[name]
        path = path or f"/ack?me={s.name}&id={s.qsid}&ack=0"
        data = build("POST", path, {})
        holder = type("H", (), {"conn": None})()
        holder.conn = await self.connect()
        lat = []
        worst = []
        statuses: dict[int, int] = {}
        t0 = mono()
        k = 0
        while True:
            target = t0 + k * interval
            now = mono()
            if now - t0 > duration:
                break
            if target > now:
                await asyncio.sleep(target - now)
            t = mono()
            try:
                st, _, _ = await self.call(holder, data, timeout=10)
            except Exception as e:  # no answer within 10 s: that is the stall
                st = type(e).__name__
                holder.conn = None
            d = mono() - t
            statuses[st] = statuses.get(st, 0) + 1
            lat.append(d)
            worst.append((d, t - t0))
            k = max(k + 1, int((mono() - t0) / interval))
        if holder.conn is not None:
            holder.conn.close()
        worst.sort(reverse=True)
        lat.sort()
        return {"n": len(lat), "statuses": statuses, "ms": pct_ms(lat),
                "worst": [[round(d * 1000, 2), round(at, 3)] for d, at in worst[:10]],
                "t0": t0}

    async def cmd_close(self, names=None):
        n = 0
        for name in (names or list(self.sessions)):
            s = self.sessions.get(name)
            if s and s.conn is not None:
                s.conn.close()
                n += 1
        return {"closed": n}


def pct_ms(sorted_vals: list) -> dict:
    if not sorted_vals:
        return {"n": 0}
    n = len(sorted_vals)

    def p(q):
        return round(sorted_vals[min(n - 1, int(q * n))] * 1000, 3)
    return {"n": n, "p50": p(0.50), "p90": p(0.90), "p99": p(0.99),
            "p999": p(0.999), "max": round(sorted_vals[-1] * 1000, 3)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--src", default="", help="source address to bind, e.g. 127.0.0.11")
    ap.add_argument("--prefix", default="u")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=3600)
    args = ap.parse_args()
    if args.count > 9500:
        ap.error("keep a client process under 9,500 sockets")
    await serve(Client(args), args.max_seconds)


async def serve(client: Client, max_seconds: float) -> None:
    """Run ``client``'s commands from stdin (JSON lines, each a task),
    answering on stdout, until ``exit``, end of stdin or ``max_seconds``;
    then close its connections and exit."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 sys.stdin)
    out = sys.stdout
    tasks = set()

    async def run(msg):
        rid = msg.pop("rid", None)
        name = msg.pop("cmd")
        try:
            res = await getattr(client, "cmd_" + name)(**msg)
            res = {"rid": rid, "ok": True, **res}
        except Exception as e:
            res = {"rid": rid, "ok": False, "error": repr(e)[:500]}
        out.write(json.dumps(res) + "\n")
        out.flush()

    end = mono() + max_seconds
    while mono() < end:
        try:
            line = await asyncio.wait_for(reader.readline(), end - mono())
        except asyncio.TimeoutError:
            break
        if not line:
            break
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            break
        t = asyncio.ensure_future(run(msg))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    client.closing()
    for s in client.sessions.values():
        if s.conn is not None:
            s.conn.close()
    os._exit(0)

if __name__ == "__main__":
    asyncio.run(main())
