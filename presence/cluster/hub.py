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
from sys import intern
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from presence.core import frames
from presence.core.frames import Frame
from presence.core.hub import SEQ_MEMORY, Hub, HubConfig, IHub
from presence.core.mailbox import Mailbox
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
#: seconds after which a pending chat that no local mailbox holds any more
#: (it was spilled to the message box) leaves the pending hash
SETTLED = 30.0

# What this box shares in one reactor turn, in order, as one script: the
# writes to the directory (announcing and ending sessions, presence, pending
# chats and their acknowledgements), then one PUBLISH per channel carrying
# the turn's events for it as a JSON list.  ARGV: per command its number of
# words, then the words.  One call, one reply and one message per channel
# per turn, however many chats and logins the turn had.
BATCH = b"""
local i, n = 1, #ARGV
while i <= n do
  local words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + words))
  i = i + words + 1
end
return 1
"""
#: commands in one batch at most; past it the batch goes out at once
BATCH_MAX = 1000

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
# sessions, node:<box>, all, pending:<box>; ARGV box, where-prefix,
# alive(1: a clean stop)).  Only the caller that removes the box from
# ``nodes`` does the work, so two nodes noticing one death at once announce
# it once.  Returns the session records taken out and the box's pending
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
redis.call('PUBLISH', KEYS[6], cjson.encode({e='dead', b=ARGV[1]}))
return {out, pending}
"""

# The view at start, read in pages so that no reply is large (a cluster of
# 100,000 sessions is 20 MB of records; one reply of it took longer than the
# timeout of a call): a page of session records (KEYS sessions; ARGV cursor,
# count), the boxes (KEYS nodes), the users online on a box (KEYS online:<box>)
SESSIONS_PAGE = b"return redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])"
BOXES = b"return redis.call('SMEMBERS', KEYS[1])"
ONLINE_ON = b"return redis.call('SMEMBERS', KEYS[1]) -- online"
#: session records asked for in one page of the view
LOAD_PAGE = 2000


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
    names, boxes and addresses interned (shared by all the sessions that
    have them).  It unpacks as ``(user, box, record)`` and answers
    ``record.get(key)`` for the keys of the announcement (``u``, ``b``,
    ``ip``, ``port``, ``g``, ``guest``, ``t``)."""

    __slots__ = ("user", "box", "ip", "port", "guest", "t", "groups")
    _KEYS = {"u": "user", "b": "box", "ip": "ip", "port": "port", "g": "groups",
             "guest": "guest", "t": "t"}

    def __init__(self, record: dict) -> None:
        self.user = intern(str(record["u"]))
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
        #: user -> box -> the user's session IDs there (remote boxes only; a
        #: tuple, as most users have one)
        self.remote: Dict[str, Dict[str, Tuple[str, ...]]] = {}
        #: remote box -> its sessions in ``where`` (placement counts them)
        self.box_sessions: Dict[str, int] = {}
        #: user -> the remote boxes where the user is online (a frozenset
        #: shared by every user online on the same boxes)
        self.remote_online: Dict[str, FrozenSet[str]] = {}
        self._box_sets: Dict[FrozenSet[str], FrozenSet[str]] = {}
        self.remote_groups: Dict[str, frozenset] = {}
        self.remote_seen: Dict[str, float] = {}
        #: stand-ins of remote sessions asked for here (see IHub.session)
        self.proxies: Dict[str, Session] = {}
        #: the live boxes at the last refresh -> their session counts
        self.live: Dict[str, int] = {}
        #: live boxes that have not refreshed for ``STALE`` seconds
        self.stale: Set[str] = set()
        self._refreshes = 0
        self._outage = False
        self._claims = 0
        #: this turn's batch (see BATCH): commands, events by channel, and
        #: what to do for each if it cannot be sent
        self._writes: List[List[Any]] = []
        self._events: Dict[bytes, List[dict]] = {}
        self._unsent: List[Callable[[], None]] = []
        self._flush_call = None
        #: while the view is loaded: the events of the channel ``all`` that
        #: came meanwhile, applied once it is read (None: not loading)
        self._held: Optional[List[dict]] = None

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
               event: Optional[dict] = None, unsent: Optional[Callable[[], None]] = None) -> None:
        """Add to this turn's batch (sent by :meth:`flush` at the end of the
        reactor turn, or before any other call to Redis)."""
        self._writes.extend(commands)
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
        unsent = self._unsent
        self._writes, self._events, self._unsent = [], {}, []
        args: List[Any] = []
        for command in commands:
            args.append(len(command))
            args.extend(command)
        d = self._eval(BATCH, [], args)

        def failed(failure):
            self._failed(failure, "sharing this box's changes")
            if self.redis.unavailable(failure.value):
                for call in unsent:
                    call()
        d.addErrback(failed)
        return d

    def _send(self, box: str, event: dict) -> None:
        """Publish ``event`` on ``box``'s channel (with this turn's batch)."""
        self._queue(channel=self.key("to", box), event=event)

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

    def login(self, name: str, ident: str, ip: str = "", port: int = 0,
              groups: Sequence[str] = (), guest: bool = False) -> Session:
        box = self.place()
        record = {"s": ident, "u": name, "b": box, "ip": ip, "port": port,
                  "g": sorted(groups), "guest": guest, "t": self.clock.seconds()}
        if box == self.me:
            session = self._open_local(record)
        else:
            self._note_open(record)
            session = self._proxy(ident)
        self._announce_open(record)
        return session

    def _open_local(self, record: dict) -> Session:
        return Hub.login(self, record["u"], record["s"], record["ip"], record["port"],
                         record["g"], record["guest"])

    def _announce_open(self, record: dict) -> None:
        sid, box = record["s"], record["b"]
        self._queue([[b"HSET", self.key("sessions"), sid, json.dumps(record)],
                     [b"SADD", self.key("onbox", box), sid],
                     [b"HSET", self.key("where", record["u"]), sid, box]],
                    self.key("all"), dict(record, e="open"))

    def _note_open(self, record: dict) -> None:
        if record["b"] == self.me:
            return
        sid = record["s"]
        if sid in self.where:
            self._note_close(sid)
        remote = self.where[sid] = RemoteSession(record)
        user, box = remote.user, remote.box
        self.box_sessions[box] = self.box_sessions.get(box, 0) + 1
        boxes = self.remote.setdefault(user, {})
        boxes[box] = boxes.get(box, ()) + (sid,)
        remote.groups = self.remote_groups[user] = self._shared(remote.groups)

    def _note_close(self, sid: str) -> None:
        found = self.where.pop(sid, None)
        self.proxies.pop(sid, None)
        if found is None:
            return
        user, box = found.user, found.box
        left = self.box_sessions.get(box, 1) - 1
        if left > 0:
            self.box_sessions[box] = left
        else:
            self.box_sessions.pop(box, None)
        boxes = self.remote.get(user)
        if boxes is not None:
            sids = tuple(s for s in boxes.get(box, ()) if s != sid)
            if sids:
                boxes[box] = sids
            else:
                boxes.pop(box, None)
            if not boxes:
                del self.remote[user]

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
            # written before the answer goes out: a retry through another
            # node reads it (recall_seq)
            self._do("sharing a chat's seq", SEQ, [self.key("seqs", session.id)],
                     [seq, json.dumps([msgid, delivered]), SEQ_MEMORY * 2,
                      int(self.config.session_ttl)])
        return delivered, msgid, fresh

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

    # -- presence ------------------------------------------------------------------

    def is_online(self, name: str) -> bool:
        return self.users.is_online(name) or bool(self.remote_online.get(name))

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
            Hub._changed(self, user, online, now)

    def _share_presence(self, user: UserState, online: bool, now: float) -> None:
        self._queue([[b"SADD" if online else b"SREM", self.key("online", self.me), user.name]],
                    self.key("all"), {"e": "pres", "u": user.name, "b": self.me, "on": online,
                                      "g": sorted(user.groups), "t": now})

    def _remote_presence(self, user: str, box: str, online: bool,
                         groups: Optional[Sequence[str]], when: float) -> None:
        before = self.is_online(user)
        user = intern(user)
        boxes = self.remote_online.get(user, NO_GROUPS)
        boxes = boxes | {box} if online else boxes - {box}
        if boxes:
            self.remote_online[user] = self._shared(frozenset(boxes))
        else:
            self.remote_online.pop(user, None)
        if groups is not None:
            self.remote_groups[user] = self._shared(group_set(groups))
        self.remote_seen[user] = when
        if before != self.is_online(user):
            self._remote_presence_changed(user, when)
        if not self.remote_online.get(user) and user not in self.remote:
            self.remote_groups.pop(user, None)

    def _remote_presence_changed(self, user: str, when: float) -> None:
        """``user``'s presence in the cluster changed through another box:
        tell the watchers here."""
        online = self.is_online(user)
        state = self.users.user(user) or UserState(user, self.remote_groups.get(user, ()))
        if state.last_seen is None or state.last_seen < when:
            state.last_seen = when
        self._fan_out(state, frames.update("online" if online else "offline", user))

    # -- groups --------------------------------------------------------------------

    def membership_changed(self, key: str, member: str, joined: bool) -> None:
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
        self._regroup(key, member, joined)
        Hub.membership_changed(self, key, member, joined)

    # -- delivery ------------------------------------------------------------------

    def deliver(self, name: str, frame: Frame) -> int:
        count = Hub.deliver(self, name, frame)
        remote = list(self.remote.get(name, {}).items())
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
        value = json.dumps({"u": name, "f": encoded, "t": self.clock.seconds()})
        self._queue([[b"HSET", self.key("pending", box), field, value] for box in boxes])
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
        for sids in list(self.remote.get(name, {}).values()):
            for sid in list(sids):
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
            self._queue([[b"HDEL", self.key("pending", self.me)] + acked])

    def settle(self) -> defer.Deferred:
        """Drop from this box's pending hash the chats older than
        ``SETTLED`` seconds that no local mailbox holds any more (they were
        spilled to the message box, long since written)."""
        d = self._eval(b"return redis.call('HGETALL', KEYS[1])",
                       [self.key("pending", self.me)], [])

        def trim(flat):
            now = self.clock.seconds()
            done = []
            for i in range(0, len(flat), 2):
                field, value = _text(flat[i]), json.loads(_text(flat[i + 1]))
                if now - float(value.get("t", now)) < SETTLED:
                    continue
                msgid = decode_frame(value["f"]).args[1]
                if not any(f.is_chat and f.args[1] == msgid
                           for s in self.sessions_of(value["u"])
                           for _, f in s.mailbox.pending()):
                    done.append(field)
            if done:
                self._queue([[b"HDEL", self.key("pending", self.me)] + done])
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
            if self._held is not None and channel == self.key("all"):
                self._held.append(event)        # after the view is read
            else:
                self._handle(kind, event)

    def _handle(self, kind: Any, event: dict) -> None:
        handler = self._handlers.get(kind)
        if handler is None:
            return
        try:
            handler(self, event)
        except Exception:
            self.log.failure("cluster: handling a {kind} event failed", kind=kind)

    def _on_open(self, event: dict) -> None:
        if event["b"] == self.me:
            if self.users.session(event["s"]) is None:
                self._open_local(event)
        else:
            self._note_open(event)

    def _on_close(self, event: dict) -> None:
        if event["b"] != self.me:
            self._note_close(event["s"])

    def _on_pres(self, event: dict) -> None:
        if event["b"] != self.me:
            self._remote_presence(event["u"], event["b"], bool(event["on"]), event.get("g"),
                                  float(event.get("t") or self.clock.seconds()))

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

    _handlers: Dict[str, Callable[["ClusterHub", dict], None]] = {
        "open": _on_open, "close": _on_close, "pres": _on_pres, "member": _on_member,
        "dead": _on_dead, "frame": _on_frame, "sframe": _on_sframe, "ack": _on_ack,
        "watch": _on_watch, "end": _on_end,
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
            for box in (yield self._eval(BOXES, [self.key("nodes")], [])):
                users = yield self._eval(ONLINE_ON, [self.key("online", _text(box))], [])
                online += [box, users]
            self._loaded(sessions, online)
        finally:
            held, self._held = self._held, None
            for event in held:
                self._handle(event["e"], event)

    def _loaded(self, sessions: List[Any], online: List[Any]) -> None:
        """Replace the view with the session records and online sets read."""
        before = {u: self.is_online(u) for u in self.remote_online}
        self.where, self.remote, self.proxies = {}, {}, {}
        self.remote_online, self.remote_seen, self.box_sessions = {}, {}, {}
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
            users = {intern(_text(u)) for u in online[i + 1]}
            if box == self.me:
                online_here = users
                continue
            for user in users:
                boxes = self.remote_online.get(user, NO_GROUPS) | {box}
                self.remote_online[user] = self._shared(frozenset(boxes))
                self.remote_seen[user] = now
        for user in set(before) | set(self.remote_online):
            if before.get(user, self.users.is_online(user)) != self.is_online(user):
                self._remote_presence_changed(user, now)
        self._agree(mine, online_here)

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
        boxes = set(self.box_sessions)
        for online in set(self.remote_online.values()):   # a few shared sets
            boxes |= online
        return boxes

    def bury(self, box: str, alive: bool = False) -> defer.Deferred:
        """Take ``box`` out of the directory (dead, or this box stopping
        cleanly when ``alive``)."""
        d = self._eval(BURY, [self.key("nodes"), self.key("onbox", box),
                              self.key("online", box), self.key("sessions"),
                              self.key("node", box), self.key("all"),
                              self.key("pending", box)],
                       [box, self.prefix + "where:", "1" if alive else "0"])

        def buried(reply):
            records, pending = reply
            if (records or pending) and not alive:
                self.log.warn("cluster: the box {box} is gone; {n} sessions left the"
                              " directory, {k} chats it had not seen acknowledged go to"
                              " the message boxes", box=box, n=len(records), k=len(pending))
            if box != self.me:
                self.forget_box(box)
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
