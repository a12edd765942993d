"""The directory in Redis (cluster mode): :class:`RedisDirectory`.

The same :class:`~presence.store.interface.IDirectory` as the embedded SQLite
store, with the same results and the same exceptions, over one Redis shared
by every node.  The keys are listed in ``docs/cluster.md`` ("The directory in
Redis"); :class:`Keys` builds them, all under one prefix.

Every write that must be all-or-nothing, or that checks before it writes,
is one Lua script (``EVALSHA``, loaded on first use): Redis runs a script
alone, so name uniqueness (``SET name:<n> NX`` inside the script that
creates the user, group or alias), the message-box quota (count and bytes
checked and raised in the script that stores the message) and message ids
(``INCR``) are atomic whichever node asks.  Chat that leaves a mailbox unread
(:meth:`RedisDirectory.spill`) and page hits are batched as in SQLite: one
script call for up to ``BATCH`` rows, one such call in flight at a time; a
batch that finds Redis unavailable waits and is sent again, in order, when
it is back (only what still waits when the node stops is lost, logged).

Redis unreachable: every call fails with
:class:`~presence.store.interface.StoreUnavailable` (a 503 on the JSON API)
within ``timeout`` seconds, at once while an outage is known and no
connection is up; a command is never queued to run when Redis comes back
after its caller was told it failed.  One line is logged when an outage
starts and one when it ends.

The Redis seam is small (:class:`TxRedis` over txredisapi's lazy connection
pool, which reconnects with backoff): ``ready()``, ``when_ready()``,
``eval(script, keys, args)`` and ``close()``; unit tests pass a fake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.store.interface import (
    RESUME_PER_USER, BoxFull, IDirectory, NameTaken, Resumed, StoreUnavailable,
)

#: the prefix of every key, unless the URL or the caller names another
PREFIX = "presence:"
#: seconds a directory call may take before it fails with StoreUnavailable
TIMEOUT = 2.0
#: the starts of Redis error replies that mean "cannot serve now"
UNAVAILABLE = ("OOM", "READONLY", "LOADING", "NOAUTH", "WRONGPASS", "MISCONF", "BUSY",
               "MASTERDOWN", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN", "NOPERM",
               "ERR max number of clients")
#: spilled chat rows (or page hits) sent in one script call at most
BATCH = 500
#: seconds between tries of a batch while Redis is unavailable
RETRY = 1.0


def _b(text: Any) -> bytes:
    """Bytes for Redis: text as UTF-8 (a lone surrogate kept as SQLite's
    ``surrogatepass`` would), numbers in full precision."""
    if isinstance(text, bytes):
        return text
    if isinstance(text, float):
        return repr(text).encode("ascii")
    return str(text).encode("utf-8", "surrogatepass")


def _before(row: Optional[List[Optional[bytes]]]) -> dict:
    """record_login's answer from the user's fields before the login."""
    if not row:
        return {"last_login": None, "last_seen": None, "hits_offline": 0}
    return {"last_login": _f(row[0]), "last_seen": _f(row[1]),
            "hits_offline": int(row[2] or 0)}


def _s(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", "surrogatepass")


def _opt(value: Optional[str]) -> bytes:
    """An optional value for a script: ``b""`` for None, else ``b"="`` and
    the value (so that an empty string stays distinct from None)."""
    return b"" if value is None else b"=" + _b(value)


def _f(value: Optional[bytes]) -> Optional[float]:
    return None if value is None else float(value)


# -- where ---------------------------------------------------------------------

@dataclass(frozen=True)
class RedisAddress:
    """A parsed ``redis://`` or ``unix:`` URL.  Its ``repr`` and
    :attr:`where` never show the password."""

    host: Optional[str] = None
    port: int = 6379
    path: Optional[str] = None
    db: int = 0
    password: Optional[str] = field(default=None, repr=False)
    username: Optional[str] = None
    prefix: str = PREFIX

    @property
    def where(self) -> str:
        """The address for logs and errors: no password."""
        if self.path is not None:
            return f"unix:{self.path}?db={self.db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db][?prefix=P]`` or
    ``unix:/path/to/sock[?db=N&password=PW&prefix=P]``; ValueError (whose
    text never carries the password) for anything else."""
    if not isinstance(url, str) or not url:
        raise ValueError("the Redis URL is empty")
    if url.startswith("unix:"):
        rest = url[len("unix:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        path, _, query = rest.partition("?")
        if not path.startswith("/"):
            raise ValueError("a unix: Redis URL needs an absolute socket path,"
                             " as in unix:/run/redis/redis.sock")
        q = _query(query)
        return RedisAddress(path=unquote(path), db=_db(q.get("db", "0")),
                            password=q.get("password") or None,
                            prefix=q.get("prefix", PREFIX))
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError("the Redis URL must start with redis:// or unix:")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the port of the Redis URL must be a number 1-65535") from None
    host = parts.hostname
    if not host:
        raise ValueError("the Redis URL names no host, as in redis://127.0.0.1:6379/0")
    path = parts.path.strip("/")
    q = _query(parts.query)
    return RedisAddress(host=host, port=port, db=_db(path or q.get("db", "0")),
                        password=unquote(parts.password) if parts.password else None,
                        username=unquote(parts.username) if parts.username else None,
                        prefix=q.get("prefix", PREFIX))


def _query(query: str) -> Dict[str, str]:
    q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(q) - {"db", "password", "prefix"}
    if unknown:
        raise ValueError(f"the Redis URL has unknown parameters: {', '.join(sorted(unknown))}")
    return q


def _db(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        raise ValueError("the database of the Redis URL must be a number, as in /0")
    return int(text)


# -- the Redis seam -------------------------------------------------------------

def fast_commands(protocol: type) -> type:
    """txredisapi's ``protocol`` with a faster encoding of commands (the
    same bytes): txredisapi encodes every word and every length through a
    chain of type tests, a fifth of a node's CPU per resumed session, most
    of it for the cluster hub's batches of many words."""

    class FastCommands(protocol):  # type: ignore[misc, valid-type]
        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                if type(arg) is not bytes:
                    arg = self._encode_value(arg)
                parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
            return b"".join(parts)

    FastCommands.__name__ = FastCommands.__qualname__ = protocol.__name__ + "WithFastCommands"
    return FastCommands


class TxRedis:
    """txredisapi's lazy connection pool (it reconnects with backoff), as
    the directory uses it.  Replies are bytes; the directory decodes them."""

    def __init__(self, address: RedisAddress, timeout: float = TIMEOUT, poolsize: int = 2) -> None:
        import txredisapi
        common = dict(dbid=address.db, poolsize=poolsize, reconnect=True, charset=None,
                      password=address.password, connectTimeout=timeout,
                      replyTimeout=timeout, convertNumbers=False)
        if address.path is not None:
            self.handler = txredisapi.lazyUnixConnectionPool(address.path, **common)
        else:
            self.handler = txredisapi.lazyConnectionPool(address.host, address.port,
                                                         username=address.username, **common)
        self._errors = (txredisapi.ConnectionError, txredisapi.ResponseError)
        # a lazy pool answers at once; the factory's "connected" Deferred is
        # for nobody, and a refused AUTH errbacks it (the outage is logged
        # by whoever calls, once): without this it is an "Unhandled error in
        # Deferred" whenever the garbage collector reaches it
        factory_connected = getattr(self.handler._factory, "deferred", None)
        if factory_connected is not None:
            factory_connected.addErrback(lambda failure: None)
        # (the connections are built in later turns, with this protocol)
        protocol = self.handler._factory.protocol
        if txredisapi.hiredis is None:
            # replies read in one pass, not one reactor turn per bulk string
            # (presence/store/resp.py)
            from presence.store.resp import fast_protocol
            protocol = fast_protocol()
        # and commands encoded in one pass
        self.handler._factory.protocol = fast_commands(protocol)

    def unavailable(self, error: BaseException) -> bool:
        """Whether ``error`` means Redis cannot serve now (connection lost,
        timed out, out of memory, read-only replica, loading, bad password),
        as opposed to a mistake in a script, which is a bug to log."""
        if isinstance(error, self._errors[0]):
            return True
        return isinstance(error, self._errors[1]) and str(error).startswith(UNAVAILABLE)

    def ready(self) -> bool:
        return self.handler._factory.size > 0

    def when_ready(self) -> defer.Deferred:
        """Fires once a connection is up, in a later reactor turn than the
        pool's own bookkeeping of it (never cancelled: it only peeks)."""
        from twisted.internet import reactor
        return self.handler._factory.connectionQueue.peek().addCallback(
            lambda conn: task.deferLater(reactor, 0, lambda: conn))

    def eval(self, script: bytes, keys: Sequence[bytes], args: Sequence[bytes]) -> defer.Deferred:
        return self.handler.eval(script, list(keys), list(args))

    def close(self) -> defer.Deferred:
        return self.handler.disconnect()


# -- keys and scripts -------------------------------------------------------------

class Keys:
    """The names of the keys, all under ``prefix`` (see docs/cluster.md)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = _b(prefix)

    def __call__(self, kind: str, name: Any = None) -> bytes:
        key = self.prefix + kind.encode("ascii")
        return key if name is None else key + b":" + _b(name)


#: keep one message (the script of store_message and spill); returns its id,
#: the first id for a repeated msgid, or -1 when the quota refuses it
_KEEP = b"""
local function keep(p, r, s, text, now, msgid, qn, qb)
  local ids = p .. 'msgids'
  if msgid ~= '' then
    local id = redis.call('HGET', ids, string.sub(msgid, 2))
    if id then return tonumber(id) end
  end
  local size = string.len(text)
  local usage = p .. 'usage:' .. r
  if qn ~= '' then
    local u = redis.call('HMGET', usage, 'unread', 'bytes')
    if tonumber(u[1] or '0') >= tonumber(qn) or tonumber(u[2] or '0') + size > tonumber(qb) then
      return -1
    end
  end
  local id = redis.call('INCR', p .. 'nextid')
  redis.call('HSET', p .. 'msg:' .. id, 'to', r, 'from', s, 'text', text, 'time', now, 'read', '0')
  redis.call('ZADD', p .. 'box:' .. r, id, id)
  redis.call('HINCRBY', usage, 'unread', 1)
  redis.call('HINCRBY', usage, 'bytes', size)
  if msgid ~= '' then redis.call('HSET', ids, string.sub(msgid, 2), id) end
  return id
end
"""

SCRIPTS: Dict[str, bytes] = {
    # KEYS name:<n> user:<n> [wireless:<number>]; ARGV created name field value...
    "create_user": b"""
if not redis.call('SET', KEYS[1], 'u', 'NX') then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
if KEYS[3] then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2]) end
return 1
""",
    # KEYS name:<alias> aliases:<user>; ARGV user alias
    "add_alias": b"""
if not redis.call('SET', KEYS[1], 'a' .. ARGV[1], 'NX') then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
return 1
""",
    # KEYS name:<g> group:<g> members:<g> groups:<owner>; ARGV owner created pw? name
    "create_group": b"""
if not redis.call('SET', KEYS[1], 'g', 'NX') then return 0 end
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'created', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'password_hash', string.sub(ARGV[3], 2)) end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[4])
return 1
""",
    # KEYS user:<n>; ARGV now
    "record_login": b"""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local before = redis.call('HMGET', KEYS[1], 'last_login', 'last_seen', 'hits_offline')
