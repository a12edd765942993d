"""Who is online, with which sessions, in which groups, watching what.

``UserTable`` holds the *dynamic session information* of every live session
(user, session ID, client IP and port, host box, login time, active group)
and, per user, the groups the user belongs to and whether the user is online.
``GroupTable`` holds, per watch target, the sessions watching it.

Watch targets ("keys") share one namespace:

* a group's name (``friends``): sessions showing that group;
* a user's name (``bob``): sessions watching that single user (what a
  communications page does for its visitor);
* ``~alice``: alice's address book, her personal group.  On the wire it is
  called by its owner's name (``msg refresh alice``), which cannot collide
  with a group because group and user names never collide.

A user ``X``'s change of presence concerns the sessions watching any key in
``X.groups | {X}`` (``X.groups`` includes ``~owner`` for every address book
listing ``X``): that is the update list.

Pure data structures: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Collection, Dict, FrozenSet, Iterable, Iterator, List, Optional, Set, Union

from presence.core.mailbox import Mailbox

BOOK_PREFIX = "~"
#: the groups of every user in none (``frozenset()`` is a new, GC-tracked
#: object each time)
NO_GROUPS: FrozenSet[str] = frozenset()


def group_set(groups: Iterable[str]) -> FrozenSet[str]:
    """``frozenset(groups)``, the shared :data:`NO_GROUPS` when empty."""
    frozen = frozenset(groups)
    return frozen if frozen else NO_GROUPS


def book_key(owner: str) -> str:
    """The watch key of ``owner``'s address book."""
    return BOOK_PREFIX + owner


def display_name(key: str) -> str:
    """The name a client knows a watch key by."""
    return key[1:] if key.startswith(BOOK_PREFIX) else key


class Session:
    """One logged-in client and its dynamic session information."""

    __slots__ = (
        "id", "user", "ip", "port", "host_box", "login_time", "active",
        "mailbox", "channel", "last_end", "last_write", "seqs", "refresh_id",
        "welcome", "scope", "state", "status", "state_at", "bundle", "__weakref__",
    )

    def __init__(self, ident: str, user: "UserState", ip: str, port: int,
                 host_box: str, login_time: float, mailbox: Mailbox) -> None:
        self.id = ident
        self.user = user
        self.ip = ip
        self.port = port
        self.host_box = host_box
        self.login_time = login_time
        self.active: str = book_key(user.name)
        self.mailbox = mailbox
        self.channel: object | None = None
        #: when the last heartbeat of this session ended (None: none yet)
        self.last_end: Optional[float] = None
        #: when anything was last written to the held heartbeat
        self.last_write = login_time
        #: recent chat ``seq`` values of this session -> (msgid, delivered)
        self.seqs: "OrderedDict[str, tuple] | None" = None
        #: id of the pending ``msg refresh`` sent after a mailbox overflow
        self.refresh_id = 0
        #: the welcome figures taken at login (spec section 5)
        self.welcome: dict | None = None
        #: None for a full session; a name (``"wml"``) for a session limited
        #: to some front-end (see PresenceService.session)
        self.scope: Optional[str] = None
        #: the presence state this session set (presence.core.states), its
        #: status text and when it set them
        self.state = "available"
        self.status = ""
        self.state_at = login_time
        #: whether the session's heartbeat asked for bundled presence
        #: (``bundle=1``): it then hears of its watched group's changes in
        #: one ``msg updates`` frame per window (see presence.core.fanout)
        self.bundle = False

    @property
    def name(self) -> str:
        return self.user.name

    def info(self) -> dict:
        """Dynamic session information, as JSON-able data (no session ID)."""
        return {
            "user": self.user.name,
            "ip": self.ip,
            "port": self.port,
            "host_box": self.host_box,
            "login_time": self.login_time,
            "groups": sorted(display_name(g) for g in self.user.groups),
            "active": display_name(self.active),
            "held": self.channel is not None,
            "state": self.state,
            "text": self.status,
        }

    def __repr__(self) -> str:
        return f"<Session of {self.user.name}>"


class UserState:
    """A user known to this node: their live sessions and groups."""

    __slots__ = ("name", "sessions", "groups", "online", "last_seen", "guest", "ended_at",
                 "ended_entry")

    def __init__(self, name: str, groups: Iterable[str] = (), guest: bool = False) -> None:
        self.name = name
        self.sessions: List[Session] = []
        #: immutable, so that the many users in no group share one empty set
        self.groups: FrozenSet[str] = group_set(groups)
        self.online = False
        self.last_seen: Optional[float] = None
        self.guest = guest
        #: when the heartbeat of a session that was replaced last ended
        self.ended_at: Optional[float] = None
        #: that session's presence state (state, text, when it was set)
        self.ended_entry: Optional[tuple] = None

    def holding(self) -> bool:
        """Whether any session holds a heartbeat right now."""
        return any(s.channel is not None for s in self.sessions)

    def last_end(self) -> Optional[float]:
        ends = [s.last_end for s in self.sessions if s.last_end is not None]
        if self.ended_at is not None:
            ends.append(self.ended_at)
        return max(ends) if ends else None

    def __repr__(self) -> str:
        return f"<UserState {self.name} online={self.online}>"


