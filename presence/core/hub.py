"""The hub: sessions, their live channels, presence transitions and routing.

Front-ends turn protocol requests into calls on :class:`Hub`; the hub updates
the tables, decides who must hear of a change, puts frames into the mailboxes
of those sessions and hands them to each session's live channel
(:class:`IChannel`), if it has one.  The hub does no I/O and reads time only
from the clock it is given (``twisted.internet.task.Clock`` in tests).

Side effects that need I/O leave the core through the :class:`IHubListener`
given to the hub: chat text to keep in a message box (mailbox overflow,
session end) and presence transitions to record (last seen).

A session that never reads is bounded twice: its mailbox keeps at most
``mailbox`` frames (older chat spills to the message box), and once it has
spilled ``overflow_release`` chat frames (default: two mailboxes' worth)
without acknowledging any, the hub ends
it (``msg bye overflow``; its unread chat is kept like any session's), so
that a flood to a reader who is not there becomes offline chat, which the
message-box quota bounds.

Presence rule: a user is online while any of their sessions holds a heartbeat
or ended its last one less than ``linger`` seconds ago.  Logout and expiry
remove a session at once.  The :meth:`Hub.sweep` generator, driven a chunk at
a time by the front-end every poll interval, writes due keep-alives, ends
lingering presence and expires sessions without heartbeat for ``session_ttl``.

Presence states (:mod:`presence.core.states`): each session sets its own
state and status text (:meth:`Hub.set_state`); a user's state is that of
their most available *live* session (one that holds a heartbeat or ended its
last one less than ``linger`` ago), offline when the presence rule says so.
Whatever may change it (a state set, a heartbeat that starts or whose linger
ends, a session that ends) re-applies the rule, and watchers hear
``msg update <state> <user>`` only when the result differs from what they
were told last (:attr:`Hub.told`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from zope.interface import Attribute, Interface, implementer

from presence.core import frames
from presence.core.fanout import FanOut
from presence.core.frames import Frame
from presence.core.mailbox import Entry, Mailbox
from presence.core.ratelimit import address_key
from presence.core.states import (
    AVAILABLE_STATE, OFFLINE_STATE, State, combine, state_value, wire,
)
from presence.core.tables import (
    GroupTable, Session, UserState, UserTable, book_key, display_name, group_set,
)

#: how many recent chat ``seq`` values a session remembers for de-duplication
SEQ_MEMORY = 256
#: sessions looked at per sweep chunk (one reactor turn).  A keep-alive
#: write and its flush cost ~75 us on the benchmark machine, so a chunk where
#: every session is due holds other requests up ~4 ms (200: ~15 ms, which
#: showed as the p99 of chat delivery during a keep-alive round)
SWEEP_CHUNK = 50


class IChannel(Interface):
    """The live end of a session: its held heartbeat request."""

    def send(entries: Sequence[Entry]) -> None:
        """Write these (id, frame) entries."""

    def keepalive() -> None:
        """Write the keep-alive byte."""

    def release(reason: str) -> None:
        """End the held request (a newer one replaced it, or the session
        ended).  The channel then calls :meth:`Hub.detach` itself."""


class IHubListener(Interface):
    """Where the core's side effects leave it."""

    def spill(user: str, frame: Frame) -> None:
        """Keep this chat frame for ``user``: it left a mailbox unread."""

    def presence_changed(user: str, online: bool, now: float) -> None:
        """``user`` came online or went offline at ``now``."""


