"""The hub of a host box in a cluster: :class:`ClusterHub`.

A :class:`~presence.core.hub.Hub` (this box's sessions, mailboxes and held
heartbeats stay local) that shares the rest through Redis (the picture, the
keys and the channels are in ``docs/cluster.md``):

- **the box** is registered under ``node:<box>`` (its session count, with a
  TTL refreshed every ``REFRESH`` seconds) and in the set ``nodes``;
- **the global directory of sessions**: ``sessions`` (session ID -> JSON of
  user, box, address, groups), ``onbox:<box>`` (the box's session IDs),
  ``where:<user>`` (session ID -> box) and ``online:<box>`` (the users online
  there).  Every box also keeps a local view of it, fed by the events on the
  channel ``all``, so that ``is_online``, ``knows`` and ``session`` stay
  synchronous;
- **routing**: a frame for a user goes to the local sessions and to the
  channel ``to:<box>`` of each other box holding one of the user's sessions;
  a box that finds no session of the user any more keeps a chat frame in the
  message box (never lost);
- **placement**: a login opens its session on the live box with the fewest
  sessions.  The node that answers the login writes the session record (in
  the same script that announces it); the chosen box opens the local session
  when the announcement arrives, or when the heartbeat comes first and the
  record says the session is its own (:meth:`claim`);
- **dead boxes**: every refresh looks for boxes in ``nodes`` whose
  ``node:<box>`` key has expired; the first node to see one takes its
  sessions out of the directory in one script and announces it, and every
  box marks the dead box's users offline for its watchers unless they have
  sessions elsewhere.

Every publish and directory write goes through one Redis connection, so
frames from this box reach another box in the order they were sent.
"""

from __future__ import annotations

import json
import re
from collections import deque
from sys import intern
from typing import (Any, Callable, Deque, Dict, FrozenSet, List, Optional, Sequence, Set,
                    Tuple)

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from presence.cluster.limits import TAKE_FUNCTION
from presence.core.counters import PAUSE_BUCKETS, Histogram
from presence.core.frames import Frame
from presence.core.hub import SEQ_MEMORY, Hub, HubConfig, IHub
from presence.core.mailbox import Mailbox
from presence.core.ratelimit import address_key
from presence.core.states import AVAILABLE, OFFLINE_STATE, STATES, combine, state_value
from presence.core.tables import NO_GROUPS, Session, UserState, group_set
from presence.store.interface import StoreUnavailable

#: seconds between refreshes of this box's key (and looks for dead boxes)
REFRESH = 1.0
#: refreshes between two trims of the pending chats (``settle``)
SETTLE_EVERY = 3
#: seconds a box's key lives without a refresh: a box silent this long is dead
BOX_TTL = 10
#: seconds without a refresh after which a box gets no new sessions (it may
#: be dead: a reconnect storm must not be placed on it until it is buried)
STALE = 3.0
#: session IDs as the service makes them (``secrets.token_urlsafe``); a
#: heartbeat naming anything else is not looked up
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
#: look-ups of unknown session IDs in flight at most (see ClusterHub.claim)
MAX_CLAIMS = 64
#: seconds a change of groups is remembered, to correct the groups of a
#: session or presence event read before it (see ClusterHub.fresh_groups)
RECENT_CHANGES = 30.0
#: changes of groups remembered at most
MAX_CHANGES = 20000
#: seconds after which a pending chat that no local mailbox holds any more
#: (it was spilled to the message box) leaves the pending hash
SETTLED = 30.0

# What this box shares in one reactor turn, in order, as one script: the
# writes to the directory (announcing and ending sessions, presence and
# states, pending chats and their acknowledgements, devices), then one
# PUBLISH per channel carrying the turn's events for it as a JSON list.
# ARGV: per command its number of words, then the words.  One call, one
# reply and one message per channel per turn, however many chats and logins
# the turn had.
#
# Two words are not Redis commands: ``BOUND sessions where:<user> sid bound``
# (after the writes that record session ``sid``) counts the user's sessions
# over every box and answers the oldest past ``bound`` (never ``sid``) as
# ``sid, box`` pairs; the caller ends them (``msg bye replaced``).  ``TAKE``
# spends the shared chat limits (presence/cluster/limits.py).  The script
# answers one answer per BOUND or TAKE, in order.
BATCH = TAKE_FUNCTION + b"""
local function oldest(sessions, where, sid, bound)
  if bound <= 0 or redis.call('HLEN', where) <= bound then return {} end
  local sids = redis.call('HKEYS', where)
  local records = redis.call('HMGET', sessions, unpack(sids))
  local others = {}
  for i, other in ipairs(sids) do
    if other ~= sid then
      local t = 0
      if records[i] then t = tonumber(cjson.decode(records[i])['t']) or 0 end
      table.insert(others, {t, other})
    end
  end
  table.sort(others, function(x, y) return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2]) end)
  local out = {}
  for i = 1, math.min(#sids - bound, #others) do
    table.insert(out, others[i][2])
    table.insert(out, redis.call('HGET', where, others[i][2]))
  end
  return out
end
local i, n = 1, #ARGV
local answers = {}
while i <= n do
  local words = tonumber(ARGV[i])
  if ARGV[i + 1] == 'BOUND' then
    table.insert(answers, oldest(ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5])))
  elseif ARGV[i + 1] == 'TAKE' then
    table.insert(answers, take(tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), i + 4))
  else
    redis.call(unpack(ARGV, i + 1, i + words))
  end
  i = i + words + 1
end
return answers
"""
# The pending chats written at or before ARGV[1] (KEYS pending:<box> and
# its time index pendt:<box>, a sorted set of the fields by the time they
# were written; ARGV old, at most how many, now), as HGETALL answers: what
# settle may trim.  It reads the index, not the hash (most of the hash is
# chats still unacknowledged in a mailbox); each one answered is given
# ``now`` as its time, so one still held is read again SETTLED seconds
# later, not at every settle; an index entry without its chat goes.
OLD_PENDING = b"""
local fields = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0,
                          tonumber(ARGV[2]))
local out = {}
for _, field in ipairs(fields) do
  local value = redis.call('HGET', KEYS[1], field)
  if value then
    table.insert(out, field)
    table.insert(out, value)
    redis.call('ZADD', KEYS[2], ARGV[3], field)
  else
    redis.call('ZREM', KEYS[2], field)
  end
end
return out
"""
#: old pending chats one settle reads at most
SETTLE_AT_ONCE = 1000
#: commands in one batch at most; past it the batch goes out at once
BATCH_MAX = 1000
#: session IDs in one command forgetting devices at most
DEVICES_AT_ONCE = 1000

# Remember a chat's seq for its session (KEYS seqs:<sid>; ARGV seq, answer,
# bound, ttl): past the bound the oldest half of the memory is not kept
# (the hash starts again), as one node keeps SEQ_MEMORY
SEQ = b"""
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

# Refresh this box (KEYS node:<me>, nodes; ARGV me, sessions, ttl, node
# prefix): the live boxes, their counts and the milliseconds left of their
# keys (how long ago each refreshed, on Redis's clock), and the boxes whose
# key is gone
REGISTER = b"""
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('SADD', KEYS[2], ARGV[1])
local out = {}
for _, box in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local count = redis.call('GET', ARGV[4] .. box)
  table.insert(out, box)
  table.insert(out, count or '')
  table.insert(out, count and redis.call('PTTL', ARGV[4] .. box) or -2)
