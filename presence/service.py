"""The presence service: accounts, sessions, groups, chat and message boxes.

This joins the pure core (:class:`~presence.core.hub.Hub`) to the directory
(:class:`~presence.store.interface.IDirectory`).  It is independent of any
protocol: the HTTP API, and later SIP and WML front-ends, call it and turn
its :mod:`presence.errors` into their own status codes.

Every method that touches the directory returns a Deferred (or is a
coroutine); CPU-heavy password hashing runs through ``hasher`` off the
reactor thread.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from presence.core import frames
from presence.core.frames import Frame
from presence.core.hub import Hub, IHubListener
from presence.core.ratelimit import RateLimiter
from presence.core.tables import Session, book_key
from presence.errors import (
    BadRequest, Conflict, Forbidden, NotFound, TooLarge, TooMany, Unauthorized,
)
from presence.store import passwords
from presence.store.interface import IDirectory, NameTaken

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}\Z")
ALIAS_RE = re.compile(r"[a-z0-9+][a-z0-9._@+-]{0,63}\Z")
MSISDN_RE = re.compile(r"\+[0-9]{3,15}\Z")
PHONE_RE = re.compile(r"\+?[0-9 ().-]{3,32}\Z")
SEQ_RE = re.compile(r"[0-9]{1,18}\Z")
GUEST_PREFIX = "guest."
#: password hashes queued for the worker threads at most; past it, 429
MAX_HASHING = 64
#: first path segments that are never names (spec section 6)
RESERVED = frozenset({
    "api", "jchat", "chat", "initchat", "call", "sip", "static", "wml", "nic", "ack",
    "login", "logout", "register", "home", "settings", "favicon.ico", "robots.txt",
    "cgi-bin", "wappush", "admin", "www", "guest", "anonymous", "messages",
})
MAX_TEXT = 4096
MIN_PASSWORD = 6
MAX_PASSWORD = 1024

Hasher = Callable[..., defer.Deferred]


def check_name(name: Any, what: str = "username") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest(f"{what} must be 1-32 characters of a-z, 0-9, '.', '_', '-',"
                         " starting with a letter or digit")
    if name.startswith(GUEST_PREFIX) or name in RESERVED:
        raise BadRequest(f"the {what} {name!r} is reserved")
    return name


def required(value: Any, what: str) -> str:
    """A parameter that must be given as a non-empty string, or 400."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{what} is required")
    return value


def check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"{what} is missing or empty")
    if len(text) > MAX_TEXT:
        raise TooLarge(f"{what} is longer than {MAX_TEXT} characters")
    return text


@implementer(IHubListener)
class _Listener:
    """Carries the core's side effects to the directory."""

    log = Logger()

    def __init__(self, owner: "PresenceService") -> None:
        self.owner = owner

    def spill(self, user: str, frame: Frame) -> None:
        sender, msgid = frame.args[0], frame.args[1]
        d = self.owner.store.store_message(user, sender, frame.payload,
                                           self.owner.clock.seconds(), msgid)
        d.addErrback(lambda f: self.log.failure("keeping a chat for {user} failed", f,
                                                user=user))

    def presence_changed(self, user: str, online: bool, now: float) -> None:
        if online or user.startswith(GUEST_PREFIX):
            return
        d = self.owner.store.record_offline(user, now)
        d.addErrback(lambda f: self.log.failure("recording {user} offline failed", f,
                                                user=user))


