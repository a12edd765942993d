#!/usr/bin/env python3
"""A/B of the operator endpoint's cost: server CPU per chat with metrics
off (A: ``--admin none``) and on (B: ``--admin`` on a free loopback port,
``/metrics`` scraped with the token every ``--scrape`` seconds during the
bursts, as Prometheus would, its work counted in the server's CPU).

The clients, logins, held heartbeats and unpaced chat bursts are those of
``bench/rate_ab.py`` (``bench/run.py``'s rate phase); rounds alternate
A B A B so that a machine that slows down weighs on both.

    python bench/metrics_ab.py                        # 19,000 held, one round, ~10 min
    python bench/metrics_ab.py --users 2000 --rounds 1 --reps 2   # a quick look
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rate_ab  # noqa: E402  (bench/rate_ab.py: one server's bursts)
import run  # noqa: E402  (bench/run.py: servers, clients, the rate phase)

ON = ["--admin", "tcp:0:interface=127.0.0.1"]
#: scrapes in a row at the end of a B server's run, for the CPU of one
SCRAPES = 50
WATCHES: list = []


def micro(n: int = 200_000) -> dict:
    """In this process: what one chat adds to the server's work when
    metrics are on (timing it from acceptance to write) and when off (the
    counter additions alone), in microseconds."""
    from presence.core.counters import Counters
    from presence.core.frames import chat

    frame = chat("alice", "m1", "hello")
    entries = [(1, frame)]

    def one(c: Counters) -> None:
        if c.timing:
            c.chat_accepting("m1")
        c.chat_accepted("m1", "online")
        c.frames_written += len(entries)
        c.frames_per_write.observe(len(entries))
        if c.measuring:
            now = c.clock()
            for _, f in entries:
                if f.kind == "chat":
                    c.chat_written(f.args[1], now)

    out = {}
    for label, timing in (("off", False), ("on", True)):
        best = None
        for _ in range(5):   # CPU time (as the server's is), the least of five
            c = Counters()
            c.timing = timing
            c.clock = time.perf_counter  # type: ignore[method-assign]
            began = time.process_time()
            for _ in range(n // 5):
                one(c)
            took = (time.process_time() - began) * 1e6 / (n // 5)
            best = took if best is None else min(best, took)
        out[label] = round(best, 3)
    return out


class Scraper(threading.Thread):
    """GET /metrics with the bearer token every ``every`` seconds."""

    def __init__(self, port: int, token: str, every: float) -> None:
        super().__init__(daemon=True, name="scraper")
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.every = every
        self.done = threading.Event()
        self.scrapes = 0
        self.bytes = 0
        self.failures = 0

    def run(self) -> None:
        while not self.done.wait(self.every):
            try:
                request = urllib.request.Request(self.url, headers=self.headers)
                with urllib.request.urlopen(request, timeout=10) as r:
                    self.bytes = len(r.read())
                self.scrapes += 1
            except OSError:
                self.failures += 1


def admin_of(logpath: str):
    text = open(logpath, encoding="utf-8", errors="replace").read()
    port = re.search(r"\badmin=[\d.]+:(\d+)", text)
    token = re.search(r"\badmin_token=(\S+)", text)
    return int(port.group(1)), open(token.group(1)).read().strip()


class Watch:
    """B's scraper around one server start (``rate_ab.one_server``'s hook)."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.scraper = None
        self.seen = 0
        self.srv = None
        #: server CPU of one scrape, measured at the end (50 in a row, held
        #: heartbeats still held, no chats)
        self.cpu_ms_per_scrape = None

    def __call__(self, srv) -> "Watch":
        self.srv = srv
        self.scraper = Scraper(*admin_of(srv.logpath), self.every)
        self.scraper.start()
        return self

    def row(self) -> dict:
        done, self.seen = self.scraper.scrapes - self.seen, self.scraper.scrapes
        return {"scrapes": done, "metrics_bytes": self.scraper.bytes,
                "scrape_failures": self.scraper.failures}

    def stop(self) -> None:
        self.scraper.done.set()
        self.scraper.join(15)
        before = self.srv.status().get("cpu_s")
        for _ in range(SCRAPES):
            request = urllib.request.Request(self.scraper.url, headers=self.scraper.headers)
            with urllib.request.urlopen(request, timeout=10) as r:
                r.read()
        after = self.srv.status().get("cpu_s")
        if before is not None and after is not None:
            self.cpu_ms_per_scrape = round((after - before) * 1000 / SCRAPES, 3)


