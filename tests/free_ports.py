"""Free ports for the programs the tests start, outside the kernel's
ephemeral range.

A port that ``bind(("127.0.0.1", 0))`` hands out comes from the ephemeral
range, and between our check and the bind of the program we start (a
server, SIPp, a bridge), any socket that binds to port 0 or sends from an
unbound UDP socket may be given the same port: the program then fails with
``EADDRINUSE``.  The kernel never hands out a port outside that range on its
own, so a port taken from below it stays free until someone names it.  Each
port is handed out once per test process, so two programs of one test never
share one either.
"""

from __future__ import annotations

import os
import random
import socket
from typing import Iterable, Set, Tuple

#: the pool of :func:`free_port` starts here (:func:`relay_range` is above it)
POOL_LOW = 10000
#: and ends here (or where the ephemeral range starts, if lower)
POOL_HIGH = 19999

_given: Set[int] = set()
_random = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big"))


def ephemeral_range() -> Tuple[int, int]:
    """The kernel's range of ephemeral ports (the source ports of outgoing
    connections, and what bind to port 0 hands out)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _pool() -> range:
    low, high = ephemeral_range()
    top = min(POOL_HIGH, low - 1)
    if top - POOL_LOW >= 1000:
        return range(POOL_LOW, top + 1)
    # an unusual machine whose ephemeral range starts low: above it instead,
    # past the relay range presence_harness puts there
    start = high + 1001
    if 65535 - start < 1000:
        raise AssertionError(f"no room outside the ephemeral range {low}-{high}")
    return range(start, 65536)


def _free(port: int, kinds: Iterable[int]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                # as Twisted's listeners do: connections lingering in
                # TIME_WAIT on the port do not stop a server listening there
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def free_port(kinds: Iterable[int] = (socket.SOCK_STREAM, socket.SOCK_DGRAM),
              span: int = 1) -> int:
    """The first of ``span`` consecutive ports, free right now for every
    socket type of ``kinds`` on every interface, outside the ephemeral range,
    and never handed out before by this process."""
    kinds = tuple(kinds)
    pool = _pool()
    start = _random.randrange(len(pool))
    for i in range(len(pool)):
        port = pool[(start + i) % len(pool)]
        ports = range(port, port + span)
        if ports[-1] not in pool or any(p in _given for p in ports):
            continue
        if all(_free(p, kinds) for p in ports):
            _given.update(ports)
            return port
    raise AssertionError(f"no {span} free port(s) left in {pool.start}-{pool.stop - 1}")


def tcp_port() -> int:
    return free_port((socket.SOCK_STREAM,))


def udp_port(span: int = 1) -> int:
    return free_port((socket.SOCK_DGRAM,), span)


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to UDP ``port``, read from the kernel's
    tables (a probe by binding could take the port from the program we
    wait for, just as it binds)."""
    found = False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            local = line.split()[1]
            if int(local.rsplit(":", 1)[1], 16) == port:
                return True
    if not found:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return True
    return False


def relay_range(span: int) -> Tuple[int, int]:
    """``(low, high)``: ``span`` UDP ports for a test server's media relay,
    above the pool of :func:`free_port` and below the ephemeral range, free
    right now on 127.0.0.1 (sampled every 17th port) and not handed out by
    this process before."""
    top = min(32000, ephemeral_range()[0]) - span
    if top <= POOL_HIGH + 1:
        raise AssertionError(f"no room for {span} relay ports below the ephemeral range")
    for _ in range(50):
        low = _random.randrange(POOL_HIGH + 1, top, 2)
        ports = range(low, low + span)
        if any(p in _given for p in ports):
            continue
        if all(_free(p, (socket.SOCK_DGRAM,)) for p in ports[::17]):
            _given.update(ports)
            return low, low + span - 1
    raise AssertionError("no free relay port range")