class PresenceService:
    log = Logger()

    def __init__(self, hub: Hub, store: IDirectory, hasher: Hasher,
                 hash_cost: int = passwords.DEFAULT_COST, max_guests: int = 10000) -> None:
        self.hub = hub
        self.store = store
        self.clock = hub.clock
        self.hasher = hasher
        self.hash_cost = hash_cost
        self.max_guests = max_guests
        hub.listener = _Listener(self)
        self.login_failures = RateLimiter(capacity=10, rate=1 / 6)
        self.guest_limit = RateLimiter(capacity=30, rate=1 / 2)
        self.anonymous_limit = RateLimiter(capacity=20, rate=1 / 3)
        self._hashing = 0

    # -- accounts -------------------------------------------------------------

    async def register(self, name: Any, password: Any, email: Any = None,
                       phone: Any = None, wireless: Any = None) -> str:
        name = check_name(name)
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise BadRequest(f"the password must be at least {MIN_PASSWORD} characters")
        if len(password) > MAX_PASSWORD or password == name:
            raise BadRequest("that password is too weak or too long")
        for value, label in ((email, "email"), (phone, "phone")):
            if value is not None and (not isinstance(value, str) or len(value) > 128):
                raise BadRequest(f"{label} is not valid")
        if email and "@" not in email:
            raise BadRequest("email is not an e-mail address")
        if wireless and not (isinstance(wireless, str) and MSISDN_RE.match(wireless)):
            raise BadRequest("wireless must be a handset number: '+' and 3-15 digits")
        hashed = await self._hash(passwords.hash_password, password, self.hash_cost)
        try:
            await self.store.create_user(name, hashed, email or None, phone or None,
                                         wireless or None, self.clock.seconds())
        except NameTaken:
            raise Conflict(f"the name {name!r} is taken")
        self.log.info("registered {user}", user=name)
        return name

    async def login(self, name: Any, password: Any, ip: str = "", port: int = 0) -> Session:
        now = self.clock.seconds()
        if not self.login_failures.allowed(ip, now):
            raise TooMany("too many failed logins from this address; try again later")
        if not isinstance(name, str) or not isinstance(password, str) or not name:
            raise BadRequest("username and password are required")
        user = await self.store.get_user(name) if NAME_RE.match(name) else None
        ok = user is not None and await self._hash(
            passwords.check_password, password, user["password_hash"])
        if not ok:
            self.login_failures.take(ip, self.clock.seconds())
            raise Unauthorized("wrong username or password")
        session = await self._open_user(name, ip, port)
        self.log.info("{user} logged in from {ip}", user=name, ip=ip)
        return session

    async def login_verified(self, name: str, ip: str = "", port: int = 0,
                             scope: Optional[str] = None) -> Session:
        """Open a session for user ``name`` whose identity was proven another
        way (a one-time link pushed to the user's handset): as :meth:`login`,
        without the password, limited to ``scope`` (see :meth:`session`).
        NotFound if there is no such user."""
        user = await self.store.get_user(name) if NAME_RE.match(name or "") else None
        if user is None:
            raise NotFound("no such user")
        session = await self._open_user(name, ip, port)
        session.scope = scope
        self.log.info("{user} logged in from {ip} with a handset link", user=name, ip=ip)
        return session

    async def _open_user(self, name: str, ip: str, port: int) -> Session:
        """A new session for the registered user ``name``, with its groups
        and the welcome figures of the time before it."""
        before = await self.store.record_login(name, self.clock.seconds())
        groups, owners = await self.store.memberships(name)
        session = self._open(name, ip, port, groups + [book_key(o) for o in owners])
        last_seen = before.get("last_seen")
        session.welcome = {
            "last_login": before.get("last_login"),
            "offline_seconds": 0 if session.user.online or last_seen is None
            else max(0, round(session.login_time - last_seen)),
            "hits_while_offline": before.get("hits_offline") or 0,
        }
        return session

    def guest(self, ip: str = "", port: int = 0) -> Session:
        if not self.guest_limit.take(ip, self.clock.seconds()):
            raise TooMany("too many guest sessions from this address; try again later")
        guests = sum(1 for u in self.hub.users.users.values() if u.guest)
        if guests >= self.max_guests:
            raise TooMany("the server holds as many guests as it can; try again later")
        name = GUEST_PREFIX + secrets.token_hex(4)
        while self.hub.users.user(name) is not None:
            name = GUEST_PREFIX + secrets.token_hex(4)
        session = self._open(name, ip, port, [], guest=True)
        session.welcome = {"last_login": None, "offline_seconds": 0, "hits_while_offline": 0}
        return session

    def _open(self, name: str, ip: str, port: int, groups: List[str],
              guest: bool = False) -> Session:
        return self.hub.login(name, secrets.token_urlsafe(24), ip, port, groups, guest)

    def session(self, ident: Any, me: Any = None, scopes: Tuple[str, ...] = ()) -> Session:
        """The live session ``ident`` (of user ``me`` when given), or 403.
        A limited session (``session.scope`` set, e.g. ``"wml"``: one opened
        by a handset link) is 403 too unless its scope is in ``scopes``."""
        session = self.hub.session(ident) if isinstance(ident, str) and ident else None
        if session is None or (me not in (None, "") and me != session.user.name):
            raise Forbidden("no such session: log in again")
        if session.scope is not None and session.scope not in scopes:
            raise Forbidden("this session may use the wireless pages only: log in with"
                            " your password")
        return session

    def logout(self, session: Session) -> None:
        self.hub.end(session, "logout")
        self.log.info("{user} logged out", user=session.user.name)

    # -- names ------------------------------------------------------------------

    async def resolve(self, name: Any) -> Optional[Tuple[str, str]]:
        """``("user"|"group", canonical)`` for a user, guest, group or alias."""
        if not isinstance(name, str) or not name or len(name) > 128:
            return None
        name = name.lower()
        state = self.hub.users.user(name)
        if state is not None:
            return ("user", name)
        if name.startswith(GUEST_PREFIX):
            return None
        return await self.store.resolve(name)

    async def user_named(self, name: Any, what: str = "user", param: str = "to") -> str:
        required(name, param)
        found = await self.resolve(name)
        if found is None or found[0] != "user":
            raise NotFound(f"no such {what}: {_shown(name)}")
        return found[1]

    async def group_named(self, name: Any) -> Dict[str, Any]:
        required(name, "group name")
        group = await self.store.get_group(name.lower())
        if group is None:
            raise NotFound(f"no such group: {_shown(name)}")
        return group

    async def add_alias(self, session: Session, alias: Any) -> str:
        self._member_only(session)
        if not isinstance(alias, str) or not ALIAS_RE.match(alias.lower()):
            raise BadRequest("an alias is 1-64 characters of a-z, 0-9, '.', '_', '-', '@', '+'")
        alias = alias.lower()
        if alias.startswith(GUEST_PREFIX) or alias in RESERVED:
            raise BadRequest(f"the alias {alias!r} is reserved")
        try:
            await self.store.add_alias(session.user.name, alias)
        except NameTaken:
            raise Conflict(f"the name {alias!r} is taken")
        return alias

    # -- groups and the address book ---------------------------------------------

    def _member_only(self, session: Session) -> None:
        if session.user.guest:
            raise Forbidden("guests cannot do that: register first")

    async def create_group(self, session: Session, name: Any, password: Any = None) -> str:
        self._member_only(session)
        name = check_name(name, "group name")
        hashed = None
        if password:
            if not isinstance(password, str) or len(password) > MAX_PASSWORD:
                raise BadRequest("the group password is not valid")
            hashed = await self._hash(passwords.hash_password, password, self.hash_cost)
        owner = session.user.name
        try:
            await self.store.create_group(name, owner, hashed, self.clock.seconds())
        except NameTaken:
            raise Conflict(f"the name {name!r} is taken")
        self.hub.membership_changed(name, owner, True)
        return name

    async def _check_group_password(self, group: Dict[str, Any], password: Any,
                                    ip: str = "") -> bool:
        """Whether ``password`` opens ``group``; wrong guesses count against
        the address like failed logins (429 past the limit)."""
        if not group["password_hash"]:
            return True
        if not isinstance(password, str) or not password:
            return False
        if not self.login_failures.allowed(ip, self.clock.seconds()):
            raise TooMany("too many wrong passwords from this address; try again later")
        ok = await self._hash(passwords.check_password, password, group["password_hash"])
        if not ok:
            self.login_failures.take(ip, self.clock.seconds())
        return ok

    async def _hash(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a password hash function through ``hasher``, at most
        ``MAX_HASHING`` at once: a flood of registrations or logins gets 429
        instead of an ever longer queue."""
        if self._hashing >= MAX_HASHING:
            raise TooMany("the server is busy; try again in a moment")
        self._hashing += 1
        try:
            return await self.hasher(fn, *args)
        finally:
            self._hashing -= 1

    async def join(self, session: Session, name: Any, password: Any = None) -> None:
        self._member_only(session)
        group = await self.group_named(name)
        user = session.user.name
        if user not in await self.store.members(group["name"]):
            if not await self._check_group_password(group, password, session.ip):
                raise Forbidden("wrong group password")
            if await self.store.join(group["name"], user):
                self.hub.membership_changed(group["name"], user, True)

    async def leave(self, session: Session, name: Any) -> None:
        group = await self.group_named(name)
        if not await self.store.leave(group["name"], session.user.name):
            raise NotFound(f"you are not a member of {group['name']}")
        self.hub.membership_changed(group["name"], session.user.name, False)

    async def add_contact(self, session: Session, contact: Any) -> None:
        self._member_only(session)
        name = await self.user_named(contact, param="contact")
        owner = session.user.name
        if await self.store.add_contact(owner, name):
            self.hub.membership_changed(book_key(owner), name, True)

    async def remove_contact(self, session: Session, contact: Any) -> None:
        owner = session.user.name
        name = await self.resolve(required(contact, "contact"))
        if name is None or not await self.store.remove_contact(owner, name[1]):
            raise NotFound(f"{_shown(contact)} is not in your address book")
        self.hub.membership_changed(book_key(owner), name[1], False)

    async def contacts(self, session: Session) -> Dict[str, Any]:
        names = await self.store.contacts(session.user.name)
        return {"name": session.user.name, "members": self._rows(names)}

    async def set_active(self, session: Session, target: Any) -> str:
        """Make ``target`` (a group, a user, or the user's own name for the
        address book) what ``session`` watches."""
        me = session.user.name
        required(target, "group")
        if target == me:
            self.hub.watch(session, book_key(me))
            return me
        found = await self.resolve(target)
        if found is None:
            raise NotFound(f"no such group or user: {_shown(target)}")
        kind, name = found
        if kind == "group":
            group = await self.store.get_group(name)
            if group["password_hash"] and me not in await self.store.members(name):
                raise Forbidden(f"{name} is a protected group: join it first")
        self.hub.watch(session, name)
        return name

    def _rows(self, names: List[str]) -> List[Dict[str, Any]]:
        return [{"name": n, "online": self.hub.is_online(n)} for n in names]

    async def presence_of(self, name: Any, password: Any = None,
                          session: Optional[Session] = None, ip: str = "") -> Dict[str, Any]:
        found = await self.resolve(name)
        if found is None:
            raise NotFound(f"no such user or group: {_shown(name)}")
        kind, name = found
        if kind == "group":
            group = await self.store.get_group(name)
            members = await self.store.members(name)
            member = session is not None and session.user.name in members
            if not member and not await self._check_group_password(group, password, ip):
                raise Unauthorized(f"{name} is a protected group: give its password")
            return {"name": name, "members": self._rows(members)}
        state = self.hub.users.user(name)
        online = bool(state and state.online)
        if online:
            last_seen = self.clock.seconds()
        elif state is not None and state.last_seen is not None:
            last_seen = state.last_seen
        else:
            user = await self.store.get_user(name)
            last_seen = user["last_seen"] if user else None
        return {"name": name, "online": online, "last_seen": last_seen}

    # -- chat and messages ---------------------------------------------------

    async def init_chat(self, session: Session, to: Any) -> bool:
        peer = await self.user_named(to)
        if not self.hub.is_online(peer):
            return False
        me = session.user.name
        self.hub.deliver(me, frames.init_chat(peer))
        if peer != me:
            self.hub.deliver(peer, frames.init_chat(me))
        return True

    async def chat(self, session: Session, to: Any, text: Any,
                   seq: Optional[str] = None) -> Tuple[str, str]:
        text = check_text(text, "msg")
        if seq is not None:
            if not isinstance(seq, str) or not SEQ_RE.match(seq):
                raise BadRequest("seq must be a whole number (the sender's own counter)")
            seq = str(int(seq))
        required(to, "to")
        if self.hub.users.user(to) is not None:
            peer = to
        else:
            peer = await self.user_named(to)
        msgid = secrets.token_hex(6)
        delivered, msgid, fresh = self.hub.chat(session, peer, text, seq, msgid)
        if delivered == "stored" and fresh:
            try:
                await self.store.store_message(peer, session.user.name, text,
                                               self.clock.seconds(), msgid)
            except Exception:
                self.hub.forget_seq(session, seq)
                raise
            self.hub.deliver(peer, frames.message(session.user.name))
        return delivered, msgid

    async def leave_message(self, session: Optional[Session], to: Any, text: Any,
                            ip: str = "") -> int:
        if session is None and not self.anonymous_limit.take(ip, self.clock.seconds()):
            raise TooMany("too many messages from this address; try again later")
        text = check_text(text)
        peer = await self.user_named(to)
        sender = session.user.name if session is not None else "anonymous"
        ident = await self.store.store_message(peer, sender, text, self.clock.seconds())
        self.hub.deliver(peer, frames.message(sender))
        return ident

    async def messages(self, session: Session) -> Dict[str, Any]:
        name = session.user.name
        return {"messages": await self.store.messages(name),
                "unread": await self.store.unread(name)}

    async def mark_read(self, session: Session, ident: Any) -> None:
        try:
            number = int(ident)
        except (TypeError, ValueError):
            raise NotFound("no such message")
        if not await self.store.mark_read(session.user.name, number):
            raise NotFound("no such message")

    async def welcome(self, session: Session) -> Dict[str, Any]:
        figures = dict(session.welcome or {})
        figures["unread"] = 0 if session.user.guest else await self.store.unread(
            session.user.name)
        return figures

    async def page_hit(self, name: str) -> None:
        """Someone opened ``name``'s page: count it if they are offline."""
        if not self.hub.is_online(name):
            await self.store.add_hit(name)

    # -- communications pages, home page and settings (spec section 6) ---------

    async def page_rows(self, names: List[str]) -> List[Dict[str, Any]]:
        """The rows of a communications page: ``{"name", "online", "phone",
        "handset"}`` per name.  ``phone`` is the stored phone number (pages
        offer it as a ``tel:`` link) or None; ``handset`` only says whether a
        handset number is stored (the number itself stays private)."""
        rows = []
        for name in names:
            user = None if name.startswith(GUEST_PREFIX) else await self.store.get_user(name)
            rows.append({
                "name": name,
                "online": self.hub.is_online(name),
                "phone": (user or {}).get("phone") or None,
                "handset": bool((user or {}).get("wireless")),
            })
        return rows

    async def page(self, name: Any, session: Optional[Session] = None,
                   admitted: bool = False) -> Dict[str, Any]:
        """What the communications page of ``name`` shows: ``{"kind":
        "user"|"group", "name": canonical, "protected": bool, "rows": [...]}``.

        Raises NotFound for an unknown name, and Unauthorized for a protected
        group unless the visitor is a member or was ``admitted`` (gave its
        password, see :meth:`admit`); that error names no member."""
        found = await self.resolve(name)
        if found is None:
            raise NotFound(f"no such user or group: {_shown(name)}")
        kind, canonical = found
        if kind == "user":
            return {"kind": "user", "name": canonical, "protected": False,
                    "rows": await self.page_rows([canonical])}
        group = await self.store.get_group(canonical)
        members = await self.store.members(canonical)
        protected = bool(group["password_hash"])
        member = session is not None and session.user.name in members
        if protected and not (member or admitted):
            raise Unauthorized(f"{canonical} is a protected group: give its password")
        return {"kind": "group", "name": canonical, "protected": protected,
                "rows": await self.page_rows(members)}

    async def admit(self, name: Any, password: Any, ip: str = "") -> str:
        """Check a protected group's password for a visitor who is not a
        member; return the group's name.  NotFound, Forbidden for a wrong
        password; wrong passwords count against ``ip`` like failed logins."""
        now = self.clock.seconds()
        if not self.login_failures.allowed(ip, now):
            raise TooMany("too many wrong passwords from this address; try again later")
        group = await self.group_named(name)
        if not await self._check_group_password(group, password):
            self.login_failures.take(ip, self.clock.seconds())
            raise Forbidden("wrong group password")
        return group["name"]

    async def show(self, session: Session, name: Any,
                   admitted: bool = False) -> Dict[str, Any]:
        """Make ``session`` watch ``name`` as its communications page does
        (a user, or a group the visitor may see: see :meth:`page`), and
        return the page (as :meth:`page`)."""
        page = await self.page(name, session, admitted)
        self.hub.watch(session, page["name"])
        return page

    async def home(self, session: Session, group: Optional[str] = None) -> Dict[str, Any]:
        """Make ``session`` watch its home group and return it: ``{"kind":
        "book"|"group", "name", "rows"}``.  ``group`` is a group the user is
        a member of; None, or a group they no longer belong to, is their
        address book."""
        self._member_only(session)
        me = session.user.name
        if group and group != me:
            found = await self.store.get_group(group)
            members = await self.store.members(group) if found else []
            if me in members:
                self.hub.watch(session, group)
                return {"kind": "group", "name": group, "rows": await self.page_rows(members)}
        self.hub.watch(session, book_key(me))
        names = await self.store.contacts(me)
        return {"kind": "book", "name": me, "rows": await self.page_rows(names)}

    async def account(self, session: Session) -> Dict[str, Any]:
        """What the settings page shows: profile, aliases, groups, contacts."""
        self._member_only(session)
        me = session.user.name
        user = await self.store.get_user(me) or {}
        groups, _ = await self.store.memberships(me)
        shown = []
        for name in sorted(groups):
            group = await self.store.get_group(name)
            if group is not None:
                shown.append({"name": name, "owner": group["owner"],
                              "protected": bool(group["password_hash"])})
        return {
            "name": me,
            "email": user.get("email"),
            "phone": user.get("phone"),
            "wireless": user.get("wireless"),
            "aliases": await self.store.aliases(me),
            "groups": shown,
            "contacts": await self.store.contacts(me),
        }

    async def update_profile(self, session: Session, email: Any = None, phone: Any = None,
                             wireless: Any = None) -> None:
        """Set the user's e-mail, phone and handset number; an empty or
        missing value clears it."""
        self._member_only(session)
        values = []
        for value, label in ((email, "email"), (phone, "phone"), (wireless, "wireless")):
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"{label} is not valid")
            value = (value or "").strip() or None
            if value is not None and len(value) > 128:
                raise BadRequest(f"{label} is longer than 128 characters")
            values.append(value)
        email, phone, wireless = values
        if email and "@" not in email:
            raise BadRequest("email is not an e-mail address")
        if phone and (not PHONE_RE.match(phone) or sum(c.isdigit() for c in phone) < 3):
            raise BadRequest("phone may hold only digits, spaces and + - ( ) .")
        if wireless and not MSISDN_RE.match(wireless):
            raise BadRequest("the handset number must be '+' and 3-15 digits")
        await self.store.update_profile(session.user.name, email, phone, wireless)


def _shown(value: Any) -> str:
    """A client-given name, safe and short enough to echo in an error."""
    text = value if isinstance(value, str) else repr(value)
    return text[:64].encode("ascii", "backslashreplace").decode("ascii")
