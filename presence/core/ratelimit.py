"""Token buckets per key (a client address), with a bounded number of keys.

:class:`RecentSet` remembers recent keys (an account's good addresses) with
the same bound.

Pure: the caller passes ``now``.  A bucket holds up to ``capacity`` tokens and
gains ``rate`` tokens a second; ``take`` spends one if there is one.  Past
``max_keys`` keys the least recently used bucket is forgotten, which only
ever makes a limit more lenient, never unbounded memory.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Iterable, Optional, Tuple


def address_key(ip: str) -> str:
    """The key a client address is limited by: an IPv4 address as it is, an
    IPv6 address by its /64 (one subscriber's usual share, which one host can
    hop within at will), an IPv4-mapped IPv6 address as its IPv4 address;
    anything else (a UNIX socket, none) as given."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimiter:
    def __init__(self, capacity: float, rate: float, max_keys: int = 10000) -> None:
        self.capacity = capacity
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: "OrderedDict[str, Tuple[float, float]]" = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        tokens, then = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - then) * self.rate)

    def allowed(self, key: str, now: float) -> bool:
        """Whether ``key`` has a token, without spending it."""
        return self._level(key, now) >= 1

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a whole token again (0 if it has one)."""
        missing = 1 - self._level(key, now)
        if missing <= 0:
            return 0.0
        return missing / self.rate if self.rate > 0 else float("inf")

    def take(self, key: str, now: float) -> bool:
        """Spend a token of ``key``; False (nothing spent) when it has none."""
        tokens = self._level(key, now)
        ok = tokens >= 1
        if ok:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok


def take_all(buckets: Iterable[Tuple[RateLimiter, str]], now: float) -> Optional[float]:
    """Spend one token from each ``(limiter, key)`` if every one has a token;
    else spend nothing and return the seconds until all of them would have
    one (what an HTTP ``Retry-After`` says).  None on success."""
    buckets = list(buckets)
    wait = max((limiter.wait(key, now) for limiter, key in buckets), default=0.0)
    if wait > 0:
        return wait
    for limiter, key in buckets:
        limiter.take(key, now)
    return None


class RecentSet:
    """The ``max_keys`` keys added most recently (LRU; ``in`` does not
    refresh a key, ``add`` does)."""

    def __init__(self, max_keys: int = 10000) -> None:
        self.max_keys = max_keys
        self._keys: "OrderedDict[object, None]" = OrderedDict()

    def add(self, key: object) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
