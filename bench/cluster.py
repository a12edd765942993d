#!/usr/bin/env python3
"""Cluster benchmark: K presence nodes over one Redis against one node
alone, in the same run.  Not a test: run by hand.

    python bench/cluster.py                        # 100,000 users on 7 nodes
    python bench/cluster.py --users 20000 --nodes 4
    python bench/cluster.py --users 7000 --quick   # smoke run, about 2 minutes

Part 1, one node alone (``twistd presence`` without ``--redis``, the
embedded store) at its own load, the cluster's users per node: the
baseline.  Part 2, the cluster: ``presence-cluster``'s ``Cluster`` starts
a ``redis-server`` and K nodes (``--redis``, ``--host-box``) on free
loopback ports.  On both, over client processes of at most ``--per-proc``
users each (``bench/cluster_client.py``, each bound to its own 127.0.0.x):

 1. set-up: register, then log in (through the nodes in turn) and hold
    each heartbeat on the box the login answer names; the time until the
    last is held;
 2. memory: each node's VmRSS at start and with its share held, per held
    connection; Redis's RSS and ``used_memory`` per user, apart;
 3. latency: chats paced at --lat-rate/s to random held users; each chat
    is posted to the recipient's own box (same-box) or, in turn, to another
    node (cross-box); the send time is in the text, p50/p99 on arrival;
 4. rate: --rate-reps bursts of --chats chats over --conc connections,
    each sender posting to its own box and the recipients at random over
    all boxes; chats delivered per second, median burst;
 5. fan-out: a group of --group held members spread over all boxes watch
    it; a member that was offline logs in; the time until the last member
    has ``msg update online <member>``;
 cluster only:
 6. a dead box: the last node is killed with SIGKILL; the time until every
    other node's ``GET /api/cluster`` no longer lists it, and the reconnect
    storm: each of its users' clients (armed beforehand) resumes with its
    resume token through a node picked at random and holds its heartbeat
    on the new box; the time until all of them hold one again;
 7. set-up rate: a node with the default ``--hash-cost`` joins the cluster;
    password logins then resumes through it (``bench/resume.py``'s
    phases), and the same number of XMPP logins against Prosody
    (``bench/prosody.py``), on this machine in the same run.

Every phase is bounded in count and time; every process started is stopped
at the end, on failure and on Ctrl-C.  Results: --out (JSON) and a summary
on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import prosody  # noqa: E402
import resume   # noqa: E402
from run import (ClientProc, ServerProc, log, machine, merge_errors, pct,  # noqa: E402
                 presence_off_flags, presence_server)

import presence.cli.cluster  # noqa: E402
from presence.cli.cluster import Cluster  # noqa: E402

mono = time.monotonic


# ------------------------------------------------------------------ helpers


def ratio(a, b, digits: int = 2):
    return round(a / b, digits) if a and b else None


def scrape(port: int, token_file: str) -> dict:
    """The cumulative histogram buckets of one node's ``/metrics`` (its
    operator endpoint): {(name, le): count}."""
    with open(token_file) as f:
        token = f.read().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r'(\w+)_bucket\{(?:.*,)?le="([^"]+)"[^}]*\} (\S+)', line)
        if m:
            key = (m.group(1), float(m.group(2)))
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def histogram_pcts(before: list, after: list) -> dict:
    """p50 / p90 / p99 (the upper bound of the bucket, in ms) of each
    histogram over all nodes between two scrapes."""
    diff: dict = {}
    for b, a in zip(before, after):
        for key, v in a.items():
            diff[key] = diff.get(key, 0.0) + v - b.get(key, 0.0)
    res: dict = {}
    for name in sorted({k[0] for k in diff}):
        buckets = sorted((le, c) for (n, le), c in diff.items() if n == name)
        total = buckets[-1][1] if buckets else 0
        if not total:
            continue
        row = {"n": int(total)}
        for q in (0.5, 0.9, 0.99):
            le = next(le for le, c in buckets if c >= q * total)
            row[f"p{int(q * 100)}"] = round(le * 1000, 3) if le != float("inf") else "inf"
        res[name] = row
    return res


def split(n: int, parts: int) -> list:
    """``n`` as ``parts`` counts that differ by at most one."""
    return [n // parts + (1 if k < n % parts else 0) for k in range(parts)]


def free_run(count: int, host: str = "127.0.0.1", tries: int = 200) -> int:
    """The first of ``count`` consecutive free TCP ports on ``host``."""
    rng = random.Random()
    for _ in range(tries):
        # below the ephemeral range (32768-60999 here): there, the local
        # ends of the machine's outgoing connections take ports at any time
        base = rng.randrange(20000, 32700 - count)
        if base + count > 65535:
            continue
        held = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def get_json(port: int, path: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def redis_info(port: int) -> dict:
    out = {}
    try:
        text = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"],
                              capture_output=True, text=True, timeout=20).stdout
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k in ("used_memory", "used_memory_rss"):
                out[k] = int(v)
    except Exception as e:
        out["error"] = repr(e)
    return out


class Proc(ServerProc):
    """A node started by ``Cluster``, seen as a ``ServerProc`` (status,
    stats, stop)."""

    def __init__(self, popen: subprocess.Popen, port: int, name: str) -> None:
        self.kind, self.proc, self.port, self.name = "node", popen, port, name
        self.cgroup = None
        self.gcpath = None
        self.admin = None   # (port, token file) of its operator endpoint


class ClusterClientProc(ClientProc):
    def __init__(self, idx: int, ports: list, first: int, count: int, src: str,
                 prefix: str = "u") -> None:
        super().__init__(idx, ports[0], first, count, src)
        self.ports, self.prefix = ports, prefix

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(HERE, "cluster_client.py"),
            "--ports", ",".join(map(str, self.ports)), "--src", self.src,
            "--prefix", self.prefix, "--first", str(self.first), "--count", str(self.count),
            "--max-seconds", "1800",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26)
        self.reader = asyncio.ensure_future(self._read())


def statuses_ok(results: list, codes=("200", "201", "204")) -> int:
    return sum(sum(v for k, v in (r.get("statuses") or {}).items() if k in codes)
               for r in results)


# ------------------------------------------------------------------ the bench


class Bench:
    """The phases, against one node alone or the cluster (``ports``)."""

    def __init__(self, args, label: str, n: int, ports: list, nodes: list) -> None:
        self.args, self.label, self.n = args, label, n
        self.ports, self.nodes = ports, nodes
        self.clients: list = []
        self.bid = 0
        self.res: dict = {"label": label, "users": n, "nodes": len(nodes)}

    async def all(self, cmd: str, timeout: float, procs=None, **kw) -> list:
        procs = self.clients if procs is None else procs
        return await asyncio.gather(*(c.cmd(cmd, timeout, **kw) for c in procs))

    async def start_clients(self, src_base: int) -> None:
        p = max(1, math.ceil(self.n / self.args.per_proc))
        first = 0
        for k, count in enumerate(split(self.n, p)):
            self.clients.append(ClusterClientProc(k, self.ports, first, count,
                                                  f"127.0.0.{src_base + k}"))
            first += count
        for c in self.clients:
            await c.start()

    async def stop_clients(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.clients))
        self.clients = []

    def cpu(self) -> float:
        return sum(n.status().get("cpu_s", 0) for n in self.nodes if n.alive())

    # -- 1, 2: set-up and memory ---------------------------------------------------

    async def setup(self) -> None:
        a, res = self.args, self.res
        res["rss_start_kb"] = {n.name: rss_kb(n.proc.pid) for n in self.nodes}
        t0 = mono()
        r = await self.all("register", a.phase_seconds + 30, conc=a.conc_setup,
                           seconds=a.phase_seconds)
        res["register"] = {"ok": sum(x.get("n_ok", 0) for x in r), "errors": merge_errors(r),
                           "s": round(mono() - t0, 1)}
        log(f"{self.label}: registered {res['register']}")
        res["rss_registered_kb"] = {n.name: rss_kb(n.proc.pid) for n in self.nodes}
        cpu0 = self.cpu()
        r = await self.all("setup", a.setup_seconds + 30, conc=a.conc_setup,
                           seconds=a.setup_seconds)
        t_first = min(x.get("t0", mono()) for x in r)
        t_last = max(x.get("t_last", t_first) for x in r)
        boxes: dict = {}
        for x in r:
            for port, k in (x.get("boxes") or {}).items():
                boxes[port] = boxes.get(port, 0) + k
        held = sum(x.get("held", 0) for x in r)
        res["setup"] = {"held": held, "errors": merge_errors(r), "s": round(t_last - t_first, 1),
                        "logged_in_again": sum(x.get("logged_in_again", 0) for x in r),
                        "per_s": round(held / max(1e-9, t_last - t_first), 1),
                        "server_cpu_ms_each": round(1000 * (self.cpu() - cpu0) / max(1, held), 3),
                        "per_box": boxes}
        log(f"{self.label}: held {held}/{self.n} in {res['setup']['s']} s, per box {boxes}"
            f" errors {res['setup']['errors']}")
        await asyncio.sleep(3.0)
        per_node = {}
        for n in self.nodes:
            count = boxes.get(str(n.port), 0)
            now = rss_kb(n.proc.pid)
            per_node[n.name] = {
                "held": count, "rss_start_kb": res["rss_start_kb"][n.name], "rss_held_kb": now,
                "kb_per_held": round((now - res["rss_start_kb"][n.name]) / count, 2)
                if count else None,
                "fds": n.status().get("fds")}
        res["memory"] = per_node
        figures = [v["kb_per_held"] for v in per_node.values() if v["kb_per_held"]]
        res["kb_per_held"] = round(sum(figures) / len(figures), 2) if figures else None
        res["kb_per_held_max"] = max(figures) if figures else None
        log(f"{self.label}: RSS per held connection {res['kb_per_held']} KB (max"
            f" {res['kb_per_held_max']})")
        res["held"] = held

    async def senders(self) -> None:
        per = max(1, math.ceil(self.args.conc / len(self.clients)))
        r = await asyncio.gather(*(c.cmd("senders", 150, n=per, prefix=f"s{c.idx}x",
                                         seconds=120) for c in self.clients))
        self.per_sender = per
        self.res["senders"] = sum(x.get("senders", 0) for x in r)

    # -- 3: latency -------------------------------------------------------------------

    async def wait_delivered(self, bids: list, expected: int, limit: float) -> tuple:
        end, last_n, last_change = mono() + limit, -1, mono()
        while True:
            c = await self.all("counts", 30)
            n = sum(x.get("chat_count", {}).get(str(b), 0) for x in c for b in bids)
            t_last = max((x.get("chat_last", {}).get(str(b), 0) for x in c for b in bids),
                         default=0)
            if n >= expected or mono() > end or mono() - last_change > 10:
                return n, t_last
            if n != last_n:
                last_n, last_change = n, mono()
            await asyncio.sleep(0.25)

    async def latencies(self, bid: int) -> list:
        r = await self.all("latencies", 60, bid=bid)
        return sum((x.get("ms", []) for x in r), [])

    async def latency(self) -> None:
        a = self.args
        self.bid += 2
        bid = self.bid
        each = split(int(a.lat_rate * a.lat_seconds), len(self.clients))
        rate = a.lat_rate / len(self.clients)
        log(f"{self.label}: latency: {sum(each)} chats at {a.lat_rate}/s")
        admin = [n.admin for n in self.nodes if getattr(n, "admin", None)]
        scraped = [scrape(*p) for p in admin]
        start = mono() + 0.5
        # beside it, the machine's floor: one byte's round trip between two
        # idle processes, as loaded (bench/hop_floor.py)
        floor = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "hop_floor.py"),
            "--rate", str(a.lat_rate), "--seconds", str(a.lat_seconds),
            stdout=asyncio.subprocess.PIPE)
        r = await asyncio.gather(*(c.cmd("chats", a.lat_seconds + 60, bid=bid, total=k,
                                         conc=min(2, self.per_sender), mode="mixed", rate=rate,
                                         start_at=start, seconds=a.lat_seconds + 30,
                                         seed=bid * 100 + c.idx)
                                   for c, k in zip(self.clients, each)))
        online = sum(x.get("online", 0) for x in r)
        n, _ = await self.wait_delivered([bid, bid + 1], online, 15)
        same, cross = await self.latencies(bid), await self.latencies(bid + 1)
        self.res["latency"] = {"sent": sum(each), "answered_online": online, "delivered": n,
                               "late_sends": sum(x.get("late", 0) for x in r),
                               "errors": merge_errors(r),
                               "same_box_ms": pct(same), "cross_box_ms": pct(cross)}
        out, _ = await floor.communicate()
        try:
            self.res["latency"]["hop_floor_rtt_ms"] = json.loads(out)
        except ValueError:
            self.res["latency"]["hop_floor_rtt_ms"] = None
        log(f"{self.label}: latency same {pct(same)} cross {pct(cross)}"
            f" floor (two idle processes' round trip) {self.res['latency']['hop_floor_rtt_ms']}")
        if admin:
            inside = histogram_pcts(scraped, [scrape(*p) for p in admin])
            self.res["latency"]["server_histograms_ms"] = inside
            log(f"{self.label}: inside the nodes (bucket bounds, ms): {inside}")

    # -- 4: rate ----------------------------------------------------------------------

    async def ack_all(self) -> None:
        await self.all("ack_all", 150, conc=8, seconds=120)

    async def background(self, seconds: float = 5.0) -> float:
        """The nodes' CPU per second with no chat in flight (keep-alive
        sweeps, refreshes): the share of the rate's CPU that is not the chats'."""
        cpu0, t0 = self.cpu(), mono()
        await asyncio.sleep(seconds)
        return round((self.cpu() - cpu0) / (mono() - t0), 3)

    async def rate(self) -> None:
        a = self.args
        self.res["background_cpu_per_s"] = await self.background()
        reps = []
        for _ in range(a.rate_reps):
            self.bid += 2
            bid = self.bid
            each = split(a.chats, len(self.clients))
            cpu0 = self.cpu()
            start = mono() + 0.5
            r = await asyncio.gather(*(c.cmd("chats", a.phase_seconds + 60, bid=bid, total=k,
                                             conc=self.per_sender, mode="own", start_at=start,
                                             seconds=a.phase_seconds, seed=bid * 100 + c.idx)
                                       for c, k in zip(self.clients, each)))
            online = sum(x.get("online", 0) for x in r)
            t_first = min((x["t_first"] for x in r if x.get("t_first")), default=start)
            t_answer = max((x["t_last"] for x in r if x.get("t_last")), default=start)
            n, t_deliv = await self.wait_delivered([bid], online, 60)
            cpu = self.cpu() - cpu0
            await self.latencies(bid)
            span = max(t_answer, t_deliv) - t_first
            idle = self.res["background_cpu_per_s"] * span
            rep = {"sent": a.chats, "answered_online": online, "delivered": n,
                   "errors": merge_errors(r), "chats_per_s": round(n / max(1e-9, span), 1),
                   "server_cpu_ms_per_chat": round(1000 * cpu / max(1, n), 3),
                   "server_cpu_ms_per_chat_less_background":
                       round(1000 * max(0.0, cpu - idle) / max(1, n), 3)}
            reps.append(rep)
            log(f"{self.label}: rate {rep}")
            await self.ack_all()
        rates = sorted(x["chats_per_s"] for x in reps)
        self.res["rate"] = {"reps": reps, "chats_per_s": rates[len(rates) // 2],
                            "connections": self.per_sender * len(self.clients)}

    # -- 5: fan-out -------------------------------------------------------------------

    async def fanout(self) -> None:
        a = self.args
        g = min(a.group, self.n)
        share = split(g, len(self.clients))
        stars = [f"fostar{i}" for i in range(a.fanout_reps)]
        owner, group, aux = "foowner", "fanout1", self.clients[0]
        out: dict = {"group_size": g}
        t0 = mono()
        r = await aux.cmd("setup_names", 120, names=[owner] + stars)
        r = await aux.cmd("api", 60, calls=[["POST", "/api/groups", {"me": owner, "name": group},
                                             [200, 201]]])
        if r.get("errors") or not r.get("ok"):
            out["error"] = f"create group: {r}"
            self.res["fanout"] = out
            return
        await aux.cmd("api", 60, calls=[["POST", f"/api/groups/{group}/join", {"me": s},
                                         [200, 201, 204]] for s in stars])
        # the members watch the group; they join it only with --join-members
        # (a join reads the group's whole member list: quadratic, see
        # docs/benchmarks.md), which the fan-out does not depend on
        for action in (("join", "active") if a.join_members else ("active",)):
            rs = await asyncio.gather(*(
                c.cmd("members", a.phase_seconds + 30, group=group, count=k, action=action,
                      seconds=a.phase_seconds) for c, k in zip(self.clients, share)))
            out[action] = statuses_ok(rs)
            out[action + "_errors"] = merge_errors(rs)
        out["setup_s"] = round(mono() - t0, 1)
        log(f"{self.label}: fan-out group: {out.get('join')} joined, {out['active']} watching")
        watching = out["active"]
        await asyncio.sleep(1.0)
        reps = []
        for star in stars:
            await self.all("watch", 30, line=f"msg update online {star}")
            cpu0 = self.cpu()
            o = await aux.cmd("open", 60, name=star)
            if not o.get("ok"):
                reps.append({"star": star, "error": o.get("error")})
                continue
            end = mono() + 60
            while True:
                c = await self.all("counts", 30)
                got = sum(x.get("watch_count", 0) for x in c)
                if got >= watching or mono() > end:
                    break
                await asyncio.sleep(0.05)
            lasts = [x["watch_last"] for x in c if x.get("watch_last")]
            firsts = [x["watch_first"] for x in c if x.get("watch_first")]
            rep = {"star": star, "received": got,
                   "login_and_hold_ms": round((o["t_held"] - o["t_sent"]) * 1000, 1),
                   "first_ms": round((min(firsts) - o["t_sent"]) * 1000, 1) if firsts else None,
                   "all_ms": round((max(lasts) - o["t_sent"]) * 1000, 1) if lasts else None,
                   "server_cpu_s": round(self.cpu() - cpu0, 3)}
            reps.append(rep)
            log(f"{self.label}: fan-out {rep}")
            await asyncio.sleep(1.0)
        out["reps"] = reps
        alls = sorted(x["all_ms"] for x in reps if x.get("all_ms") is not None
                      and x.get("received", 0) >= watching)
        out["all_ms_median"] = alls[len(alls) // 2] if alls else None
        self.res["fanout"] = out
        await self.ack_all()

    async def common(self) -> None:
        """Phases 3-5, after the set-up."""
        await self.senders()
        await self.latency()
        await self.ack_all()
        await self.rate()
        if self.args.group:
            await self.fanout()

    # -- 6: a dead box and the storm ------------------------------------------------

    async def dead_box(self, victim: Proc, others: list, cluster: Cluster) -> None:
        a = self.args
        out: dict = {"box": victim.name}
        await self.all("arm", 30, jitter=a.jitter)
        c = await self.all("storm", 30, port=victim.port)
        on_box = sum(x.get("on_port", 0) for x in c)
        out["users_on_box"] = on_box
        cpu0 = sum(n.status().get("cpu_s", 0) for n in others)
        log(f"{self.label}: killing {victim.name} (port {victim.port}, {on_box} held there)")
        t_kill = mono()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        box = f"127.0.0.1:{victim.port}"
        noticed: dict = {}
        end = t_kill + a.storm_seconds
        back_at = None
        last = None
        while mono() < end:
            for n in others:
                if n.name not in noticed:
                    try:
                        boxes = get_json(n.port, "/api/cluster", 5).get("boxes", [])
                        if all(b.get("box") != box for b in boxes):
                            noticed[n.name] = round(mono() - t_kill, 2)
                    except Exception:
                        pass
            c = await self.all("storm", 30, port=victim.port)
            last = {"lost": sum(x.get("lost", 0) for x in c),
                    "back": sum(x.get("back", 0) for x in c),
                    "held": sum(x.get("held", 0) for x in c)}
            if last["back"] >= on_box and back_at is None:
                back_at = max(x["last_back"] for x in c if x.get("last_back")) - t_kill
            if back_at is not None and len(noticed) == len(others):
                break
            await asyncio.sleep(0.5)
        cpu = sum(n.status().get("cpu_s", 0) for n in others) - cpu0
        out.update({
            "noticed_s": noticed, "noticed_by_all_s": max(noticed.values())
            if len(noticed) == len(others) else None,
            "lost": last["lost"] if last else 0, "back": last["back"] if last else 0,
            "held_after": last["held"] if last else 0,
            "all_back_s": round(back_at, 2) if back_at is not None else None,
            "tries": sum(x.get("tries", 0) for x in c),
            "resumes": sum(x.get("resumes", 0) for x in c),
            "errors": merge_errors([{"errors": x.get("errors")} for x in c]),
            "others_cpu_s": round(cpu, 2)})
        if back_at:
            out["resumes_per_s_per_node"] = round(out["back"] / back_at / len(others), 1)
        boxes = get_json(others[0].port, "/api/cluster", 10).get("boxes", [])
        out["boxes_after"] = {b["box"]: b.get("sessions") for b in boxes}
        self.res["dead_box"] = out
        log(f"{self.label}: dead box {out}")


async def setup_rates(args, cluster: Cluster, url: str, index: int, out: dict) -> None:
    """Phase 7: a node with the default hash cost joins; password logins,
    then resumes, through it; then Prosody."""
    log("setup rates: a node with the default --hash-cost joins the cluster")
    node_args, base = cluster.options.node_args, cluster.options.port
    cluster.options.node_args = [x for x in node_args if x not in ("--hash-cost", "1")]
    port = free_run(1)      # the run reserved at the start may be taken by now
    cluster.options.port = port - index
    try:
        cluster.start_node(index, url)
    finally:
        cluster.options.node_args, cluster.options.port = node_args, base
    node = Proc(cluster.nodes[-1], port, f"node-{index + 1}")
    names = [f"rs{i:03d}" for i in range(args.setup_users)]
    conn = resume.Connection(node.port)
    for name in names:
        refused = False
        for _ in range(10):     # a 503 (Redis slow to answer) is retried, as a client does
            status, body = await conn.post("/api/register",
                                           {"username": name, "password": resume.PASSWORD})
            if status != 503:
                break
            refused = True
            await asyncio.sleep(1.0)
        if status == 409 and refused:
            # the write of the attempt answered 503 landed after its timeout:
            # the name is this run's (its password logins below show it)
            status = 201
        if status != 201:
            raise RuntimeError(f"register {name}: HTTP {status}: {body[:200]!r}")
    conn.close()
    logins = [{"username": names[i % len(names)], "password": resume.PASSWORD}
              for i in range(args.setup_logins)]
    login, answers = await resume.measure(node, "password logins", "/api/login", logins, 16)
    tokens = [{"token": answers[i % len(answers)]["resume"]} for i in range(args.resumes)]
    again, _ = await resume.measure(node, "resumes", "/api/resume", tokens, 16)
    out["login"], out["resume"] = login, again
    log("setup rates: Prosody")
    out["prosody"] = await prosody.measure(args.setup_logins * 2, 16, 16)
    best = max((out["prosody"].get(m, {}).get("setups_per_s") or 0)
               for m in ("SCRAM-SHA-1", "PLAIN")) if "skipped" not in out["prosody"] else 0
    out["resume_vs_login"] = ratio(again["setups_per_s"], login["setups_per_s"], 1)
    out["resume_vs_prosody"] = {m: ratio(again["setups_per_s"],
                                         out["prosody"].get(m, {}).get("setups_per_s"))
                                for m in ("SCRAM-SHA-1", "PLAIN")}
    out["resume_vs_prosody_best"] = ratio(again["setups_per_s"], best)
    log(f"setup rates: {out}")


# ------------------------------------------------------------------ the run


async def one_node(args, workdir: str, n: int, res: dict) -> None:
    srv = presence_server(workdir, os.path.join(workdir, "alone"), "alone", 25, 4)
    await srv.start()
    srv.name = "alone"
    bench = Bench(args, "one node", n, [srv.port], [srv])
    try:
        await bench.start_clients(20)
        await bench.setup()
        await bench.common()
    finally:
        res["one_node"] = bench.res
        await bench.stop_clients()
        srv.stop()


async def cluster_run(args, workdir: str, res: dict) -> None:
    twistd = shutil.which("twistd") or os.path.join(os.path.dirname(sys.executable), "twistd")
    base = free_run(2 * args.nodes if args.metrics else args.nodes)
    if args.profile:
        # every node under cProfile; the stats are written at its clean stop
        os.makedirs(args.profile, exist_ok=True)
        presence.cli.cluster.TWISTD = (
            "import os, sys, cProfile\nsys.argv[0] = 'twistd'\n"
            "from twisted.internet import reactor\n"
            "from twisted.scripts.twistd import run\nprofile = cProfile.Profile()\n"
            "def dump():\n    profile.disable()\n"
            f"    profile.dump_stats(os.path.join({os.path.abspath(args.profile)!r},"
            " 'node-%d.prof' % os.getpid()))\n"
            "reactor.addSystemEventTrigger('after', 'shutdown', dump)\n"
            "profile.enable()\nrun()\n")
    node_args = ["--hash-cost", "1", "--keepalive", "25", "--poll", "4"]
    node_args += presence_off_flags(twistd)
    if args.metrics and "--admin" in node_args:
        i = node_args.index("--admin")
        del node_args[i:i + 2]      # the Cluster gives each node its own
    options = SimpleNamespace(nodes=args.nodes, host="127.0.0.1", port=base, redis=None,
                              admin_port=base + args.nodes if args.metrics else 0,
                              data=os.path.join(workdir, "cluster"), node_args=node_args)
    cluster = Cluster(options, out=sys.stderr)
    bench = None
    try:
        url = cluster.start_redis()
        redis_port = int(url.rsplit(":", 1)[1].split("/")[0])
        res["redis_start"] = redis_info(redis_port)
        for i in range(args.nodes):
            cluster.start_node(i, url)
        nodes = [Proc(p, base + i, f"node-{i + 1}") for i, p in enumerate(cluster.nodes)]
        for i, n in enumerate(nodes):
            if args.metrics:
                n.admin = (cluster.admin_port(i),
                           os.path.join(options.data, f"node-{i + 1}", "admin-token"))
        bench = Bench(args, "cluster", args.users, [n.port for n in nodes], nodes)
        await asyncio.sleep(args.refresh_wait)   # every node has seen the others refresh
        await bench.start_clients(40)
        await bench.setup()
        red = redis_info(redis_port)
        red["rss_kb"] = rss_kb(cluster.redis.pid)
        red["per_user_b"] = round((red.get("used_memory", 0)
                                   - res["redis_start"].get("used_memory", 0))
                                  / max(1, bench.res["held"]))
        res["redis_held"] = red
        if args.setup_only:
            return
        await bench.common()
        if not args.skip_dead and args.nodes > 1:
            await bench.dead_box(nodes[-1], nodes[:-1], cluster)
        if not args.skip_setup_rates:
            res["setup_rates"] = {}
            await bench.stop_clients()
            await setup_rates(args, cluster, url, args.nodes, res["setup_rates"])
    finally:
        if bench is not None:
            res["cluster"] = bench.res
            await bench.stop_clients()
        cluster.stop()


def summary(res: dict) -> str:
    one, cl = res.get("one_node", {}), res.get("cluster", {})

    def g(d, *ks):
        for k in ks:
            d = d.get(k) if isinstance(d, dict) else None
        return d
    rows = [
        ("users held", g(one, "held"), g(cl, "held")),
        ("set-up (login + hold) s", g(one, "setup", "s"), g(cl, "setup", "s")),
        ("RSS KB per held conn (mean of nodes)", g(one, "kb_per_held"), g(cl, "kb_per_held")),
        ("Redis used_memory B per user", None, g(res, "redis_held", "per_user_b")),
        ("same-box p50 / p99 ms", g(one, "latency", "same_box_ms", "p50"),
         f"{g(cl, 'latency', 'same_box_ms', 'p50')} / {g(cl, 'latency', 'same_box_ms', 'p99')}"),
        ("cross-box p50 / p99 ms", None,
         f"{g(cl, 'latency', 'cross_box_ms', 'p50')} / {g(cl, 'latency', 'cross_box_ms', 'p99')}"),
        ("chats/s (median burst)", g(one, "rate", "chats_per_s"), g(cl, "rate", "chats_per_s")),
        ("fan-out ms (median)", g(one, "fanout", "all_ms_median"),
         g(cl, "fanout", "all_ms_median")),
        ("dead box noticed by all s", None, g(cl, "dead_box", "noticed_by_all_s")),
        ("its users all back s", None, g(cl, "dead_box", "all_back_s")),
        ("resumes/s (one node)", None, g(res, "setup_rates", "resume", "setups_per_s")),
        ("password logins/s (one node)", None, g(res, "setup_rates", "login", "setups_per_s")),
        ("Prosody SCRAM / PLAIN setups/s", None,
         f"{g(res, 'setup_rates', 'prosody', 'SCRAM-SHA-1', 'setups_per_s')} / "
         f"{g(res, 'setup_rates', 'prosody', 'PLAIN', 'setups_per_s')}"),
    ]
    lines = [f"{'figure':40} {'one node':>14} {'cluster':>22}"]
    for name, a, b in rows:
        lines.append(f"{name:40} {str(a if a is not None else ''):>14} {str(b):>22}")
    lines.append(f"cluster / one node chats/s: "
                 f"{ratio(g(cl, 'rate', 'chats_per_s'), g(one, 'rate', 'chats_per_s'))}")
    return "\n".join(lines)


async def amain(args) -> dict:
    res = {"machine": machine(), "command": " ".join(["python", "bench/cluster.py"]
                                                     + sys.argv[1:]),
           "args": vars(args)}
    workdir = tempfile.mkdtemp(prefix="presence-bench-cluster-")
    t0 = mono()
    done = False
    try:
        if not args.skip_one_node:
            await asyncio.wait_for(one_node(args, workdir, math.ceil(args.users / args.nodes),
                                            res), args.run_seconds)
        await asyncio.wait_for(cluster_run(args, workdir, res), args.run_seconds)
        done = True
    finally:
        res["elapsed_s"] = round(mono() - t0, 1)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
        if args.keep or not done:
            log(f"work dir kept (the nodes' logs): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return res


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=100000, help="users held in the cluster")
    p.add_argument("--nodes", type=int, default=7,
                   help="nodes (K); 7 so that a box's users fit on the others after it dies")
    p.add_argument("--per-proc", type=int, default=12500, help="users per client process")
    p.add_argument("--conc-setup", type=int, default=24,
                   help="log-ins in flight per client process")
    p.add_argument("--lat-rate", type=float, default=200.0)
    p.add_argument("--lat-seconds", type=float, default=20.0)
    p.add_argument("--chats", type=int, default=20000, help="chats per rate burst")
    p.add_argument("--conc", type=int, default=64, help="sender connections in a burst")
    p.add_argument("--rate-reps", type=int, default=3)
    p.add_argument("--group", type=int, default=10000)
    p.add_argument("--fanout-reps", type=int, default=2)
    p.add_argument("--join-members", action="store_true",
                   help="the watchers of the fan-out group join it first (slow: each join"
                        " reads the member list)")
    p.add_argument("--setup-only", action="store_true",
                   help="the cluster's set-up and memory only (for profiling)")
    p.add_argument("--jitter", type=float, default=1.0,
                   help="seconds a client waits at most (at random) before resuming")
    p.add_argument("--storm-seconds", type=float, default=90.0)
    p.add_argument("--setup-users", type=int, default=20)
    p.add_argument("--setup-logins", type=int, default=200)
    p.add_argument("--resumes", type=int, default=3000)
    p.add_argument("--refresh-wait", type=float, default=4.0)
    p.add_argument("--phase-seconds", type=float, default=240.0,
                   help="the bound on one phase (%(default)s s)")
    p.add_argument("--setup-seconds", type=float, default=900.0,
                   help="the bound on the set-up of the held heartbeats (%(default)s s)")
    p.add_argument("--run-seconds", type=float, default=1500.0,
                   help="the bound on each part, one node and the cluster (%(default)s s)")
    p.add_argument("--skip-one-node", action="store_true")
    p.add_argument("--skip-dead", action="store_true")
    p.add_argument("--skip-setup-rates", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 7,000 users on 3 nodes, short phases")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    p.add_argument("--profile", metavar="DIR",
                   help="run the cluster's nodes under cProfile, stats in DIR")
    p.add_argument("--metrics", action="store_true",
                   help="give every node its operator endpoint and report, over the latency"
                        " phase, the nodes' own histograms (Redis round trips, pub/sub lag,"
                        " acceptance to write)")
    p.add_argument("--out", default="bench/results/cluster.json")
    a = p.parse_args(argv)
    if a.quick:
        a.users, a.nodes, a.lat_seconds, a.chats, a.rate_reps = 7000, 3, 5.0, 5000, 1
        a.group, a.fanout_reps, a.resumes, a.setup_logins = 2000, 1, 1000, 60
    if not 1 <= a.nodes <= 20:
        p.error("--nodes must be 1-20")
    if not 1 <= a.per_proc <= 18000:
        p.error("--per-proc must be 1-18,000 (a client process holds that many descriptors)")
    if not a.nodes <= a.users <= 200000:
        p.error("--users must be between --nodes and 200,000")
    after = math.ceil(a.users / max(1, a.nodes - 1))
    if a.nodes > 1 and not a.skip_dead and after > 18500:
        p.error(f"after a box dies each of the other nodes would hold {after} heartbeats,"
                f" past the 20,000 descriptors of a process: more --nodes, or --skip-dead")
    if math.ceil(a.users / a.per_proc) > 30:
        p.error("at most 30 client processes")
    return a


def main() -> None:
    args = parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # the nodes run this tree's code
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + os.environ["PYTHONPATH"]
                                       if os.environ.get("PYTHONPATH") else "")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        res = asyncio.run(amain(args))
    except KeyboardInterrupt:
        log("interrupted: every process started was stopped")
        sys.exit(130)
    print(summary(res))
    log(f"results in {args.out}")


if __name__ == "__main__":
    main()