class IHub(Interface):
    """Everything a front-end (and :class:`~presence.service.PresenceService`)
    may use of the hub: sessions, their heartbeats, presence, watching and
    routing.  :class:`Hub` is the embedded implementation: one host box, all
    in memory.  Cluster mode gives a second implementation that routes frames
    between host boxes; each docstring says what it has to do there.

    Sessions (:class:`~presence.core.tables.Session`) and their mailboxes are
    *local*: a session lives on the box that holds its heartbeat, and the
    methods taking a ``Session`` are only ever given a session of this box.
    Methods taking a *name* are global, they concern the user wherever their
    sessions are, except where the docstring says "this box".

    ``is_online`` and the other presence queries are synchronous on purpose
    (see "Interfaces at the seams" in docs/architecture.md): every box keeps
    a local view of global presence, which a cluster implementation feeds
    from the presence changes it receives by pub/sub, so that the hot paths
    (``POST /chat``, a page's rows, SIP routing) never wait for the network.
    The view may lag a change on another box by one pub/sub delivery, so a
    cluster hub must handle a frame routed to a box where the user no longer
    has a session like a frame for an offline user (chat goes to the message
    box, never lost).

    No front-end reaches into the hub's tables (``users``, ``groups``);
    ``tests/test_seams.py`` checks that every hub attribute used outside
    ``presence/core/`` is declared here.
    """

    clock = Attribute("the IReactorTime the hub reads time from")
    config = Attribute(
        "the HubConfig (timings, bounds, host_box): the same on every box of a "
        "cluster, except host_box")
    listener = Attribute(
        "the IHubListener side effects leave through; PresenceService sets it. "
        "A cluster hub calls it on the box where the effect happens (a spill on "
        "the session's box; presence_changed once per transition of the user, "
        "on the box that made it)")

    # -- sessions -----------------------------------------------------------

    def login(name: str, ident: str, ip: str = "", port: int = 0,
              groups: Sequence[str] = (), guest: bool = False) -> Session:
        """Open a session on this box for ``name`` with session ID ``ident``
        (``groups``: its group keys, ``~owner`` of each address book listing
        it included); past ``config.sessions_per_user`` the user's oldest
        session ends with ``msg bye replaced``.  A cluster hub also records
        the session in the global directory (which box holds it) and counts
        the bound over all boxes."""

    def login_local(name: str, ident: str, ip: str = "",
                    groups: Sequence[str] = ()) -> Session:
        """As :meth:`login`, for a session held by this box whatever the
        placement would choose: one whose "heartbeat" is in this process (a
        dyndns2 name kept alive by its updates, see presence/names/)."""

    def session(ident: str) -> Optional[Session]:
        """The live session ``ident``, else None.  A cluster hub answers a
        session held by another box too, as a stand-in whose ``host_box`` is
        that box's (not ``config.host_box``): the heartbeat redirects there
        (307), and the other methods given the stand-in (``end``, ``ack``,
        ``watch``, ``deliver_session``, ``chat``) are carried out on its box
        through Redis."""

    def end(session: Session, reason: str) -> None:
        """End ``session`` (``logout``, ``expired``, ``replaced``, ...): send
        ``msg bye reason``, release its heartbeat, spill its unread chat,
        update presence.  A cluster hub also removes it from the global
        directory."""

    def close_all(reason: str) -> None:
        """End every session of this box (the node stops)."""

    def end_user(name: str, reason: str, keep: Optional[Session] = None) -> int:
        """End every session of user ``name`` but ``keep`` (a password
        change), on every box; return how many.  A cluster hub ends the
        ones held by other boxes there."""

    # -- heartbeats -----------------------------------------------------------

    def attach(session: Session, channel: IChannel, ack: int = 0) -> None:
        """A heartbeat request arrived for ``session``: acknowledge up to
        ``ack``, release the channel held before, hold ``channel``, send it
        the unacknowledged frames; the user comes online."""

    def detach(session: Session, channel: IChannel) -> None:
        """The heartbeat ``channel`` of ``session`` ended (presence lingers)."""

    def ack(session: Session, upto: int) -> None:
        """The client of ``session`` has every frame up to id ``upto``."""

    def address_changed(session: Session, ip: str, port: int) -> None:
        """The client of ``session`` came back from another address; its
        watchers hear ``msg update address`` when the IP changed."""

    # -- presence -------------------------------------------------------------

    def is_online(name: str) -> bool:
        """Whether user ``name`` is online by the presence rule, on any box.
        Synchronous: a cluster hub answers from its local view of global
        presence."""

    def state_of(name: str) -> Tuple[str, str]:
        """User ``name``'s combined presence state and status text:
        ``("available" | "away" | "busy" | "offline", text)``, the state of
        their most available live session on any box (``offline`` with no
        text when none).  Synchronous like :meth:`is_online`, which is true
        exactly when the state is not ``offline``."""

    def set_state(session: Session, state: str, text: str = "") -> None:
        """``session`` sets its presence state (``available``, ``away``,
        ``busy``, checked by the caller) and status text (``""``: none).
        When the user's combined state (see :meth:`state_of`) changes, their
        watchers hear ``msg update <state> <user>`` (text as the payload),
        as they hear online and offline; no frame when it does not.  A
        cluster hub carries a stand-in's change out on its box and shares
        each box's combination of its sessions with the other boxes."""

    def observe_states(observer: Callable[[str, Tuple[str, str]], None]) -> None:
        """From now on call ``observer(name, state)`` after every change of
        a user's combined state (:meth:`state_of`) as this box sees it: each
        change its watchers hear as ``msg update`` (online and offline
        included), also of users nobody on this box watches.  A cluster hub
        calls it for changes on other boxes too, as each reaches this box.
        An observer must not raise (it runs inside the change).  The SIP
        presence server's NOTIFYs come from here."""

    def address_of(name: str) -> Optional[str]:
        """The IP address of user ``name``'s most recent live session on any
        box: the newest one holding a heartbeat, else the newest of all;
        None when the user has none.  What the name service answers for an
        online user.  Synchronous: a cluster hub answers from its view of
        the global directory (the address each session was opened from)."""

    def knows(name: str) -> bool:
        """Whether ``name`` is a live user: one with a session or still
        online (lingering), on any box.  This is how guests, who exist only
        while they have a session, are found; a cluster hub answers from the
        global directory of sessions (its local view of it)."""

    def last_seen(name: str) -> Optional[float]:
        """When user ``name`` last came online or went offline, while the
        hub still knows them (see :meth:`knows`); None otherwise (the
        directory's ``last_seen`` then tells)."""

    def sessions_of(name: str) -> List[Session]:
        """The sessions of user ``name`` held by *this* box, oldest first (a
        new list).  A front-end that must reach every session of a user on
        every box uses :meth:`deliver`."""

    def session_ids(name: str) -> List[str]:
        """The IDs of every session of user ``name`` on any box, this box's
        first (a cluster hub answers the others from its view of the global
        directory); :meth:`session` gives each one, a stand-in for a session
        of another box (the operator console lists and ends them)."""

    def guest_count() -> int:
        """How many guest sessions this box holds (the bound on guests is
        one of the box's memory)."""

    def guests_from(key: str) -> int:
        """How many guest sessions the client address key ``key``
        (:func:`~presence.core.ratelimit.address_key`) holds.  A cluster hub
        counts over every box, so that the per-address bound holds in the
        cluster."""

    # -- groups and watching ----------------------------------------------------

    def watch(session: Session, key: str) -> None:
        """Make ``key`` (a group, a user, or ``~owner``) the active group of
        ``session``: it hears of presence changes of the key's members only.
        A cluster hub makes sure this box receives those changes."""

    def membership_changed(key: str, member: str, joined: bool) -> None:
        """``member`` joined or left group ``key`` (or an address book): the
        member's groups change and every session showing ``key`` gets
        ``msg refresh``.  A cluster hub does both on every box."""

    def set_on_demand(key: str, on_demand: bool) -> None:
        """The owner of group ``key`` chose presence on demand (or push):
        this box pushes its watchers no presence changes and no ``msg
        refresh`` of it.  Told by the service whenever it reads the group's
        record, so each box learns it when one of its sessions opens the
        group."""

    # -- delivery -------------------------------------------------------------

    def deliver(name: str, frame: Frame) -> int:
        """Put ``frame`` into every live session of user ``name``; return how
        many sessions it went to.  A cluster hub routes it to every box
        holding one of the user's sessions and returns how many sessions
        its view of the global directory lists (no front-end relies on
        the exact number; a remote box may find fewer)."""

    def deliver_session(session: Session, frame: Frame) -> None:
        """Put ``frame`` into the mailbox of this one (local) session."""

    def spills_on_delivery(name: str) -> List[Frame]:
        """The chat frames one more frame for ``name`` would push out of full
        mailboxes into the message box (each counted once).  A cluster hub
        asks the boxes holding the user's sessions, or answers for the
        local ones and lets the remote boxes refuse at delivery."""

    def chat(session: Session, to: str, text: str, seq: Optional[str],
             msgid: str) -> Tuple[str, str, bool]:
        """Send a chat from ``session`` to user ``to``: ``(delivered, msgid,
        fresh)``, ``delivered`` is ``"online"`` or ``"stored"`` (the caller
        keeps it in the message box); a repeated ``seq`` of the session is
        answered as the first time with ``fresh`` False.  Chats from one
        session to one user arrive in the order of the calls, on any box."""

    def forget_seq(session: Session, seq: Optional[str]) -> None:
        """Let ``seq`` of ``session`` be sent again (keeping its text failed)."""

    def recall_seq(session: Session, seq: Optional[str]) -> Optional[Any]:
        """Before :meth:`chat` with ``seq``: None when the session's own
        memory is all there is (one node), else a Deferred that fires once
        the first answer to ``seq``, given by any node of the cluster, is in
        the session's memory, so that a retry through another node is
        answered as the first time and delivered once."""

    def shared_seq(session: Session, seq: Optional[str]) -> Optional[Any]:
        """Right after :meth:`chat` answered ``seq`` anew: None on one node,
        else a Deferred that fires once that answer is where every node's
        :meth:`recall_seq` reads it (the caller answers the client then, so
        that a retry through another node cannot miss it)."""

    def broadcast(frame: Frame) -> int:
        """Put ``frame`` into every live session (an operator's ``msg
        notice``); return how many on this box.  A cluster hub also has
        every other box do it for its own sessions."""

    # -- the box ----------------------------------------------------------------

    overflows = Attribute(
        "frames pushed out of a full mailbox on this box so far (a counter the "
        "operator endpoint reads)")
    pubsub_lag = Attribute(
        "a cluster hub: the Histogram (presence.core.counters) of seconds from an "
        "event's publication on another box to its arrival here; None on one node")

    def sweep(chunk: int = SWEEP_CHUNK) -> Iterator[int]:
        """One pass over this box's sessions (keep-alives, linger, expiry),
        yielding how many sessions each chunk looked at."""

    def stats() -> dict:
        """This box's figures: ``sessions``, ``held``, ``online_users``."""

    def boxes() -> List[dict]:
        """The live host boxes of the cluster, ``{"box", "sessions"}`` each
        (``GET /api/cluster``); one node alone is a cluster of one box."""

    def box_names() -> List[str]:
        """The names (``host_box``) of the live boxes, this one's included,
        without counting their sessions: cheap enough for every request."""

    def claim(ident: str) -> Optional[Any]:
        """For a heartbeat naming a session this box does not know: None if
        there is nothing more to learn (one node), else a Deferred firing
        with the session once the global directory was read (a session
        placed on this box by another node whose announcement has not
        arrived yet is opened here then), or None."""


