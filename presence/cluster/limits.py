"""Limits counted over every box of a cluster: token buckets in Redis.

A node checks its own buckets first (:class:`~presence.core.ratelimit.RateLimiter`,
no I/O); in cluster mode the same buckets are then spent in Redis, so that a
client who spreads its requests over the boxes (a session used through
several nodes, one address talking to all of them) gets the allowance once,
not once per box.  One ``TAKE`` step of the hub's batch of the reactor
turn takes one token from each bucket of a request, or none of them (like
:func:`~presence.core.ratelimit.take_all`).
A bucket is a hash ``rl:<name>`` (``l`` the level, ``t`` when it was last
spent) that expires once it would be full again, so idle clients cost no
memory.

Time is the node's clock, passed in; nodes whose clocks differ by a few
seconds only shift the refill a little (a bucket never goes back in time).

Redis unreachable: the shared check **fails open** (the request goes on with
the node's own buckets, which still bound each box), so that an outage does
not stop chat that the boxes can still deliver; one log line per outage
(the cluster hub's).  docs/cluster.md, "Limits over the cluster".
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger

# The Lua of one take, a function of the cluster's BATCH script
# (presence/cluster/hub.py): ``TAKE now n key1 cap1 rate1 ... keyn capn
# raten`` in a batch spends one token of each bucket or none; its answer is
# "0" when spent, else the seconds to wait (a string: Lua numbers become
# integers on the way out).  ``at`` is the index in ARGV of the first key.
TAKE_FUNCTION = b"""
local function take(now, n, at)
  local levels, wait = {}, 0
  for j = 0, n - 1 do
    local key = ARGV[at + 3 * j]
    local cap, rate = tonumber(ARGV[at + 3 * j + 1]), tonumber(ARGV[at + 3 * j + 2])
    local v = redis.call('HMGET', key, 'l', 't')
    local level, t = tonumber(v[1]) or cap, tonumber(v[2]) or now
    if now > t then level = math.min(cap, level + (now - t) * rate) end
    levels[j] = level
    if level < 1 then
      if rate > 0 then wait = math.max(wait, (1 - level) / rate) else wait = 1e9 end
    end
  end
  if wait > 0 then return tostring(wait) end
  for j = 0, n - 1 do
    local key = ARGV[at + 3 * j]
    local cap, rate = tonumber(ARGV[at + 3 * j + 1]), tonumber(ARGV[at + 3 * j + 2])
    local t = tonumber(redis.call('HGET', key, 't')) or now
    redis.call('HSET', key, 'l', tostring(levels[j] - 1), 't', tostring(math.max(t, now)))
    if rate > 0 then redis.call('EXPIRE', key, math.ceil(cap / rate) + 1) end
  end
  return '0'
end
"""

#: a bucket: (name, capacity, per second)
Bucket = Tuple[str, float, float]


class SharedLimits:
    """Token buckets shared by the boxes.  ``hub`` is the
    :class:`~presence.cluster.hub.ClusterHub` (its Redis seam, its key
    prefix and its one log line per outage)."""

    log = Logger()

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def take(self, buckets: Sequence[Bucket], now: float) -> defer.Deferred:
        """Spend one token of each bucket in Redis: a Deferred of None, or
        of the seconds to wait when one of them is empty (nothing spent).
        None too when Redis cannot answer (fail open).  The take goes with
        the hub's batch of this reactor turn (a ``TAKE`` of its BATCH), so
        a turn's chats spend their buckets in one call, with the turn's
        writes, not one call each."""
        command: list = [b"TAKE", repr(float(now)), str(len(buckets))]
        for name, capacity, rate in buckets:
            command += [self.hub.key("rl", name), repr(float(capacity)), repr(float(rate))]
        d: defer.Deferred = defer.Deferred()

        def answered(reply: Any) -> None:
            # None: the batch could not be sent (logged once per outage by
            # the hub): fail open
            if reply is None:
                d.callback(None)
                return
            wait = float(reply.decode("ascii") if isinstance(reply, bytes) else reply)
            d.callback(wait if wait > 0 else None)
        self.hub._queue([command], answer=answered)
        return d
