#!/usr/bin/env python3
"""The floor under a chat's latency on this machine, as it is loaded: the
round trip of one byte between two otherwise idle processes over loopback
TCP (``TCP_NODELAY``), paced like the benchmark's chats.

A chat crosses processes: the sender's client, the node, (for a chat
between boxes: Redis and the recipient's node,) the recipient's client.
Each crossing is a wake-up of a process that must get a core.  One round
trip here is two crossings, so a same-box chat's floor is about one round
trip and a cross-box chat's about two, under the same background (the
other processes of the machine).  ``bench/cluster.py`` runs it beside its
latency phase; alone it measures an idle machine.

    python bench/hop_floor.py                      # 200/s for 10 s
    python bench/hop_floor.py --rate 200 --seconds 20

Printed: one JSON line, the round trips' percentiles in milliseconds.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time


def pct(vals: list) -> dict:
    if not vals:
        return {"n": 0}
    vals = sorted(vals)
    n = len(vals)
    return {"n": n, **{k: round(vals[min(n - 1, int(q * n))], 3)
                       for k, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
            "max": round(vals[-1], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="round trips per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:   # the echo, blocked in recv between round trips
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(a.seconds + 10)
        try:
            while True:
                b = conn.recv(1)
                if not b:
                    break
                conn.sendall(b)
        finally:
            os._exit(0)
    peer, _ = listener.accept()
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer.settimeout(5)
    rtts = []
    start = time.monotonic()
    count = int(a.rate * a.seconds)
    for i in range(count):
        wait = start + i / a.rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)   # pacing, as the chats are paced
        t = time.monotonic()
        peer.sendall(b"x")
        if peer.recv(1) != b"x":
            break
        rtts.append((time.monotonic() - t) * 1000)
    peer.close()
    os.waitpid(pid, 0)
    print(json.dumps(pct(rtts)))


if __name__ == "__main__":
    main()