class UserTable:
    """Users and sessions by name and by session ID."""

    def __init__(self) -> None:
        self.users: Dict[str, UserState] = {}
        self.sessions: Dict[str, Session] = {}

    def user(self, name: str) -> Optional[UserState]:
        return self.users.get(name)

    def ensure(self, name: str, groups: Iterable[str] = (), guest: bool = False) -> UserState:
        state = self.users.get(name)
        if state is None:
            state = self.users[name] = UserState(name, groups, guest)
        return state

    def add(self, session: Session) -> None:
        self.sessions[session.id] = session
        session.user.sessions.append(session)

    def remove(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        user = session.user
        if session in user.sessions:
            user.sessions.remove(session)

    def forget_if_idle(self, user: UserState) -> None:
        """Drop a user with no session who is offline."""
        if not user.sessions and not user.online and self.users.get(user.name) is user:
            del self.users[user.name]

    def session(self, ident: str) -> Optional[Session]:
        return self.sessions.get(ident)

    def online_names(self) -> Iterator[str]:
        return (name for name, u in self.users.items() if u.online)

    def is_online(self, name: str) -> bool:
        state = self.users.get(name)
        return bool(state and state.online)


class GroupTable:
    """Watch key -> the sessions watching it.

    A key watched by one session (most keys: each session starts on its own
    address book) maps to that session itself, not to a set of one: one
    object less per session for the garbage collector to scan.

    Sessions whose heartbeat asked for bundled presence (``Session.bundle``)
    are kept apart, in ``bundled``: a presence change reaches them through
    their key's bundle, once per window, not one by one.
    """

    def __init__(self) -> None:
        self.watchers: Dict[str, Union[Session, Set[Session]]] = {}
        #: watch key -> the bundled sessions watching it (never empty)
        self.bundled: Dict[str, Set[Session]] = {}

    def watch(self, session: Session, key: str) -> None:
        self.unwatch(session)
        session.active = key
        if session.bundle:
            bundled = self.bundled.get(key)
            if bundled is None:
                self.bundled[key] = {session}
            else:
                bundled.add(session)
            return
        current = self.watchers.get(key)
        if current is None:
            self.watchers[key] = session
        elif type(current) is set:
            current.add(session)
        elif current is not session:
            self.watchers[key] = {current, session}

    def unwatch(self, session: Session) -> None:
        key = session.active
        bundled = self.bundled.get(key)
        if bundled is not None and session in bundled:
            bundled.discard(session)
            if not bundled:
                del self.bundled[key]
            return
        current = self.watchers.get(key)
        if current is None:
            return
        if type(current) is set:
            current.discard(session)
            if len(current) == 1:
                self.watchers[key] = next(iter(current))
            elif not current:
                del self.watchers[key]
        elif current is session:
            del self.watchers[key]

    def set_bundle(self, session: Session, bundle: bool) -> None:
        """The session's heartbeat asks for bundled presence or not (a
        session that is not watching anything yet just keeps the flag)."""
        if session.bundle == bundle:
            return
        key = session.active
        self.unwatch(session)
        session.bundle = bundle
        self.watch(session, key)

    def _unbundled(self, key: str) -> Collection[Session]:
        current = self.watchers.get(key)
        if current is None:
            return _EMPTY
        return current if type(current) is set else (current,)

    def watching(self, key: str) -> Collection[Session]:
        """Every session watching ``key``, bundled or not."""
        bundled = self.bundled.get(key)
        if bundled is None:
            return self._unbundled(key)
        return [*self._unbundled(key), *bundled]

    def audience(self, user: UserState, keys: Optional[Iterable[str]] = None,
                 bundled: bool = True) -> List[Session]:
        """The update list for a change of ``user``: every session watching a
        group ``user`` is in, or ``user`` alone; ``user``'s own excepted.
        ``keys``: those keys only (default: all of them); ``bundled=False``
        leaves out the sessions that hear of it through a bundle."""
        look = self.watching if bundled else self._unbundled
        found = [w for w in map(look, (user.name, *user.groups) if keys is None else keys) if w]
        if len(found) == 1:
            # the usual case (a change is seen through one group): no set
            return [s for s in found[0] if s.user is not user]
        seen: Set[Session] = set()
        out: List[Session] = []
        for watchers in found:
            for s in watchers:
                if s.user is not user and s not in seen:
                    seen.add(s)
                    out.append(s)
        return out


_EMPTY: Set[Session] = frozenset()  # type: ignore[assignment]