async def one_server(args, label: str, metrics_on: bool) -> list:
    # B: --admin after presence_off_flags' --admin none (the last one wins)
    watch = Watch(args.scrape) if metrics_on else None
    if watch is not None:
        WATCHES.append(watch)
    return await rate_ab.one_server(args, label, ON if metrics_on else [], watch=watch)


async def amain(args) -> dict:
    got: dict = {"A": [], "B": []}
    began = time.time()
    order = (("A", False), ("B", True))
    for i in range(args.rounds):
        for label, on in (order if args.first == "A" else order[::-1]):
            run.log(f"round {i + 1}: {label} metrics {'on' if on else 'off'}")
            got[label] += await one_server(args, label, on)
    out = {"machine": run.machine(), "users": args.users, "chats": args.chats,
           "first": args.first,
           "scrape_every_s": args.scrape, "bursts": got, "seconds": round(time.time() - began)}
    for label in got:
        out[label] = {k: statistics.median(r[k] for r in got[label])
                      for k in ("cpu_ms_per_chat", "chats_per_s")}
    out["cpu_ratio_b_over_a"] = round(out["B"]["cpu_ms_per_chat"] / out["A"]["cpu_ms_per_chat"], 3)
    out["cpu_ms_per_scrape"] = [w.cpu_ms_per_scrape for w in WATCHES]
    out["us_per_chat_in_process"] = micro()
    cpu_us = out["A"]["cpu_ms_per_chat"] * 1000
    added = out["us_per_chat_in_process"]["on"]
    out["timing_share_of_a_chat"] = round(added / cpu_us, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=19000, help="held heartbeats (%(default)s)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="bursts per server start")
    ap.add_argument("--chats", type=int, default=20000, help="chats per burst")
    ap.add_argument("--conc", type=int, default=64, help="sender connections")
    ap.add_argument("--first", choices=("A", "B"), default="A",
                    help="which server each round starts first (the order weighs on a"
                         " busy machine: run both)")
    ap.add_argument("--scrape", type=float, default=1.0,
                    help="seconds between scrapes of B (%(default)s; Prometheus's default is 15)")
    ap.add_argument("--phase-seconds", type=float, default=420.0,
                    help="bound of the login and hold phases (19,000 logins take minutes on a"
                         " busy machine)")
    ap.add_argument("--out", default=os.path.join(run.HERE, "results", "metrics_ab.json"))
    args = ap.parse_args()
    res = asyncio.run(amain(args))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    for label in ("A", "B"):
        rows = res["bursts"][label]
        print(f"{label}: chats/s {[r['chats_per_s'] for r in rows]}  "
              f"cpu ms/chat {[r['cpu_ms_per_chat'] for r in rows]}  "
              f"scrapes {[r.get('scrapes', 0) for r in rows]}")
    print(f"median cpu ms/chat A (off) {res['A']['cpu_ms_per_chat']} B (on) "
          f"{res['B']['cpu_ms_per_chat']} (B/A {res['cpu_ratio_b_over_a']});"
          f" median chats/s A {res['A']['chats_per_s']} B {res['B']['chats_per_s']};"
          f" {res['seconds']} s")
    print(f"server CPU per scrape {res['cpu_ms_per_scrape']} ms; in process, a chat's"
          f" counting costs {res['us_per_chat_in_process']} us (off/on),"
          f" {res['timing_share_of_a_chat']:.2%} of A's CPU per chat")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
