#!/usr/bin/env python3
"""The name service under load: the presence zone against a static
twisted.names zone, in one run.  Not a test: run by hand.

    python bench/dns.py                       # 19,000 names, 4 x 5 s per server
    python bench/dns.py --names 5000 --seconds 4 --rounds 1

Two DNS servers run as subprocesses of this script, one at a time, on a
free loopback UDP port, each in its own process with its own reactor:

  presence  presence.names.zone (PresenceZone + ZoneServerFactory, what
            ``--dns`` serves) over a real Hub holding --names users, each
            with a session; --flips users a second change presence under
            the load (half come online with a held channel, half go
            offline), so the answers read a presence that keeps moving;
  static    twisted.names' own PySourceAuthority with one A record per
            name, served by the stock DNSServerFactory: the baseline.

The client (this process) sends A queries for random names over UDP
with --window queries in flight, for --seconds, and counts the answers:
queries answered a second, the answer time (send to receipt) p50 and
p99, and the server process's CPU per answered query (utime + stime from
/proc).  The rounds alternate between the servers, so that the machine's
noise falls on both; the summary takes each server's best round (the
one other load hurt least) and its least CPU per query.  Every answer must be NOERROR with one A record;
a query unanswered for a second is counted as lost.  The figures are
printed and written to --out (JSON).  The client runs on the same machine
and takes CPU from the server: the rates are a floor for both.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import select
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOMAIN = "bench.example"
mono = time.monotonic


# -- the servers (run as subprocesses: ``dns.py serve presence|static PORT N F``) -------

def serve(kind: str, port: int, names: int, flips: int, folder: str) -> None:
    sys.path.insert(0, ROOT)
    from twisted.internet import reactor, task
    from twisted.names import authority, dns, server

    labels = [f"user{i}" for i in range(names)]
    if kind == "static":
        path = os.path.join(folder, "zone.py")
        with open(path, "w") as f:
            f.write("zone = [\n")
            f.write(f"    SOA({DOMAIN!r}, mname='ns.{DOMAIN}', rname='hostmaster.{DOMAIN}',"
                    " serial=1, refresh=3600, retry=600, expire=86400, minimum=60, ttl=60),\n")
            for i, label in enumerate(labels):
                f.write(f"    A('{label}.{DOMAIN}', '10.{i // 65536}.{i // 256 % 256}.{i % 256}'),\n")
            f.write("]\n")
        factory = server.DNSServerFactory(authorities=[authority.PySourceAuthority(path)])
        protocol = dns.DNSDatagramProtocol
    else:
        from zope.interface import implementer

        from presence.core.hub import Hub, HubConfig, IChannel
        from presence.names.zone import (
            NameCache, PresenceZone, QueryDatagrams, ZoneServerFactory,
        )

        @implementer(IChannel)
        class Held:
            def __init__(self, hub, session):
                self.hub, self.session = hub, session

            def send(self, entries):
                if entries:
                    self.hub.ack(self.session, entries[-1][0])

            def keepalive(self):
                pass

            def release(self, reason):
                self.hub.detach(self.session, self)

        hub = Hub(reactor, HubConfig(linger=0, mailbox=10))
        sessions = []
        for i, label in enumerate(labels):
            s = hub.login(label, f"sid-{i:08d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
            sessions.append(s)
        held: dict = {}
        for s in sessions[::2]:          # half online at the start
            held[s] = Held(hub, s)
            hub.attach(s, held[s])
        known = set(labels)
        cache = NameCache(reactor, lambda label: ("user", label) if label in known else None)
        zone = PresenceZone(DOMAIN, hub, cache, ["192.0.2.80"], ttl=60)
        factory = ZoneServerFactory(zone, reactor, source_rate=10 ** 9)
        protocol = QueryDatagrams
        rng = random.Random(1)
        counts = {"flips": 0}

        def flip() -> None:
            for s in rng.sample(sessions, max(1, flips // 10)):
                channel = held.pop(s, None)
                if channel is not None:
                    hub.detach(s, channel)
                else:
                    held[s] = Held(hub, s)
                    hub.attach(s, held[s])
                counts["flips"] += 1

        if flips:
            task.LoopingCall(flip).start(0.1, now=False)
    reactor.listenUDP(port, protocol(controller=factory), interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


# -- the client -------------------------------------------------------------------------

def packets(names: int) -> list:
    sys.path.insert(0, ROOT)
    from twisted.names import dns
    out = []
    for i in range(names):
        m = dns.Message(id=0, recDes=0)
        m.queries = [dns.Query(f"user{i}.{DOMAIN}", dns.A, dns.IN)]
        out.append(m.toStr())
    return out


def load(port: int, queries: list, seconds: float, window: int) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    rng = random.Random(7)
    sent: dict = {}
    times: list = []
    bad = lost = 0
    next_id = 0
    start = mono()
    end = start + seconds
    while True:
        now = mono()
        if now >= end:
            break
        while len(sent) < window:
            next_id = (next_id + 1) & 0xFFFF
            if next_id in sent:
                continue
            packet = queries[rng.randrange(len(queries))]
            sock.send(next_id.to_bytes(2, "big") + packet[2:])
            sent[next_id] = mono()
        ready, _, _ = select.select([sock], [], [], 0.05)
        if not ready:
            now = mono()
            for ident, when in list(sent.items()):
                if now - when > 1.0:
                    del sent[ident]
                    lost += 1
            continue
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            ident = int.from_bytes(data[:2], "big")
            when = sent.pop(ident, None)
            if when is None:
                continue
            times.append(mono() - when)
            # NOERROR and one answer record
            if data[3] & 0x0F != 0 or int.from_bytes(data[6:8], "big") != 1:
                bad += 1
    elapsed = mono() - start
    sock.close()
    times.sort()

    def pct(p: float) -> float:
        return round(times[min(len(times) - 1, int(p * len(times)))] * 1000, 3) if times else 0

    return {"answered": len(times), "per_second": round(len(times) / elapsed),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "bad": bad, "lost": lost}


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, names: int, flips: int, folder: str) -> tuple:
    port = free_udp_port()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", kind,
                             str(port), str(names), str(flips), folder],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise SystemExit(f"the {kind} server did not start: {line!r}")
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=19000)
    parser.add_argument("--flips", type=int, default=1000,
                        help="presence changes a second in the presence zone")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    queries = packets(args.names)
    results: dict = {"presence": [], "static": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for kind in ("static", "presence"):
                proc, port = start(kind, args.names, args.flips if kind == "presence" else 0,
                                   folder)
                try:
                    load(port, queries, 1.0, args.window)       # warm-up (caches fill)
                    before = cpu_seconds(proc.pid)
                    result = load(port, queries, args.seconds, args.window)
                    used = cpu_seconds(proc.pid) - before
                    result["cpu_us_per_query"] = round(used / max(1, result["answered"]) * 1e6, 1)
                finally:
                    proc.kill()
                    proc.wait()
                results[kind].append(result)
                print(kind, json.dumps(result), flush=True)
    summary = {}
    for kind, runs in results.items():
        # the best round of each: the one the machine's other load hurt least
        best = max(runs, key=lambda r: r["per_second"])
        summary[kind] = {
            "best_per_second": best["per_second"], "p50_ms": best["p50_ms"],
            "p99_ms": best["p99_ms"],
            "cpu_us_per_query": min(r["cpu_us_per_query"] for r in runs),
            "bad": sum(r["bad"] for r in runs), "lost": sum(r["lost"] for r in runs),
        }
    ratio = summary["presence"]["best_per_second"] / max(1, summary["static"]["best_per_second"])
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "args": vars(args), "runs": results, "summary": summary,
        "presence_over_static": round(ratio, 3),
        "cpu_presence_over_static": round(summary["presence"]["cpu_us_per_query"]
                                          / max(0.1, summary["static"]["cpu_us_per_query"]), 3),
    }
    print(json.dumps(report["summary"], indent=1), "rate ratio", report["presence_over_static"],
          "cpu ratio", report["cpu_presence_over_static"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
