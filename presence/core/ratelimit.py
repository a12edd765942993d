"""Token buckets per key (a client address), with a bounded number of keys.

Pure: the caller passes ``now``.  A bucket holds up to ``capacity`` tokens and
gains ``rate`` tokens a second; ``take`` spends one if there is one.  Past
``max_keys`` keys the least recently used bucket is forgotten, which only
ever makes a limit more lenient, never unbounded memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Tuple


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
