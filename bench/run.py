#!/usr/bin/env python3
"""Presence server benchmark: held heartbeats, memory, chat latency and rate,
presence fan-out and sweep stalls, against a thread-per-connection baseline
in the same run.  Not a test: run by hand.

    python bench/run.py                    # 19,000 users; baseline at 10,000
    python bench/run.py --quick            # smoke run: 2,000 users each
    python bench/run.py --skip-baseline --users 10000

For each server (presence: ``twistd -n presence``; baseline:
``bench/baseline_server.py``) on a free loopback port:

 main run (--keepalive 25 --poll 4):
  1. register + log in N users, then hold N heartbeats (GET /jchat, stream
     mode), spread over client processes of at most 4,750 users each
     (``bench/loadclient.py``), each bound to its own 127.0.0.x source
     address so that loopback ports never run short;
  2. RSS (VmRSS) of the server before any user and with N held: per held
     connection = delta / N (users, sessions, mailboxes, sockets included);
  3. latency: chats paced at --lat-rate/s to random held users, the send time
     in the text; receive - send, p50/p99;
  4. rate: a burst of --chats chats over --conc keep-alive connections spread
     over all client processes; chats/s answered and delivered;
  5. fan-out: --group members watch one group (POST /api/active); a member
     that was offline opens its heartbeat; time until every member session
     has ``msg update online <user>``; --fanout-reps members in turn;
 sweep run (--keepalive 1 --poll 1, same N held): a probe sends a tiny
  request (POST /ack) every 5 ms on one keep-alive connection for
  --probe-seconds; the longest answer is the worst reactor stall seen from
  outside; the server's own sweep_max_ms from /api/stats beside it.

Every phase is bounded in count and time; client processes and servers are
stopped at the end (and the client processes stop by themselves if this
process dies).  Results: --out (JSON) and a summary table on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PER_PROC = 4750
mono = time.monotonic


def src_sha() -> str:
    """A digest of presence/**/*.py: which server code a run measured (the
    tree may change between the runs of one invocation)."""
    import hashlib
    h = hashlib.sha1()
    for base, _, files in sorted(os.walk(os.path.join(ROOT, "presence"))):
        for fn in sorted(files):
            if fn.endswith(".py"):
                with open(os.path.join(base, fn), "rb") as f:
                    h.update(fn.encode() + f.read())
    return h.hexdigest()[:12]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ memory


class MemCgroup:
    """A cgroup (v1 memory controller) for one server process: what it
    charges (anonymous memory and the page cache it writes; not kernel
    socket buffers) and, with ``limit``, a ceiling past which the kernel's
    OOM killer stops it.  Needs root and a writable memory hierarchy."""

    ROOT = "/sys/fs/cgroup/memory"

    @classmethod
    def unavailable(cls) -> str:
        """Why cgroups cannot be used here ("" when they can)."""
        if not os.path.exists(os.path.join(cls.ROOT, "memory.limit_in_bytes")):
            return f"no cgroup v1 memory controller at {cls.ROOT}"
        if not os.access(cls.ROOT, os.W_OK):
            return f"{cls.ROOT} is not writable (not root?)"
        return ""

    def __init__(self, name: str, limit: int | None = None) -> None:
        self.path = os.path.join(self.ROOT, f"presence-bench-{os.getpid()}-{name}")
        os.makedirs(self.path, exist_ok=True)
        self.limit = limit
        if limit:
            self._write("memory.limit_in_bytes", limit)
            if os.path.exists(os.path.join(self.path, "memory.memsw.limit_in_bytes")):
                self._write("memory.memsw.limit_in_bytes", limit)

    def _write(self, name: str, value) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(str(value))

    def _read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def join(self) -> None:
        """Move the calling process in (a ``preexec_fn``: the server starts
        inside, so that everything it allocates is charged here)."""
        self._write("cgroup.procs", os.getpid())

    def figures(self) -> dict:
        out = {}
        try:
            out["usage_mib"] = round(int(self._read("memory.usage_in_bytes")) / 1048576, 1)
            out["peak_mib"] = round(int(self._read("memory.max_usage_in_bytes")) / 1048576, 1)
            out["failcnt"] = int(self._read("memory.failcnt"))
            for line in self._read("memory.oom_control").splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    out["oom_kills"] = int(v)
            for line in self._read("memory.stat").splitlines():
                k, _, v = line.partition(" ")
                if k in ("rss", "cache"):
                    out[f"{k}_mib"] = round(int(v) / 1048576, 1)
        except (OSError, ValueError):
            pass
        if self.limit:
            out["limit_mib"] = round(self.limit / 1048576, 1)
        return out

    def remove(self) -> None:
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)  # its last process is still exiting


# ------------------------------------------------------------------ server


class ServerProc:
    def __init__(self, kind: str, argv: list, ready_re: str, workdir: str,
                 name: str, env: dict | None = None) -> None:
        self.kind, self.argv, self.ready_re = kind, argv, re.compile(ready_re)
        self.env = env
        self.cgroup: MemCgroup | None = None
        self.gcpath = (env or {}).get("PRESENCE_GCWATCH")
        self.logpath = os.path.join(workdir, f"{name}.log")
        self.proc = None
        self.port = None

    async def start(self, timeout: float = 90) -> None:
        log(f"start {self.kind}: {' '.join(self.argv)}")
        self.logf = open(self.logpath, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=ROOT,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(self.env or {})},
                                     preexec_fn=self.cgroup.join if self.cgroup else None)
        end = mono() + timeout
        while mono() < end:
            await asyncio.sleep(0.2)
            with open(self.logpath, "rb") as f:
                m = self.ready_re.search(f.read().decode("utf-8", "replace"))
            if m:
                self.port = int(m.group(1))
                self.src_sha = src_sha() if self.kind == "presence" else None
                log(f"{self.kind} ready on port {self.port} (pid {self.proc.pid})")
                return
            if self.proc.poll() is not None:
                break
        tail = open(self.logpath, "rb").read()[-3000:].decode("utf-8", "replace")
        self.stop()
        raise RuntimeError(f"{self.kind} did not become ready:\n{tail}")

    def status(self) -> dict:
        out = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "VmHWM", "Threads", "RssAnon"):
                        out[k] = int(v.split()[0])
            with open(f"/proc/{self.proc.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            tck = os.sysconf("SC_CLK_TCK")
            out["cpu_s"] = (int(parts[11]) + int(parts[12])) / tck
            out["fds"] = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except (OSError, ValueError, IndexError):
            pass
        return out

    def stats(self) -> dict:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/api/stats", timeout=20) as r:
                return json.loads(r.read())
        except Exception as e:
            return {"error": repr(e)}

    def gc(self) -> dict | None:
        if not self.gcpath:
            return None
        try:
            with open(self.gcpath) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)

    def release(self) -> None:
        """Stop, then remove the cgroup (if any)."""
        self.stop()
        if self.cgroup is not None:
            self.cgroup.remove()


def stop_process(proc, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


_HELP: list = []


def presence_off_flags(twistd: str) -> list:
    """Turn off the listeners on fixed ports (SIP 5060, the SMS simulator
    13013, the operator endpoint 8081) where this server version has them: a benchmark run must not
    collide with another server on the machine, and measures HTTP only.
    The access log is off too (``--no-access-log``), as the baseline has
    none, unless ``PRESENCE_BENCH_ACCESS_LOG=1`` (in the server's log) or
    ``=file`` (``--access-log`` to a file in the work dir); so are the
    per-address chat, registration and guest limits."""
    if not _HELP:
        try:
            # this tree's plugin even when presence is not installed (without
            # it the help is twistd's own, and no limit is turned off)
            path = os.pathsep.join(x for x in (ROOT, os.environ.get("PYTHONPATH")) if x)
            _HELP.append(subprocess.run([twistd, "presence", "--help"], capture_output=True,
                                        text=True, timeout=60, cwd=ROOT,
                                        env={**os.environ, "PYTHONPATH": path}).stdout)
        except Exception:
            _HELP.append("")
    flags = []
    if "--sip=" in _HELP[0]:
        flags += ["--sip", "0"]
    if "--smsc=" in _HELP[0]:
        flags += ["--smsc", "none"]
    if "--dns=" in _HELP[0]:
        flags += ["--dns", "none"]
    if "--admin=" in _HELP[0]:
        # the operator endpoint's fixed 8081 (a B server may turn it on again)
        flags += ["--admin", "none"]
    if "--no-access-log" in _HELP[0] and os.environ.get("PRESENCE_BENCH_ACCESS_LOG",
                                                         "") not in ("1", "file"):
        flags += ["--no-access-log"]
    if "--chat-limit=" in _HELP[0]:
        # every simulated user comes from 127.0.0.1, far faster than a person:
        # the abuse limits are out of the way here: this measures throughput
        unlimited = "1000000000:1000000"
        flags += ["--chat-limit", unlimited, "--address-chat-limit", unlimited,
                  "--registrations-per-hour", "1000000000",
                  "--guests-per-address", "1000000000"]
    return flags


def presence_server(workdir: str, data: str, name: str, keepalive, poll,
                    gcwatch: bool = False) -> ServerProc:
    twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    env = None
    off = presence_off_flags(twistd)
    if gcwatch:  # the same twistd, with a gc.callbacks timer (bench/gcwatch.py)
        twistd = [sys.executable, os.path.join(HERE, "gcwatch.py")]
        env = {"PRESENCE_GCWATCH": os.path.join(workdir, f"{name}-gc.json")}
    if os.environ.get("PRESENCE_BENCH_ACCESS_LOG") == "file":
        off = off + ["--access-log", os.path.join(workdir, f"{name}-access.log")]
    argv = (twistd if isinstance(twistd, list) else [twistd]) + [
        "-n", "--pidfile", os.path.join(workdir, f"{name}.pid"),
        "presence", "--http", "tcp:0:interface=127.0.0.1", "--data", data,
        "--hash-cost", "1", "--keepalive", str(keepalive), "--poll", str(poll)] + off
    return ServerProc("presence", argv, r"presence ready http=[\d.]+:(\d+)",
                      workdir, name, env)


def baseline_server(workdir: str, name: str, keepalive) -> ServerProc:
    argv = [sys.executable, os.path.join(HERE, "baseline_server.py"), "--port", "0",
            "--keepalive", str(keepalive), "--hash-cost", "1", "--max-seconds", "1800"]
    return ServerProc("baseline", argv, r"baseline ready http=[\d.]+:(\d+)",
                      workdir, name)


# ------------------------------------------------------------------ clients


class ClientProc:
    def __init__(self, idx: int, port: int, first: int, count: int, src: str):
        self.idx, self.port, self.first, self.count, self.src = idx, port, first, count, src
        self.rid = 0
        self.waiters: dict[int, asyncio.Future] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(HERE, "loadclient.py"),
            "--port", str(self.port), "--src", self.src, "--prefix", "u",
            "--first", str(self.first), "--count", str(self.count),
            "--max-seconds", "1800",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 26)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            fut = self.waiters.pop(msg.get("rid"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"client {self.idx} exited"))

    async def cmd(self, _cmd: str, _timeout: float = 60, **kw) -> dict:
        self.rid += 1
        rid = self.rid
        timeout = _timeout
        fut = asyncio.get_running_loop().create_future()
        self.waiters[rid] = fut
        self.proc.stdin.write((json.dumps({"cmd": _cmd, "rid": rid, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.waiters.pop(rid, None)
            return {"ok": False, "error": f"timeout after {timeout}s"}

    async def stop(self) -> None:
        try:
            self.proc.stdin.write(b'{"cmd": "exit"}\n')
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), 20)
        except Exception:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


def merge_errors(results: list) -> dict:
    out: dict[str, int] = {}
    for r in results:
        for k, v in (r.get("errors") or {}).items():
            out[k] = out.get(k, 0) + v
        if not r.get("ok", True) and "error" in r:
            out[r["error"][:80]] = out.get(r["error"][:80], 0) + 1
    return out


def pct(vals: list) -> dict:
    if not vals:
        return {"n": 0}
    vals = sorted(vals)
    n = len(vals)

    def p(q):
        return round(vals[min(n - 1, int(q * n))], 3)
    return {"n": n, "p50": p(0.5), "p90": p(0.9), "p99": p(0.99),
            "p999": p(0.999), "max": round(vals[-1], 3)}


# ------------------------------------------------------------------ phases


class Bench:
    def __init__(self, args, kind: str, n: int, workdir: str) -> None:
        self.args, self.kind, self.n, self.workdir = args, kind, n, workdir
        self.users: list[ClientProc] = []
        self.aux: ClientProc | None = None
        self.srv: ServerProc | None = None
        self.bid = 0
        self.spy = None
        self.windows: dict = {}
        self.cur_phase = None

    def gc_report(self, res: dict) -> None:
        """Garbage-collector pauses (--gc-watch) overall and per phase."""
        g = self.srv.gc() if self.srv else None
        if not g:
            return
        out = {"per_generation": {k: {"count": v[0], "total_ms": v[1], "max_ms": v[2]}
                                  for k, v in g["gen"].items()},
               "threshold": g.get("threshold"), "phases": {}}
        for phase, (t0, t1) in self.windows.items():
            t1 = t1 or mono()
            ps = [p for p in g["long"] if t0 <= p[0] <= t1]
            out["phases"][phase] = {
                "pauses_ge_5ms": len(ps),
                "gen2": len([p for p in ps if p[1] == 2]),
                "max_ms": max((p[2] for p in ps), default=0),
                "total_ms": round(sum(p[2] for p in ps), 1),
                "seconds": round(t1 - t0, 1)}
        res["gc"] = out
        log(f"{self.kind}: gc {json.dumps(out)}")

    # optional py-spy sampling of the server, one file per phase
    def spy_start(self, phase: str) -> None:
        """Mark the start of a phase (for the gc report) and, with --profile,
        start sampling the server."""
        self.windows[phase] = [mono(), None]
        self.cur_phase = phase
        if not self.args.profile or self.kind != "presence":
            return
        exe = shutil.which("py-spy")
        if exe is None:
            log("--profile: py-spy not found (pip install py-spy)")
            return
        path = os.path.join(self.args.profile, f"{self.kind}-{self.srv.logpath.rsplit('/', 1)[1][:-4]}-{phase}.txt")
        os.makedirs(self.args.profile, exist_ok=True)
        self.spy = subprocess.Popen([exe, "record", "--pid", str(self.srv.proc.pid), "--rate", "250",
                                     "--nonblocking", "--format", "raw", "--duration", "900",
                                     "-o", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def spy_stop(self) -> None:
        if self.cur_phase is not None:
            self.windows[self.cur_phase][1] = mono()
            self.cur_phase = None
        if self.spy is None:
            return
        self.spy.send_signal(signal.SIGINT)
        try:
            self.spy.wait(30)
        except subprocess.TimeoutExpired:
            self.spy.kill()
        self.spy = None

    def make_server(self, name: str, keepalive, poll) -> ServerProc:
        if self.kind == "null":
            return ServerProc("null", [sys.executable, os.path.join(HERE, "null_server.py"),
                                       "--port", "0"], r"null ready http=[\d.]+:(\d+)",
                              self.workdir, name)
        if self.kind == "presence":
            return presence_server(self.workdir, os.path.join(self.workdir, "data"),
                                   name, keepalive, poll, self.args.gc_watch)
        return baseline_server(self.workdir, name, keepalive)

    async def start_clients(self) -> None:
        p = max(1, math.ceil(self.n / PER_PROC))
        per = math.ceil(self.n / p)
        self.users = []
        for k in range(p):
            first = k * per
            count = min(per, self.n - first)
            self.users.append(ClientProc(k, self.srv.port, first, count, f"127.0.0.{10 + k}"))
        self.aux = ClientProc(99, self.srv.port, 0, 0, "127.0.0.9")
        for c in self.users + [self.aux]:
            await c.start()

    async def stop_clients(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.users + ([self.aux] if self.aux else [])))
        self.users, self.aux = [], None

    async def all(self, _cmd: str, _timeout: float, procs=None, **kw) -> list:
        procs = procs if procs is not None else self.users
        return await asyncio.gather(*(c.cmd(_cmd, _timeout, **kw) for c in procs))

    async def counts(self) -> list:
        return await self.all("counts", 30, self.users + [self.aux])

    async def login_and_hold(self, res: dict, tag: str, seconds: float) -> None:
        r = await self.all("login", seconds + 30, register=True, conc=self.args.login_conc,
                           seconds=seconds)
        logged = sum(x.get("n_ok", 0) for x in r)
        res[f"{tag}login"] = {"ok": logged, "errors": merge_errors(r),
                              "busy_retries": sum(x.get("busy_retries", 0) for x in r),
                              "elapsed_s": round(max(x.get("elapsed", 0) for x in r), 2),
                              "sample": sum((x.get("sample", []) for x in r), [])[:5]}
        log(f"{self.kind}: logged in {logged}/{self.n} in {res[f'{tag}login']['elapsed_s']}s "
            f"errors={res[f'{tag}login']['errors']}")
        res[f"{tag}server_after_login"] = self.srv.status()
        r = await self.all("hold", seconds + 30, conc=self.args.login_conc, seconds=seconds)
        held = sum(x.get("held", 0) for x in r)
        res[f"{tag}hold"] = {"held": held, "errors": merge_errors(r),
                             "elapsed_s": round(max(x.get("elapsed", 0) for x in r), 2),
                             "sample": sum((x.get("sample", []) for x in r), [])[:5]}
        log(f"{self.kind}: holding {held}/{self.n} heartbeats "
            f"({res[f'{tag}hold']['elapsed_s']}s) errors={res[f'{tag}hold']['errors']}")

    async def run_main(self, res: dict) -> dict:
        a = self.args
        res["users"] = self.n
        t_run = mono()
        self.srv = self.make_server(f"{self.kind}-main", 25, 4)
        if not MemCgroup.unavailable():  # what the kernel charges it, no limit
            self.srv.cgroup = MemCgroup(f"{self.kind}-main")
        await self.srv.start()
        try:
            await asyncio.sleep(1.0)
            res["server_start"] = self.srv.status()
            res["presence_src_sha1"] = getattr(self.srv, "src_sha", None)
            await self.start_clients()
            self.spy_start("login-hold")
            await self.login_and_hold(res, "", a.phase_seconds)
            self.spy_stop()
            await asyncio.sleep(3.0)
            c = await self.counts()
            held = sum(x.get("held", 0) for x in c)
            st = self.srv.status()
            res["server_held"] = st
            if self.srv.cgroup is not None:
                res["cgroup_held"] = self.srv.cgroup.figures()
            res["stats_held"] = self.srv.stats()
            if self.srv.gcpath:  # --gc-watch: what the held sessions are made of
                self.srv.proc.send_signal(signal.SIGUSR2)
                for _ in range(100):
                    await asyncio.sleep(0.2)
                    try:
                        with open(self.srv.gcpath + ".objects.json") as f:
                            res["objects_held"] = json.load(f)
                        break
                    except (OSError, ValueError):
                        pass
            res["held"] = held
            if held:
                delta_kb = st.get("VmRSS", 0) - res["server_start"].get("VmRSS", 0)
                res["rss_per_conn_kb"] = round(delta_kb / held, 2)
                if "VmRSS" in res.get("server_after_login", {}):
                    res["rss_per_conn_kb_hold_only"] = round(
                        (st["VmRSS"] - res["server_after_login"]["VmRSS"]) / held, 2)
            log(f"{self.kind}: held={held} RSS {res['server_start'].get('VmRSS')} -> "
                f"{st.get('VmRSS')} kB, per conn {res.get('rss_per_conn_kb')} kB")
            if not held or not self.srv.alive():
                res["aborted"] = "no heartbeat held"
                return res

            procs, per, res["senders"] = await self.log_in_senders()

            # latency at full load, paced
            self.spy_start("latency")
            res["latency"] = await self.latency_phase()
            self.spy_stop()
            await self.ack_all(procs)

            # rate: unpaced bursts over all processes; the median of --rate-reps
            self.spy_start("rate")
            reps = []
            for _ in range(max(1, a.rate_reps)):
                reps.append(await self.rate_phase(procs, per))
                await self.ack_all(procs)
            self.spy_stop()
            res["rate_reps"] = [x.get("chats_per_s") for x in reps]
            res["rate"] = sorted(reps, key=lambda x: x.get("chats_per_s") or 0)[len(reps) // 2]

            if self.kind == "null":  # the harness floor: no groups
                return res
            # fan-out
            res["fanout"] = await self.fanout_phase()
            self.spy_stop()
            res["server_end"] = self.srv.status()
            res["stats_end"] = self.srv.stats()
            res["alive_at_end"] = self.srv.alive()
        finally:
            await self.teardown(res, t_run)
        return res

    async def log_in_senders(self) -> tuple:
        """Log in the chat senders: the aux process gets the latency senders,
        every process some burst senders.  Returns (processes, burst senders
        per process, senders logged in)."""
        procs = self.users + [self.aux]
        per = max(1, math.ceil(self.args.conc / len(procs)))
        r = await asyncio.gather(*(
            c.cmd("senders", 120, n=per, prefix=f"s{c.idx}x", conc=8, seconds=90)
            for c in procs))
        return procs, per, sum(x.get("senders", 0) for x in r)

    async def ack_all(self, procs: list) -> None:
        """Acknowledge every frame the clients hold (between bursts)."""
        await self.all("ack_all", 150, procs, conc=8, seconds=120)

    async def teardown(self, res: dict, t_run: float) -> None:
        """After a phase: GC figures, clients and server stopped, time taken."""
        self.spy_stop()
        await asyncio.sleep(1.2 if self.args.gc_watch else 0)  # let gcwatch report
        self.gc_report(res)
        self.windows = {}
        await self.stop_clients()
        self.srv.release()
        res["elapsed_s"] = round(mono() - t_run, 1)

    async def wait_delivered(self, bid: int, expected: int, limit: float) -> tuple:
        end = mono() + limit
        last_n, last_change = -1, mono()
        while True:
            c = await self.counts()
            n = sum(x.get("chat_count", {}).get(str(bid), 0) for x in c)
            t_last = max((x.get("chat_last", {}).get(str(bid), 0) for x in c), default=0)
            if n >= expected or mono() > end or mono() - last_change > 10:
                return n, t_last
            if n != last_n:
                last_n, last_change = n, mono()
            await asyncio.sleep(0.25)

    async def collect_lat(self, bid: int) -> list:
        r = await self.all("latencies", 60, self.users + [self.aux], bid=bid)
        return sum((x.get("ms", []) for x in r), [])

    async def latency_phase(self) -> dict:
        a = self.args
        self.bid += 1
        bid = self.bid
        total = int(a.lat_rate * a.lat_seconds)
        log(f"{self.kind}: latency: {total} chats at {a.lat_rate}/s to {self.n} held users")
        cpu0 = self.srv.status().get("cpu_s", 0)
        r = await self.aux.cmd("burst", a.lat_seconds + 60, bid=bid, total=total,
                               conc=4, target_prefix="u", target_n=self.n,
                               rate=a.lat_rate, seconds=a.lat_seconds + 30, seed=bid)
        n, _ = await self.wait_delivered(bid, r.get("online", total), 15)
        lat = await self.collect_lat(bid)
        cpu1 = self.srv.status().get("cpu_s", 0)
        out = {"sent": total, "rate_per_s": a.lat_rate, "statuses": r.get("statuses"),
               "answered_online": r.get("online"), "delivered": n,
               "late_sends": r.get("late"), "errors": r.get("errors") or r.get("error"),
               "delivery_ms": pct(lat), "answer_ms": r.get("resp_ms"),
               "server_cpu_s": round(cpu1 - cpu0, 2)}
        log(f"{self.kind}: latency delivered {n}/{total}: {out['delivery_ms']}")
        return out

    async def rate_phase(self, procs: list, per: int) -> dict:
        a = self.args
        self.bid += 1
        bid = self.bid
        total = a.chats
        each = math.ceil(total / len(procs))
        log(f"{self.kind}: rate: {each * len(procs)} chats over {per * len(procs)} connections")
        cpu0 = self.srv.status().get("cpu_s", 0)
        start_at = mono() + 0.5
        r = await asyncio.gather(*(
            c.cmd("burst", a.phase_seconds + 60, bid=bid, total=each, conc=per,
                  target_prefix="u", target_n=self.n, start_at=start_at,
                  seconds=a.phase_seconds, seed=bid * 1000 + c.idx)
            for c in procs))
        online = sum(x.get("online", 0) for x in r)
        answered = sum(sum((x.get("statuses") or {}).values()) for x in r)
        t_first = min((x["t_first"] for x in r if x.get("t_first")), default=start_at)
        t_answer = max((x["t_last"] for x in r if x.get("t_last")), default=start_at)
        n, t_deliv = await self.wait_delivered(bid, online, 60)
        cpu1 = self.srv.status().get("cpu_s", 0)
        lat = await self.collect_lat(bid)
        statuses: dict = {}
        for x in r:
            for k, v in (x.get("statuses") or {}).items():
                statuses[k] = statuses.get(k, 0) + v
        span = max(t_answer, t_deliv) - t_first
        out = {"sent": each * len(procs), "connections": per * len(procs),
               "statuses": statuses, "answered_online": online, "delivered": n,
               "errors": merge_errors(r),
               "answer_s": round(t_answer - t_first, 3), "deliver_s": round(span, 3),
               "answered_per_s": round(answered / max(1e-9, t_answer - t_first), 1),
               "chats_per_s": round(n / max(1e-9, span), 1),
               "delivery_ms_under_burst": pct(lat),
               "server_cpu_s": round(cpu1 - cpu0, 2),
               "server_cpu_ms_per_chat": round((cpu1 - cpu0) * 1000 / max(1, answered), 3)}
        log(f"{self.kind}: rate {out['chats_per_s']} chats/s delivered ({n}/{out['sent']}), "
            f"answered {out['answered_per_s']}/s, cpu {out['server_cpu_ms_per_chat']} ms/chat")
        return out

    async def fanout_phase(self) -> dict:
        a = self.args
        g = min(a.group, self.n)
        share = [g // len(self.users) + (1 if k < g % len(self.users) else 0)
                 for k in range(len(self.users))]
        group = "fanout1"
        stars = [f"fostar{i}" for i in range(1, a.fanout_reps + 1)]
        owner = "foowner"
        aux = self.aux
        out: dict = {"group_size": g}
        t0 = mono()
        r = await aux.cmd("login", 120, register=True, conc=4, seconds=90,
                          names=[owner, "foprobe"] + stars)
        r = await aux.cmd("api", 60, calls=[["POST", "/api/groups",
                                              {"me": owner, "name": group}, [200, 201]]])
        if not r.get("ok") or r.get("errors"):
            out["error"] = f"create group: {r}"
            return out
        r = await aux.cmd("members", 60, group=group, spec={"names": stars}, action="join")
        rs = await asyncio.gather(*(
            c.cmd("members", a.phase_seconds + 30, group=group,
                  spec={"range": [0, min(share[k], c.count)], "held": True}, action="join",
                  seconds=a.phase_seconds) for k, c in enumerate(self.users)))
        joined = sum(x.get("statuses", {}).get("204", 0) + x.get("statuses", {}).get("200", 0)
                     + x.get("statuses", {}).get("201", 0) for x in rs)
        out["join_errors"] = merge_errors(rs)
        rs = await asyncio.gather(*(
            c.cmd("members", a.phase_seconds + 30, group=group,
                  spec={"range": [0, min(share[k], c.count)], "held": True}, action="active",
                  seconds=a.phase_seconds) for k, c in enumerate(self.users)))
        watching = sum(x.get("statuses", {}).get("204", 0) + x.get("statuses", {}).get("200", 0)
                       for x in rs)
        out.update(joined=joined, watching=watching, active_errors=merge_errors(rs),
                   setup_s=round(mono() - t0, 2))
        log(f"{self.kind}: fan-out group {group}: {joined} joined, {watching} watching")
        await asyncio.sleep(1.0)
        self.spy_start("fanout")
        reps = []
        for star in stars:
            await self.all("watch", 30, line=f"msg update online {star}")
            cpu0 = self.srv.status().get("cpu_s", 0)
            # a probe beside it: how long the fan-out keeps others waiting
            probe = asyncio.ensure_future(aux.cmd("probe", 60, name="foprobe",
                                                  interval=0.005, duration=a.fanout_probe))
            await asyncio.sleep(0.2)
            o = await aux.cmd("open", 60, name=star)
            if not o.get("ok"):
                await probe
                reps.append({"star": star, "error": o.get("error")})
                continue
            t_sent = o["t_sent"]
            end = mono() + 30
            while True:
                c = await self.all("counts", 30)
                got = sum(x.get("watch_count", 0) for x in c)
                if got >= watching or mono() > end:
                    break
                await asyncio.sleep(0.05)
            cpu1 = self.srv.status().get("cpu_s", 0)
            p = await probe
            firsts = [x["watch_first"] for x in c if x.get("watch_first")]
            lasts = [x["watch_last"] for x in c if x.get("watch_last")]
            rep = {"star": star, "received": got,
                   "headers_ms": round((o["t_headers"] - t_sent) * 1000, 2),
                   "first_ms": round((min(firsts) - t_sent) * 1000, 2) if firsts else None,
                   "all_ms": round((max(lasts) - t_sent) * 1000, 2) if lasts else None,
                   "server_cpu_s": round(cpu1 - cpu0, 3),
                   "probe_ms": p.get("ms"), "probe_worst": (p.get("worst") or [])[:3]}
            reps.append(rep)
            log(f"{self.kind}: fan-out {star}: {got}/{watching} in {rep['all_ms']} ms, "
                f"probe max {_get(p, ('ms', 'max'))} ms")
            await asyncio.sleep(1.0)
        out["reps"] = reps
        alls = sorted(x["all_ms"] for x in reps if x.get("all_ms") is not None
                      and x.get("received") == watching)
        out["all_ms_median"] = alls[len(alls) // 2] if alls else None
        out["all_ms_max"] = alls[-1] if alls else None
        stalls = sorted(x["probe_ms"]["max"] for x in reps if x.get("probe_ms"))
        out["probe_max_ms_median"] = stalls[len(stalls) // 2] if stalls else None
        await self.ack_all(self.users + [aux])
        return out

    async def run_budget(self, res: dict, limit: int) -> dict:
        """The same-memory run: this server in a cgroup whose memory limit
        is what presence needed for its held heartbeats (its main run's
        cgroup peak); users join one after another (register, log in, hold
        the heartbeat) until all hold one or the server is stopped by the
        kernel's OOM killer.  How many it held at once is its connection
        count in that memory."""
        a = self.args
        res.update({"users": self.n, "limit_mib": round(limit / 1048576, 1)})
        t_run = mono()
        self.srv = self.make_server(f"{self.kind}-budget", 25, 4)
        self.srv.cgroup = MemCgroup(f"{self.kind}-budget", limit)
        await self.srv.start()
        try:
            await self.start_clients()
            log(f"{self.kind}: same-memory run, {self.n} users joining in "
                f"{res['limit_mib']} MiB")
            join = asyncio.ensure_future(self.all(
                "join", a.phase_seconds + 60, conc=self.args.login_conc,
                seconds=a.phase_seconds))
            polled = 0
            while not join.done():
                await asyncio.wait([join], timeout=0.5)
                if join.done():
                    break
                try:
                    polled = max(polled, sum(x.get("held", 0) for x in await self.counts()))
                except Exception:
                    pass
                if not self.srv.alive():
                    log(f"{self.kind}: stopped (exit {self.srv.proc.returncode}) at "
                        f"{polled}+ held")
                    await self.all("stop_join", 30)
                    break
            r = await join
            res["held_peak"] = sum(x.get("held_peak", 0) for x in r)
            res["held_polled_max"] = polled
            res["held_at_end"] = sum(x.get("held", 0) for x in r)
            res["errors"] = merge_errors(r)
            res["alive_at_end"] = self.srv.alive()
            res["exit_code"] = self.srv.proc.returncode
            res["cgroup"] = self.srv.cgroup.figures()
            log(f"{self.kind}: held at most {res['held_peak']} (polled {polled}) in "
                f"{res['limit_mib']} MiB; alive={res['alive_at_end']} {res['cgroup']}")
        finally:
            await self.teardown(res, t_run)
        return res

    async def run_sweep(self, res: dict) -> dict:
        """A separate run with --keepalive 1 --poll 1: every held heartbeat
        is due for a keep-alive at every sweep."""
        a = self.args
        res.update({"users": self.n, "keepalive": 1, "poll": 1})
        t_run = mono()
        self.srv = self.make_server(f"{self.kind}-sweep", 1, 1)
        await self.srv.start()
        res["presence_src_sha1"] = getattr(self.srv, "src_sha", None)
        try:
            await self.start_clients()
            await self.login_and_hold(res, "", a.phase_seconds)
            await self.aux.cmd("login", 60, register=True, conc=1, seconds=30,
                               names=["probe1"])
            await asyncio.sleep(3.0)
            c0 = await self.counts()
            cpu0 = self.srv.status().get("cpu_s", 0)
            t0 = mono()
            log(f"{self.kind}: sweep probe for {a.probe_seconds}s")
            self.spy_start("probe")
            p = await self.aux.cmd("probe", a.probe_seconds + 60, name="probe1",
                                   interval=0.005, duration=a.probe_seconds)
            dt = mono() - t0
            self.spy_stop()
            c1 = await self.counts()
            cpu1 = self.srv.status().get("cpu_s", 0)
            ka = sum(x.get("keepalives", 0) for x in c1) - sum(x.get("keepalives", 0) for x in c0)
            res["held"] = sum(x.get("held", 0) for x in c1)
            res["probe"] = p
            res["keepalives_per_s"] = round(ka / dt, 1)
            res["server_cpu_frac"] = round((cpu1 - cpu0) / dt, 3)
            res["stats"] = self.srv.stats()
            res["server"] = self.srv.status()
            log(f"{self.kind}: probe max {p.get('ms', {}).get('max')} ms, "
                f"keep-alives {res['keepalives_per_s']}/s, stats {res['stats']}")
        finally:
            await self.teardown(res, t_run)
        return res


def machine() -> dict:
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        tw = subprocess.run([sys.executable, "-c", "import twisted; print(twisted.__version__)"],
                            capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        tw = "?"
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        head = ""
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem": mem, "kernel": platform.release(),
            "git_head": head or None, "presence_src_sha1": src_sha(),
            "python": platform.python_version(), "twisted": tw,
            "fd_limit": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return round(a / b, 2)


def summarize(res: dict) -> str:
    P = res.get("presence", {})
    B = res.get("baseline", {})
    F = res.get("floor", {})
    PS = res.get("presence_sweep", {})
    BS = res.get("baseline_sweep", {})
    g = lambda d, *ks: _get(d, ks)  # noqa: E731
    gib = lambda kb: round(1048576 / kb) if kb else None  # noqa: E731
    rows = [
        ("heartbeats attempted", g(P, "users"), g(B, "users"), None, g(F, "users"), ""),
        ("heartbeats held", g(P, "held"), g(B, "held"), "ratio", g(F, "held"), ">= 19,000; >= 4x"),
        ("held in the same memory", g(P, "held"), g(res, "baseline_budget", "held_peak"),
         "ratio", None, ">= 4x"),
        ("  memory (cgroup MiB)", g(P, "cgroup_held", "peak_mib"),
         g(res, "baseline_budget", "limit_mib"), None, None, "limit = presence's peak"),
        ("RSS per held conn (KB)", g(P, "rss_per_conn_kb"), g(B, "rss_per_conn_kb"),
         "inv", g(F, "rss_per_conn_kb"), "<= 10"),
        ("held conns per GiB RSS", gib(g(P, "rss_per_conn_kb")), gib(g(B, "rss_per_conn_kb")),
         "ratio", None, ""),
        ("delivery p50 (ms)", g(P, "latency", "delivery_ms", "p50"),
         g(B, "latency", "delivery_ms", "p50"), "inv", g(F, "latency", "delivery_ms", "p50"), "<= 1"),
        ("delivery p99 (ms)", g(P, "latency", "delivery_ms", "p99"),
         g(B, "latency", "delivery_ms", "p99"), "inv", g(F, "latency", "delivery_ms", "p99"), "<= 10"),
        ("delivery max (ms)", g(P, "latency", "delivery_ms", "max"),
         g(B, "latency", "delivery_ms", "max"), "inv", g(F, "latency", "delivery_ms", "max"), ""),
        ("chats/s delivered (median)", g(P, "rate", "chats_per_s"), g(B, "rate", "chats_per_s"),
         "ratio", g(F, "rate", "chats_per_s"), ">= 3,000; >= 6x"),
        ("  each burst", g(P, "rate_reps"), g(B, "rate_reps"), None, g(F, "rate_reps"), ""),
        ("server CPU ms per chat", g(P, "rate", "server_cpu_ms_per_chat"),
         g(B, "rate", "server_cpu_ms_per_chat"), "inv", g(F, "rate", "server_cpu_ms_per_chat"), ""),
        ("fan-out to group, median (ms)", g(P, "fanout", "all_ms_median"),
         g(B, "fanout", "all_ms_median"), "inv", None, ""),
        ("probe max stall, fan-out (ms)", g(P, "fanout", "probe_max_ms_median"),
         g(B, "fanout", "probe_max_ms_median"), "inv", None, ""),
        ("probe max stall, sweep (ms)", g(PS, "probe", "ms", "max"), g(BS, "probe", "ms", "max"),
         "inv", None, "<= 50"),
        ("probe p99, sweep (ms)", g(PS, "probe", "ms", "p99"), g(BS, "probe", "ms", "p99"),
         "inv", None, ""),
        ("server sweep_max_ms", g(PS, "stats", "sweep_max_ms"), g(BS, "stats", "sweep_max_ms"),
         None, None, "<= 50"),
    ]
    lines = [f"{'figure':30} {'presence':>10} {'baseline':>10} {'ratio':>7} {'floor':>9}  target",
             "-" * 84]
    for name, p, b, kind, f, target in rows:
        r = ""
        if kind == "ratio":
            r = ratio(p, b)
        elif kind == "inv":
            r = ratio(b, p)
        lines.append(f"{name:30} {_fmt(p):>10} {_fmt(b):>10} {_fmt(r):>7} {_fmt(f):>9}  {target}")
    lines.append("ratio: presence/baseline for counts and rates, baseline/presence for costs;"
                 " floor: bench/null_server.py (--floor)")
    return "\n".join(lines)


def _get(d, ks):
    for k in ks:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _fmt(v) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, list):
        return "/".join(f"{x:.0f}" if isinstance(x, (int, float)) else "-" for x in v)
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


async def amain(args) -> dict:
    res: dict = {"machine": machine(), "args": vars(args)}
    workdir = tempfile.mkdtemp(prefix="presence-bench-")
    res["workdir"] = workdir
    log(f"workdir {workdir}")

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    try:
        if not args.skip_presence:
            b = Bench(args, "presence", args.users, workdir)
            res["presence"] = await _guard(b.run_main, args)
            save()
            if not args.skip_sweep:
                res["presence_sweep"] = await _guard(b.run_sweep, args)
                save()
        if args.floor:
            b = Bench(args, "null", args.users, workdir)
            res["floor"] = await _guard(b.run_main, args)
            save()
        if not args.skip_baseline:
            b = Bench(args, "baseline", args.baseline_users, workdir)
            res["baseline"] = await _guard(b.run_main, args)
            save()
            if not args.skip_sweep:
                res["baseline_sweep"] = await _guard(b.run_sweep, args)
                save()
            if not args.skip_budget:
                why = MemCgroup.unavailable()
                peak = _get(res.get("presence", {}), ("cgroup_held", "peak_mib"))
                limit = args.budget_mib * 1048576 if args.budget_mib else (
                    int(peak * 1048576) if peak else None)
                if why or not limit:
                    res["baseline_budget"] = {"skipped": why or "no presence figure to match"}
                    log(f"same-memory run skipped: {res['baseline_budget']['skipped']}")
                else:
                    b = Bench(args, "baseline", args.users, workdir)
                    res["baseline_budget"] = await _guard(
                        lambda r: b.run_budget(r, limit), args)
                save()
    finally:
        P, B = res.get("presence", {}), res.get("baseline", {})
        res["ratios"] = {
            "held": ratio(P.get("held"), B.get("held")),
            "held_same_memory": ratio(P.get("held"),
                                      _get(res, ("baseline_budget", "held_peak"))),
            "rss_per_conn_baseline_over_presence": ratio(B.get("rss_per_conn_kb"),
                                                         P.get("rss_per_conn_kb")),
            "chats_per_s": ratio(_get(P, ("rate", "chats_per_s")),
                                 _get(B, ("rate", "chats_per_s"))),
        }
        save()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return res


async def _guard(fn, args) -> dict:
    res: dict = {}
    try:
        await asyncio.wait_for(fn(res), args.run_seconds)
    except Exception as e:
        log(f"run failed: {e!r}")
        res["error"] = repr(e)[:2000]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description="presence benchmark (see module docstring)")
    ap.add_argument("--users", type=int, default=19000)
    ap.add_argument("--baseline-users", type=int, default=10000)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 users each")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-presence", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--floor", action="store_true",
                    help="also run latency and rate against bench/null_server.py (harness floor)")
    ap.add_argument("--chats", type=int, default=30000, help="chats in the rate burst")
    ap.add_argument("--conc", type=int, default=64, help="sender connections in the burst")
    ap.add_argument("--lat-rate", type=float, default=200.0, help="chats/s in the latency phase")
    ap.add_argument("--lat-seconds", type=float, default=30.0,
                    help="long enough to span one keep-alive round (--keepalive 25)")
    ap.add_argument("--group", type=int, default=5000, help="fan-out group size")
    ap.add_argument("--fanout-reps", type=int, default=3)
    ap.add_argument("--fanout-probe", type=float, default=2.0,
                    help="seconds of probing (a request every 5 ms) around each fan-out")
    ap.add_argument("--probe-seconds", type=float, default=20.0)
    ap.add_argument("--rate-reps", type=int, default=3,
                    help="rate bursts per server; the median is reported")
    ap.add_argument("--skip-budget", action="store_true",
                    help="skip the same-memory run of the baseline")
    ap.add_argument("--budget-mib", type=int, default=0,
                    help="memory limit of the same-memory run (default: the presence"
                         " server's cgroup peak with its users held)")
    ap.add_argument("--login-conc", type=int, default=32, help="per client process")
    ap.add_argument("--phase-seconds", type=float, default=240.0, help="bound of one phase")
    ap.add_argument("--run-seconds", type=float, default=900.0, help="bound of one server run")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    ap.add_argument("--gc-watch", action="store_true",
                    help="run twistd under bench/gcwatch.py and report garbage-collector pauses"
                         " per phase")
    ap.add_argument("--profile", metavar="DIR", default="",
                    help="sample the presence server with py-spy in each phase (raw stacks in DIR;"
                         " read them with bench/spy_top.py); figures of such a run are not clean")
    args = ap.parse_args()
    if args.quick:
        args.users = min(args.users, 2000)
        args.baseline_users = min(args.baseline_users, 2000)
        args.chats = min(args.chats, 6000)
        args.group = min(args.group, 1000)
        args.lat_seconds = min(args.lat_seconds, 5.0)
        args.probe_seconds = min(args.probe_seconds, 8.0)
    if args.users > 19500:
        ap.error("the server process holds at most 20,000 descriptors")
    res = asyncio.run(amain(args))
    print(json.dumps(res["machine"]))
    print(summarize(res))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