@dataclass
class HubConfig:
    keepalive: float = 25.0
    poll: float = 4.0
    linger: Optional[float] = None  # default: two poll intervals
    session_ttl: float = 3600.0
    #: a guest session expires after this long without a heartbeat
    guest_ttl: float = 300.0
    mailbox: int = 1000
    #: chat frames a session may spill (lose to its mailbox bound) without
    #: acknowledging any before it is ended (``msg bye overflow``); default:
    #: twice ``mailbox``
    overflow_release: Optional[int] = None
    sessions_per_user: int = 16
    host_box: str = "localhost:8080"
    #: the scheme clients reach every box with (``--host-box https://...``);
    #: None: the scheme of each request (docs/cluster.md, "Pages across boxes")
    box_scheme: Optional[str] = None
    #: seconds: the window of bundled presence (``bundle=1`` heartbeats get
    #: one ``msg updates`` per window) and of coalescing a user's further
    #: changes into the final state; 0 (the core's default) sends each
    #: change at once, the server's ``--presence-batch`` default is 0.1
    presence_batch: float = 0.0

    def __post_init__(self) -> None:
        if self.linger is None:
            self.linger = 2 * self.poll
        if self.overflow_release is None:
            self.overflow_release = 2 * self.mailbox


@implementer(IHubListener)
class NullListener:
    def spill(self, user: str, frame: Frame) -> None:
        pass

    def presence_changed(self, user: str, online: bool, now: float) -> None:
        pass