redis.call('HSET', KEYS[1], 'last_login', ARGV[1], 'hits_offline', '0')
return before
""",
    # KEYS user:<n>; ARGV field value
    "set_if_user": b"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""",
    # KEYS user:<n>...; every existing user gets one hit per mention
    "hits": b"""
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], 'hits_offline', 1) end
end
return #KEYS
""",
    # KEYS user:<n>; ARGV prefix name email? phone? wireless?
    "update_profile": b"""
local k = KEYS[1]
if redis.call('EXISTS', k) == 0 then return 0 end
local p, name = ARGV[1], ARGV[2]
local old = redis.call('HGET', k, 'wireless')
local fields = {'email', 'phone', 'wireless'}
for i = 1, 3 do
  local v = ARGV[2 + i]
  if v == '' then redis.call('HDEL', k, fields[i])
  else redis.call('HSET', k, fields[i], string.sub(v, 2)) end
end
if old then redis.call('ZREM', p .. 'wireless:' .. old, name) end
if ARGV[5] ~= '' then
  redis.call('ZADD', p .. 'wireless:' .. string.sub(ARGV[5], 2), redis.call('HGET', k, 'created'), name)
end
return 1
""",
    # KEYS set1 set2; ARGV member1 member2: both added, 1 if member1 was new
    "pair_add": b"""
local n = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return n
""",
    "pair_remove": b"""
local n = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return n
""",
    # KEYS set1 set2: both, as two arrays
    "two_sets": b"""
return {redis.call('SMEMBERS', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
""",
    # KEYS name:<n> user:<n> group:<n>: what the name is, and its hash
    "resolve": b"""
return redis.call('GET', KEYS[1])
""",
    # KEYS user:<n> (or group:<n>)
    "hash": b"""
return redis.call('HGETALL', KEYS[1])
""",
    # KEYS extra:<user>; ARGV key, value (absent: remove the key)
    "extra": b"""
if ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
""",
    # KEYS wireless:<number>
    "first": b"""
return redis.call('ZRANGE', KEYS[1], 0, 0)
""",
    # KEYS group:<n>; ARGV 1|0: the group's presence on demand, if it exists
    "set_on_demand": b"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'on_demand', '1')
