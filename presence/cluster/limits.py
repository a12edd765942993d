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

A take does not hold the request up: the node decides at once, from what
Redis answered to the takes before it, and the take itself goes with the
reactor turn's batch.  When Redis answers that a bucket was empty, the node
refuses that bucket's requests (429 with the seconds Redis named) until it
would have a token again.  So a bucket emptied over the boxes lets each box
through at most the requests it takes before that answer comes back (about
one Redis round trip), and the node's own buckets still bound every box;
in return a chat waits for no Redis round trip before it is delivered.

Redis unreachable: the shared check **fails open** (the request goes on with
the node's own buckets, which still bound each box), so that an outage does
not stop chat that the boxes can still deliver; one log line per outage
(the cluster hub's).  docs/cluster.md, "Limits over the cluster".
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from twisted.logger import Logger

# The Lua of one take, a function of the cluster's BATCH script
# (presence/cluster/hub.py): ``TAKE now n key1 cap1 rate1 ... keyn capn
# raten`` in a batch spends one token of each bucket or none; its answer is
# "0" when spent, else the seconds each bucket has to wait, in order and
# separated by spaces, "0" for a bucket that has a token (a string: Lua
# numbers become integers on the way out).  ``at`` is the index in ARGV of
# the first key.
TAKE_FUNCTION = b"""
local function take(now, n, at)
  local levels, waits, empty = {}, {}, false
  for j = 0, n - 1 do
    local key = ARGV[at + 3 * j]
    local cap, rate = tonumber(ARGV[at + 3 * j + 1]), tonumber(ARGV[at + 3 * j + 2])
    local v = redis.call('HMGET', key, 'l', 't')
    local level, t = tonumber(v[1]) or cap, tonumber(v[2]) or now
    if now > t then level = math.min(cap, level + (now - t) * rate) end
    levels[j] = level
    waits[j + 1] = '0'
    if level < 1 then
      empty = true
      if rate > 0 then waits[j + 1] = tostring((1 - level) / rate) else waits[j + 1] = '1e9' end
    end
  end
  if empty then return table.concat(waits, ' ') end
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


#: buckets remembered as empty at most (past it, the expired ones go; if
#: all are live, all go: the node's own buckets still bound every box)
MAX_EMPTY = 65536


class SharedLimits:
    """Token buckets shared by the boxes.  ``hub`` is the
    :class:`~presence.cluster.hub.ClusterHub` (its Redis seam, its key
    prefix, its clock and its one log line per outage)."""

    log = Logger()

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        #: bucket name -> until when Redis said it has no token
        self.empty: Dict[str, float] = {}

    def take(self, buckets: Sequence[Bucket], now: float) -> Optional[float]:
        """The seconds to wait when Redis answered an earlier take that one
        of ``buckets`` is empty and it has no token yet (nothing spent,
        nothing sent); else None, and one token of each is spent in Redis
        with the hub's batch of this reactor turn (a ``TAKE`` of its
        BATCH: a turn's chats spend their buckets in one call, with the
        turn's writes).  The answer of that take decides the requests that
        come after it (see the module's text)."""
        empty = self.empty
        if empty:
            wait = max((empty.get(name, 0.0) - now for name, _, _ in buckets), default=0.0)
            if wait > 0:
                return wait
        command: list = [b"TAKE", repr(float(now)), str(len(buckets))]
        for name, capacity, rate in buckets:
            command += [self.hub.key("rl", name), repr(float(capacity)), repr(float(rate))]
        names = [name for name, _, _ in buckets]

        def answered(reply: Any) -> None:
            # None: the batch could not be sent (logged once per outage by
            # the hub): fail open
            if reply is None:
                return
            text = reply.decode("ascii") if isinstance(reply, bytes) else str(reply)
            if text == "0":
                return
            at = self.hub.clock.seconds()
            for name, wait in zip(names, text.split()):
                if float(wait) > 0:
                    self._remember(name, at + float(wait), at)
        self.hub._queue([command], answer=answered)
        return None

    def _remember(self, name: str, until: float, now: float) -> None:
        empty = self.empty
        if len(empty) >= MAX_EMPTY and name not in empty:
            for key in [k for k, t in empty.items() if t <= now]:
                del empty[key]
            if len(empty) >= MAX_EMPTY:
                empty.clear()
        empty[name] = until