@implementer(IHub)
class Hub:
    """The core of one host box."""

    pubsub_lag: Optional[Any] = None  # IHub.pubsub_lag: no other box to hear from

    def __init__(self, clock, config: HubConfig | None = None,
                 listener: IHubListener | None = None, timer=None) -> None:
        self.clock = clock
        self.config = config or HubConfig()
        self.listener = listener or NullListener()
        self.users = UserTable()
        self.groups = GroupTable()
        #: sessions that hold no heartbeat but whose user may still linger
        self._lingering: set[UserState] = set()
        self.held = 0
        #: frames pushed out of full mailboxes (IHub.overflows)
        self.overflows = 0
        #: chat frames each session lost to its mailbox bound (spilled) since
        #: its last ack; presence frames that leave cost nothing and count not
        self._evicted: Dict[Session, int] = {}
        #: sessions past ``overflow_release``, ended once the delivery that
        #: pushed them over is done (not while the audience is being walked)
        self._overflowed: List[Session] = []
        self._releasing = False
        #: live guest sessions, with the address key (``address_key``) they
        #: were opened from, and how many each address key holds
        self.guest_sessions: Dict[Session, str] = {}
        self.guests_by_ip: Dict[str, int] = {}
        #: the state this box's watchers were last told of each user who is
        #: not offline for them (absent: offline), so that a change that
        #: leaves the combined state as it was sends no frame
        self.told: Dict[str, State] = {}
        #: watch keys of the groups whose owner chose presence on demand:
        #: nothing is pushed to their watchers (see set_on_demand)
        self.on_demand: set[str] = set()
        #: presence changes on their way to many watchers, sliced by time
        #: (``timer``: what measures a slice; default the clock)
        self.fanout = FanOut(self, timer)
        #: IHub.observe_states
        self._state_observers: List[Callable[[str, State], None]] = []

    # -- sessions ---------------------------------------------------------

    def login(self, name: str, ident: str, ip: str = "", port: int = 0,
              groups: Sequence[str] = (), guest: bool = False) -> Session:
        """Open a session for ``name`` (groups: its group keys, address books
        listing it included).  Past the per-user bound the oldest session of
        the user ends with ``msg bye replaced``."""
        now = self.clock.seconds()
        user = self.users.ensure(name, groups, guest)
        if groups:
            user.groups = group_set(groups)
        session = Session(ident, user, ip, port, self.config.host_box, now,
                          Mailbox(self.config.mailbox))
        self.users.add(session)
        self.groups.watch(session, book_key(name))
        if guest:
            key = self.guest_sessions[session] = address_key(ip)
            self.guests_by_ip[key] = self.guests_by_ip.get(key, 0) + 1
        while len(user.sessions) > self.config.sessions_per_user:
            self.end(user.sessions[0], "replaced")
        return session

    def login_local(self, name: str, ident: str, ip: str = "",
                    groups: Sequence[str] = ()) -> Session:
        return self.login(name, ident, ip, 0, groups)

    def session(self, ident: str) -> Optional[Session]:
        return self.users.session(ident)

    def sessions_of(self, name: str) -> List[Session]:
        user = self.users.user(name)
        return [] if user is None else list(user.sessions)

    def session_ids(self, name: str) -> List[str]:
        return [s.id for s in self.sessions_of(name)]

    def guest_count(self) -> int:
        return len(self.guest_sessions)

    def guests_from(self, key: str) -> int:
        return self.guests_by_ip.get(key, 0)

    def end(self, session: Session, reason: str) -> None:
        """End a session (logout, expiry, replacement): say ``msg bye``,
        release its heartbeat, keep its unread chat, update presence."""
        if self.users.session(session.id) is not session:
            return
        now = self.clock.seconds()
        user = session.user
        self.users.remove(session)
        self.groups.unwatch(session)
        self._evicted.pop(session, None)
        ip = self.guest_sessions.pop(session, None)
        if ip is not None:
            left = self.guests_by_ip[ip] - 1
            if left:
                self.guests_by_ip[ip] = left
            else:
                del self.guests_by_ip[ip]
        channel = session.channel
        unread = []
        if channel is not None:
            session.channel = None
            session.last_end = now
            self.held -= 1
            bye = frames.bye(reason)
            ident, unread = session.mailbox.push(bye)
            channel.send([(ident, bye)])
            channel.release(reason)
        for frame in unread + session.mailbox.drain():
            if frame.is_chat:
                self.listener.spill(user.name, frame)
        if reason != "logout" and session.last_end is not None:
            # only an explicit logout ends presence at once; a replaced
            # session's heartbeat lingers like any other that ended
            if session.last_end >= (user.ended_at or 0.0):
                user.ended_entry = (session.state, session.status, session.state_at)
            user.ended_at = max(user.ended_at or 0.0, session.last_end)
        if not user.sessions:
            self._lingering.discard(user)
            self._set_online(user, False)
            self.users.forget_if_idle(user)
        else:
            self._settle(user, now)
            self._restate(user)

    def end_user(self, name: str, reason: str, keep: Optional[Session] = None) -> int:
        others = [s for s in self.sessions_of(name) if s is not keep]
        for other in others:
            self.end(other, reason)
        return len(others)

    def close_all(self, reason: str) -> None:
        """End every session (server shutdown)."""
        for session in list(self.users.sessions.values()):
            self.end(session, reason)

    # -- heartbeats -------------------------------------------------------

    def attach(self, session: Session, channel: IChannel, ack: int = 0) -> None:
        """A heartbeat request arrived for ``session``: acknowledge up to
        ``ack``, release the request held before, hold ``channel`` and send it
        the unacknowledged frames."""
        if ack:
            self.ack(session, ack)
        old = session.channel
        now = session.last_write = self.clock.seconds()
        # whether the session's state counted already (see _live)
        counted = old is not None or self._live(session, now)
        session.channel = channel
        if old is not None:
            old.release("replaced")
        else:
            self.held += 1
        self.groups.set_bundle(session, bool(getattr(channel, "bundle", False)))
        user = session.user
        self._lingering.discard(user)
        if not user.online:
            self._set_online(user, True)
        elif not counted:
            self._restate(user)
        pending = session.mailbox.pending()
        if pending:
            channel.send(pending)

    def detach(self, session: Session, channel: IChannel) -> None:
        """The heartbeat request ``channel`` of ``session`` ended."""
        if session.channel is not channel:
            return
        session.channel = None
        self.held -= 1
        now = self.clock.seconds()
        session.last_end = now
        if self.users.session(session.id) is session:
            self._settle(session.user, now)
            if not self.config.linger:
                # no linger: the session stops counting for the state now
                self._restate(session.user)

    def ack(self, session: Session, upto: int) -> None:
        if session.mailbox.ack(upto):
            self._evicted.pop(session, None)
        if session.refresh_id and upto >= session.refresh_id:
            session.refresh_id = 0

    # -- presence ---------------------------------------------------------

    def is_online(self, name: str) -> bool:
        return self.users.is_online(name)

    def state_of(self, name: str) -> Tuple[str, str]:
        user = self.users.user(name)
        if user is None or not user.online:
            return OFFLINE_STATE
        return self._local_state(user)

    def _live(self, session: Session, now: float) -> bool:
        """Whether ``session``'s state counts: it holds a heartbeat or ended
        its last one less than ``linger`` ago (the presence rule, per
        session)."""
        if session.channel is not None:
            return True
        end = session.last_end
        return end is not None and now - end < self.config.linger

    def _local_state(self, user: UserState) -> State:
        """The combination of the states of ``user``'s live sessions on this
        box (``user`` is online here)."""
        best = self._local_entry(user)
        return AVAILABLE_STATE if best is None else state_value(best[0], best[1])

    def _local_entry(self, user: UserState) -> Optional[Tuple[str, str, float]]:
        now = self.clock.seconds()
        sessions = user.sessions
        best = combine((s.state, s.status, s.state_at) for s in sessions if self._live(s, now))
        if best is None:
            # online with none live (a replaced or expired session lingers,
            # or the sweep has not ended presence yet): the state of the
            # session that was live last
            when, best = user.ended_at, user.ended_entry
            for s in sessions:
                if s.last_end is not None and (when is None or s.last_end > when):
                    when, best = s.last_end, (s.state, s.status, s.state_at)
        return best

    def set_state(self, session: Session, state: str, text: str = "") -> None:
        if self.users.session(session.id) is not session:
            return
        session.state, session.status = state, text
        session.state_at = self.clock.seconds()
        self._restate(session.user)

    def _restate(self, user: UserState) -> None:
        """Something that goes into ``user``'s combined state changed on
        this box (a session set its state, started or stopped counting):
        tell the watchers if the combined state changed."""
        if user.online:
            self._tell(user)

    def _tell(self, user: UserState) -> None:
        """Tell this box's watchers of ``user``'s combined state, unless it
        is what they were told last: ``msg update <state> <user>``, the
        status text as the payload."""
        name = user.name
        state = self.state_of(name)
        if self.told.get(name, OFFLINE_STATE) == state:
            return
        if state == OFFLINE_STATE:
            self.told.pop(name, None)
        else:
            self.told[name] = state
        self._fan_out(user, frames.update(wire(state[0]), name, state[1]))
        for observer in self._state_observers:
            observer(name, state)

    def observe_states(self, observer: Callable[[str, State], None]) -> None:
        self._state_observers.append(observer)

    def knows(self, name: str) -> bool:
        return name in self.users.users

    def address_of(self, name: str) -> Optional[str]:
        user = self.users.user(name)
        if user is None:
            return None
        found = [((s.channel is not None, s.login_time), s.ip) for s in user.sessions if s.ip]
        return max(found)[1] if found else None

    def last_seen(self, name: str) -> Optional[float]:
        user = self.users.user(name)
        return None if user is None else user.last_seen

    def _settle(self, user: UserState, now: float) -> None:
        """Re-apply the presence rule to ``user`` after a heartbeat ended."""
        if user.holding():
            return
        last = user.last_end()
        if last is not None and now - last < self.config.linger:
            self._lingering.add(user)
        else:
            self._lingering.discard(user)
            self._set_online(user, False)

    def _set_online(self, user: UserState, online: bool) -> None:
        if user.online == online:
            return
        now = self.clock.seconds()
        user.online = online
        user.last_seen = now
        self._changed(user, online, now)

    def _changed(self, user: UserState, online: bool, now: float) -> None:
        """``user`` came online or went offline on this box: record it and
        tell the watchers (a cluster hub first asks whether another box
        still holds the user online)."""
        self.listener.presence_changed(user.name, online, now)
        self._tell(user)

    def _fan_out(self, user: UserState, frame: Frame) -> None:
        """Tell ``user``'s watchers of ``frame`` (a ``msg update``): sliced
        by time, coalesced, bundled for ``bundle=1`` heartbeats (see
        presence.core.fanout)."""
        self.fanout.change(user, frame)

    def address_changed(self, session: Session, ip: str, port: int) -> None:
        """The client of ``session`` came back from another address."""
        if (ip, port) == (session.ip, session.port):
            return
        moved = ip != session.ip
        session.ip, session.port = ip, port
        if moved and session.user.online:
            self._fan_out(session.user, frames.update("address", session.user.name))

    # -- groups and watching ----------------------------------------------

    def watch(self, session: Session, key: str) -> None:
        """Make ``key`` (a group, a user, or ``~owner``) the session's active
        group."""
        self.groups.watch(session, key)

    def membership_changed(self, key: str, member: str, joined: bool) -> None:
        """``member`` joined or left group ``key`` (or an address book):
        update the member's groups and tell every session showing ``key``."""
        user = self.users.user(member)
        if user is not None:
            user.groups = group_set(user.groups | {key} if joined else user.groups - {key})
        self.fanout.refresh(key, frames.refresh(display_name(key)))

    def set_on_demand(self, key: str, on_demand: bool) -> None:
        """Group ``key``'s owner chose presence on demand (or not): its
        watchers are pushed neither its members' changes nor ``msg
        refresh``; they read presence when they open the page or list."""
        if on_demand:
            self.on_demand.add(key)
        else:
            self.on_demand.discard(key)

    # -- delivery ---------------------------------------------------------

    def deliver(self, name: str, frame: Frame) -> int:
        user = self.users.user(name)
        if user is None:
            return 0
        sessions = list(user.sessions)
        for session in sessions:
            self._push(session, frame)
        self._release_overflowed()
        return len(sessions)

    def deliver_session(self, session: Session, frame: Frame) -> None:
        self._push(session, frame)
        self._release_overflowed()

    def broadcast(self, frame: Frame) -> int:
        sessions = list(self.users.sessions.values())
        for session in sessions:
            self._push(session, frame)
        self._release_overflowed()
        return len(sessions)

    def spills_on_delivery(self, name: str) -> List[Frame]:
        """The chat frames one more frame for ``name`` would push out of a
        full mailbox into the message box (the oldest of each session at its
        bound, two if a refresh would follow; a chat held by several sessions
        counts once)."""
        user = self.users.user(name)
        if user is None:
            return []
        seen = {}
        for session in user.sessions:
            mailbox = session.mailbox
            if len(mailbox) >= mailbox.bound:
                # the frame pushes one out, and the refresh it brings another
                for frame in mailbox.oldest(2 if self._refresh_due(session) else 1):
                    if frame.is_chat:
                        seen[frame.args[1]] = frame
        return list(seen.values())

    @staticmethod
    def _refresh_due(session: Session) -> bool:
        """Whether an overflow of ``session`` now adds a ``msg refresh``."""
        return not session.refresh_id or not session.mailbox.has(session.refresh_id)

    def _push(self, session: Session, frame: Frame, bulk: bool = False) -> None:
        """Put ``frame`` into the session's mailbox and write it.  ``bulk``:
        a frame of a fan-out, which a channel may let wait behind the direct
        frames (chat, SIP, bye) of other sessions (``send_bulk``)."""
        ident, evicted = session.mailbox.push(frame)
        entries: List[Entry] = [(ident, frame)]
        if evicted:
            self.overflows += len(evicted)
            spilled = self._spill(session, evicted)
            if self._refresh_due(session):
                refresh = frames.refresh(display_name(session.active))
                rid, more = session.mailbox.push(refresh)
                self.overflows += len(more)
                spilled += self._spill(session, more)
                session.refresh_id = rid
                entries.append((rid, refresh))
            if spilled:
                before = self._evicted.get(session, 0)
                self._evicted[session] = before + spilled
                limit = self.config.overflow_release
                if before < limit <= before + spilled:
                    self._overflowed.append(session)
        channel = session.channel
        if channel is not None:
            session.last_write = self.clock.seconds()
            if bulk:
                getattr(channel, "send_bulk", channel.send)(entries)
            else:
                channel.send(entries)

    def _spill(self, session: Session, evicted: List[Frame]) -> int:
        """Hand the chat among ``evicted`` to the listener; how many."""
        count = 0
        for old in evicted:
            if old.is_chat:
                self.listener.spill(session.user.name, old)
                count += 1
        return count

    def _release_overflowed(self) -> None:
        """End the sessions that lost ``overflow_release`` frames unread."""
        if self._releasing:
            return  # the outer call's loop takes the new ones too
        self._releasing = True
        try:
            while self._overflowed:
                self.end(self._overflowed.pop(0), "overflow")
        finally:
            self._releasing = False

    def chat(self, session: Session, to: str, text: str,
             seq: Optional[str], msgid: str) -> Tuple[str, str, bool]:
        """Deliver a chat from ``session`` to user ``to``.

        Returns ``(delivered, msgid, fresh)``.  ``delivered`` is ``"online"``
        when the frames went to ``to``'s sessions and ``"stored"`` when ``to``
        is offline: the caller then keeps the text in the message box.
        ``fresh`` is False when ``seq`` repeats an earlier one of this
        session: nothing is sent again and the first answer is returned.
        """
        seqs = session.seqs
        if seq is not None and seqs is not None and seq in seqs:
            first_id, first_delivered = seqs[seq]
            return first_delivered, first_id, False
        delivered = "online" if self.is_online(to) else "stored"
        if seq is not None:
            self._remember_seq(session, seq, msgid, delivered)
        if delivered == "online":
            self.deliver(to, frames.chat(session.user.name, msgid, text))
        return delivered, msgid, True

    @staticmethod
    def _remember_seq(session: Session, seq: str, msgid: str, delivered: str) -> None:
        """``seq`` of ``session`` was answered ``(delivered, msgid)``."""
        seqs = session.seqs
        if seqs is None:
            seqs = session.seqs = OrderedDict()
        seqs[seq] = (msgid, delivered)
        if len(seqs) > SEQ_MEMORY:
            seqs.popitem(last=False)

    def forget_seq(self, session: Session, seq: Optional[str]) -> None:
        """Let ``seq`` be sent again (keeping its text failed)."""
        if seq is not None and session.seqs is not None:
            session.seqs.pop(seq, None)

    def recall_seq(self, session: Session, seq: Optional[str]) -> None:
        return None

    def shared_seq(self, session: Session, seq: Optional[str]) -> None:
        return None

    # -- the sweep ----------------------------------------------------------

    def sweep(self, chunk: int = SWEEP_CHUNK) -> Iterator[int]:
        """One pass over every session, yielding after each ``chunk`` of them
        so that the caller can give the reactor a turn.

        Writes the keep-alive byte to held heartbeats idle for ``keepalive``
        seconds, ends lingering presence past ``linger`` and expires sessions
        with no heartbeat for ``session_ttl``.  Yields how many sessions the
        chunk looked at.
        """
        cfg = self.config
        for user in list(self._lingering):
            if user in self._lingering:
                self._settle(user, self.clock.seconds())
        sessions = list(self.users.sessions.values())
        for start in range(0, len(sessions), chunk):
            now = self.clock.seconds()
            part = sessions[start:start + chunk]
            for session in part:
                channel = session.channel
                if channel is not None:
                    if now - session.last_write >= cfg.keepalive:
                        session.last_write = now
                        channel.keepalive()
                else:
                    if (session.user.online and session.last_end is not None
                            and len(session.user.sessions) > 1):
                        # a session whose linger ends while another keeps
                        # the user online stops counting for their state
                        self._restate(session.user)
                    since = session.last_end if session.last_end is not None else session.login_time
                    ttl = cfg.guest_ttl if session.user.guest else cfg.session_ttl
                    if now - since >= ttl:
                        self.end(session, "expired")
            yield len(part)

    def boxes(self) -> List[dict]:
        return [{"box": self.config.host_box, "sessions": len(self.users.sessions)}]

    def box_names(self) -> List[str]:
        return [self.config.host_box]

    def claim(self, ident: str) -> None:
        return None

    def stats(self) -> dict:
        return {
            "sessions": len(self.users.sessions),
            "held": self.held,
            "online_users": sum(1 for _ in self.users.online_names()),
        }
