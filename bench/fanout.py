#!/usr/bin/env python3
"""Large groups: presence fan-out to thousands of watchers (issue 18).

A benchmark, not a test.  One group, ``big``; its members hold heartbeats
with the group active, in client processes of ``--per-proc`` sessions each
(``bench/fanout_client.py``); a separate pair of users chats closed-loop
beside them (the bystanders); one more member toggles online/offline.  For
each size M (``--sizes``, held watchers), on the same machine, the same run:

* the time until the last watcher has the update (from the toggle's request);
* the bystanders' chat latency during fan-outs, and without any;
* the server's CPU per update frame delivered (process CPU during the
  toggles, less what the bystanders' chats cost, over M x toggles);

* the watchers' client processes' CPU per frame (receiving and parsing it:
  on the same cores, the floor under "last member" beside the server's);

then, at the largest size, a login storm: ``--storm`` members of the group
go away and come back within ``--storm-seconds``, while the bystanders chat:
their latency, and whether every watcher ends with the right view (all of
them online) within ``--settle`` seconds after the storm.  How they come
back (``--storm-login``): ``resume``, the default, returning clients (their
heartbeats' connections close without a word, they go offline after the
server's linger, and they come back with the resume token of their last
login, as the shipped clients do); ``password``, they log out and log in
with their password; ``both``, one storm of each, in that order.

Building the group through the API is timed too: the joins of every member
(``POST /api/groups/big/join``) on the new server, and ``--late-joins`` more
on both servers once the group is full (the per-join cost at that size).

The baseline is the server of ``--baseline`` (a commit; default: the parent
of the first commit of this work, ``BASE``), run from a temporary git
worktree on a copy of the same directory, measured in the same run.  The new
server runs twice over the sizes' toggles: with unbundled clients (one ``msg
update`` per change, the baseline's way) and, for the storm, with every
watcher's heartbeat re-held with ``bundle=1`` (the baseline's too with
``--baseline-bundle``, for a baseline that has bundles).

    python bench/fanout.py                                   # the full run
    python bench/fanout.py --sizes 1000,5000 --storm 200 --late-joins 200   # quick

The held watchers run on ``bench/fanout_lean.py`` (``--watchers lean``, the
default: one epoll per process, a minimal parser, views counted as updates
arrive), so that their own CPU per frame stays well below the server's;
``--watchers old`` puts them on loadclient's asyncio protocols as before,
``--watchers mixed`` every other process each (both kinds' CPU per frame, at
the same server and load).  ``--no-baseline`` measures this tree's server only.

Writes a JSON result (``--out``) and prints a summary.  The machine is
shared: figures are noisy; compare the two servers of the same run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import ClientProc, ROOT, ServerProc, log, machine, presence_off_flags  # noqa: E402
from loadclient import mono, pct_ms  # noqa: E402

#: the commit this work started from: the behaviour before it
BASE = "5fad6f6"


def group(size: int) -> str:
    """The group of ``size`` held members (w0 .. w<size-1> and the toggler)."""
    return f"big{size}"


class FanProc(ClientProc):
    """A ``fanout_client.py`` process for users ``<prefix><first>...``."""

    def __init__(self, idx: int, port: int, prefix: str, first: int, count: int,
                 lean: bool = False, interval: float = 0.002):
        # a source address of its own (127.0.0.<20+idx>): one process's
        # connections and TIME_WAITs never use up another's ephemeral ports
        super().__init__(idx, port, first, count, f"127.0.0.{20 + idx % 200}")
        self.prefix = prefix
        self.names = [f"{prefix}{i}" for i in range(first, first + count)]
        #: held heartbeats on bench/fanout_lean.py's receive path
        self.lean, self.interval = lean, interval

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(HERE, "fanout_client.py"),
            "--port", str(self.port), "--prefix", self.prefix, "--src", self.src,
            "--first", str(self.first), "--count", str(self.count), "--max-seconds", "1800",
            *(["--lean", "--lean-interval", str(self.interval)] if self.lean else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26)
        self.reader = asyncio.ensure_future(self._read())


def server(kind: str, workdir: str, data: str, name: str, tree: str, extra: list) -> ServerProc:
    twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    profile = []
    if os.environ.get("PRESENCE_BENCH_PROFILE"):  # cProfile stats of each server, kept
        profile = ["--profile", os.path.join(os.environ["PRESENCE_BENCH_PROFILE"],
                                             f"{name}.prof"), "--profiler", "cprofile",
                   "--savestats"]
    argv = [twistd, "-n", "--pidfile", os.path.join(workdir, f"{name}.pid")] + profile + [
            "presence",
            "--http", "tcp:0:interface=127.0.0.1", "--data", data, "--hash-cost", "1",
            "--mailbox", "5000"] + presence_off_flags(twistd) + extra
    return ServerProc(kind, argv, r"presence ready http=[\d.]+:(\d+)", workdir, name,
                      env={"PYTHONPATH": tree})


async def gather(procs, cmd, timeout=300, **kw):
    return await asyncio.gather(*(p.cmd(cmd, timeout, **kw) for p in procs))


def ok_count(results) -> int:
    return sum(r.get("n_ok", 0) for r in results)


class Run:
    """One server's measurements."""

    def __init__(self, args, srv: ServerProc, label: str) -> None:
        self.args, self.srv, self.label = args, srv, label
        self.out: dict = {"label": label}
        #: the bystanders' failures (a chat refused, or its frame not there in 10 s)
        self.chat_errors: dict = {}

    async def clients(self) -> None:
        a = self.args
        port = self.srv.port
        total = max(a.sizes)
        # --watchers mixed: every other process lean, so that both kinds of
        # client meet the same server at the same moment
        self.watchers = [FanProc(i, port, "w", first, min(a.per_proc, total - first),
                                 a.watchers == "lean" or (a.watchers == "mixed" and i % 2 == 0),
                                 a.lean_interval)
                         for i, first in enumerate(range(0, total, a.per_proc))]
        # the bystander pair and the toggler: their own process
        self.side = FanProc(99, port, "x", 0, 3)
        for p in self.watchers + [self.side]:
            await p.start()

    async def stop(self) -> None:
        for p in self.watchers + [self.side]:
            await p.stop()

    def cpu(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self, pid=None) -> tuple:
        """The server's (or process ``pid``'s) (user, system) CPU seconds so far."""
        try:
            with open(f"/proc/{pid or self.srv.proc.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return (0.0, 0.0)
        tck = os.sysconf("SC_CLK_TCK")
        return int(parts[11]) / tck, int(parts[12]) / tck

    def clients_cpu(self) -> list:
        """Each watcher client process's (user, system) CPU seconds so far."""
        return [self.cpu_split(p.proc.pid) if p.proc is not None else (0.0, 0.0)
                for p in self.watchers]

    def clients_per_frame(self, cpu0: list, cpu1: list, frames: list) -> dict:
        """The watcher processes' CPU µs per frame they received: all of
        them, and by kind (lean / old, with the user and system parts) when
        both run."""
        out = {}
        for kind in ("all", "lean", "old"):
            pick = [i for i, p in enumerate(self.watchers)
                    if kind == "all" or p.lean == (kind == "lean")]
            n = sum(frames[i] for i in pick)
            if pick and n:
                us = [1e6 * sum(cpu1[i][j] - cpu0[i][j] for i in pick) / n for j in (0, 1)]
                out[kind] = round(us[0] + us[1], 2)
                if kind != "all":
                    out[kind + "_user_sys"] = [round(us[0], 2), round(us[1], 2)]
        return out

    async def setup(self, register: bool) -> None:
        """Log every member in (registering them first on a fresh directory)
        and, on a fresh directory, build the groups through the API."""
        t0 = mono()
        r = await gather(self.watchers + [self.side], "login", 600, register=register, conc=16,
                         seconds=500)
        log(f"{self.label}: {ok_count(r)} logged in in {mono() - t0:.1f}s")
        # the bystander who is chatted to holds a heartbeat (not watching the group)
        await self.side.cmd("hold", 60, names=[self.side.names[2]])
        if not register:
            return
        sizes = sorted(self.args.sizes)
        x0 = self.side.names[0]  # the toggler: owner, so member, of every group
        for size in sizes:
            await self.side.cmd("each", 60, path="/api/groups", form={"name": group(size)},
                                names=[x0])
        # the largest group, built through the API: every member joins
        t0 = mono()
        r = await gather(self.watchers, "each", 600, path=f"/api/groups/{group(sizes[-1])}/join",
                         form={}, conc=8, seconds=500)
        self.out["build_seconds"] = round(mono() - t0, 2)
        self.out["build_members"] = ok_count(r)
        log(f"{self.label}: group of {ok_count(r)} built in {self.out['build_seconds']}s")
        for size in sizes[:-1]:
            await asyncio.gather(*(
                p.cmd("each", 600, path=f"/api/groups/{group(size)}/join", form={},
                      names=[n for n in p.names if int(n[1:]) < size], conc=8, seconds=500)
                for p in self.watchers))

    async def late_joins(self, count: int) -> None:
        """``count`` more users join the full group: the per-join cost."""
        extra = FanProc(98, self.srv.port, f"late{self.label[:1]}", 0, count)
        await extra.start()
        await extra.cmd("login", 300, register=True, conc=16, seconds=250)
        t0 = mono()
        r = await extra.cmd("each", 600, path=f"/api/groups/{group(max(self.args.sizes))}/join",
                            form={}, conc=8, seconds=500)
        took = mono() - t0
        self.out["late_joins"] = {"n": r.get("n_ok", 0), "seconds": round(took, 2),
                                  "ms_per_join": round(1000 * took / max(1, r.get("n_ok", 1)), 3)}
        log(f"{self.label}: late joins {json.dumps(self.out['late_joins'])}")
        await extra.stop()

    async def hold(self, upto: int) -> None:
        """Watchers ``w0 .. w<upto-1>`` hold heartbeats and make the group
        of this size active.  The new ones come online while no one watches
        that group (the others watch the group of the size before, which they
        are not in): setting up M watchers costs no M x M frames."""
        t0 = mono()
        for p in self.watchers:
            names = [n for n in p.names if int(n[1:]) < upto]
            new = [n for n in names if n not in p.held_names]
            if new:
                r = await p.cmd("hold", 300, names=new, conc=64, seconds=250)
                if r.get("errors"):
                    log(f"{self.label}: hold errors {r['errors']} {r.get('sample')}")
                    self.out.setdefault("hold_errors", {}).update(r["errors"])
                p.held_names.update(new)
        await asyncio.gather(*(
            p.cmd("each", 300, path="/api/active", form={"group": group(upto)},
                  names=[n for n in p.names if int(n[1:]) < upto], conc=16, seconds=250)
            for p in self.watchers))
        log(f"{self.label}: {upto} held ({mono() - t0:.1f}s)")

    async def chat(self, fn) -> tuple:
        """Run ``fn()`` while the bystanders chat; their samples."""
        x = self.side.names
        await self.side.cmd("chat_start", 30, sender=x[1], to=x[2])
        try:
            result = await fn()
        finally:
            stopped = await self.side.cmd("chat_stop", 60)
            samples = stopped.get("samples", [])
            for k, v in stopped.get("errors", {}).items():
                self.chat_errors[k] = self.chat_errors.get(k, 0) + v
        return result, samples

    async def quiet(self, seconds: float) -> list:
        async def wait():
            await asyncio.sleep(seconds)
        _, samples = await self.chat(wait)
        return samples

    async def toggle_round(self, size: int) -> tuple:
        """The toggler goes online and offline ``--toggles`` times; for each,
        the time until every held watcher has the update."""
        a = self.args
        toggler = self.side.names[0]
        spans, lasts, counts = [], [], []
        per_proc = [0] * len(self.watchers)
        for i in range(a.toggles):
            online = i % 2 == 0
            await gather(self.watchers, "target", 30, user=toggler,
                         state="online" if online else "offline")
            t = (await self.side.cmd("toggle", 60, name=toggler, online=online))["t_sent"]
            end = mono() + a.wait
            while True:
                got = await gather(self.watchers, "arrivals", 30)
                count = sum(g.get("count", 0) for g in got)
                if count >= size or mono() > end:
                    break
                await asyncio.sleep(0.02)
            last = max((g["last"] for g in got if g.get("last")), default=None)
            counts.append(count)
            for j, g in enumerate(got):
                per_proc[j] += g.get("count", 0)
            lasts.append(None if last is None else last - t)
            spans.append((t, last if last is not None else mono()))
            await asyncio.sleep(a.gap)
        self.per_proc = per_proc
        #: the lean processes' epoll drains and sockets read so far
        self.drains = [[g.get("drains"), g.get("reads")] for g in got if "drains" in g]
        return spans, lasts, counts

    async def toggles(self, size: int) -> dict:
        """Two rounds of toggles: alone (the server's CPU per update frame:
        nothing else runs), then beside the bystanders' chat (the time until
        the last member has it, and the chat latency during fan-outs)."""
        user0, sys0 = self.cpu_split()
        clients0 = self.clients_cpu()
        _, _, counts = await self.toggle_round(size)
        user1, sys1 = self.cpu_split()
        clients1 = self.clients_cpu()
        frames = max(1, sum(counts))
        clients = self.clients_per_frame(clients0, clients1, self.per_proc)
        spans_lasts_counts, samples = await self.chat(lambda: self.toggle_round(size))
        spans, lasts, counts2 = spans_lasts_counts
        during = sorted(lat for sent, lat in samples
                        if any(t0 <= sent <= t1 for t0, t1 in spans))
        done = sorted(x for x in lasts if x is not None)
        return {"last_member_ms": pct_ms(done), "reached": counts + counts2,
                "chat_during": pct_ms(during),
                "cpu_us_per_frame": round(1e6 * (user1 + sys1 - user0 - sys0) / frames, 2),
                "user_sys_us_per_frame": [round(1e6 * (user1 - user0) / frames, 2),
                                          round(1e6 * (sys1 - sys0) / frames, 2)],
                # what receiving and parsing a frame costs the watchers' processes
                # (on the same 2 cores: the floor of "last member" with the server's)
                "client_cpu_us_per_frame": clients.get("all"),
                "client_cpu_us_per_frame_by_kind": {k: v for k, v in clients.items()
                                                    if k != "all"},
                "lean_drains_reads": self.drains,
                "load": os.getloadavg()[0]}

    async def storm(self, size: int, how: str) -> dict:
        """``--storm`` watchers go away, then come back within
        ``--storm-seconds``; the others must all see them online.

        ``how``: "password", they log out and log in again with their
        password (a password hash each: what a new device does); "resume",
        returning clients: their heartbeats' connections close without a
        word (the app closed, the network gone), they go offline after the
        server's linger, and they come back with the resume token of their
        last login (one token look-up each: what the shipped clients do)."""
        a = self.args
        stormers = [f"w{i}" for i in range(size - a.storm, size)]
        by_proc = [(p, [n for n in p.names if n in stormers]) for p in self.watchers]
        gone: dict = {}
        if how == "resume":
            for p, names in by_proc:
                if names:
                    await p.cmd("drop", 60, names=names)
            t_gone = mono()
            end = t_gone + 60
            while True:  # until the others see them all offline (linger, then the sweep)
                views = await gather(self.watchers, "views", 60, users=stormers,
                                     state="offline", names=None)
                if sum(v.get("wrong", 1) for v in views) == 0 or mono() > end:
                    break
                await asyncio.sleep(1.0)
            gone = {"offline_seen_after_s": round(mono() - t_gone, 2),
                    "offline_views_right": sum(v.get("right", 0) for v in views)}
        else:
            for p, names in by_proc:
                if names:
                    await p.cmd("logout", 300, names=names, seconds=250)
        await asyncio.sleep(1.0)
        t0 = mono()

        async def run() -> dict:
            results = await asyncio.gather(*(
                p.cmd("storm", 300, names=names, seconds=a.storm_seconds, group=group(size),
                      cap=max(30.0, 3 * a.storm_seconds), how=how)
                for p, names in by_proc if names))
            storm_end = mono()
            end = storm_end + a.settle
            view_s = [0.0] * len(self.watchers)

            async def timed(i, p):
                t_v = mono()
                v = await p.cmd("views", 60, users=stormers, state="online", names=None)
                view_s[i] = max(view_s[i], mono() - t_v)
                return v
            while True:
                views = await asyncio.gather(*(timed(i, p) for i, p in enumerate(self.watchers)))
                right = sum(v.get("right", 0) for v in views)
                wrong = sum(v.get("wrong", 1) for v in views)
                if wrong == 0 or mono() > end:
                    break
                await asyncio.sleep(1.0)
            errors: dict = {}
            for r in results:
                for k, v in r.get("errors", {}).items():
                    errors[k] = errors.get(k, 0) + v
            return {"how": how, **gone, "logged_in": ok_count(results), "errors": errors,
                    "storm_seconds": round(storm_end - t0, 2),
                    "settled_after_s": round(mono() - storm_end, 2),
                    "views_right": right, "views_wrong": wrong,
                    # per watcher process (lean or old): its views, how long a check took
                    "views_by_proc": [[p.lean, v.get("right"), v.get("wrong")]
                                      for p, v in zip(self.watchers, views)],
                    "views_check_s_max_by_proc": [round(x, 3) for x in view_s]}
        cpu0 = self.cpu()
        result, samples = await self.chat(run)
        result["cpu_s"] = round(self.cpu() - cpu0, 2)
        result["chat_during"] = pct_ms(sorted(lat for _, lat in samples))
        return result

    async def sizes(self) -> None:
        a = self.args
        for p in self.watchers:
            p.held_names = set()
        self.out["sizes"] = {}
        for size in sorted(a.sizes):
            await self.hold(size)
            await asyncio.sleep(1.0)
            quiet = await self.quiet(a.chat_seconds)
            row = await self.toggles(size)
            row["chat_quiet"] = pct_ms(sorted(lat for _, lat in quiet))
            # the watchers acknowledge what they have (outside the measured
            # toggles): their mailboxes never fill, a re-hold resends nothing
            acks = await gather(self.watchers, "ack_all", 300, conc=8, seconds=250)
            row["acked"] = ok_count(acks)
            self.out["sizes"][size] = row
            log(f"{self.label} M={size}: {json.dumps(row)}")


async def measure(args, label: str, tree: str, data: str, work: str, extra: list,
                  register: bool, bundled_storm: bool) -> dict:
    srv = server("presence", work, data, label, tree, extra)
    await srv.start(120)
    run = Run(args, srv, label)
    try:
        await run.clients()
        await run.setup(register)
        await run.sizes()
        if args.late_joins:
            await run.late_joins(args.late_joins)
        if bundled_storm:
            t0 = mono()
            r = await gather(run.watchers, "rehold", 300, bundle=True, seconds=250)
            log(f"{label}: re-held with bundle=1 in {mono() - t0:.1f}s:"
                f" {json.dumps([[x.get('n_ok'), x.get('errors'), x.get('sample')] for x in r])}")
            for p in run.watchers:
                await p.cmd("target", 10, user="-", state="-")
        hows = ["resume", "password"] if args.storm_login == "both" else [args.storm_login]
        for i, how in enumerate(hows):
            key = "storm" if i == 0 else f"storm_{how}"
            if i:
                await asyncio.sleep(args.gap + 2.0)
            run.out[key] = await run.storm(max(args.sizes), how)
            log(f"{label} {key}: {json.dumps(run.out[key])}")
        run.out["server"] = srv.status()
        run.out["chat_errors"] = run.chat_errors
    finally:
        await run.stop()
        srv.stop()
    return run.out


async def amain(args) -> dict:
    # in memory where there is /dev/shm: the directory's fsyncs (a login
    # records its time) would otherwise make setting up 18,000 users minutes
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = tempfile.mkdtemp(prefix="fanout-bench-", dir=shm)
    data = os.path.join(work, "data-new")
    base_tree = os.path.join(work, "baseline-tree")
    if not args.no_baseline:
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", base_tree,
                        args.baseline], check=True, capture_output=True)
    result = {"machine": machine(), "args": vars(args),
              "baseline_commit": None if args.no_baseline else args.baseline}
    try:
        # the new server first, on a fresh directory: registrations, the group
        result["new"] = await measure(args, "new", ROOT, data, work,
                                      ["--presence-batch", str(args.batch)], True, True)
        if not args.no_baseline:
            base_data = os.path.join(work, "data-base")
            shutil.copytree(data, base_data)
            result["baseline"] = await measure(args, "baseline", base_tree, base_data, work,
                                               [], False, args.baseline_bundle)
    finally:
        if not args.no_baseline:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base_tree],
                           capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def summary(res: dict) -> str:
    new, base = res.get("new", {}), res.get("baseline", {})
    lines = ["| M | last member p50 / max ms (base -> new) | bystander chat during fan-outs"
             " p50 / p99 / max ms (base -> new) | without (p99 / max) | CPU us per update"
             " frame (base -> new) | clients' CPU us per frame (base -> new) |",
             "|---|---|---|---|---|---|"]
    for size in sorted(new.get("sizes", {}), key=int):
        n, b = new["sizes"][size], base.get("sizes", {}).get(size, {})

        def f(row, *keys):
            d = row
            for k in keys:
                d = d.get(k, {}) if isinstance(d, dict) else {}
            return "-" if d == {} else d
        lines.append(
            f"| {int(size):,} | {f(b, 'last_member_ms', 'p50')} / {f(b, 'last_member_ms', 'max')}"
            f" -> {f(n, 'last_member_ms', 'p50')} / {f(n, 'last_member_ms', 'max')}"
            f" | {f(b, 'chat_during', 'p50')} / {f(b, 'chat_during', 'p99')} /"
            f" {f(b, 'chat_during', 'max')} -> {f(n, 'chat_during', 'p50')} /"
            f" {f(n, 'chat_during', 'p99')} / {f(n, 'chat_during', 'max')}"
            f" | {f(b, 'chat_quiet', 'p99')} / {f(b, 'chat_quiet', 'max')} ->"
            f" {f(n, 'chat_quiet', 'p99')} / {f(n, 'chat_quiet', 'max')}"
            f" | {f(b, 'cpu_us_per_frame')} -> {f(n, 'cpu_us_per_frame')}"
            f" | {f(b, 'client_cpu_us_per_frame')} -> {f(n, 'client_cpu_us_per_frame')}"
            f" {json.dumps(n.get('client_cpu_us_per_frame_by_kind') or '')} |")
    lines.append("")
    for key in [k for k in new if k.startswith("storm")]:
        lines.append(f"{key} baseline: {json.dumps(base.get(key))}")
        lines.append(f"{key} new:      {json.dumps(new.get(key))}")
    lines.append(f"build: {new.get('build_members')} joins in {new.get('build_seconds')} s;"
                 f" late joins baseline {base.get('late_joins')} new {new.get('late_joins')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,5000,10000,18000",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--per-proc", type=int, default=3000, help="sessions per client process")
    ap.add_argument("--toggles", type=int, default=4)
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between toggles")
    ap.add_argument("--wait", type=float, default=5.0, help="seconds a toggle may take at most")
    ap.add_argument("--chat-seconds", type=float, default=2.0, help="quiet chat per size")
    ap.add_argument("--storm", type=int, default=1000)
    ap.add_argument("--storm-seconds", type=float, default=10.0)
    ap.add_argument("--storm-login", choices=("resume", "password", "both"), default="resume",
                    help="how the storm's members come back: returning clients with their"
                         " resume tokens, a password login each, or both storms in turn")
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--late-joins", type=int, default=500)
    ap.add_argument("--batch", type=float, default=100.0, help="--presence-batch of the new server")
    ap.add_argument("--baseline", default=BASE)
    ap.add_argument("--baseline-bundle", action="store_true",
                    help="re-hold the baseline's watchers with bundle=1 for the storm too"
                         " (a baseline that has bundles: any commit after issue 18's first"
                         " round)")
    ap.add_argument("--watchers", choices=("lean", "old", "mixed"), default="lean",
                    help="the watcher processes' receive path: bench/fanout_lean.py's (lean),"
                         " loadclient's asyncio protocols (old), or every other process each"
                         " (mixed: both kinds' CPU per frame in one run)")
    ap.add_argument("--lean-interval", type=float, default=0.002,
                    help="seconds between a lean watcher process's drains of its sockets"
                         " while frames come (0: at every wake-up)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="measure the server of this tree only (no second server from git)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "fanout-bench.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if max(args.sizes) + 10 > 19500:
        ap.error("the server holds at most ~19,500 connections (20,000 fds)")
    if args.storm >= max(args.sizes):
        ap.error("--storm must be below the largest size")
    t0 = mono()
    res = asyncio.run(amain(args))
    res["seconds"] = round(mono() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(summary(res))
    print(f"(full result: {args.out}; {res['seconds']} s)")


if __name__ == "__main__":
    main()
