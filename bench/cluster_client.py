#!/usr/bin/env python3
"""Load-generator process for the cluster benchmark (``bench/cluster.py``).

The same raw-asyncio HTTP client and event-stream parser as
``bench/loadclient.py`` (imported from it), for a cluster of nodes: a
process knows every node's port, logs its users in through any node (in
turn), and holds each user's heartbeat on the box the login answer names
(``host_box``), as the clients we ship do.  It keeps each user's resume
token; once ``arm`` was sent, a held heartbeat that is lost (its box
died) comes back on its own, as a client would: after a random wait of up
to ``jitter`` seconds, ``POST /api/resume`` through a node picked at random
(another at once if that one refuses the connection), then the heartbeat
on the new ``host_box``, retried with backoff.

Driven by JSON lines on stdin (one command a line, answers matched by
``rid``), like ``loadclient.py``; exits on ``exit``, end of stdin, or
``--max-seconds``.  Held heartbeats + a few connections per node stay
under the process's 20,000 descriptors (``--count`` at most 18,000).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadclient import (PASSWORD, Client, HTTPConn, HTTPError, Session,  # noqa: E402
                        build, serve)

mono = time.monotonic
#: most users one process holds: their heartbeats and a few pooled
#: connections per node stay below the 20,000-descriptor ceiling
MAX_COUNT = 18000


class PortConn(HTTPConn):
    """An HTTP connection that knows the port it went to."""
    __slots__ = ("port",)


class Holder:
    """A connection slot (``Client.call`` uses ``.conn``)."""
    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn = None


def box_port(host_box: str, default: int) -> int:
    """The port of a ``host_box`` ("host:port"); ``default`` when it names
    none (a node outside cluster mode answers an empty box)."""
    _, sep, port = (host_box or "").rpartition(":")
    return int(port) if sep and port.isdigit() else default


class ClusterSession(Session):
    __slots__ = ("port", "token", "lost_at", "back_at", "tries")

    def __init__(self, client, name: str) -> None:
        super().__init__(client, name)
        self.port = 0          # the port of the box holding the session
        self.token = None      # the resume token
        self.lost_at = None
        self.back_at = None
        self.tries = 0

    def ended(self, reason: str) -> None:
        was = self.held
        super().ended(reason)
        if was and reason == "lost":
            self.client.heartbeat_lost(self)


class ClusterClient(Client):
    def __init__(self, args) -> None:
        super().__init__(args)
        self.ports = [int(p) for p in args.ports.split(",")]
        self.pools = {p: [Holder() for _ in range(args.pool)] for p in self.ports}
        self.free = {p: asyncio.Queue() for p in self.ports}
        for p, holders in self.pools.items():
            for h in holders:
                self.free[p].put_nowait(h)
        self.turn = 0
        self.armed = False
        self.jitter = 1.0
        self.storm_errors: dict[str, int] = {}
        self.storm_tasks: set = set()
        self.resumes = 0
        self.senders_by_port: dict[int, list] = {}

    # ------------------------------------------------ connections
    async def connect_to(self, port: int, tries: int = 6) -> HTTPConn:
        loop = asyncio.get_running_loop()
        delay, last = 0.05, None
        for _ in range(tries):
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(
                    PortConn, self.host, port,
                    local_addr=(self.src, 0) if self.src else None), 10)
                proto.port = port
                return proto
            except ConnectionRefusedError:
                raise
            except (OSError, asyncio.TimeoutError) as e:
                last = e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise ConnectionError(f"connect failed: {last!r}")

    async def call_at(self, holder, port: int, data: bytes, timeout: float = 30.0,
                      stream=None, again: bool = True):
        """One request on ``holder``'s connection to ``port`` (made anew if
        it is to another port or closed) and its answer."""
        conn = holder.conn
        if conn is not None and (conn.port != port or not conn.alive):
            conn.close()
            holder.conn = conn = None
        fresh = conn is None
        if fresh:
            conn = holder.conn = await self.connect_to(port)
        fut = conn.request(data, stream)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.transport.abort()
            holder.conn = None
            raise
        except ConnectionError:
            holder.conn = None
            if fresh or not again:
                raise
            # the server closed an idle keep-alive connection as the request
            # went out: once more, on a new one
            return await self.call_at(holder, port, data, timeout, stream, False)

    async def pooled(self, port: int, data: bytes, timeout: float = 30.0):
        holder = await self.free[port].get()
        try:
            return await self.call_at(holder, port, data, timeout)
        finally:
            self.free[port].put_nowait(holder)

    def next_port(self) -> int:
        self.turn += 1
        return self.ports[self.turn % len(self.ports)]

    # ------------------------------------------------ sessions
    def _session(self, name: str) -> ClusterSession:
        s = self.sessions.get(name)
        if s is None:
            s = self.sessions[name] = ClusterSession(self, name)
        return s

    def _logged_in(self, s: ClusterSession, body: bytes, answered: int) -> None:
        answer = json.loads(body)
        s.sid = answer["session"]
        s.qsid = quote(s.sid, safe="")
        s.port = box_port(answer.get("host_box") or "", answered)
        if answer.get("resume"):
            s.token = answer["resume"]

    async def register_one(self, s: ClusterSession) -> None:
        port = self.next_port()
        st, _, body = await self.pooled(port, build(
            "POST", "/api/register", {"username": s.name, "password": PASSWORD}))
        if st not in (200, 201, 409):
            raise HTTPError(f"register {st} {body[:80]!r}")

    async def login_at(self, s: ClusterSession, port: int) -> None:
        st, _, body = await self.pooled(port, build(
            "POST", "/api/login", {"username": s.name, "password": PASSWORD}))
        if st != 200:
            raise HTTPError(f"login {st} {body[:80]!r}")
        self._logged_in(s, body, port)

    async def hold_at_box(self, s: ClusterSession) -> None:
        """The heartbeat on the session's own box (a 307 is an error here:
        the client went where the login answer said)."""
        if s.held:
            return
        st, _, body = await self.call_at(s, s.port, build(
            "GET", f"/jchat?me={s.name}&id={s.qsid}&mode=stream",
            extra="Accept: text/event-stream\r\n"), stream=s)
        if st != 200:
            raise HTTPError(f"jchat {st} {body[:80]!r}")
        s.held = True
        self.held_now += 1
        self.held_peak = max(self.held_peak, self.held_now)

    # ------------------------------------------------ the storm
    def heartbeat_lost(self, s: ClusterSession) -> None:
        if not self.armed:
            return
        s.lost_at = mono()
        s.back_at = None
        s.conn = None
        t = asyncio.ensure_future(self._come_back(s))
        self.storm_tasks.add(t)
        t.add_done_callback(self.storm_tasks.discard)

    def _storm_error(self, kind: str) -> None:
        self.storm_errors[kind] = self.storm_errors.get(kind, 0) + 1

    async def _come_back(self, s: ClusterSession) -> None:
        await asyncio.sleep(random.random() * self.jitter)
        delay = 0.5
        while self.armed:
            s.tries += 1
            ports = list(self.ports)
            random.shuffle(ports)
            try:
                for port in ports:     # the first node that takes the connection
                    try:
                        st, _, body = await self.pooled(port, build(
                            "POST", "/api/resume", {"token": s.token}), timeout=20)
                    except ConnectionRefusedError:
                        continue
                    break
                else:
                    raise ConnectionError("no node took the connection")
                if st != 200:
                    raise HTTPError(f"resume {st}")
                self.resumes += 1
                self._logged_in(s, body, port)
                await self.hold_at_box(s)
                s.back_at = mono()
                return
            except Exception as e:  # counted; retried with backoff, as a client does
                key = type(e).__name__ + (f":{e}" if isinstance(e, HTTPError) else "")
                self._storm_error(key[:60])
                if s.conn is not None:
                    s.conn.close()
                    s.conn = None
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 8.0)

    def closing(self) -> None:
        self.armed = False      # no comeback while the connections close

    # ------------------------------------------------ commands
    async def cmd_register(self, conc=16, seconds=300):
        t0 = mono()
        todo = [self._session(n) for n in self.users]
        ok, errors, sample = await self.bounded(todo, self.register_one, conc, t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample, "elapsed": mono() - t0}

    async def cmd_setup(self, conc=32, seconds=300, names=None):
        """Log in (through the nodes in turn) and hold the heartbeat on the
        box named, user after user; time to the last one held."""
        t0 = mono()
        todo = [self._session(n) for n in (names or self.users)]
        done_at: list = []

        retried = 0

        async def one(s: ClusterSession) -> None:
            nonlocal retried
            if not s.sid:
                await self.login_at(s, self.next_port())
            try:
                await self.hold_at_box(s)
            except HTTPError:
                # a 403: the heartbeat beat the session's announcement to
                # Redis (docs/cluster.md); a client logs in again
                retried += 1
                await self.login_at(s, self.next_port())
                await self.hold_at_box(s)
            done_at.append(mono())
        ok, errors, sample = await self.bounded(todo, one, conc, t0 + seconds)
        boxes: dict[str, int] = {}
        for s in todo:
            if s.held:
                boxes[str(s.port)] = boxes.get(str(s.port), 0) + 1
        return {"n_ok": ok, "errors": errors, "sample": sample, "held": self.held_now,
                "boxes": boxes, "logged_in_again": retried, "t0": t0, "t_last": max(done_at, default=t0),
                "elapsed": mono() - t0}

    async def cmd_setup_names(self, names, conc=8, seconds=120):
        """Register ``names`` and log them in (their heartbeats not held)."""
        t0 = mono()
        todo = [self._session(x) for x in names]

        async def one(s):
            await self.register_one(s)
            await self.login_at(s, self.next_port())
        ok, errors, sample = await self.bounded(todo, one, conc, t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample}

    async def cmd_members(self, group, count, action, conc=16, seconds=120):
        """``join``: the first ``count`` held users of this process join
        ``group``; ``active``: they watch it (``POST /api/active``)."""
        held = [s for s in (self.sessions.get(n) for n in self.users) if s and s.held][:count]
        path = f"/api/groups/{group}/join" if action == "join" else "/api/active"
        form = {} if action == "join" else {"group": group}
        calls = [["POST", path, dict(form, me=s.name), [200, 201, 204]] for s in held]
        return await self.cmd_api(calls, conc, seconds)

    async def cmd_senders(self, n, prefix, conc=8, seconds=120):
        """Register and log in ``n`` senders (their heartbeats are not held)."""
        names = [f"{prefix}{i}" for i in range(n)]
        r = await self.cmd_setup_names(names, conc, seconds)
        self.senders = [self.sessions[x] for x in names if self.sessions[x].sid]
        return dict(r, senders=len(self.senders))

    def _targets(self, rng, total: int, mode: str):
        """``total`` (user, port to post to, burst offset) for chats to this
        process's held users; mode ``mixed``: even chats to the recipient's
        own box (offset 0), odd ones to another node (offset 1)."""
        held = [s for s in (self.sessions[n] for n in self.users if n in self.sessions)
                if s.held]
        out = []
        for j in range(total):
            s = held[rng.randrange(len(held))]
            if mode == "mixed" and len(self.ports) > 1 and j % 2:
                port = rng.choice([p for p in self.ports if p != s.port])
                out.append((s.name, port, 1))
            else:
                out.append((s.name, s.port, 0))
        return out

    async def cmd_chats(self, bid, total, conc, mode="mixed", rate=0.0, start_at=None,
                        seed=1, seconds=120):
        """Send ``total`` chats to this process's held users over ``conc``
        senders.  ``mixed`` (latency): the node each chat is posted to is the
        recipient's box (burst ``bid``) or another (``bid + 1``), in turn,
        paced at ``rate``/s.  ``own``: each sender posts to its own box, as
        fast as answers come (the rate)."""
        senders = self.senders[:conc]
        if not senders:
            return {"error": "no senders"}
        rng = random.Random(seed)
        plan = self._targets(rng, total, mode)
        nxt = 0
        statuses: dict = {}
        online = 0
        late = 0
        errors: dict = {}
        t_first = t_last = None
        if start_at is None:
            start_at = mono()
        deadline = start_at + seconds
        holders = {id(s): {p: Holder() for p in self.ports} for s in senders}

        async def worker(s):
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
                name, port, off = plan[j]
                if mode == "own":
                    port = s.port
                t = mono()
                body = pre + name.encode() + f"&msg=B{bid + off}+{t:.6f}".encode()
                data = (b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: application/x-www-form-urlencoded\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                t_first = t if t_first is None else t_first
                try:
                    st, _, rb = await self.call_at(holders[id(s)][port], port, data, 15)
                except Exception as e:
                    k = type(e).__name__
                    errors[k] = errors.get(k, 0) + 1
                    continue
                t_last = mono()
                statuses[st] = statuses.get(st, 0) + 1
                if st == 202 and b'"online"' in rb:
                    online += 1

        d = start_at - mono()
        if d > 0:
            await asyncio.sleep(d)
        await asyncio.gather(*(worker(s) for s in senders))
        for hs in holders.values():
            for h in hs.values():
                if h.conn is not None:
                    h.conn.close()
        return {"sent": total, "statuses": statuses, "online": online, "late": late,
                "errors": errors, "t_first": t_first, "t_last": t_last}

    async def cmd_api(self, calls, conc=16, seconds=120):
        """calls: [method, path, form, expected statuses]; ``form["me"]``
        names a session of this process, whose id is added and whose box
        gets the call."""
        t0 = mono()
        statuses: dict = {}
        sem = asyncio.Semaphore(max(1, conc))

        async def one(c):
            method, path, form, expect = c
            form = dict(form)
            port = self.ports[0]
            if "me" in form:
                s = self.sessions[form["me"]]
                form["id"] = s.sid
                port = s.port or port
            async with sem:
                st, _, body = await self.pooled(port, build(method, path, form))
            statuses[st] = statuses.get(st, 0) + 1
            if expect and st not in expect:
                raise HTTPError(f"{method} {path} -> {st} {body[:80]!r}")
        ok, errors, sample = await self.bounded(calls, one, conc, t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample, "statuses": statuses,
                "elapsed": mono() - t0}

    async def cmd_open(self, name):
        """Log ``name`` in and open its heartbeat; when the login left (the
        fan-out's start)."""
        s = self._session(name)
        t_sent = mono()
        await self.login_at(s, self.next_port())
        await self.hold_at_box(s)
        return {"t_sent": t_sent, "t_held": mono(), "port": s.port}

    async def cmd_ack_all(self, conc=8, seconds=120):
        calls = []
        for s in self.sessions.values():
            if s.sid and s.held and s.last_id > s.acked:
                calls.append(["POST", f"/ack?me={s.name}&id={s.qsid}&ack={s.last_id}",
                              {"me": s.name}, [200, 204]])
                s.acked = s.last_id
        return await self.cmd_api(calls, conc, seconds)

    async def cmd_arm(self, jitter=1.0):
        """From now on a lost heartbeat comes back by itself (see the module
        docstring)."""
        self.armed = True
        self.jitter = float(jitter)
        return {}

    async def cmd_storm(self, port):
        """The users held on ``port`` (the box about to die), and how the
        ones that were lost are doing."""
        mine = [s for s in self.sessions.values() if s.lost_at is not None]
        back = [s.back_at - s.lost_at for s in mine if s.back_at is not None]
        return {"on_port": sum(1 for s in self.sessions.values()
                               if s.held and s.port == port),
                "lost": len(mine), "back": len(back), "held": self.held_now,
                "first_lost": min((s.lost_at for s in mine), default=None),
                "last_back": max((s.back_at for s in mine if s.back_at), default=None),
                "back_s": sorted(back)[-1] if back else None,
                "tries": sum(s.tries for s in mine), "resumes": self.resumes,
                "errors": self.storm_errors}

    async def cmd_tokens(self, n):
        """Up to ``n`` resume tokens of this process's users."""
        return {"tokens": [s.token for s in self.sessions.values() if s.token][:n]}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ports", required=True, help="the nodes' HTTP ports, comma-separated")
    ap.add_argument("--src", default="", help="source address to bind, e.g. 127.0.0.21")
    ap.add_argument("--prefix", default="u")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--pool", type=int, default=8, help="pooled connections per node")
    ap.add_argument("--max-seconds", type=float, default=1800)
    args = ap.parse_args()
    if args.count > MAX_COUNT:
        ap.error(f"keep a client process at most {MAX_COUNT} users")
    args.port = int(args.ports.split(",")[0])
    await serve(ClusterClient(args), args.max_seconds)

if __name__ == "__main__":
    asyncio.run(main())