else redis.call('HDEL', KEYS[1], 'on_demand') end
return 1
""",
    # KEYS set; ARGV member: 1 if it is in the set (O(1))
    "is_member": b"""
return redis.call('SISMEMBER', KEYS[1], ARGV[1])
""",
    # KEYS set
    "members": b"""
return redis.call('SMEMBERS', KEYS[1])
""",
    # ARGV prefix recipient sender text now msgid? quota_messages quota_bytes
    "store_message": _KEEP + b"""
return keep(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
""",
    # ARGV prefix, then recipient sender text now msgid? per row
    "spill": _KEEP + b"""
for i = 2, #ARGV, 5 do
  keep(ARGV[1], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], '', '')
end
return (#ARGV - 1) / 5
""",
    # KEYS usage:<r>
    "usage": b"""
return redis.call('HMGET', KEYS[1], 'unread', 'bytes')
""",
    # KEYS box:<r>; ARGV prefix stop
    "messages": b"""
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]))) do
  local m = redis.call('HMGET', ARGV[1] .. 'msg:' .. id, 'from', 'text', 'time', 'read')
  out[#out + 1] = {id, m[1], m[2], m[3], m[4]}
end
return out
""",
    # KEYS msg:<id> usage:<r>; ARGV recipient
    "mark_read": b"""
local m = redis.call('HMGET', KEYS[1], 'to', 'read', 'text')
if m[1] ~= ARGV[1] then return 0 end
if m[2] == '0' then
  redis.call('HSET', KEYS[1], 'read', '1')
  redis.call('HINCRBY', KEYS[2], 'unread', -1)
  redis.call('HINCRBY', KEYS[2], 'bytes', -string.len(m[3]))
end
return 1
""",
    # KEYS resume:<hash> resumes:<user>; ARGV prefix hash user device now
    "store_resume": b"""
local old = redis.call('HGET', KEYS[1], 'user')
if old and old ~= ARGV[3] then redis.call('ZREM', ARGV[1] .. 'resumes:' .. old, ARGV[2]) end
redis.call('HSET', KEYS[1], 'user', ARGV[3], 'device', ARGV[4], 'created', ARGV[5])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then
  for _, h in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    redis.call('DEL', ARGV[1] .. 'resume:' .. h)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
return 1
""",
    # KEYS resume:<hash>; ARGV not_before ('' for none).  An expired token
    # is forgotten (its entry in resumes:<user> too)
    "resume_user": b"""
local v = redis.call('HMGET', KEYS[1], 'user', 'created')
if not v[1] then return false end
if ARGV[1] ~= '' and (tonumber(v[2]) or 0) < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', ARGV[2] .. 'resumes:' .. v[1], ARGV[3])
  return false
end
return v[1]
""",
    # KEYS resume:<hash>; ARGV not_before? prefix hash now: resume_user, then
    # (user, 1) if locked, else (user, 0, record_login's answer, groups, listed),
    # as one JSON string (one bulk reply: txredisapi parses a nested reply a
    # line at a time, in Python)
    "resume_login": b"""
local v = redis.call('HMGET', KEYS[1], 'user', 'created')
if not v[1] then return false end
local p, u = ARGV[2], v[1]
if ARGV[1] ~= '' and (tonumber(v[2]) or 0) < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', p .. 'resumes:' .. u, ARGV[3])
  return false
end
local user = p .. 'user:' .. u
if redis.call('HEXISTS', user, 'locked') == 1 then return cjson.encode({u, 1}) end
local before = false
if redis.call('EXISTS', user) == 1 then
  before = redis.call('HMGET', user, 'last_login', 'last_seen', 'hits_offline')
  redis.call('HSET', user, 'last_login', ARGV[4], 'hits_offline', '0')
end
return cjson.encode({u, 0, before, redis.call('SMEMBERS', p .. 'groups:' .. u),
                     redis.call('SMEMBERS', p .. 'listed:' .. u)})
""",
    # KEYS resumes:<user>; ARGV prefix hash?
    "revoke_resume": b"""
local p = ARGV[1]
if ARGV[2] ~= '' then
  local h = string.sub(ARGV[2], 2)
  if redis.call('ZREM', KEYS[1], h) == 0 then return 0 end
  redis.call('DEL', p .. 'resume:' .. h)
  return 1
end
local all = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, h in ipairs(all) do redis.call('DEL', p .. 'resume:' .. h) end
redis.call('DEL', KEYS[1])
return #all
""",
    # KEYS user:<u>; ARGV hash
    # KEYS box:<r> usage:<r>; ARGV prefix sender? ('' for every sender)
    "purge": b"""
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. 'msg:' .. id
  local m = redis.call('HMGET', key, 'from', 'read', 'text')
  if m[2] == '0' and (ARGV[2] == '' or m[1] == string.sub(ARGV[2], 2)) then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], id)
    redis.call('HINCRBY', KEYS[2], 'unread', -1)
    redis.call('HINCRBY', KEYS[2], 'bytes', -string.len(m[3]))
    n = n + 1
  end
