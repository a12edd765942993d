#!/usr/bin/env python3
"""Bytes per remote session of a box's view of the cluster (issue 12's RSS
per held connection: every box keeps a view of every session of the other
boxes, so at K boxes this is paid K - 1 times per session).  Not a test: run
by hand; no network, no Redis.

    python bench/cluster_view_memory.py              # this tree against its base on main
    python bench/cluster_view_memory.py -n 20000 --against HEAD~1

One :class:`~presence.cluster.hub.ClusterHub` (box ``10.0.0.1:80``) with a
do-nothing Redis seam is fed ``-n`` synthetic remote sessions through its
real code path (the node's subscription, as ``presence.cluster.service``
builds it, handed the messages): what other boxes publish on the channel
``all`` (a JSON list per batch, ``--batch`` sessions each), each session's
``open`` event and its user's ``pres`` event (online, the default state,
as a login shares them), spread over ``--boxes`` other boxes; ``--multi``
of the sessions are a user's second, on another box, with a set state
(``away``).  tracemalloc counts the bytes the view holds afterwards (the
events' own JSON is gone by then), divided by ``-n``.

The same measurement runs in a child process for the tree of ``--against``
(``git archive`` of its ``presence/`` into a temporary directory), so the
two figures come from one run on one machine and the ratio is meaningful.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


PREFIX = "presence:"


class NoRedis:
    """The command seam, answering nothing (the view is fed by events)."""

    def eval(self, script, keys, args):
        return []

    def unavailable(self, error):
        return False


def events(n: int, boxes: int, multi: float, batch: int):
    """The messages other boxes publish on ``all`` for ``n`` sessions."""
    messages, current = [], []
    extra = int(n * multi)
    t = 1.8e9
    for i in range(n):
        box = f"10.0.1.{i % boxes + 1}:80"
        user = f"user{i if i >= extra else i // 2:06d}"
        sid = f"{i:08d}" + "S" * 35          # as long as token_urlsafe(32)
        second = i < extra and i % 2
        t += 0.001
        current.append({"e": "open", "s": sid, "u": user, "b": box,
                        "ip": f"10.{i % 250}.{i // 250 % 250}.{i % 7}", "port": 40000 + i % 20000,
                        "g": ["team"] if i % 3 == 0 else [], "guest": False, "t": t,
                        "by": box})
        current.append({"e": "pres", "u": user, "b": box, "on": True,
                        "g": ["team"] if i % 3 == 0 else [], "t": t,
                        "st": "away" if second else "available",
                        "tx": "lunch" if second else "", "w": t})
        if len(current) >= 2 * batch:
            messages.append(json.dumps(current).encode())
            current = []
    if current:
        messages.append(json.dumps(current).encode())
    return messages


def measure(n: int, boxes: int, multi: float, batch: int) -> dict:
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    from presence.cluster.hub import ClusterHub
    from presence.cluster.service import _Subscriber
    from presence.core.hub import HubConfig

    clock = Clock()
    clock.advance(1.8e9)
    messages = events(n, boxes, multi, batch)
    hub = ClusterHub(clock, HubConfig(host_box="10.0.0.1:80"), NoRedis(), prefix=PREFIX)
    # the node's subscription, as the cluster's service builds it (not
    # connected: its messages are handed to it here)
    owner = SimpleNamespace(hub=hub, address=SimpleNamespace(password=None, username=None))
    subscription = _Subscriber(owner).buildProtocol(None)
    channel = (PREFIX + "all").encode()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for message in messages:
        subscription.messageReceived(None, channel, message)
    del message
    messages = None
    clock.advance(0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    held = sum(s.size_diff for s in stats)
    top = [(str(s.traceback), s.size_diff) for s in stats[:8]]
    assert hub.stats()["remote_sessions"] == n
    return {"sessions": n, "bytes": held, "per_session": held / n, "top": top}


def child(args) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", "-n", str(args.n),
         "--boxes", str(args.boxes), "--multi", str(args.multi), "--batch", str(args.batch)],
        env=dict(os.environ, PYTHONPATH=args.tree), capture_output=True, text=True,
        check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="remote sessions")
    parser.add_argument("--boxes", type=int, default=6, help="other boxes")
    parser.add_argument("--multi", type=float, default=0.1,
                        help="share of the sessions that are a user's two")
    parser.add_argument("--batch", type=int, default=100, help="sessions per message")
    parser.add_argument("--against", help="git revision to compare with (default: where"
                        " this branch left main, git merge-base HEAD main)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.n, args.boxes, args.multi, args.batch)))
        return
    if args.against is None:
        args.against = subprocess.run(["git", "-C", ROOT, "merge-base", "HEAD", "main"],
                                      capture_output=True, text=True,
                                      check=True).stdout.strip()[:10]
    figures = {}
    tmp = tempfile.mkdtemp(prefix="view-memory-")
    try:
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.against, "presence"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        for label, tree in ((args.against, tmp), ("this tree", ROOT)):
            args.tree = tree
            figures[label] = child(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for label, result in figures.items():
        print(f"{label}: {result['per_session']:.0f} bytes per remote session"
              f" ({result['bytes'] / 1e6:.2f} MB for {result['sessions']})")
        for where, size in result["top"]:
            print(f"    {size / result['sessions']:7.1f}  {where}")
    old, new = (figures[k]["per_session"] for k in figures)
    print(f"ratio this tree / {args.against}: {new / old:.3f}")


if __name__ == "__main__":
    main()
