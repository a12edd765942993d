#!/usr/bin/env python3
"""The floor under the server's CPU per update frame: what one loopback TCP
``send`` of a frame costs this machine's kernel, without any server.

One process accepts ``--conns`` loopback connections (``TCP_NODELAY``, as a
held heartbeat) and sends one chunk of a typical ``msg update`` event on each
of them, ``--rounds`` times, in a plain loop; a forked child holds the other
ends and reads them (``--no-read``: it only holds them).  Printed: the
sender's user and system CPU per send (``os.times()``) and the wall time per
send.  A server that writes each watcher's frame on that watcher's own
connection pays at least the system time per frame (docs/benchmarks.md,
"Large groups").

    python bench/send_floor.py                # 2,000 connections, 20 rounds
    python bench/send_floor.py --conns 5000 --no-read
"""
from __future__ import annotations

import argparse
import os
import select
import socket
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-read", action="store_true", help="the peers do not read")
    a = ap.parse_args()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    seconds = 5.0 + a.conns * a.rounds * 20e-6
    pid = os.fork()
    if pid == 0:  # the peers
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(a.conns)]
        end = time.monotonic() + seconds
        if a.no_read:
            time.sleep(seconds)
        else:
            poller = select.epoll()
            by_fd = {}
            for c in conns:
                c.setblocking(False)
                poller.register(c.fileno(), select.EPOLLIN)
                by_fd[c.fileno()] = c
            while time.monotonic() < end:
                for fd, _ in poller.poll(0.2):
                    by_fd[fd].recv(65536)
        os._exit(0)
    ends = []
    for _ in range(a.conns):
        s, _ = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        ends.append(s)
    event = b"id: 12345\ndata: msg update online w12345\n\n"
    chunk = b"%x\r\n%b\r\n" % (len(event), event)
    time.sleep(0.5)
    t0, w0 = os.times(), time.perf_counter()
    for _ in range(a.rounds):
        for s in ends:
            s.send(chunk)
    t1, w1 = os.times(), time.perf_counter()
    n = a.conns * a.rounds
    print(f"{n} sends of {len(chunk)} bytes on {a.conns} loopback connections"
          f" ({'not read' if a.no_read else 'read by a peer process'}), load"
          f" {os.getloadavg()[0]:.2f}: user {1e6 * (t1.user - t0.user) / n:.2f} us,"
          f" system {1e6 * (t1.system - t0.system) / n:.2f} us,"
          f" wall {1e6 * (w1 - w0) / n:.2f} us per send")
    for s in ends:
        s.close()
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
