#!/usr/bin/env python3
"""Client process of ``bench/fanout.py`` (stdlib asyncio, on top of
``bench/loadclient.py``): a slice of the members of one large group, each
holding a heartbeat with that group active, keeping a view of the group's
presence from ``msg update`` and ``msg updates`` frames; or the bystanders
(a pair chatting closed-loop) and the member that toggles.

Driven through JSON lines on stdin/stdout like loadclient.py (one command per
line, answered by ``rid``); every command is bounded in time.  Times are
CLOCK_MONOTONIC, one clock for every process of the machine.

With ``--lean`` the held heartbeats go through ``bench/fanout_lean.py``
instead (one epoll, a minimal chunk and event-stream parser, views counted as
updates arrive); ``--lean-interval`` seconds between its drains while frames
come (0: at every wake-up).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadclient  # noqa: E402
from loadclient import PASSWORD, HTTPError, Session, build, mono, pct_ms  # noqa: E402


class FanClient(loadclient.Client):
    def __init__(self, args) -> None:
        super().__init__(args)
        #: per session name: member -> last state heard
        self.views: dict[str, dict[bytes, bytes]] = {}
        self.target: tuple | None = None
        self.got: set[str] = set()
        self.arrivals: list[float] = []
        self.updates = 0
        self.bundles = 0
        #: the bystander pair's loop
        self.chat_waiter: asyncio.Future | None = None
        self.chat_samples: list[tuple[float, float]] = []
        self.chat_stop = False
        self.chat_task: asyncio.Task | None = None
        #: per session name: the resume token its password login was given
        self.resume_tokens: dict[str, str] = {}

    # -- frames ---------------------------------------------------------------
    def on_frame(self, s: Session, data: list) -> None:
        if not data:
            return
        first = data[0]
        if first.startswith(b"msg update "):
            parts = first.split(b" ")
            if len(parts) >= 4:
                self.updates += 1
                self._saw(s, parts[3], parts[2])
            return
        if first == b"msg updates":
            self.bundles += 1
            for line in data[1:]:
                state, _, user = line.partition(b" ")
                self.updates += 1
                self._saw(s, user, state)
            return
        if first.startswith(b"msg chat ") and self.chat_waiter is not None:
            if not self.chat_waiter.done():
                self.chat_waiter.set_result(mono())
            return
        super().on_frame(s, data)

    def _saw(self, s: Session, user: bytes, state: bytes) -> None:
        view = self.views.get(s.name)
        if view is None:
            view = self.views[s.name] = {}
        view[user] = state
        if self.target == (user, state) and s.name not in self.got:
            self.got.add(s.name)
            self.arrivals.append(mono())

    async def login_one(self, s: Session, register: bool) -> None:
        """A password login (registering first if told); keeps the resume
        token the answer carries, as the shipped clients do."""
        if register:
            st, _, body = await self.call_busy(s, build(
                "POST", "/api/register", {"username": s.name, "password": PASSWORD}))
            if st not in (200, 201, 409):
                raise HTTPError(f"register {st} {body[:80]!r}")
        st, _, body = await self.call_busy(s, build(
            "POST", "/api/login", {"username": s.name, "password": PASSWORD}))
        if st != 200:
            raise HTTPError(f"login {st} {body[:80]!r}")
        self._opened(s, body)

    def _opened(self, s: Session, body: bytes) -> None:
        answer = json.loads(body)
        s.sid = answer["session"]
        s.qsid = loadclient.quote(s.sid, safe="")
        if answer.get("resume"):
            self.resume_tokens[s.name] = answer["resume"]

    async def resume_one(self, s: Session) -> None:
        """A returning client: a new session from its resume token (no
        password, no password hash)."""
        token = self.resume_tokens.get(s.name)
        if token is None:
            raise HTTPError("no resume token")
        st, _, body = await self.call_busy(s, build("POST", "/api/resume", {"token": token}))
        if st != 200:
            raise HTTPError(f"resume {st} {body[:80]!r}")
        self._opened(s, body)

    async def cmd_drop(self, names):
        """These clients go away without a word to the server (the app
        closed, the network gone): their heartbeat connections close, their
        sessions live on (until --session-ttl), their users go offline after
        --linger."""
        n = 0
        for name in names:
            s = self.sessions.get(name)
            if s is None or not s.held:
                continue
            if s.conn is not None:
                s.conn.close()
            s.held = False
            self.held_now -= 1
            n += 1
        return {"n_ok": n}

    # -- heartbeats -------------------------------------------------------------
    async def cmd_rehold(self, bundle: bool, conc=64, seconds=120, names=None):
        """Hold a new heartbeat for every held session (``bundle=1`` or
        not); the server releases the one held before."""
        t0 = mono()
        self.hold_extra = "&bundle=1" if bundle else ""
        names = names if names is not None else self.users
        fresh = []
        for n in names:
            old = self.sessions.get(n)
            if old is None or not old.sid or not old.held:
                continue
            s = Session(self, n)
            s.sid, s.qsid = old.sid, old.qsid
            self.sessions[n] = s
            fresh.append((s, old))

        async def one(pair) -> None:
            s, old = pair
            await self.hold_one(s)
            if old.conn is not None:  # released by the server: close it, do not wait
                old.conn.close()      # for its idle timeout (20,000 fds in all)
        ok, errors, sample = await self.bounded(fresh, one, conc, t0 + seconds)
        return {"n_ok": ok, "errors": errors, "sample": sample, "elapsed": mono() - t0}

    async def _post(self, s: Session, path: str, form: dict, holder=None) -> tuple:
        form = {"me": s.name, "id": s.sid, **form}
        st, _, body = await self.call(holder or s, build("POST", path, form))
        if st >= 300:
            raise HTTPError(f"{path} {st} {body[:80]!r}")
        return st, body

    async def cmd_each(self, path: str, form: dict, conc=32, seconds=120, names=None):
        """``POST path`` (with me, id and ``form``) for each session, on
        ``conc`` side connections (a held heartbeat keeps its own busy)."""
        t0 = mono()
        names = names if names is not None else self.users
        todo = [self.sessions[n] for n in names if n in self.sessions and self.sessions[n].sid]
        free: asyncio.Queue = asyncio.Queue()
        holders = [type("H", (), {"conn": None})() for _ in range(max(1, conc))]
        for h in holders:
            free.put_nowait(h)

        async def one(s: Session) -> None:
            h = await free.get()
            try:
                await self._post(s, path, form, h)
            finally:
                free.put_nowait(h)
        ok, errors, sample = await self.bounded(todo, one, conc, t0 + seconds)
        for h in holders:
            if h.conn is not None:
                h.conn.close()
        return {"n_ok": ok, "errors": errors, "sample": sample, "elapsed": mono() - t0}

    async def cmd_logout(self, names, seconds=60):
        """Log these sessions out (on a side connection: the heartbeat holds
        their own); their heartbeats end."""
        t0 = mono()
        holder = type("H", (), {"conn": None})()
        ok = 0
        for n in names:
            s = self.sessions.get(n)
            if s is None or not s.sid:
                continue
            await self._post(s, "/api/logout", {}, holder)
            if s.conn is not None:
                s.conn.close()
            s.sid = None
            ok += 1
            if mono() - t0 > seconds:
                break
        if holder.conn is not None:
            holder.conn.close()
        return {"n_ok": ok, "elapsed": mono() - t0}

    # -- what the orchestrator measures -------------------------------------------
    async def cmd_target(self, user: str, state: str):
        self.target = (user.encode(), state.encode())
        self.got = set()
        self.arrivals = []
        return {}

    async def cmd_arrivals(self):
        held = sum(1 for s in self.sessions.values() if s.held)
        a = self.arrivals
        return {"count": len(self.got), "held": held,
                "first": min(a) if a else None, "last": max(a) if a else None,
                "updates": self.updates, "bundles": self.bundles}

    async def cmd_views(self, users: list, state: str, names=None):
        """How many of the held sessions (of ``names``) see every one of
        ``users`` in ``state``."""
        st = state.encode()
        wanted = {u.encode(): st for u in users}.items()
        own = set(users)  # a session is never told of its own user
        names = names if names is not None else self.users
        right = wrong = 0
        for n in names:
            if n in own:
                continue
            s = self.sessions.get(n)
            if s is None or not s.held:
                continue
            # every wanted (user, state) among the view's: one set-like test in C
            # (a process checks 3,000 views of 1,000 users while frames arrive)
            if wanted <= self.views.get(n, {}).items():
                right += 1
            else:
                wrong += 1
        return {"right": right, "wrong": wrong}

    async def cmd_storm(self, names: list, seconds: float, group: str, conc=128,
                        cap: float = 30.0, how: str = "password"):
        """Log ``names`` in afresh, spread evenly over ``seconds``: login
        (``how``: "password", or "resume" with the token of the last login),
        make ``group`` active, hold the heartbeat.  None starts after
        ``cap`` seconds (a server that cannot keep up is not waited for)."""
        t0 = mono()
        step = seconds / max(1, len(names))
        errors: dict[str, int] = {}
        done = 0
        gate = asyncio.Semaphore(conc)

        async def one(i: int, n: str) -> None:
            nonlocal done
            await asyncio.sleep(max(0.0, t0 + i * step - mono()))
            async with gate:
                if mono() - t0 > cap:
                    errors["not started: past the cap"] = errors.get(
                        "not started: past the cap", 0) + 1
                    return
                s = self.sessions[n] = Session(self, n)
                try:
                    await asyncio.wait_for(self._storm_one(s, group, how),
                                           max(1.0, t0 + cap - mono()))
                    done += 1
                except Exception as e:
                    k = type(e).__name__
                    errors[k] = errors.get(k, 0) + 1
        await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))
        return {"n_ok": done, "errors": errors, "elapsed": mono() - t0}

    async def _storm_one(self, s: Session, group: str, how: str) -> None:
        if how == "resume":
            await self.resume_one(s)
        else:
            await self.login_one(s, False)
        await self._post(s, "/api/active", {"group": group})
        await self.hold_one(s)

    # -- the bystanders and the toggler ---------------------------------------------
    async def cmd_chat_start(self, sender: str, to: str):
        """A closed loop: ``sender`` chats ``to`` (held here), waits for the
        frame, again, until :meth:`cmd_chat_stop`."""
        s = self.sessions[sender]
        self.chat_stop = False
        self.chat_samples = []
        self.chat_errors: dict[str, int] = {}
        holder = type("H", (), {"conn": None})()

        async def loop() -> None:
            n = 0
            while not self.chat_stop:
                n += 1
                waiter = self.chat_waiter = asyncio.get_running_loop().create_future()
                sent = mono()
                try:
                    await self._post(s, "/chat", {"to": to, "msg": f"L{n}"}, holder)
                except Exception as e:
                    k = f"post: {type(e).__name__}: {e}"[:100]
                    self.chat_errors[k] = self.chat_errors.get(k, 0) + 1
                    await asyncio.sleep(0.05)
                    continue
                try:
                    got = await asyncio.wait_for(waiter, 10)
                except asyncio.TimeoutError:
                    self.chat_errors["no frame within 10 s"] = self.chat_errors.get(
                        "no frame within 10 s", 0) + 1
                    got = mono()  # counted with its 10 s
                self.chat_samples.append((sent, got - sent))
                if n % 50 == 0:
                    # the receiver acknowledges what it has, as a client does:
                    # its mailbox (--mailbox) never fills with old chats
                    r = self.sessions.get(to)
                    if r is not None and r.sid and r.last_id > r.acked:
                        try:
                            await self.call(holder, build(
                                "POST", f"/ack?me={r.name}&id={r.qsid}&ack={r.last_id}", {}))
                            r.acked = r.last_id
                        except Exception as e:
                            k = f"ack: {type(e).__name__}"
                            self.chat_errors[k] = self.chat_errors.get(k, 0) + 1
                await asyncio.sleep(0.002)
        self.chat_task = asyncio.ensure_future(loop())
        return {}

    async def cmd_chat_stop(self):
        self.chat_stop = True
        if self.chat_task is not None:
            await asyncio.wait_for(self.chat_task, 15)
        return {"samples": self.chat_samples, "errors": self.chat_errors}

    async def cmd_toggle(self, name: str, online: bool):
        """``name`` comes online (login + heartbeat) or goes offline
        (logout); the time the request left."""
        if online:
            s = self.sessions[name] = Session(self, name)
            await self.login_one(s, False)
            t_sent = mono()
            await self.hold_one(s)
        else:
            t_sent = mono()
            await self.cmd_logout([name])
        return {"t_sent": t_sent}


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    # --lean: the held watchers on bench/fanout_lean.py's receive path
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--lean", action="store_true")
    ap.add_argument("--lean-interval", type=float, default=0.002)
    ours, sys.argv[1:] = ap.parse_known_args()
    if ours.lean:
        from fanout_lean import LeanClient

        def make(args):
            args.lean_interval = ours.lean_interval
            return LeanClient(args)
        loadclient.Client = make  # what loadclient.main builds
    else:
        loadclient.Client = FanClient
    await loadclient.main()


if __name__ == "__main__":
    asyncio.run(main())


__all__ = ["FanClient", "PASSWORD", "pct_ms"]
