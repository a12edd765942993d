#!/usr/bin/env python3
"""A/B of the presence server's chat rate: the same server with and without
some ``twistd presence`` options (``--b-args``, by default
``--no-turn-flush``, Twisted's own write path).

Each round starts A, then B, each with N users registered, logged in and
holding heartbeats, and sends ``--reps`` unpaced bursts of ``--chats`` chats
to them (the rate phase of ``bench/run.py``, same clients).  It reports
server CPU per chat and chats/s, per burst and as medians over all rounds,
and their ratio.  The rounds alternate (A B A B ...) so that a machine that
slows down or speeds up during the run weighs on both.

    python bench/rate_ab.py                           # 2 rounds, 2,000 users
    python bench/rate_ab.py --users 10000 --rounds 3
    python bench/rate_ab.py --b-args "--no-access-log --no-turn-flush"
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py: servers, clients, the rate phase)


async def one_server(args, label: str, extra: list, watch=None) -> list:
    """Bursts on one server started with ``extra`` options.  ``watch``, if
    given, is called with the started ServerProc and returns an object whose
    ``row()`` adds fields to each burst's row and ``stop()`` ends it."""
    workdir = tempfile.mkdtemp(prefix=f"rate-ab-{label}-")
    a = argparse.Namespace(phase_seconds=args.phase_seconds, chats=args.chats, conc=args.conc,
                           gc_watch=False, profile="", login_conc=32, rate_reps=args.reps)
    bench = run.Bench(a, "presence", args.users, workdir)
    bench.srv = run.presence_server(workdir, os.path.join(workdir, "data"), f"presence-{label}",
                                    25, 4)
    bench.srv.argv += extra
    await bench.srv.start()
    out = []
    watcher = None
    try:
        if watch is not None:
            watcher = watch(bench.srv)
        await bench.start_clients()
        res: dict = {}
        await bench.login_and_hold(res, "", a.phase_seconds)
        procs, per, _ = await bench.log_in_senders()
        for _ in range(args.reps):
            r = await bench.rate_phase(procs, per)
            await bench.ack_all(procs)
            out.append({"chats_per_s": r["chats_per_s"],
                        "cpu_ms_per_chat": r["server_cpu_ms_per_chat"],
                        "delivered": r["delivered"], "sent": r["sent"],
                        "p50_ms_under_burst": r["delivery_ms_under_burst"].get("p50"),
                        "held": res.get("hold", {}).get("held"),
                        **(watcher.row() if watcher is not None else {})})
    finally:
        if watcher is not None:
            watcher.stop()
        await bench.stop_clients()
        bench.srv.release()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def median(rows: list, key: str) -> float:
    return statistics.median(r[key] for r in rows)


async def amain(args) -> dict:
    sides = {"A": [], "B": shlex.split(args.b_args)}
    got: dict = {"A": [], "B": []}
    for i in range(args.rounds):
        for label, extra in sides.items():
            run.log(f"round {i + 1}: {label} {' '.join(extra) or '(as built)'}")
            got[label] += await one_server(args, label, extra)
    out = {"machine": run.machine(), "users": args.users, "chats": args.chats,
           "b_args": args.b_args, "bursts": got}
    for label in sides:
        out[label] = {"cpu_ms_per_chat": median(got[label], "cpu_ms_per_chat"),
                      "chats_per_s": median(got[label], "chats_per_s")}
    out["cpu_ratio_b_over_a"] = round(out["B"]["cpu_ms_per_chat"] / out["A"]["cpu_ms_per_chat"], 3)
    out["rate_ratio_a_over_b"] = round(out["A"]["chats_per_s"] / out["B"]["chats_per_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="bursts per server start")
    ap.add_argument("--chats", type=int, default=20000, help="chats per burst")
    ap.add_argument("--conc", type=int, default=64, help="sender connections")
    ap.add_argument("--b-args", default="--no-turn-flush",
                    help="twistd presence options added for the B server (default %(default)s)")
    ap.add_argument("--phase-seconds", type=float, default=180.0)
    ap.add_argument("--out", default=os.path.join(run.HERE, "results", "rate_ab.json"))
    args = ap.parse_args()
    if not shlex.split(args.b_args):
        ap.error("--b-args names at least one option")
    res = asyncio.run(amain(args))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    for label in ("A", "B"):
        rows = res["bursts"][label]
        print(f"{label}: chats/s {[r['chats_per_s'] for r in rows]}  "
              f"cpu ms/chat {[r['cpu_ms_per_chat'] for r in rows]}")
    print(f"median cpu ms/chat A {res['A']['cpu_ms_per_chat']} B {res['B']['cpu_ms_per_chat']}"
          f" (B/A {res['cpu_ratio_b_over_a']}); median chats/s A {res['A']['chats_per_s']}"
          f" B {res['B']['chats_per_s']} (A/B {res['rate_ratio_a_over_b']})")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