end
return out
"""

# Take a box out of the directory (KEYS nodes, onbox:<box>, online:<box>,
# sessions, node:<box>, all, pending:<box>, states:<box>, pendt:<box>; ARGV
# box, where-prefix, alive(1: a clean stop)).  Only the caller that removes
# the box from ``nodes`` does the work, so two nodes noticing one death at
# once announce it once.  Returns the session records taken out and the box's pending
# chats (which the caller keeps in the message boxes).
BURY = b"""
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[5]) == 1 then return {{}, {}} end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return {{}, {}} end
local pending = redis.call('HVALS', KEYS[7])
redis.call('DEL', KEYS[7])
redis.call('DEL', KEYS[5])
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local record = redis.call('HGET', KEYS[4], sid)
  if record then
    table.insert(out, record)
    local user = cjson.decode(record)['u']
    redis.call('HDEL', ARGV[2] .. user, sid)
    redis.call('HDEL', KEYS[4], sid)
  end
end
redis.call('DEL', KEYS[2], KEYS[3])
if KEYS[8] then redis.call('DEL', KEYS[8]) end
if KEYS[9] then redis.call('DEL', KEYS[9]) end
redis.call('PUBLISH', KEYS[6], cjson.encode({e='dead', b=ARGV[1]}))
return {out, pending}
"""

# The view at start, read in pages so that no reply is large (a cluster of
# 100,000 sessions is 20 MB of records; one reply of it took longer than the
# timeout of a call): a page of session records (KEYS sessions; ARGV cursor,
# count), the boxes (KEYS nodes), the users online on a box (KEYS online:<box>),
# the states of the users online on a box (KEYS states:<box>: user -> JSON of
# [state, text, since])
SESSIONS_PAGE = b"return redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])"
BOXES = b"return redis.call('SMEMBERS', KEYS[1])"
ONLINE_ON = b"return redis.call('SMEMBERS', KEYS[1]) -- online"
STATES_ON = b"return redis.call('HGETALL', KEYS[1]) -- states"
#: session records asked for in one page of the view
LOAD_PAGE = 2000
#: the names of the states, to keep the shared constants in the view (not
#: each event's copy)
_STATE_NAMES = {state: state for state in STATES}


def _pending_field(user: str, frame: Frame) -> str:
    """The field of a chat in a pending hash: recipient and msgid."""
    return f"{user} {frame.args[1]}"


def encode_frame(frame: Frame) -> list:
    return [frame.kind, list(frame.args), frame.payload]


def decode_frame(data: Sequence[Any]) -> Frame:
    kind, args, payload = data
    return Frame(str(kind), [str(a) for a in args], str(payload))


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else str(value)


class RemoteSession:
    """A session held by another box, as this box's view keeps it.  The view
    holds every session of the cluster, so it is compact: slots, and the
    boxes and addresses interned (shared by all the sessions that have
    them), a user's name one copy for all the view (:meth:`ClusterHub._name`).  It unpacks as ``(user, box, record)`` and answers
    ``record.get(key)`` for the keys of the announcement (``u``, ``b``,
    ``ip``, ``port``, ``g``, ``guest``, ``t``)."""

    __slots__ = ("user", "box", "ip", "port", "guest", "t", "groups")
    _KEYS = {"u": "user", "b": "box", "ip": "ip", "port": "port", "g": "groups",
             "guest": "guest", "t": "t"}

    def __init__(self, record: dict, user: Optional[str] = None) -> None:
        self.user = str(record["u"]) if user is None else user
        self.box = intern(str(record["b"]))
        self.ip = intern(str(record.get("ip") or ""))
        self.port = int(record.get("port") or 0)
        self.guest = bool(record.get("guest"))
        self.t = float(record.get("t") or 0.0)
        self.groups = group_set(record.get("g") or ())

    def __iter__(self):
        return iter((self.user, self.box, self))

    def get(self, key: str, default: Any = None) -> Any:
        name = self._KEYS.get(key)
        return getattr(self, name) if name is not None else default


@implementer(IHub)
class ClusterHub(Hub):
    """One host box of a cluster (see the module docstring).

    ``redis`` is the command seam (:class:`~presence.store.redis.TxRedis`
    with one connection, or a fake): ``eval(script, keys, args)`` and
    ``unavailable(error)``.  Messages from the subscription are handed to
    :meth:`received` (channel, message bytes) by whoever subscribed
    (:class:`presence.cluster.service.ClusterService`)."""

    log = Logger()

    def __init__(self, clock, config: HubConfig, redis: Any, prefix: str = "presence:",
                 listener=None) -> None:
        super().__init__(clock, config, listener)
        self.redis = redis
        self.prefix = prefix
        #: remote sessions: sid -> RemoteSession (unpacks as user, box, record)
        self.where: Dict[str, RemoteSession] = {}
        #: user -> the user's sessions on remote boxes: its session ID when
        #: there is one (most users), else a tuple of them (the boxes are in
        #: ``where``; :meth:`remote_boxes` groups them)
        self.remote: Dict[str, Any] = {}
        #: remote box -> its sessions in ``where`` (placement counts them)
        self.box_sessions: Dict[str, int] = {}
        #: user -> the remote boxes where the user is online (a frozenset
        #: shared by every user online on the same boxes)
        self.remote_online: Dict[str, FrozenSet[str]] = {}
        #: remote box -> how many users ``remote_online`` has online there
        #: (so that the refresh knows the boxes without reading every user)
        self._online_count: Dict[str, int] = {}
        self._box_sets: Dict[FrozenSet[str], FrozenSet[str]] = {}
        #: user -> the user's state on remote boxes: ``(box, state, text,
        #: since)`` when it is known on one box (most users), else a dict
        #: box -> (state, text, since) (see :meth:`remote_states_of`)
        self.remote_states: Dict[str, Any] = {}
        #: the state this box last shared of each user online here
        self.shared: Dict[str, Tuple[str, str]] = {}
        self.remote_groups: Dict[str, frozenset] = {}
        self.remote_seen: Dict[str, float] = {}
        #: stand-ins of remote sessions asked for here (see IHub.session)
        self.proxies: Dict[str, Session] = {}
        #: the live boxes at the last refresh -> their session counts
        self.live: Dict[str, int] = {}
        #: live boxes that have not refreshed for ``STALE`` seconds
        self.stale: Set[str] = set()
        #: live guest sessions of the other boxes per client address key
        #: (so that ``guests_from`` counts over every box)
        self.remote_guests: Dict[str, int] = {}
        #: the seq write of the last chat (session ID, seq, its Deferred)
        self._seq_written: Optional[Tuple[str, str, defer.Deferred]] = None
        #: recent changes of groups: member -> [(when, key, joined)], and
        #: (when, member) in the order they came, to forget them
        self._changes: Dict[str, List[Tuple[float, str, bool]]] = {}
        self._change_order: Deque[Tuple[float, str]] = deque()
        #: seconds from an event's publication (its "t") to its arrival here
        self.pubsub_lag = Histogram(PAUSE_BUCKETS)
        self._refreshes = 0
        self._outage = False
        self._claims = 0
        #: this turn's batch (see BATCH): commands, events by channel, and
        #: what to do for each if it cannot be sent
        self._writes: List[List[Any]] = []
        self._events: Dict[bytes, List[dict]] = {}
        self._unsent: List[Callable[[], None]] = []
        #: what to do with the answer of each BOUND in this turn's batch
        self._bounds: List[Callable[[Any], None]] = []
        self._flush_call = None
        #: while the view is loaded: the events of the channel ``all`` that
        #: came meanwhile, applied once it is read (None: not loading)
        self._held: Optional[List[dict]] = None
        #: events other modules handle (kind -> handler of the event), and
        #: who hears that a box is gone (presence.cluster.calls)
        self.extra_handlers: Dict[str, Callable[[dict], None]] = {}
        self.box_observers: List[Callable[[str], None]] = []

    # -- keys and channels ------------------------------------------------------

    def key(self, *parts: str) -> bytes:
        return (self.prefix + ":".join(parts)).encode("utf-8", "surrogatepass")

    @property
    def me(self) -> str:
        return self.config.host_box

    def channels(self) -> List[bytes]:
        """The channels this box subscribes to."""
        return [self.key("all"), self.key("to", self.me)]

    def _eval(self, script: bytes, keys: Sequence[bytes], args: Sequence[Any]) -> defer.Deferred:
        if script is not BATCH:
            self.flush()     # what this turn shared so far goes first: one order
        args = [a if isinstance(a, bytes) else str(a).encode("utf-8", "surrogatepass")
                for a in args]
        d = defer.maybeDeferred(self.redis.eval, script, list(keys), args)
        d.addCallback(self._up)
        return d

    def _up(self, result: Any) -> Any:
        if self._outage:
            self._outage = False
            self.log.info("the cluster's Redis is reachable again")
        return result

    def lost(self, error: str, what: str) -> None:
        """Redis cannot be reached: one log line per outage."""
        if not self._outage:
            self._outage = True
            self.log.warn("the cluster's Redis is unavailable ({error}): {what} and"
                          " what follows until it is back are not shared with the"
                          " other boxes; local delivery goes on", error=error, what=what)

    def _failed(self, failure, what: str) -> None:
        if self.redis.unavailable(failure.value):
            self.lost(failure.getErrorMessage(), what)
        else:
            self.log.failure("cluster: {what} failed", failure, what=what)

    def _do(self, what: str, script: bytes, keys: Sequence[bytes],
            args: Sequence[Any]) -> defer.Deferred:
        d = self._eval(script, keys, args)
        d.addErrback(self._failed, what)
        return d

    def _queue(self, commands: Sequence[List[Any]] = (), channel: Optional[bytes] = None,
               event: Optional[dict] = None, unsent: Optional[Callable[[], None]] = None,
               answer: Optional[Callable[[Any], None]] = None) -> None:
        """Add to this turn's batch (sent by :meth:`flush` at the end of the
        reactor turn, or before any other call to Redis); ``answer`` takes
        the answer of the one BOUND or TAKE among ``commands`` (None when
        the batch could not be sent)."""
        self._writes.extend(commands)
        if answer is not None:
            self._bounds.append(answer)
        if channel is not None:
            self._events.setdefault(channel, []).append(event)
        if unsent is not None:
            self._unsent.append(unsent)
        if len(self._writes) >= BATCH_MAX:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> Optional[defer.Deferred]:
        """Send this turn's batch (see BATCH) as one script."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._writes and not self._events:
            return None
        everyone = self.key("all")
        channels = sorted(self._events, key=lambda c: c != everyone)   # opens first
        commands = self._writes + [
            [b"PUBLISH", c, json.dumps(self._events[c])] for c in channels]
        unsent, bounds = self._unsent, self._bounds
        self._writes, self._events, self._unsent, self._bounds = [], {}, [], []
        args: List[Any] = []
        for command in commands:
            args.append(len(command))
            args.extend(command)
        d = self._eval(BATCH, [], args)

        def answered(answers):
            answers = answers if isinstance(answers, list) else []
            for i, call in enumerate(bounds):
                call(answers[i] if i < len(answers) else None)

        def failed(failure):
            self._failed(failure, "sharing this box's changes")
            if self.redis.unavailable(failure.value):
                for call in unsent:
                    call()
            for call in bounds:
                call(None)      # no answer (a TAKE fails open)
        d.addCallbacks(answered, failed)
        return d

    def _send(self, box: str, event: dict) -> None:
        """Publish ``event`` on ``box``'s channel (with this turn's batch)."""
        self._queue(channel=self.key("to", box), event=event)

    send_to_box = _send

    # -- placement and sessions ---------------------------------------------------

    def _counts(self) -> Dict[str, int]:
        """The live boxes (at the last refresh) and their sessions in the
        view (which knows of every session announced since)."""
        counts = {box: self.box_sessions.get(box, 0) for box in self.live}
        counts[self.me] = len(self.users.sessions)
        return counts

    def place(self) -> str:
        """The live box with the fewest sessions (this one on a tie), among
        those that refreshed within ``STALE`` seconds."""
        counts = self._counts()
        fresh = [box for box in counts if box not in self.stale] or [self.me]
        return min(fresh, key=lambda box: (counts[box], box != self.me, box))

    def login_local(self, name: str, ident: str, ip: str = "",
                    groups: Sequence[str] = ()) -> Session:
        return self.login(name, ident, ip, 0, groups, here=True)

    def login(self, name: str, ident: str, ip: str = "", port: int = 0,
              groups: Sequence[str] = (), guest: bool = False, here: bool = False) -> Session:
        box = self.me if here else self.place()
        record = {"s": ident, "u": name, "b": box, "ip": ip, "port": port,
                  "g": self.fresh_groups(name, groups), "guest": guest,
                  "t": self.clock.seconds()}
        if box == self.me:
            session = self._open_local(record)
        else:
            self._note_open(record)
            session = self._proxy(ident)
        self._announce_open(record, self.config.sessions_per_user)
        return session

    def _open_local(self, record: dict) -> Session:
        return Hub.login(self, record["u"], record["s"], record["ip"], record["port"],
                         self.fresh_groups(record["u"], record["g"]), record["guest"])

    def open_commands(self, record: dict, bound: int = 0) -> List[List[Any]]:
        """The batch's commands that record a session; with ``bound`` (> 0)
        a BOUND after them (see BATCH): the per-user bound counted over the
        cluster."""
        sid, box = record["s"], record["b"]
        commands = [[b"HSET", self.key("sessions"), sid, json.dumps(record)],
                    [b"SADD", self.key("onbox", box), sid],
                    [b"HSET", self.key("where", record["u"]), sid, box]]
        if bound > 0:
            commands.append([b"BOUND", self.key("sessions"), self.key("where", record["u"]),
                             sid, str(bound)])
        return commands

    def _announce_open(self, record: dict, bound: int = 0) -> None:
        """Record and announce a session; with ``bound``, end the user's
        oldest sessions on every box past it (in the same batch)."""
        # ("by": the node that opened it; its own box's session is open
        # already, or was ended since, as past the bound before its event
        # came back: not opened again)
        self._queue(self.open_commands(record, bound), self.key("all"),
                    dict(record, e="open", by=self.me),
                    answer=self._replace if bound > 0 else None)

    def _replace(self, oldest: Any) -> None:
        """End these sessions (``sid, box`` pairs): past the per-user bound."""
        if not isinstance(oldest, list):
            return
        for i in range(0, len(oldest) - 1, 2):
            sid, box = _text(oldest[i]), _text(oldest[i + 1])
            session = self.session(sid)
            if session is not None:
                self.end(session, "replaced")
            elif box != self.me:
                self._send(box, {"e": "end", "s": sid, "r": "replaced"})

    def _note_open(self, record: dict) -> None:
        if record["b"] == self.me:
            return
        sid = record["s"]
        if sid in self.where:
            self._note_close(sid)
        remote = self.where[sid] = RemoteSession(record, self._name(record["u"]))
        user, box = remote.user, remote.box
        self.box_sessions[box] = self.box_sessions.get(box, 0) + 1
        sids = self.remote.get(user)
        self.remote[user] = sid if sids is None else (
            (sids, sid) if type(sids) is str else sids + (sid,))
        groups = remote.groups
        if user in self._changes:
            groups = group_set(self.fresh_groups(user, groups))
        remote.groups = self.remote_groups[user] = self._shared(groups)
        if remote.guest:
            key = address_key(remote.ip)
            self.remote_guests[key] = self.remote_guests.get(key, 0) + 1

    def _note_close(self, sid: str) -> None:
        found = self.where.pop(sid, None)
        self.proxies.pop(sid, None)
        if found is None:
            return
        user, box = found.user, found.box
        if found.guest:
            key = address_key(found.ip)
            guests = self.remote_guests.get(key, 0) - 1
            if guests > 0:
                self.remote_guests[key] = guests
            else:
                self.remote_guests.pop(key, None)
        left = self.box_sessions.get(box, 1) - 1
        if left > 0:
            self.box_sessions[box] = left
        else:
            self.box_sessions.pop(box, None)
        sids = self.remote.get(user)
        if sids is not None:
            left_sids = () if type(sids) is str else tuple(s for s in sids if s != sid)
            if not left_sids:
                del self.remote[user]
            else:
                self.remote[user] = left_sids[0] if len(left_sids) == 1 else left_sids

    def _name(self, user: str) -> str:
        """The one copy of ``user``'s name that the view keeps: the one its
        remote session has (not interned: the interpreter's table of
        interned strings would cost an entry per user), else ``user``."""
        sids = self.remote.get(user)
        if sids is not None:
            found = self.where.get(sids if type(sids) is str else sids[0])
            if found is not None:
                return found.user
        return user

    def _remote_sids(self, name: str) -> Tuple[str, ...]:
        """The session IDs of ``name`` on remote boxes."""
        sids = self.remote.get(name, ())
        return (sids,) if type(sids) is str else sids

    def remote_boxes(self, name: str) -> Dict[str, Tuple[str, ...]]:
        """The remote boxes holding sessions of ``name`` -> their IDs there."""
        boxes: Dict[str, Tuple[str, ...]] = {}
        for sid in self._remote_sids(name):
            found = self.where.get(sid)
            if found is not None:
                boxes[found.box] = boxes.get(found.box, ()) + (sid,)
        return boxes

    def _shared(self, boxes: FrozenSet[str]) -> FrozenSet[str]:
        """The one frozenset of these boxes (a few exist: users share them)."""
        if len(self._box_sets) > 4096:
            self._box_sets = {}
        return self._box_sets.setdefault(boxes, boxes)

    def _proxy(self, sid: str) -> Optional[Session]:
        proxy = self.proxies.get(sid)
        if proxy is None:
            found = self.where.get(sid)
            if found is None:
                return None
            proxy = Session(sid, UserState(found.user, found.groups, found.guest), found.ip,
                            found.port, found.box, found.t, Mailbox(1))
            self.proxies[sid] = proxy
        return proxy

    def guests_from(self, key: str) -> int:
        return Hub.guests_from(self, key) + self.remote_guests.get(key, 0)

    def session_ids(self, name: str) -> List[str]:
        ids = Hub.session_ids(self, name)
        ids.extend(self._remote_sids(name))
        return ids

    def session(self, ident: str) -> Optional[Session]:
        local = self.users.session(ident)
        return local if local is not None else self._proxy(ident)

    def claim(self, ident: str) -> Optional[defer.Deferred]:
        # a stranger's made-up id costs no look-up, and look-ups in flight
        # are bounded (past the bound: as unknown, a 403 the client retries)
        if (not SESSION_ID.match(ident) or self.users.session(ident) is not None
                or self._claims >= MAX_CLAIMS):
            return None
        self._claims += 1
        d = self._eval(b"return redis.call('HGET', KEYS[1], ARGV[1])",
                       [self.key("sessions")], [ident])

        def found(raw):
            if raw is None:
                return None
            record = json.loads(_text(raw))
            if record.get("b") == self.me:
                return self.users.session(ident) or self._open_local(record)
            self._note_open(record)
            return self.session(ident)

        def done(result):
            self._claims -= 1
            return result
        d.addBoth(done)
        d.addCallbacks(found, self._unavailable, errbackArgs=("looking a session up",))
        return d

    # -- seq memory shared by the nodes --------------------------------------

    def recall_seq(self, session: Session, seq: Optional[str]) -> Optional[defer.Deferred]:
        if seq is None or (session.seqs is not None and seq in session.seqs):
            return None
        d = self._eval(b"return redis.call('HGET', KEYS[1], ARGV[1])",
                       [self.key("seqs", session.id)], [seq])

        def found(raw):
            if raw is not None and not (session.seqs is not None and seq in session.seqs):
                msgid, delivered = json.loads(_text(raw))
                Hub._remember_seq(session, seq, msgid, delivered)

        # without the first answer a retry could be sent twice: 503
        d.addCallbacks(found, self._unavailable, errbackArgs=("reading a chat's seq",))
        return d

    def _unavailable(self, failure, what: str) -> None:
        """A look-up a request waits for failed: log it (once per outage),
        and the request gets 503."""
        self._failed(failure, what)
        raise StoreUnavailable("the cluster's directory is unavailable, try again shortly")

    def chat(self, session: Session, to: str, text: str, seq: Optional[str],
             msgid: str) -> Tuple[str, str, bool]:
        delivered, msgid, fresh = Hub.chat(self, session, to, text, seq, msgid)
        if fresh and seq is not None:
            # written before the answer goes out (the caller waits for
            # shared_seq): a retry through another node reads it
            # (recall_seq).  Its own call, after this turn's batch so far
            # (_eval sends that first): the chat's routing goes out first.
            d = self._do("sharing a chat's seq", SEQ, [self.key("seqs", session.id)],
                         [seq, json.dumps([msgid, delivered]), SEQ_MEMORY * 2,
                          int(self.config.session_ttl)])
            self._seq_written = (session.id, seq, d)
        return delivered, msgid, fresh

    def shared_seq(self, session: Session, seq: Optional[str]) -> Optional[defer.Deferred]:
        written, self._seq_written = self._seq_written, None
        if written is None or written[:2] != (session.id, seq):
            return None
        d: defer.Deferred = defer.Deferred()
        # fires with the write (or once its failure is logged: a retry then
        # gets 503 from recall_seq), without taking the write's result
        written[2].addBoth(lambda result: (d.callback(None), result)[1])
        return d

    def forget_seq(self, session: Session, seq: Optional[str]) -> None:
        Hub.forget_seq(self, session, seq)
        if seq is not None:
            self._queue([[b"HDEL", self.key("seqs", session.id), seq]])

    def _remote(self, session: Session) -> bool:
        return session.host_box != self.me

    def end(self, session: Session, reason: str) -> None:
        if self._remote(session):
            self._send(session.host_box, {"e": "end", "s": session.id, "r": reason})
            self._note_close(session.id)
            return
        live = self.users.session(session.id) is session
        Hub.end(self, session, reason)
        if live:
            self._announce_close(session.id, session.user.name, self.me)
            self.forget_devices([session.id])

    # -- the resume token of each session's device (a logout through any node
    # revokes it; docs/cluster.md, "Resume tokens in a cluster") --------------

    def remember_device(self, sid: str, digest: str) -> None:
        """Session ``sid`` was opened or issued with the resume token of hash
        ``digest``: kept in ``devices`` while the session lives (with this
        turn's batch)."""
        self._queue([[b"HSET", self.key("devices"), sid, digest]])

    def recall_device(self, sid: str) -> defer.Deferred:
        """The token hash of session ``sid``'s device, or None (also when
        Redis cannot answer: logged)."""
        d = self._eval(b"return redis.call('HGET', KEYS[1], ARGV[1])",
                       [self.key("devices")], [sid])
        d.addCallback(lambda raw: None if raw is None else _text(raw))
        d.addErrback(self._failed, "reading a session's device")
        return d

    def forget_devices(self, sids: Sequence[str]) -> None:
        sids = list(sids)
        for i in range(0, len(sids), DEVICES_AT_ONCE):   # (Lua's unpack is bounded)
            self._queue([[b"HDEL", self.key("devices")] + sids[i:i + DEVICES_AT_ONCE]])

    def _announce_close(self, sid: str, user: str, box: str) -> None:
        self._queue([[b"HDEL", self.key("sessions"), sid],
                     [b"SREM", self.key("onbox", box), sid],
                     [b"HDEL", self.key("where", user), sid]],
                    self.key("all"), {"e": "close", "s": sid, "u": user, "b": box})

    def watch(self, session: Session, key: str) -> None:
        if self._remote(session):
            session.active = key
            self._send(session.host_box, {"e": "watch", "s": session.id, "k": key})
        else:
            Hub.watch(self, session, key)

    def address_changed(self, session: Session, ip: str, port: int) -> None:
        if not self._remote(session):
            Hub.address_changed(self, session, ip, port)

    def set_state(self, session: Session, state: str, text: str = "") -> None:
        if self._remote(session):
            session.state, session.status = state, text
            self._send(session.host_box, {"e": "state", "s": session.id, "st": state,
                                          "tx": text})
        else:
            Hub.set_state(self, session, state, text)

    # -- presence ------------------------------------------------------------------

    def is_online(self, name: str) -> bool:
        return self.users.is_online(name) or bool(self.remote_online.get(name))

    def address_of(self, name: str) -> Optional[str]:
        found = []
        user = self.users.user(name)
        for s in user.sessions if user is not None else ():
            if s.ip:
                found.append(((s.channel is not None, s.login_time), s.ip))
        holding = self.remote_online.get(name, ())
        for sid in self._remote_sids(name):
            remote = self.where.get(sid)
            if remote is not None and remote.ip:
                found.append(((remote.box in holding, remote.t), remote.ip))
        return max(found)[1] if found else None

    def knows(self, name: str) -> bool:
        return (name in self.users.users or name in self.remote
                or bool(self.remote_online.get(name)))

    def last_seen(self, name: str) -> Optional[float]:
        local = Hub.last_seen(self, name)
        remote = self.remote_seen.get(name) if self.knows(name) else None
        if local is None or (remote is not None and remote > local):
            return remote
        return local

    def _changed(self, user: UserState, online: bool, now: float) -> None:
        self._share_presence(user, online, now)
        if not self.remote_online.get(user.name):
            self.listener.presence_changed(user.name, online, now)
        # (online elsewhere, the combined state may still change)
        self._tell(user)

    def _share_presence(self, user: UserState, online: bool, now: float) -> None:
        """Tell the other boxes (and Redis) whether ``user`` is online here,
        and their state here (the combination of this box's sessions), with
        this turn's batch: ``online:<me>`` and ``states:<me>``."""
        event = {"e": "pres", "u": user.name, "b": self.me, "on": online,
                 "g": sorted(user.groups), "t": now}
        if online:
            entry = self._local_entry(user) or (AVAILABLE, "", 0.0)
            self.shared[user.name] = state_value(entry[0], entry[1])
            event.update(st=entry[0], tx=entry[1], w=entry[2])
            commands = [[b"SADD", self.key("online", self.me), user.name],
                        [b"HSET", self.key("states", self.me), user.name,
                         json.dumps(list(entry))]]
        else:
            self.shared.pop(user.name, None)
            commands = [[b"SREM", self.key("online", self.me), user.name],
                        [b"HDEL", self.key("states", self.me), user.name]]
        self._queue(commands, self.key("all"), event)

    def _restate(self, user: UserState) -> None:
        if user.online:
            entry = self._local_entry(user)
            if entry is not None and state_value(entry[0], entry[1]) != self.shared.get(
                    user.name):
                self._share_presence(user, True, self.clock.seconds())
        self._tell(user)

    def state_of(self, name: str) -> Tuple[str, str]:
        entries = []
        user = self.users.user(name)
        if user is not None and user.online:
            entries.append(self._local_entry(user) or (AVAILABLE, "", 0.0))
        boxes = self.remote_online.get(name)
        if boxes:
            known = self.remote_states_of(name)
            entries.extend(known.get(box, (AVAILABLE, "", 0.0)) for box in boxes)
        best = combine(entries)
        return OFFLINE_STATE if best is None else state_value(best[0], best[1])

    def remote_states_of(self, user: str) -> Dict[str, Tuple[str, str, float]]:
        """``user``'s states on remote boxes: box -> (state, text, since)."""
        known = self.remote_states.get(user)
        if known is None:
            return {}
        if type(known) is tuple:
            return {known[0]: known[1:]}
        return known

    def _note_state(self, user: str, box: str, entry: Optional[Tuple[str, str, float]]) -> None:
        """Keep ``user``'s state on remote ``box`` (None: offline there, or
        a box that shares no state: available).  The state's name is the
        shared constant (not the event's copy); a user known on one box is
        one tuple, not a dict."""
        state = _STATE_NAMES.get(entry[0]) if entry is not None else None
        known = self.remote_states.get(user)
        if type(known) is tuple:
            known = {known[0]: known[1:]}
        if state is not None:
            value = (state, entry[1] or "", entry[2])
            if known is None or (len(known) == 1 and box in known):
                self.remote_states[user] = (box,) + value
            else:
                known[box] = value
                self.remote_states[user] = known
            return
        if known is not None:
            known.pop(box, None)
            if not known:
                del self.remote_states[user]
            elif len(known) == 1:
                (only, value), = known.items()
                self.remote_states[user] = (only,) + value
            else:
                self.remote_states[user] = known

    def _audience_of(self, user: str) -> UserState:
        """A user as the fan-out needs them (groups): this box's, or one made
        from the view of the remote one."""
        return self.users.user(user) or UserState(user, self.remote_groups.get(user, ()))

    def _remote_presence(self, user: str, box: str, online: bool,
                         groups: Optional[Sequence[str]], when: float,
                         entry: Optional[Tuple[str, str, float]] = None) -> None:
        before = self.is_online(user)
        user = self._name(str(user))
        sids = self.remote.get(user)
        if type(sids) is str and sids in self.where and self.where[sids].t == when:
            when = self.where[sids].t          # one float for both (the login's time)
        if entry is not None and entry[2] == when:
            entry = (entry[0], entry[1], when)
        self._note_state(user, box, entry if online else None)
        boxes = self.remote_online.get(user, NO_GROUPS)
        self._online_on(user, boxes | {box} if online else boxes - {box})
        if groups is not None:
            self.remote_groups[user] = self._shared(group_set(self.fresh_groups(user, groups)))
        self.remote_seen[user] = when
        if before != self.is_online(user):
            self._remote_presence_changed(user, when)
        else:
            self._tell(self._audience_of(user))
        if not self.remote_online.get(user) and user not in self.remote:
            self.remote_groups.pop(user, None)

    def _remote_presence_changed(self, user: str, when: float) -> None:
        """``user``'s presence in the cluster changed through another box:
        tell the watchers here."""
        state = self._audience_of(user)
        if state.last_seen is None or state.last_seen < when:
            state.last_seen = when
        self._tell(state)

    # -- groups --------------------------------------------------------------------

    def _note_change(self, key: str, member: str, joined: bool) -> None:
        now = self.clock.seconds()
        self._changes.setdefault(member, []).append((now, key, joined))
        self._change_order.append((now, member))
        self._forget_changes(now)

    def _forget_changes(self, now: float) -> None:
        order = self._change_order
        while order and (now - order[0][0] > RECENT_CHANGES or len(order) > MAX_CHANGES):
            _, member = order.popleft()
            changes = self._changes.get(member)
            if changes:
                changes.pop(0)
                if not changes:
                    del self._changes[member]

    def fresh_groups(self, member: str, groups: Sequence[str]) -> List[str]:
        """``member``'s groups as read at some time (from the directory at
        a login, from another box's event), with the changes of the last
        ``RECENT_CHANGES`` seconds that this box heard of applied in order:
        a change racing a login or a presence event on another box is not
        lost to a copy of the groups taken before it (each change sets a
        group absolutely, so applying it again is harmless)."""
        changes = self._changes.get(member)
        if not changes:
            return sorted(groups)
        self._forget_changes(self.clock.seconds())
        result = set(groups)
        for _, key, joined in self._changes.get(member, ()):
            (result.add if joined else result.discard)(key)
        return sorted(result)

    def membership_changed(self, key: str, member: str, joined: bool) -> None:
        self._note_change(key, member, joined)
        self._regroup(key, member, joined)
        Hub.membership_changed(self, key, member, joined)
        self._queue(channel=self.key("all"),
                    event={"e": "member", "b": self.me, "k": key, "m": member, "j": joined})

    def _regroup(self, key: str, member: str, joined: bool) -> None:
        """The view of a remote member's groups follows the change."""
        groups = self.remote_groups.get(member)
        if groups is not None:
            changed = groups | {key} if joined else groups - {key}
            self.remote_groups[member] = self._shared(group_set(changed))

    def _remote_membership(self, key: str, member: str, joined: bool) -> None:
        self._note_change(key, member, joined)
        self._regroup(key, member, joined)
        Hub.membership_changed(self, key, member, joined)

    # -- delivery ------------------------------------------------------------------

    def deliver(self, name: str, frame: Frame) -> int:
        count = Hub.deliver(self, name, frame)
        remote = list(self.remote_boxes(name).items())
        if frame.is_chat:
            boxes = ([self.me] if count else []) + [box for box, _ in remote]
            if boxes:
                self._route_chat(name, frame, boxes)
            else:
                # online in the view, but no session anywhere it knows of
                self.listener.spill(name, frame)
            return count + sum(len(sids) for _, sids in remote)
        for box, sids in remote:
            self._send(box, {"e": "frame", "u": name, "f": encode_frame(frame)})
            count += len(sids)
        return count

    def _route_chat(self, name: str, frame: Frame, boxes: List[str]) -> None:
        """Route a chat to the remote ones of ``boxes`` and keep it in each
        one's pending hash until acknowledged, in this turn's batch."""
        encoded = encode_frame(frame)
        field = _pending_field(name, frame)
        now = self.clock.seconds()
        value = json.dumps({"u": name, "f": encoded, "t": now})
        at = repr(now)
        for box in boxes:
            self._queue([[b"HSET", self.key("pending", box), field, value],
                         [b"ZADD", self.key("pendt", box), at, field]])
        remote = [box for box in boxes if box != self.me]
        for box in remote:
            self._queue(channel=self.key("to", box), event={"e": "frame", "u": name, "f": encoded})
        if remote:
            # if it reaches no other box, the message box keeps it (the
            # directory sends its spills when Redis is back)
            self._queue(unsent=lambda: self.listener.spill(name, frame))

    def end_user(self, name: str, reason: str, keep: Optional[Session] = None) -> int:
        count = Hub.end_user(self, name, reason, keep)
        kept = keep.id if keep is not None else None
        for sid in self._remote_sids(name):
            if sid != kept:
                self.end(self._proxy(sid), reason)
                count += 1
        return count

    def ack(self, session: Session, upto: int) -> None:
        if self._remote(session):
            self._send(session.host_box, {"e": "ack", "s": session.id, "n": upto})
            return
        acked = [_pending_field(session.name, f) for i, f in session.mailbox.pending()
                 if i <= upto and f.is_chat]
        Hub.ack(self, session, upto)
        if acked:
            self._forget_pending(acked)

    def _forget_pending(self, fields: List[str]) -> None:
        """Take ``fields`` out of this box's pending hash and its time index."""
        self._queue([[b"HDEL", self.key("pending", self.me)] + fields,
                     [b"ZREM", self.key("pendt", self.me)] + fields])

    def settle(self) -> defer.Deferred:
        """Drop from this box's pending hash the chats older than
        ``SETTLED`` seconds that no local mailbox holds any more (they were
        spilled to the message box, long since written).  Redis answers
        only the chats old enough, from the time index (OLD_PENDING), at
        most SETTLE_AT_ONCE: most of the hash is chats still unacknowledged
        in a mailbox, and reading all of it every few seconds cost more
        than the chats (and held Redis up for 10-20 ms at 100,000 held)."""
        now = self.clock.seconds()
        d = self._eval(OLD_PENDING, [self.key("pending", self.me), self.key("pendt", self.me)],
                       [repr(now - SETTLED), SETTLE_AT_ONCE, repr(now)])

        def trim(flat):
            done = []
            for i in range(0, len(flat), 2):
                field, value = _text(flat[i]), json.loads(_text(flat[i + 1]))
                msgid = decode_frame(value["f"]).args[1]
                if not any(f.is_chat and f.args[1] == msgid
                           for s in self.sessions_of(value["u"])
                           for _, f in s.mailbox.pending()):
                    done.append(field)
            if done:
                self._forget_pending(done)
                return self.flush()
        d.addCallback(trim)
        d.addErrback(self._failed, "trimming the pending chats")
        return d

    def deliver_session(self, session: Session, frame: Frame) -> None:
        if self._remote(session):
            self._send(session.host_box, {"e": "sframe", "s": session.id, "u": session.name,
                                          "f": encode_frame(frame)})
        else:
            Hub.deliver_session(self, session, frame)

    def _routed(self, name: str, frame: Frame) -> None:
        """A frame for ``name`` routed here by another box."""
        if not Hub.deliver(self, name, frame) and frame.is_chat:
            self.listener.spill(name, frame)

    # -- events ----------------------------------------------------------------------

    def received(self, channel: bytes, message: bytes) -> None:
        """A message on one of :meth:`channels`: an event, or a list of them
        (a box's batch), handled in order."""
        try:
            events = json.loads(_text(message))
        except ValueError:
            events = [None]
        for event in events if isinstance(events, list) else [events]:
            try:
                kind = event["e"]
            except (KeyError, TypeError, IndexError):
                self.log.warn("cluster: an unreadable message on {channel}",
                              channel=_text(channel))
                continue
            sent = event.get("t")
            if type(sent) is float:
                self.pubsub_lag.observe(max(0.0, self.clock.seconds() - sent))
            if self._held is not None and channel == self.key("all"):
                self._held.append(event)        # after the view is read
            else:
                self._handle(kind, event)

    def _handle(self, kind: Any, event: dict) -> None:
        handler = self._handlers.get(kind)
        if handler is None:
            extra = self.extra_handlers.get(kind)
            if extra is None:
                return
            handler = lambda _, event: extra(event)   # noqa: E731
        try:
            handler(self, event)
        except Exception:
            self.log.failure("cluster: handling a {kind} event failed", kind=kind)

    def _on_open(self, event: dict) -> None:
        if event["b"] == self.me:
            if event.get("by") != self.me and self.users.session(event["s"]) is None:
                self._open_local(event)
        else:
            self._note_open(event)

    def _on_close(self, event: dict) -> None:
        if event["b"] != self.me:
            self._note_close(event["s"])

    def _on_pres(self, event: dict) -> None:
        if event["b"] != self.me:
            entry = None
            if event.get("st"):
                entry = (str(event["st"]), str(event.get("tx") or ""), float(event.get("w") or 0))
            self._remote_presence(event["u"], event["b"], bool(event["on"]), event.get("g"),
                                  float(event.get("t") or self.clock.seconds()), entry)

    def _on_state(self, event: dict) -> None:
        session = self.users.session(event["s"])
        if session is not None and event.get("st") in STATES:
            Hub.set_state(self, session, str(event["st"]), str(event.get("tx") or ""))

    def _on_member(self, event: dict) -> None:
        if event["b"] != self.me:
            self._remote_membership(event["k"], event["m"], bool(event["j"]))

    def _on_dead(self, event: dict) -> None:
        box = event["b"]
        if box == self.me:
            return
        self.live.pop(box, None)
        self.forget_box(box)

    def forget_box(self, box: str) -> None:
        """``box`` is gone: drop its sessions from the view, and its users'
        presence there (watchers here hear them go offline unless they are
        online elsewhere)."""
        for sid in [sid for sid, (_, b, _) in self.where.items() if b == box]:
            self._note_close(sid)
        now = self.clock.seconds()
        for user in [u for u, boxes in self.remote_online.items() if box in boxes]:
            self._remote_presence(user, box, False, None, now)
        for observer in self.box_observers:
            try:
                observer(box)
            except Exception:
                # the rest of the burial (devices, pending chats) goes on
                self.log.failure("cluster: a box-gone observer failed for {box}", box=box)

    def _on_frame(self, event: dict) -> None:
        self._routed(event["u"], decode_frame(event["f"]))

    def _on_sframe(self, event: dict) -> None:
        frame = decode_frame(event["f"])
        session = self.users.session(event["s"])
        if session is not None:
            Hub.deliver_session(self, session, frame)
        elif frame.is_chat:
            self.listener.spill(event["u"], frame)

    def _on_ack(self, event: dict) -> None:
        session = self.users.session(event["s"])
        if session is not None:
            Hub.ack(self, session, int(event["n"]))

    def _on_watch(self, event: dict) -> None:
        session = self.users.session(event["s"])
        if session is not None:
            Hub.watch(self, session, str(event["k"]))

    def _on_end(self, event: dict) -> None:
        session = self.users.session(event["s"])
        if session is not None:
            self.end(session, str(event.get("r") or "logout"))

    def broadcast(self, frame: Frame) -> int:
        """This box's sessions, then every other box's (event ``notice`` on
        the channel ``all``)."""
        count = Hub.broadcast(self, frame)
        self._queue(channel=self.key("all"),
                    event={"e": "notice", "b": self.me, "f": encode_frame(frame)})
        return count

    def _on_notice(self, event: dict) -> None:
        if event.get("b") != self.me:
            Hub.broadcast(self, decode_frame(event["f"]))

    _handlers: Dict[str, Callable[["ClusterHub", dict], None]] = {
        "open": _on_open, "close": _on_close, "pres": _on_pres, "member": _on_member,
        "dead": _on_dead, "frame": _on_frame, "sframe": _on_sframe, "ack": _on_ack,
        "watch": _on_watch, "end": _on_end, "state": _on_state, "notice": _on_notice,
    }

    # -- the box ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def load(self):
        """Read the global directory into the local view, replacing it (at
        start and after every reconnect, once subscribed, so that no change
        falls between the two: what is announced while it is read, in
        pages, is applied after it); then make Redis agree with this box
        (what changed here while Redis was away).  Watchers here hear of
        every user whose presence differs between the old view and the
        new."""
        self._held = []
        try:
            sessions: List[Any] = []
            cursor: Any = b"0"
            while True:
                cursor, flat = yield self._eval(SESSIONS_PAGE, [self.key("sessions")],
                                                [cursor, LOAD_PAGE])
                sessions.extend(flat[1::2])
                if _text(cursor) == "0":
                    break
            online: List[Any] = []
            kept: List[Any] = []
            for box in (yield self._eval(BOXES, [self.key("nodes")], [])):
                users = yield self._eval(ONLINE_ON, [self.key("online", _text(box))], [])
                online += [box, users]
                flat = yield self._eval(STATES_ON, [self.key("states", _text(box))], [])
                kept += [box, flat]
            self._loaded(sessions, online, kept)
        finally:
            held, self._held = self._held, None
            for event in held:
                self._handle(event["e"], event)

    def _loaded(self, sessions: List[Any], online: List[Any], kept: List[Any] = ()) -> None:
        """Replace the view with the session records, online sets and
        states read (``kept``: per box, its ``states:<box>`` as HGETALL
        answers it)."""
        before = {u: self.is_online(u) for u in self.remote_online}
        self.where, self.remote, self.proxies = {}, {}, {}
        self.remote_online, self.remote_seen, self.box_sessions = {}, {}, {}
        self._online_count = {}
        self.remote_states, self.remote_guests = {}, {}
        mine = {}
        for raw in sessions:
            record = json.loads(_text(raw))
            if record.get("b") == self.me:
                mine[record["s"]] = record
            else:
                self._note_open(record)
        now = self.clock.seconds()
        online_here = set()
        for i in range(0, len(online), 2):
            box = _text(online[i])
            users = {self._name(_text(u)) for u in online[i + 1]}
            if box == self.me:
                online_here = users
                continue
            for user in users:
                self._online_on(user, self.remote_online.get(user, NO_GROUPS) | {box})
                self.remote_seen[user] = now
        recorded_here: Dict[str, Tuple[str, str]] = {}
        for i in range(0, len(kept), 2):
            box, flat = _text(kept[i]), kept[i + 1]
            for j in range(0, len(flat) - 1, 2):
                user = self._name(_text(flat[j]))
                try:
                    state, text, since = json.loads(_text(flat[j + 1]))
                    entry = (str(state), str(text), float(since))
                except (ValueError, TypeError):
                    continue
                if box == self.me:
                    recorded_here[user] = state_value(entry[0], entry[1])
                elif user in self.remote_online and box in self.remote_online[user]:
                    self._note_state(user, box, entry)
        for user in set(before) | set(self.remote_online) | set(self.told):
            if before.get(user, self.users.is_online(user)) != self.is_online(user):
                self._remote_presence_changed(user, now)
            else:
                self._tell(self._audience_of(user))
        self._agree(mine, online_here)
        self._agree_states(online_here, recorded_here)

    def _agree_states(self, online: Set[str], recorded: Dict[str, Tuple[str, str]]) -> None:
        """Share again the state of every user online here whose state in
        Redis is not this box's (changed while Redis was away)."""
        now = self.clock.seconds()
        for name in online & set(self.users.online_names()):
            user = self.users.user(name)
            entry = self._local_entry(user) if user is not None else None
            if entry is not None and state_value(entry[0], entry[1]) != recorded.get(name):
                self._share_presence(user, True, now)

    def _agree(self, recorded: Dict[str, dict], online: Set[str]) -> None:
        """Announce what Redis lacks of this box, withdraw what it has that
        this box no longer holds."""
        for sid, record in recorded.items():
            if self.users.session(sid) is None:
                self._announce_close(sid, record["u"], self.me)
        for sid, session in self.users.sessions.items():
            if sid not in recorded:
                self._announce_open({
                    "s": sid, "u": session.name, "b": self.me, "ip": session.ip,
                    "port": session.port, "g": sorted(session.user.groups),
                    "guest": session.user.guest, "t": session.login_time})
        now = self.clock.seconds()
        here = set(self.users.online_names())
        for name in here ^ online:
            user = self.users.user(name) or UserState(name)
            self._share_presence(user, name in here, now)

    def refresh(self) -> defer.Deferred:
        """Refresh this box's key; learn the live boxes; bury the dead ones."""
        d = self._eval(REGISTER, [self.key("node", self.me), self.key("nodes")],
                       [self.me, len(self.users.sessions), BOX_TTL, self.prefix + "node:"])

        def registered(reply):
            live, dead, stale = {}, [], set()
            for i in range(0, len(reply), 3):
                box, count = intern(_text(reply[i])), _text(reply[i + 1])
                if count:
                    live[box] = int(count)
                    if box != self.me and int(reply[i + 2]) < (BOX_TTL - STALE) * 1000:
                        stale.add(box)
                else:
                    dead.append(box)
            self.live, self.stale = live, stale
            for box in set(self.remote_online_boxes()) - set(live):
                self.forget_box(box)
            self._refreshes += 1
            settle = [self.settle()] if self._refreshes % SETTLE_EVERY == 1 else []
            return defer.DeferredList([self.bury(box) for box in dead] + settle)
        d.addCallback(registered)
        d.addErrback(self._failed, "refreshing this box")
        return d

    def remote_online_boxes(self) -> Set[str]:
        return set(self.box_sessions) | set(self._online_count)

    def _online_on(self, user: str, boxes: FrozenSet[str]) -> None:
        """``user`` is online on the remote ``boxes`` (none: not online on
        any), counted per box."""
        before = self.remote_online.get(user, NO_GROUPS)
        counts = self._online_count
        for box in before - boxes:
            left = counts[box] - 1
            if left:
                counts[box] = left
            else:
                del counts[box]
        for box in boxes - before:
            counts[box] = counts.get(box, 0) + 1
        if boxes:
            self.remote_online[user] = self._shared(frozenset(boxes))
        else:
            self.remote_online.pop(user, None)

    def bury(self, box: str, alive: bool = False) -> defer.Deferred:
        """Take ``box`` out of the directory (dead, or this box stopping
        cleanly when ``alive``)."""
        d = self._eval(BURY, [self.key("nodes"), self.key("onbox", box),
                              self.key("online", box), self.key("sessions"),
                              self.key("node", box), self.key("all"),
                              self.key("pending", box), self.key("states", box),
                              self.key("pendt", box)],
                       [box, self.prefix + "where:", "1" if alive else "0"])

        def buried(reply):
            records, pending = reply
            if (records or pending) and not alive:
                self.log.warn("cluster: the box {box} is gone; {n} sessions left the"
                              " directory, {k} chats it had not seen acknowledged go to"
                              " the message boxes", box=box, n=len(records), k=len(pending))
            if box != self.me:
                self.forget_box(box)
            self.forget_devices([json.loads(_text(raw))["s"] for raw in records])
            for raw in pending if not alive else ():
                # (a box that stops cleanly spilled its mailboxes itself)
                value = json.loads(_text(raw))
                # kept once even if it was spilled already (the msgid)
                self.listener.spill(value["u"], decode_frame(value["f"]))
            now = self.clock.seconds()
            for user in {json.loads(_text(raw))["u"] for raw in records}:
                if not self.is_online(user):
                    self.listener.presence_changed(user, False, now)
            return records
        d.addCallback(buried)
        d.addErrback(self._failed, "taking the box " + box + " out of the directory")
        return d

    def box_names(self) -> List[str]:
        return sorted(set(self.live) | {self.me})

    def boxes(self) -> List[dict]:
        counts = self._counts()
        return [{"box": box, "sessions": counts[box]} for box in sorted(counts)]

    def stats(self) -> dict:
        figures = Hub.stats(self)
        figures["remote_sessions"] = len(self.where)
        figures["boxes"] = len(self.boxes())
        return figures


def make_loop(hub: ClusterHub, clock) -> task.LoopingCall:
    loop = task.LoopingCall(hub.refresh)
    loop.clock = clock
    return loop