end
return n
""",
    # KEYS user:<u>; ARGV '1' to lock, '0' to unlock
    "set_locked": b"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'locked', '1')
else redis.call('HDEL', KEYS[1], 'locked') end
return 1
""",
    # KEYS user:<u>
    "is_locked": b"""
return redis.call('HEXISTS', KEYS[1], 'locked')
""",
    # KEYS user:<u>, sipha1:<u>; ARGV the hash (the old password's HA1s go)
    "set_password": b"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'password_hash', ARGV[1])
redis.call('DEL', KEYS[2])
return 1
""",
    # KEYS user:<u>, sipha1:<u>; ARGV realm, then algorithm, HA1 pairs
    "set_sip_ha1": b"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'realm', ARGV[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], 'ha1:' .. ARGV[i], ARGV[i + 1]) end
return 1
""",
    # KEYS sipha1:<u>; ARGV realm, algorithm
    "sip_ha1": b"""
local kept = redis.call('HMGET', KEYS[1], 'realm', 'ha1:' .. ARGV[2])
if kept[1] ~= ARGV[1] then return false end
return kept[2]
""",
}


# -- batches ------------------------------------------------------------------------

class _Batch:
    """Items sent ``write(items)`` (a Deferred) in calls of at most ``BATCH``,
    one call in flight at a time; items added meanwhile wait for the next.
    :meth:`add` fires once its item is written; :meth:`settled` once every
    item added so far is written (or failed, or waits for Redis to return).

    With ``keep`` (spills: nobody waits for them), a call that fails because
    Redis is unavailable loses nothing: its items go back to the front, in
    order, and are sent again ``RETRY`` seconds later (or at once when
    someone asks :meth:`settled`), until Redis is back or :meth:`abandon`
    is called at stop.  Otherwise (hits: a page waits for its hit, and must
    not wait for Redis to return) and for any other failure the items fail
    (a failure that is not an outage is logged)."""

    log = Logger()

    def __init__(self, write: Callable[[List[Any]], defer.Deferred], what: str,
                 reactor: Callable[[], Any], keep: bool = False) -> None:
        self.write = write
        self.keep = keep
        self.what = what
        self.reactor = reactor
        self.items: List[Tuple[Any, defer.Deferred]] = []
        self.busy = False
        self._idle: List[defer.Deferred] = []
        #: the delayed call of the next try while Redis is unavailable
        self._retry: Any = None

    def add(self, item: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.items.append((item, d))
        if not self.busy and self._retry is None:
            self._next()
        return d

    def settled(self) -> defer.Deferred:
        if self._retry is not None:
            # try now: if Redis is back, the read after this sees the items;
            # if not, the try fails at once and the read fails as fast
            self._retry.cancel()
            self._retry = None
            self._next()
        if not self.busy:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def _next(self, _: Any = None) -> None:
        if not self.items or self._retry is not None:
            self.busy = False
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        self.busy = True
        batch, self.items = self.items[:BATCH], self.items[BATCH:]
        d = defer.maybeDeferred(self.write, [item for item, _ in batch])
        d.addCallbacks(self._written, self._failed, callbackArgs=(batch,),
                       errbackArgs=(batch,))
        d.addCallback(self._next)

    @staticmethod
    def _written(result: Any, batch: List[Tuple[Any, defer.Deferred]]) -> None:
        for _, d in batch:
            d.callback(None)

    def _failed(self, failure: Failure, batch: List[Tuple[Any, defer.Deferred]]) -> None:
        outage = failure.check(StoreUnavailable)    # logged once by the directory
        if outage and self.keep:
            self.items[:0] = batch
            self._retry = self.reactor().callLater(RETRY, self._again)
            return
        if not outage:
            self.log.warn("writing {count} {what} to Redis failed: {why}", count=len(batch),
                          what=self.what, why=failure.getErrorMessage())
        for _, d in batch:
            d.errback(failure)

    def _again(self) -> None:
        self._retry = None
        if not self.busy:
            self._next()

    def abandon(self) -> int:
        """At stop: give up on what still waits (Redis is down); how many."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        items, self.items = self.items, []
        for _, d in items:
            d.errback(StoreUnavailable())
        return len(items)


# -- the directory ------------------------------------------------------------------

def _flat(pairs: Sequence[bytes]) -> Dict[str, bytes]:
    return {pairs[i].decode("ascii"): pairs[i + 1] for i in range(0, len(pairs), 2)}


@implementer(IDirectory)
class RedisDirectory:
    log = Logger()

    def __init__(self, client: Any = None, reactor: Any = None, prefix: str = PREFIX,
                 timeout: float = TIMEOUT, address: Optional[RedisAddress] = None,
                 connect: Optional[Callable[[], Any]] = None) -> None:
        """``client``: the Redis seam (or None and ``connect``, a callable
        that makes one, called at :meth:`start`); ``reactor`` for timeouts."""
        self.client = client
        self.reactor = reactor
        self.keys = Keys(prefix)
        self.prefix = self.keys.prefix
        self.timeout = timeout
        self.where = address.where if address is not None else "redis"
        self._connect = connect
        #: when the current outage started (reactor seconds), or None
        self.down_since: Optional[float] = None
        self._spills = _Batch(self._write_spills, "chat messages that left a mailbox unread",
                              lambda: self.reactor, keep=True)
        self._hits = _Batch(self._write_hits, "page hits", lambda: self.reactor)

    # -- lifecycle ------------------------------------------------------------

    def start(self, reactor: Any) -> None:
        if self.reactor is None:
            self.reactor = reactor
        if self.client is None and self._connect is not None:
            self.client = self._connect()

    def stop(self) -> defer.Deferred:
        """Send what waits in the batches, then close the connections; the
        Deferred fires when that is done (or failed, logged).  With Redis
        down, what cannot be sent within the bound is logged as lost."""
        d = defer.gatherResults([self._spills.settled(), self._hits.settled()])

        def close(_: Any) -> Any:
            for batch in (self._spills, self._hits):
                lost = batch.abandon()
                if lost:
                    self.log.error("stopping with the directory in Redis at {where}"
                                   " unavailable: {count} {what} are lost",
                                   where=self.where, count=lost, what=batch.what)
            client, self.client = self.client, None
            if client is not None:
                return client.close()
        return d.addCallback(close).addErrback(
            lambda f: self.log.warn("closing the directory in Redis: {why}",
                                    why=f.getErrorMessage()))

    # -- every call -------------------------------------------------------------

    def _eval(self, name: str, keys: Sequence[bytes] = (), args: Sequence[Any] = ()) -> defer.Deferred:
        """Run script ``name``; StoreUnavailable within ``timeout`` if Redis
        cannot be reached."""
        client = self.client
        if client is None:
            raise RuntimeError("the directory is not started")
        script, argv = SCRIPTS[name], [_b(a) for a in args]
        if client.ready():
            d = self._bounded(lambda late: client.eval(script, keys, argv))
        elif self.down_since is not None:
            d = defer.fail(StoreUnavailable())          # known down: at once
        else:
            # no connection yet (just started, or it just dropped): wait for
            # one within the same bound, and send nothing once it has passed
            # (the caller was told it failed: it must not happen later)
            def when_up(late: Callable[[], bool]) -> defer.Deferred:
                def send(_: Any) -> defer.Deferred:
                    if late():
                        return defer.fail(StoreUnavailable())
                    return client.eval(script, keys, argv)
                return client.when_ready().addCallback(send)
            d = self._bounded(when_up)
        return d.addCallbacks(self._up, self._unavailable)

    def _bounded(self, call: Callable[[Callable[[], bool]], defer.Deferred]) -> defer.Deferred:
        """``call(late)``'s result, or StoreUnavailable after ``timeout``
        seconds (``late()`` says whether they have passed); a late result
        is dropped, never cancelled (txredisapi's reply queue must see every
        reply)."""
        out: defer.Deferred = defer.Deferred()

        def late() -> None:
            if not out.called:
                out.errback(StoreUnavailable())

        timer = self.reactor.callLater(self.timeout, late)

        def settle(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if not out.called:
                out.callback(result)            # a Failure errbacks

        defer.maybeDeferred(call, lambda: out.called).addBoth(settle)
        return out

    def _up(self, result: Any) -> Any:
        if self.down_since is not None:
            seconds = self.reactor.seconds() - self.down_since
            self.down_since = None
            self.log.info("the directory in Redis at {where} is reachable again"
                          " (after {seconds:.1f} s)", where=self.where, seconds=seconds)
        return result

    def _unavailable(self, failure: Failure) -> Failure:
        if not (failure.check(StoreUnavailable, ConnectionError)
                or (self.client is not None and self.client.unavailable(failure.value))):
            return failure
        if self.down_since is None:
            self.down_since = self.reactor.seconds()
            why = failure.getErrorMessage() if not failure.check(StoreUnavailable) else (
                f"no answer within {self.timeout:g} s")
            self.log.error("the directory in Redis at {where} is unavailable ({why});"
                           " requests that need it get 503 until it is back",
                           where=self.where, why=why)
        if failure.check(StoreUnavailable):
            return failure
        return Failure(StoreUnavailable())

    # -- names ----------------------------------------------------------------

    def resolve(self, name: str) -> defer.Deferred:
        def kind(value: Optional[bytes]) -> Optional[tuple]:
            if value is None:
                return None
            if value == b"u":
                return ("user", name)
            if value == b"g":
                return ("group", name)
            return ("user", _s(value[1:]))
        return self._eval("resolve", [self.keys("name", name)]).addCallback(kind)

    # -- users ----------------------------------------------------------------

    def create_user(self, name: str, password_hash: str, email: Optional[str] = None,
                    phone: Optional[str] = None, wireless: Optional[str] = None,
                    now: float = 0.0) -> defer.Deferred:
        keys = [self.keys("name", name), self.keys("user", name)]
        if wireless is not None:
            keys.append(self.keys("wireless", wireless))
        fields: List[Any] = ["password_hash", password_hash, "created", float(now),
                             "hits_offline", 0]
        for what, value in (("email", email), ("phone", phone), ("wireless", wireless)):
            if value is not None:
                fields += [what, value]
        d = self._eval("create_user", keys, [float(now), name] + fields)
        return d.addCallback(self._created, name)

    @staticmethod
    def _created(made: int, name: str) -> str:
        if not made:
            raise NameTaken(name)
        return name

    def get_user(self, name: str) -> defer.Deferred:
        def user(pairs: List[bytes]) -> Optional[dict]:
            if not pairs:
                return None
            h = _flat(pairs)
            return {"name": name, "password_hash": _s(h["password_hash"]),
                    "email": _s(h.get("email")), "phone": _s(h.get("phone")),
                    "wireless": _s(h.get("wireless")), "created": float(h["created"]),
                    "last_login": _f(h.get("last_login")), "last_seen": _f(h.get("last_seen")),
                    "hits_offline": int(h.get("hits_offline", b"0"))}
        return self._eval("hash", [self.keys("user", name)]).addCallback(user)

    def user_by_wireless(self, number: str) -> defer.Deferred:
        d = self._eval("first", [self.keys("wireless", number)])
        return d.addCallback(lambda names: _s(names[0]) if names else None)

    def add_alias(self, user: str, alias: str) -> defer.Deferred:
        d = self._eval("add_alias", [self.keys("name", alias), self.keys("aliases", user)],
                       [user, alias])
        return d.addCallback(self._created, alias)

    def aliases(self, user: str) -> defer.Deferred:
        return self._sorted("aliases", user)

    def _sorted(self, kind: str, name: str) -> defer.Deferred:
        d = self._eval("members", [self.keys(kind, name)])
        return d.addCallback(lambda names: sorted(_s(n) for n in names))

    def record_login(self, user: str, now: float) -> defer.Deferred:
        d = self._eval("record_login", [self.keys("user", user)], [float(now)])
        return d.addCallback(_before)

    def record_offline(self, user: str, now: float) -> defer.Deferred:
        return self._eval("set_if_user", [self.keys("user", user)], ["last_seen", float(now)])

    def add_hit(self, user: str) -> defer.Deferred:
        return self._hits.add(user)

    def _write_hits(self, names: List[str]) -> defer.Deferred:
        return self._eval("hits", [self.keys("user", n) for n in names])

    def update_profile(self, user: str, email: Optional[str] = None,
                       phone: Optional[str] = None,
                       wireless: Optional[str] = None) -> defer.Deferred:
        d = self._eval("update_profile", [self.keys("user", user)],
                       [self.prefix, user, _opt(email), _opt(phone), _opt(wireless)])
        return d.addCallback(lambda n: n == 1)

    # -- groups and address books --------------------------------------------------

    def create_group(self, name: str, owner: str, password_hash: Optional[str] = None,
                     now: float = 0.0) -> defer.Deferred:
        d = self._eval("create_group",
                       [self.keys("name", name), self.keys("group", name),
                        self.keys("members", name), self.keys("groups", owner)],
                       [owner, float(now), _opt(password_hash), name])
        return d.addCallback(self._created, name)

    def get_group(self, name: str) -> defer.Deferred:
        def group(pairs: List[bytes]) -> Optional[dict]:
            if not pairs:
                return None
            h = _flat(pairs)
            return {"name": name, "owner": _s(h["owner"]),
                    "password_hash": _s(h.get("password_hash")), "created": float(h["created"]),
                    "on_demand": h.get("on_demand") == b"1"}
        return self._eval("hash", [self.keys("group", name)]).addCallback(group)

    def set_on_demand(self, group: str, on_demand: bool) -> defer.Deferred:
        d = self._eval("set_on_demand", [self.keys("group", group)], ["1" if on_demand else "0"])
        return d.addCallback(lambda _: None)

    def _pair(self, script: str, kind1: str, name1: str, kind2: str, name2: str) -> defer.Deferred:
        """``name2`` in set ``kind1:name1`` and ``name1`` in ``kind2:name2``
        (a relation and its index), in one script; True if it changed."""
        d = self._eval(script, [self.keys(kind1, name1), self.keys(kind2, name2)], [name2, name1])
        return d.addCallback(lambda n: n == 1)

    def join(self, group: str, user: str) -> defer.Deferred:
        return self._pair("pair_add", "members", group, "groups", user)

    def leave(self, group: str, user: str) -> defer.Deferred:
        return self._pair("pair_remove", "members", group, "groups", user)

    def members(self, group: str) -> defer.Deferred:
        return self._sorted("members", group)

    def is_member(self, group: str, user: str) -> defer.Deferred:
        return self._eval("is_member", [self.keys("members", group)], [user]).addCallback(bool)

    def memberships(self, user: str) -> defer.Deferred:
        d = self._eval("two_sets", [self.keys("groups", user), self.keys("listed", user)])
        return d.addCallback(lambda sets: (sorted(_s(g) for g in sets[0]),
                                           sorted(_s(o) for o in sets[1])))

    def add_contact(self, owner: str, contact: str) -> defer.Deferred:
        return self._pair("pair_add", "contacts", owner, "listed", contact)

    def remove_contact(self, owner: str, contact: str) -> defer.Deferred:
        return self._pair("pair_remove", "contacts", owner, "listed", contact)

    def has_contact(self, owner: str, contact: str) -> defer.Deferred:
        return self._eval("is_member", [self.keys("contacts", owner)], [contact]).addCallback(bool)

    def contacts(self, owner: str) -> defer.Deferred:
        return self._sorted("contacts", owner)

    # -- message boxes -------------------------------------------------------

    def store_message(self, recipient: str, sender: str, text: str, now: float,
                      msgid: Optional[str] = None,
                      quota: Optional[Tuple[int, int]] = None) -> defer.Deferred:
        limits = [b"", b""] if quota is None else [int(quota[0]), int(quota[1])]
        d = self._eval("store_message", [],
                       [self.prefix, recipient, sender, text, float(now), _opt(msgid)] + limits)

        def kept(ident: int) -> int:
            if ident < 0:
                raise BoxFull(recipient)
            return int(ident)
        return d.addCallback(kept)

    def spill(self, recipient: str, sender: str, text: str, now: float,
              msgid: Optional[str] = None) -> None:
        # the failure is logged by the batch; nobody waits for a spill
        self._spills.add((recipient, sender, text, float(now), _opt(msgid))).addErrback(
            lambda _: None)

    def _write_spills(self, rows: List[tuple]) -> defer.Deferred:
        args: List[Any] = [self.prefix]
        for row in rows:
            args.extend(row)
        return self._eval("spill", [], args)

    def box_usage(self, recipient: str) -> defer.Deferred:
        d = self._spills.settled()
        d.addCallback(lambda _: self._eval("usage", [self.keys("usage", recipient)]))
        return d.addCallback(lambda row: (int(row[0] or 0), int(row[1] or 0)))

    def messages(self, recipient: str, limit: int = 100) -> defer.Deferred:
        if limit == 0:
            return defer.succeed([])
        stop = -1 if limit < 0 else int(limit) - 1
        d = self._spills.settled()
        d.addCallback(lambda _: self._eval("messages", [self.keys("box", recipient)],
                                           [self.prefix, stop]))
        return d.addCallback(lambda rows: [
            {"id": int(r[0]), "from": _s(r[1]), "text": _s(r[2]), "time": float(r[3]),
             "read": r[4] == b"1"} for r in rows])

    def mark_read(self, recipient: str, ident: int) -> defer.Deferred:
        d = self._eval("mark_read", [self.keys("msg", int(ident)),
                                     self.keys("usage", recipient)], [recipient])
        return d.addCallback(lambda n: n == 1)

    def purge_messages(self, recipient: str, sender: Optional[str] = None) -> defer.Deferred:
        d = self._spills.settled()
        d.addCallback(lambda _: self._eval(
            "purge", [self.keys("box", recipient), self.keys("usage", recipient)],
            [self.prefix, _opt(sender)]))
        return d.addCallback(int)

    def set_locked(self, user: str, locked: bool) -> defer.Deferred:
        d = self._eval("set_locked", [self.keys("user", user)], ["1" if locked else "0"])
        return d.addCallback(lambda n: n == 1)

    def is_locked(self, user: str) -> defer.Deferred:
        return self._eval("is_locked", [self.keys("user", user)]).addCallback(lambda n: n == 1)

    def unread(self, recipient: str) -> defer.Deferred:
        return self.box_usage(recipient).addCallback(lambda usage: usage[0])

    # -- per-user settings ------------------------------------------------------

    def set_extra(self, user: str, key: str, value: Optional[str]) -> defer.Deferred:
        args = [key] if value is None else [key, value]
        d = self._eval("extra", [self.keys("extra", user)], args)
        return d.addCallback(lambda _: None)

    def extras(self, user: str) -> defer.Deferred:
        d = self._eval("hash", [self.keys("extra", user)])
        return d.addCallback(lambda pairs: {k: _s(v) for k, v in _flat(pairs).items()})

    # -- resume tokens -------------------------------------------------------

    def store_resume(self, token_hash: str, user: str, device: str, now: float) -> defer.Deferred:
        d = self._eval("store_resume", [self.keys("resume", token_hash), self.keys("resumes", user),
                                        self.keys("resume_seq")],
                       [self.prefix, token_hash, user, device, float(now), RESUME_PER_USER])
        return d.addCallback(lambda _: None)

    def resume_user(self, token_hash: str,
                    not_before: Optional[float] = None) -> defer.Deferred:
        return self._eval("resume_user", [self.keys("resume", token_hash)],
                          ["" if not_before is None else repr(float(not_before)),
                           self.prefix, token_hash]).addCallback(_s)

    def set_password(self, user: str, password_hash: str) -> defer.Deferred:
        d = self._eval("set_password", [self.keys("user", user), self.keys("sipha1", user)],
                       [password_hash])
        return d.addCallback(lambda n: n == 1)

    def set_sip_ha1(self, user: str, realm: str, ha1s: dict) -> defer.Deferred:
        args: List[Any] = [realm]
        for algorithm, value in sorted(ha1s.items()):
            args += [algorithm, value]
        d = self._eval("set_sip_ha1", [self.keys("user", user), self.keys("sipha1", user)], args)
        return d.addCallback(lambda n: n == 1)

    def sip_ha1(self, user: str, realm: str, algorithm: str) -> defer.Deferred:
        d = self._eval("sip_ha1", [self.keys("sipha1", user)], [realm, algorithm])
        return d.addCallback(lambda v: _s(v) if v else None)

    def resume_login(self, token_hash: str, not_before: Optional[float],
                     now: float) -> defer.Deferred:
        """One script, one round trip (see IDirectory.resume_login)."""
        def found(reply: Any) -> Optional[Resumed]:
            if not reply:
                return None
            user, locked, *rest = json.loads(_s(reply))
            if locked:
                return Resumed(user, True, {}, [], [])
            before, groups, owners = rest    # (Lua's nil is false; {} an empty set)
            return Resumed(user, False, _before(before and [v or None for v in before]),
                           sorted(groups), sorted(owners))
        d = self._eval("resume_login", [self.keys("resume", token_hash)],
                       ["" if not_before is None else repr(float(not_before)),
                        self.prefix, token_hash, float(now)])
        return d.addCallback(found)

    def revoke_resume(self, user: str, token_hash: Optional[str] = None) -> defer.Deferred:
        return self._eval("revoke_resume", [self.keys("resumes", user)],
                          [self.prefix, _opt(token_hash)]).addCallback(int)


def open_redis(url: str, reactor: Any = None, timeout: float = TIMEOUT,
               connect: bool = True) -> RedisDirectory:
    """The directory in the Redis at ``url``; it connects at :meth:`start`
    (or at once with ``connect=True`` and a reactor)."""
    address = parse_url(url)
    store = RedisDirectory(reactor=reactor, prefix=address.prefix, timeout=timeout,
                           address=address, connect=lambda: TxRedis(address, timeout))
    if connect and reactor is not None:
        store.start(reactor)
    return store


__all__: List[str] = ["RedisDirectory", "RedisAddress", "Keys", "TxRedis", "parse_url",
                      "open_redis", "SCRIPTS"]
