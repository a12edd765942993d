"""The presence service: accounts, sessions, groups, chat and message boxes.

This joins the core (any :class:`~presence.core.hub.IHub`) to the directory
(:class:`~presence.store.interface.IDirectory`).  It is independent of any
protocol: the HTTP API, the pages, SIP and WML front-ends call it and turn
its :mod:`presence.errors` into their own status codes.  Front-ends never
reach the directory themselves (``service.store``): what they need of it is
a method here (``unread``, ``group_names``, ``handset_number``, ...), so that
every rule and every implementation of the directory stays behind this one
class.

Every method that touches the directory returns a Deferred (or is a
coroutine); CPU-heavy password hashing runs through ``hasher`` off the
reactor thread.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple
from weakref import WeakKeyDictionary

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from presence.core import frames
from presence.core.counters import Counters
from presence.core.frames import Frame
from presence.core import states
from presence.core.hub import IHub, IHubListener
from presence.core.ratelimit import RateLimiter, RecentSet, address_key, take_all
from presence.core.tables import Session, book_key
from presence.errors import (
    BadRequest, Conflict, Forbidden, NotFound, TooLarge, TooMany, Unauthorized,
)
from presence.sip.digest import ha1_set
from presence.store import passwords
from presence.store.interface import BoxFull, IDirectory, NameTaken

#: the scopes of presence source sessions (no heartbeat reader behind them:
#: SIP requests are never forked to them)
SOURCE_SCOPES = frozenset({"dyndns", "sip"})
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
    "i", "badge",
})
MAX_TEXT = 4096
#: characters of a user's greeting (spec section 10, the "interactive file")
MAX_GREETING = 1000
#: random bytes of a dyndns2 update token (192 bits; 32 characters)
UPDATE_TOKEN_BYTES = 24
MIN_PASSWORD = 6
MAX_PASSWORD = 1024
#: seconds a resume token works after the login that issued it: 30 days
RESUME_TTL = 30 * 24 * 3600.0
#: random bytes of a resume token (256 bits; 43 characters of base64url)
RESUME_BYTES = 32
#: a longer "token" is not one of ours and is not even hashed
MAX_TOKEN = 128
#: the answer (403) to a login or a resume of an account an operator locked
LOCKED = "this account is locked by the server's operator"
RESUME_REFUSED = ("this resume token is not valid (unknown, or revoked by a logout or a"
                  " password change): log in with your password")

Hasher = Callable[..., defer.Deferred]


#: the largest whole number a client may give (an SQLite integer; 19 digits)
MAX_WHOLE = 2 ** 63 - 1


def token_hash(token: str) -> str:
    """The hash a resume token is stored as: SHA-256, hex.  A token carries
    256 random bits, so a slow hash would add nothing but CPU per resume."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def valid_text(value: str) -> bool:
    """Whether ``value`` is Unicode scalar values only (no lone surrogate),
    i.e. can be written as UTF-8."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def whole_number(value: Any, what: str, maximum: int = MAX_WHOLE) -> int:
    """A parameter that must be a whole number ``0..maximum`` written in
    ASCII digits (at most 19 of them), or 400 (never a 500 for 5,000 digits
    or a number past what the store holds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, str) and 0 < len(value) <= 19 and value.isascii()
            and value.isdigit()):
        number = int(value)
    else:
        raise BadRequest(f"{what} must be a whole number")
    if not 0 <= number <= maximum:
        raise BadRequest(f"{what} must be a whole number from 0 to {maximum}")
    return number


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
    if not valid_text(value):
        raise BadRequest(f"{what} is not valid Unicode text (a lone surrogate)")
    return value


def check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"{what} is missing or empty")
    if len(text) > MAX_TEXT:
        raise TooLarge(f"{what} is longer than {MAX_TEXT} characters")
    if not valid_text(text):
        raise BadRequest(f"{what} is not valid Unicode text (a lone surrogate)")
    return text


@implementer(IHubListener)
class _Listener:
    """Carries the core's side effects to the directory."""

    log = Logger()

    def __init__(self, owner: "PresenceService") -> None:
        self.owner = owner

    def spill(self, user: str, frame: Frame) -> None:
        sender, msgid = frame.args[0], frame.args[1]
        # batched by the directory: a flood of these is one write at a time
        self.owner.store.spill(user, sender, frame.payload, self.owner.clock.seconds(),
                               msgid)

    def presence_changed(self, user: str, online: bool, now: float) -> None:
        if online or user.startswith(GUEST_PREFIX):
            return
        d = self.owner.store.record_offline(user, now)
        d.addErrback(lambda f: self.log.failure("recording {user} offline failed", f,
                                                user=user))


@dataclass
class Limits:
    """What one client may do (docs/operations.md, "Limits"); the ``--`` options
    of the same names set them.  A bucket is ``(burst, per second)``."""

    #: POST /chat and leave-a-message, per session and per client address
    chat_session: Tuple[float, float] = (1200, 10)
    chat_address: Tuple[float, float] = (3000, 50)
    #: unread messages and their UTF-8 bytes one message box may hold
    box_messages: int = 1000
    box_bytes: int = 4 * 1024 * 1024
    #: live guest sessions opened from one address
    guests_per_address: int = 100
    #: registrations per address: a burst of this many, as many again an hour
    registrations: int = 100
    #: failed logins to one account from addresses that never logged in to it
    account_failures: Tuple[float, float] = (20, 1 / 30)
    #: changes to one user's groups, contacts, aliases and profile (each a
    #: durable write that others may be sent a ``msg refresh`` for)
    changes: Tuple[float, float] = (60, 1)
    #: presence state changes (``POST /api/status``) per session: the pages
    #: send one when their user goes idle and one on the next input
    status: Tuple[float, float] = (30, 0.5)
    #: seconds a resume token works after it was issued (``--resume-ttl``)
    resume_ttl: float = RESUME_TTL


def _bucket(limit: Tuple[float, float], max_keys: int = 10000) -> RateLimiter:
    return RateLimiter(capacity=limit[0], rate=limit[1], max_keys=max_keys)


class PresenceService:
    log = Logger()
    #: the SIP digest realm (``--domain``) while SIP is on (the SIP
    #: front-end sets it): a password set, changed or proven at a login then
    #: also keeps its HA1s for SIP digest (docs/security.md)
    sip_realm: Optional[str] = None

    def __init__(self, hub: IHub, store: IDirectory, hasher: Hasher,
                 hash_cost: int = passwords.DEFAULT_COST, max_guests: int = 10000,
                 limits: Optional[Limits] = None) -> None:
        self.hub = hub
        self.store = store
        self.clock = hub.clock
        self.hasher = hasher
        self.hash_cost = hash_cost
        self.max_guests = max_guests
        self.limits = limits = limits or Limits()
        hub.listener = _Listener(self)
        #: what the operator endpoint exposes (presence.admin reads it)
        self.counters = Counters()
        self.login_failures = RateLimiter(capacity=10, rate=1 / 6)
        #: wrong passwords per account, for addresses without a past success
        self.account_failures = _bucket(limits.account_failures)
        #: (account, address) pairs that logged in successfully (bounded LRU)
        self.known_addresses = RecentSet(100000)
        #: wrong group passwords per (address, group)
        self.group_failures = RateLimiter(capacity=10, rate=1 / 6)
        self.register_limit = RateLimiter(capacity=limits.registrations,
                                          rate=limits.registrations / 3600)
        self.guest_limit = RateLimiter(capacity=30, rate=1 / 2)
        self.anonymous_limit = RateLimiter(capacity=20, rate=1 / 3)
        # sessions: as many keys as sessions can live; addresses as usual
        self.chat_by_session = _bucket(limits.chat_session, max_keys=100000)
        self.chat_by_address = _bucket(limits.chat_address)
        self.changes_by_user = _bucket(limits.changes, max_keys=100000)
        self.status_by_session = _bucket(limits.status, max_keys=100000)
        #: a well-formed hash of nothing: an unknown user costs one hash too
        self._dummy_hash = passwords.unmatchable(hash_cost)
        self._hashing = 0
        #: wrong resume tokens per address
        self.resume_failures = RateLimiter(capacity=20, rate=1 / 3)
        #: the hash of the resume token each live session was opened or issued
        #: with (its device's): logout revokes that one
        self._devices: "WeakKeyDictionary[Session, str]" = WeakKeyDictionary()
        #: revocations of all of a user's tokens (password changes), counted,
        #: and the count at the last one per user: a resume whose look-up
        #: started before one is refused (the revocation is written before
        #: the count is read by later look-ups: one SQL worker, in order)
        self._revocations = 0
        self._revoked_at: Dict[str, int] = {}
        #: cluster mode: the chat buckets counted over every box too
        #: (presence.cluster.limits.SharedLimits), after this node's own
        self.shared_limits: Optional[Any] = None
        #: cluster mode: each session's device (resume token hash) in Redis,
        #: so that a logout through any node revokes it
        #: (presence.cluster.devices.SharedDevices)
        self.shared_devices: Optional[Any] = None
        #: told each new name (a user, an alias, a group) once it is stored: the
        #: name service forgets what it cached about the name
        self.name_observers: List[Callable[[str], None]] = []

    def _refused(self, kind: str, address: str = "") -> None:
        """An abuse limit refuses a request (429 follows): counted by kind
        and listed on the operator console."""
        self.counters.refused(kind, address, self.clock.seconds())

    # -- accounts -------------------------------------------------------------

    @staticmethod
    def _check_password(name: str, password: Any, what: str = "the password") -> None:
        """400 unless ``password`` may be ``name``'s password (registration
        and password changes alike)."""
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise BadRequest(f"{what} must be at least {MIN_PASSWORD} characters")
        if len(password) > MAX_PASSWORD or password == name:
            raise BadRequest(f"{what} is too weak or too long")

    async def register(self, name: Any, password: Any, email: Any = None,
                       phone: Any = None, wireless: Any = None, ip: str = "") -> str:
        name = check_name(name)
        self._check_password(name, password)
        for value, label in ((email, "email"), (phone, "phone")):
            if value is not None and (not isinstance(value, str) or len(value) > 128):
                raise BadRequest(f"{label} is not valid")
        if email and "@" not in email:
            raise BadRequest("email is not an e-mail address")
        if wireless and not (isinstance(wireless, str) and MSISDN_RE.match(wireless)):
            raise BadRequest("wireless must be a handset number: '+' and 3-15 digits")
        wait = take_all([(self.register_limit, address_key(ip))], self.clock.seconds())
        if wait is not None:
            self._refused("registration", ip)
            raise TooMany("too many registrations from this address; try again later",
                          retry_after=wait)
        hashed = await self._hash(passwords.hash_password, password, self.hash_cost)
        try:
            await self.store.create_user(name, hashed, email or None, phone or None,
                                         wireless or None, self.clock.seconds())
        except NameTaken:
            raise Conflict(f"the name {name!r} is taken")
        self.log.info("registered {user}", user=name)
        await self._keep_sip_ha1(name, password)
        self._new_name(name)
        return name

    async def _keep_sip_ha1(self, name: str, password: str, backfill: bool = False) -> None:
        """Keep the SIP digest HA1s of ``password`` (just set, or just
        proven) for :attr:`sip_realm`; with ``backfill`` only when what is
        kept differs (a user from before SIP, or before a new domain).  A
        failure is logged (never the secret) and does not fail the caller:
        the next login tries again."""
        realm = self.sip_realm
        if not realm:
            return
        ha1s = ha1_set(name, realm, password)
        try:
            if backfill:
                kept = await self.store.sip_ha1(name, realm, "SHA-256")
                if kept and hmac.compare_digest(kept, ha1s["SHA-256"]):
                    return
            await self.store.set_sip_ha1(name, realm, ha1s)
        except Exception as e:
            self.log.warn("keeping {user}'s SIP digest secret failed: {why}", user=name,
                          why=type(e).__name__)

    async def sip_ha1(self, name: str, realm: str, algorithm: str) -> Optional[str]:
        """The kept HA1 of user ``name`` for SIP digest (``DigestAuth``'s
        ``ha1_of``), or None: unknown, another realm, or none kept yet (a
        user from before SIP logs in once to have it)."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            return None
        return await self.store.sip_ha1(name, realm, algorithm)

    def _new_name(self, name: str) -> None:
        for observer in self.name_observers:
            observer(name)

    async def login(self, name: Any, password: Any, ip: str = "", port: int = 0) -> Session:
        await self.check_password(name, password, ip)
        session = await self._open_user(name, ip, port)
        self.counters.logins += 1
        self.log.info("{user} logged in from {ip}", user=name, ip=ip)
        return session

    def digest_allowed(self, ip: str) -> bool:
        """Whether a SIP digest from ``ip`` may be checked now: the address's
        login allowance is not spent (a refusal is counted, as a password
        login's)."""
        if self.login_failures.allowed(address_key(ip), self.clock.seconds()):
            return True
        self._refused("login_address", ip)
        return False

    def judge_digest(self, name: Optional[str], ip: str, right: Optional[bool]) -> bool:
        """A SIP digest for account ``name`` from ``ip`` was checked:
        ``right``, wrong (False) or not judged (None: a stale nonce).  It
        counts as :meth:`check_password` counts a password, in the same
        allowances (the address's, and the account's unless this address
        proved the password before).  False when one of them has none left:
        the caller answers 403, whatever the digest was."""
        now = self.clock.seconds()
        who = address_key(ip)
        account = name if isinstance(name, str) and NAME_RE.match(name) else None
        known = account is not None and (account, who) in self.known_addresses
        if not self.login_failures.allowed(who, now):
            self._refused("login_address", ip)
            return False
        if account and not known and not self.account_failures.allowed(account, now):
            self._refused("login_account", ip)
            return False
        if right:
            if account:
                self.known_addresses.add((account, who))
        elif right is not None:
            self._failed_login(who, account, known)
        return True

    def _failed_login(self, who: str, account: Optional[str], known: bool) -> None:
        """A wrong password (or digest) from address ``who``: it spends the
        address's allowance, and the account's unless this address proved
        the password before."""
        now = self.clock.seconds()
        self.login_failures.take(who, now)
        if account and not known:
            self.account_failures.take(account, now)

    async def check_password(self, name: Any, password: Any, ip: str = "") -> None:
        """Nothing if ``password`` is user ``name``'s; else Unauthorized (401),
        or TooMany (429) once the address or the account had too many
        failures (a login, a dyndns2 update)."""
        now = self.clock.seconds()
        who = address_key(ip)
        if not self.login_failures.allowed(who, now):
            self._refused("login_address", ip)
            raise TooMany("too many failed logins from this address; try again later",
                          retry_after=self.login_failures.wait(who, now))
        if not isinstance(name, str) or not isinstance(password, str) or not name:
            raise BadRequest("username and password are required")
        # only a possible account name is a key (bounded, and no stranger's
        # 60-KB "name" is kept); an address that logged in to this account
        # before keeps its own allowance: guessing from elsewhere never locks
        # the owner out
        account = name if NAME_RE.match(name) else None
        known = (name, who) in self.known_addresses
        if account and not known and not self.account_failures.allowed(account, now):
            self._refused("login_account", ip)
            raise TooMany("too many failed logins to this account; try again later",
                          retry_after=self.account_failures.wait(account, now))
        user = await self.store.get_user(name) if account else None
        # one hash either way: an unknown name answers as slowly as a wrong password
        stored = user["password_hash"] if user is not None else self._dummy_hash
        ok = await self._hash(passwords.check_password, password, stored)
        if not ok or user is None:
            self._failed_login(who, account, known)
            raise Unauthorized("wrong username or password")
        self.known_addresses.add((name, who))
        await self._not_locked(name)   # a locked account: 403, for dyndns2 too
        await self._keep_sip_ha1(name, password, backfill=True)

    async def login_verified(self, name: str, ip: str = "", port: int = 0,
                             scope: Optional[str] = None) -> Session:
        """Open a session for user ``name`` whose identity was proven another
        way (a one-time link pushed to the user's handset): as :meth:`login`,
        without the password, limited to ``scope`` (see :meth:`session`).
        NotFound if there is no such user."""
        user = await self.store.get_user(name) if NAME_RE.match(name or "") else None
        if user is None:
            raise NotFound("no such user")
        await self._not_locked(name)
        session = await self._open_user(name, ip, port)
        session.scope = scope
        self.log.info("{user} logged in from {ip} with a handset link", user=name, ip=ip)
        return session

    def probe_directory(self) -> defer.Deferred:
        """One cheap read of the directory (the operator endpoint's
        readiness check): fails if the directory cannot be reached."""
        return self.store.is_locked("-")

    def is_locked(self, name: str) -> defer.Deferred:
        """Whether an operator locked account ``name`` (a SIP registration asks)."""
        return self.store.is_locked(name)

    async def _not_locked(self, name: str) -> None:
        """403 if an operator locked account ``name``."""
        if await self.store.is_locked(name):
            raise Forbidden(LOCKED)

    async def _open_user(self, name: str, ip: str, port: int) -> Session:
        """A new session for the registered user ``name``, with its groups
        and the welcome figures of the time before it."""
        before = await self.store.record_login(name, self.clock.seconds())
        groups, owners = await self.store.memberships(name)
        return self._open_known(name, ip, port, before, groups, owners)

    def _open_known(self, name: str, ip: str, port: int, before: dict, groups: List[str],
                    owners: List[str]) -> Session:
        """A new session for ``name``, with what the directory answered of
        them (``record_login``'s ``before``, ``memberships``)."""
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
        now = self.clock.seconds()
        who = address_key(ip)
        if self.hub.guests_from(who) >= self.limits.guests_per_address:
            self._refused("guest_address", ip)
            raise TooMany("this address holds as many guest sessions as it may;"
                          " end one or try again later")
        if not self.guest_limit.take(who, now):
            self._refused("guest_rate", ip)
            raise TooMany("too many guest sessions from this address; try again later",
                          retry_after=self.guest_limit.wait(who, now))
        if self.hub.guest_count() >= self.max_guests:
            self._refused("guest_total", ip)
            raise TooMany("the server holds as many guests as it can; try again later")
        name = GUEST_PREFIX + secrets.token_hex(4)
        while self.hub.knows(name):
            name = GUEST_PREFIX + secrets.token_hex(4)
        session = self._open(name, ip, port, [], guest=True)
        self.counters.guests += 1
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

    def logout(self, session: Session) -> defer.Deferred:
        """End ``session`` and revoke its device's resume token; the
        Deferred fires (None) once the revocation is durable (a failure is
        logged, never raised: callers need not wait)."""
        digest = self._devices.pop(session, None)
        if digest is None and self.shared_devices is not None:
            # read before the end is carried out (on the same connection)
            found = self.shared_devices.recall_device(session.id)
        else:
            found = defer.succeed(digest)
        self.hub.end(session, "logout")
        self.log.info("{user} logged out", user=session.user.name)

        def revoke(digest: Optional[str]) -> Any:
            if digest is not None:
                return self.store.revoke_resume(session.user.name, digest)
        found.addCallback(revoke)
        found.addCallback(lambda _: None)
        found.addErrback(lambda f: self.log.failure("revoking {user}'s resume token failed",
                                                    f, user=session.user.name))
        return found

    def _device(self, session: Session, digest: str) -> None:
        """``session`` was opened or issued with the token of hash ``digest``."""
        self._devices[session] = digest
        if self.shared_devices is not None:
            self.shared_devices.remember_device(session.id, digest)

    # -- resume tokens (spec section 9; docs/security.md, "Resume tokens") ----------

    async def issue_resume(self, session: Session, device: str = "api") -> Optional[str]:
        """A new resume token for the device of ``session`` (just opened by a
        password login), kept hashed; None for a guest or a limited session,
        which get none.  ``device`` is a short label (the front-end)."""
        if session.user.guest or session.scope is not None:
            return None
        token = secrets.token_urlsafe(RESUME_BYTES)
        digest = token_hash(token)
        await self.store.store_resume(digest, session.user.name, device[:32],
                                      self.clock.seconds())
        self._device(session, digest)
        return token

    async def resume(self, token: Any, ip: str = "", port: int = 0) -> Session:
        """A new session for the user of the resume ``token``, without the
        password (the same rights as a password login).  401 for a token
        that is unknown, revoked or older than ``limits.resume_ttl`` (one
        hash and one look-up either way);
        wrong tokens count against ``ip``: 429 past the limit."""
        now = self.clock.seconds()
        who = address_key(ip)
        if not self.resume_failures.allowed(who, now):
            self._refused("resume", ip)
            raise TooMany("too many wrong resume tokens from this address; try again later",
                          retry_after=self.resume_failures.wait(who, now))
        if token is None or token == "":
            raise BadRequest("token is required")
        well_formed = isinstance(token, str) and len(token) <= MAX_TOKEN and token.isascii()
        digest = token_hash(token) if well_formed else None
        epoch = self._revocations
        not_before = now - self.limits.resume_ttl       # older tokens have expired
        # one call to the directory: the token, the lock, the login's record
        # and the groups (one round trip to Redis in a cluster)
        found = (await self.store.resume_login(digest, not_before, now)
                 if digest is not None else None)
        if found is not None:
            user = found.user
            if found.locked:
                raise Forbidden(LOCKED)
            session = self._open_known(user, ip, port, found.before, found.groups, found.owners)
            if self._revoked_at.get(user, 0) <= epoch:
                self._device(session, digest)
                self.counters.resumes += 1
                self.log.info("{user} resumed a session from {ip}", user=user, ip=ip)
                return session
            # the user's tokens were revoked while this one was being looked up
            self.hub.end(session, "password")
        self.resume_failures.take(who, self.clock.seconds())
        raise Unauthorized(RESUME_REFUSED)

    async def change_password(self, session: Session, password: Any, new_password: Any,
                              ip: str = "") -> None:
        """Replace the user's password after checking the current one (401
        when wrong, counted like a failed login from ``ip``); revoke all the
        user's resume tokens and end their other sessions (``msg bye
        password``).  ``session`` itself stays, without a resume token."""
        self._member_only(session)
        name = session.user.name
        now = self.clock.seconds()
        who = address_key(ip or session.ip)
        if not self.login_failures.allowed(who, now):
            self._refused("password", ip or session.ip)
            raise TooMany("too many wrong passwords from this address; try again later",
                          retry_after=self.login_failures.wait(who, now))
        if not isinstance(password, str) or not password:
            raise BadRequest("password (the current one) is required")
        self._check_password(name, new_password, "the new password")
        user = await self.store.get_user(name)
        stored = user["password_hash"] if user is not None else self._dummy_hash
        if not await self._hash(passwords.check_password, password, stored) or user is None:
            self.login_failures.take(who, self.clock.seconds())
            raise Unauthorized("the current password is wrong")
        hashed = await self._hash(passwords.hash_password, new_password, self.hash_cost)
        if len(self._revoked_at) >= 10000:     # only look-ups in flight need them
            self._revoked_at = {}
        self._revocations += 1
        self._revoked_at[name] = self._revocations
        # tokens first: a look-up queued after this finds none of them
        revoked = await self.store.revoke_resume(name)
        await self.store.set_password(name, hashed)   # the old HA1s go with it
        await self._keep_sip_ha1(name, new_password)
        self._devices.pop(session, None)
        others = self.hub.end_user(name, "password", keep=session)
        self.log.info("{user} changed their password: {tokens} resume tokens revoked,"
                      " {sessions} other sessions ended", user=name, tokens=revoked,
                      sessions=others)

    # -- names ------------------------------------------------------------------

    async def resolve(self, name: Any) -> Optional[Tuple[str, str]]:
        """``("user"|"group", canonical)`` for a user, guest, group or alias."""
        if not isinstance(name, str) or not name or len(name) > 128:
            return None
        name = name.lower()
        if self.hub.knows(name):
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
        self._change_allowance(session)
        if not isinstance(alias, str) or not ALIAS_RE.match(alias.lower()):
            raise BadRequest("an alias is 1-64 characters of a-z, 0-9, '.', '_', '-', '@', '+'")
        alias = alias.lower()
        if alias.startswith(GUEST_PREFIX) or alias in RESERVED:
            raise BadRequest(f"the alias {alias!r} is reserved")
        try:
            await self.store.add_alias(session.user.name, alias)
        except NameTaken:
            raise Conflict(f"the name {alias!r} is taken")
        self._new_name(alias)
        return alias

    # -- groups and the address book ---------------------------------------------

    def _member_only(self, session: Session) -> None:
        if session.user.guest:
            raise Forbidden("guests cannot do that: register first")

    def _change_allowance(self, session: Session) -> None:
        """Spend one change of the session's user, or 429."""
        wait = take_all([(self.changes_by_user, session.user.name)], self.clock.seconds())
        if wait is not None:
            self._refused("changes", session.ip)
            raise TooMany("you are changing your groups and contacts too fast; slow down",
                          retry_after=wait)

    async def create_group(self, session: Session, name: Any, password: Any = None) -> str:
        self._member_only(session)
        self._change_allowance(session)
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
        self._new_name(name)
        return name

    async def _check_group_password(self, group: Dict[str, Any], password: Any,
                                    ip: str = "") -> bool:
        """Whether ``password`` opens ``group``; wrong guesses count against
        the address like failed logins (429 past the limit)."""
        if not group["password_hash"]:
            return True
        if not isinstance(password, str) or not password:
            return False
        key = f"{address_key(ip)} {group['name']}"
        now = self.clock.seconds()
        if not self.group_failures.allowed(key, now):
            self._refused("group_password", ip)
            raise TooMany("too many wrong passwords for this group from this address;"
                          " try again later", retry_after=self.group_failures.wait(key, now))
        ok = await self._hash(passwords.check_password, password, group["password_hash"])
        if not ok:
            self.group_failures.take(key, self.clock.seconds())
        return ok

    async def _hash(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a password hash function through ``hasher``, at most
        ``MAX_HASHING`` at once: a flood of registrations or logins gets 429
        instead of an ever longer queue."""
        if self._hashing >= MAX_HASHING:
            self._refused("hashing")
            raise TooMany("the server is busy; try again in a moment")
        self._hashing += 1
        try:
            return await self.hasher(fn, *args)
        finally:
            self._hashing -= 1

    async def join(self, session: Session, name: Any, password: Any = None) -> None:
        self._member_only(session)
        self._change_allowance(session)
        group = await self.group_named(name)
        user = session.user.name
        if not await self.store.is_member(group["name"], user):
            if not await self._check_group_password(group, password, session.ip):
                raise Forbidden("wrong group password")
            if await self.store.join(group["name"], user):
                self.hub.membership_changed(group["name"], user, True)

    def _learn_mode(self, group: Dict[str, Any]) -> None:
        """Tell the hub (this box) whether ``group`` pushes presence."""
        self.hub.set_on_demand(group["name"], bool(group.get("on_demand")))

    async def set_group_presence(self, session: Session, name: Any, mode: Any) -> Dict[str, Any]:
        """The owner of group ``name`` chooses how its watchers learn its
        members' presence: ``push`` (``msg update`` / ``msg updates``, the
        default) or ``on_demand`` (nothing pushed: read when the page or list
        is opened)."""
        self._member_only(session)
        self._change_allowance(session)
        group = await self.group_named(name)
        if group["owner"] != session.user.name:
            raise Forbidden(f"only the owner of {group['name']} chooses how it shows presence")
        if mode not in ("push", "on_demand"):
            raise BadRequest("presence must be push or on_demand")
        await self.store.set_on_demand(group["name"], mode == "on_demand")
        self.hub.set_on_demand(group["name"], mode == "on_demand")
        return {"name": group["name"], "presence": mode}

    async def leave(self, session: Session, name: Any) -> None:
        self._change_allowance(session)
        group = await self.group_named(name)
        if not await self.store.leave(group["name"], session.user.name):
            raise NotFound(f"you are not a member of {group['name']}")
        self.hub.membership_changed(group["name"], session.user.name, False)

    async def add_contact(self, session: Session, contact: Any) -> None:
        self._member_only(session)
        self._change_allowance(session)
        name = await self.user_named(contact, param="contact")
        owner = session.user.name
        if await self.store.add_contact(owner, name):
            self.hub.membership_changed(book_key(owner), name, True)

    async def befriend(self, a: str, b: str) -> None:
        """Put users ``a`` and ``b`` in each other's address book (an
        invitation was accepted: docs/invites.md); watchers of either book
        get ``msg refresh``."""
        for owner, contact in ((a, b), (b, a)):
            if await self.store.add_contact(owner, contact):
                self.hub.membership_changed(book_key(owner), contact, True)

    async def remove_contact(self, session: Session, contact: Any) -> None:
        self._change_allowance(session)
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
            if group["password_hash"] and not await self.store.is_member(name, me):
                raise Forbidden(f"{name} is a protected group: join it first")
            self._learn_mode(group)
        self.hub.watch(session, name)
        return name

    def _rows(self, names: List[str]) -> List[Dict[str, Any]]:
        return [self._presence_row(n) for n in names]

    def _presence_row(self, name: str) -> Dict[str, Any]:
        """``{"name", "online", "state", "text"}`` of user ``name``: the
        combined state (``available``, ``away``, ``busy``, ``offline``) and
        status text ("" when none), from :meth:`IHub.state_of`."""
        state, text = self.hub.state_of(name)
        return {"name": name, "online": state != states.OFFLINE, "state": state, "text": text}

    # -- presence states (spec section 12) --------------------------------------

    def set_status(self, session: Session, state: Any, text: Any = None) -> Dict[str, Any]:
        """``session`` sets its presence state and status text (None or ""
        clears the text; surrounding blanks are dropped).  400 for a state
        or a text that is not one, 429 past the session's allowance.
        Answers the user's combined state as watchers now see it."""
        if isinstance(text, str):
            text = text.strip()
        error = states.state_error(state)
        if error is None and text is not None:
            error = states.text_error(text)
        if error is not None:
            raise BadRequest(error)
        wait = take_all([(self.status_by_session, session.id)], self.clock.seconds())
        if wait is not None:
            raise TooMany("you are changing your state too fast; slow down",
                          retry_after=wait)
        self.hub.set_state(session, state, text or "")
        row = self._presence_row(session.user.name)
        row.update(session={"state": state, "text": text or ""})
        return row

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
        row = self._presence_row(name)
        last_seen = self.hub.last_seen(name)
        if row["online"]:
            last_seen = self.clock.seconds()
        elif last_seen is None:
            user = await self.store.get_user(name)
            last_seen = user["last_seen"] if user else None
        row["last_seen"] = last_seen
        return row

    # -- chat and messages ---------------------------------------------------

    async def init_chat(self, session: Session, to: Any) -> bool:
        await self._chat_allowance(session)   # each one opens windows for the peer
        peer = await self.user_named(to)
        if not self.hub.is_online(peer):
            return False
        me = session.user.name
        self.hub.deliver(me, frames.init_chat(peer))
        if peer != me:
            self.hub.deliver(peer, frames.init_chat(me))
        return True

    async def _chat_allowance(self, session: Session, ip: Optional[str] = None) -> None:
        """Spend one chat of ``session`` and of its address (the one given,
        else the one it logged in from), or 429 with the seconds to wait;
        in a cluster on this node and then over every box."""
        address = address_key(session.ip if ip is None else ip)
        now = self.clock.seconds()
        wait = take_all([(self.chat_by_session, session.id),
                         (self.chat_by_address, address)], now)
        if wait is None and self.shared_limits is not None:
            wait = self.shared_limits.take(
                [("chat:s:" + session.id, *self.limits.chat_session),
                 ("chat:a:" + address, *self.limits.chat_address)], now)
        if wait is not None:
            self._refused("chat", address)
            raise TooMany("you are sending too fast; slow down", retry_after=wait)

    def _quota(self) -> Tuple[int, int]:
        return (self.limits.box_messages, self.limits.box_bytes)

    async def keep_message(self, peer: str, sender: str, text: str,
                           msgid: Optional[str] = None) -> int:
        """Keep ``text`` in ``peer``'s message box within its quota and return
        its id; :class:`TooMany` (429) when the box is full.  Every front-end
        that stores a message for someone goes through here."""
        try:
            return await self.store.store_message(peer, sender, text, self.clock.seconds(),
                                                  msgid, quota=self._quota())
        except BoxFull:
            self._refused("box_full")
            raise _box_full(peer)

    async def room_for_chat(self, peer: str) -> None:
        """Before a chat pushes older chat out of ``peer``'s full mailbox
        into the message box: 429 unless the box has room for it (the
        oldest is kept, the new chat is refused and its sender told)."""
        leaving = self.hub.spills_on_delivery(peer)
        if not leaving:
            return
        unread, used = await self.store.box_usage(peer)
        size = sum(len(f.payload.encode("utf-8", "surrogatepass")) for f in leaving)
        if unread + len(leaving) > self.limits.box_messages or \
                used + size > self.limits.box_bytes:
            self._refused("box_full")
            raise _box_full(peer)

    async def chat(self, session: Session, to: Any, text: Any,
                   seq: Optional[str] = None) -> Tuple[str, str]:
        text = check_text(text, "msg")
        if seq is not None:
            if not isinstance(seq, str) or not SEQ_RE.match(seq):
                raise BadRequest("seq must be a whole number (the sender's own counter)")
            seq = str(int(seq))
        required(to, "to")
        if seq is not None:
            recalled = self.hub.recall_seq(session, seq)   # a cluster: any node's
            if recalled is not None:
                await recalled
        # a retry of a chat already taken is answered again at no cost
        repeat = seq is not None and session.seqs is not None and seq in session.seqs
        if not repeat:
            await self._chat_allowance(session)
        if self.hub.knows(to):
            peer = to
        else:
            peer = await self.user_named(to)
        if not repeat and self.hub.is_online(peer):
            await self.room_for_chat(peer)
        msgid = secrets.token_hex(6)
        counters = self.counters
        if counters.timing:
            counters.chat_accepting(msgid)   # its write may come during hub.chat
        first = msgid
        delivered, msgid, fresh = self.hub.chat(session, peer, text, seq, msgid)
        counters.chat_accepted(first, delivered if fresh else "repeat")
        if fresh and seq is not None:
            shared = self.hub.shared_seq(session, seq)   # a cluster: for any node's retry
            if shared is not None:
                await shared
        if delivered == "stored" and fresh:
            try:
                await self.keep_message(peer, session.user.name, text, msgid)
            except Exception:
                self.hub.forget_seq(session, seq)
                raise
            self.hub.deliver(peer, frames.message(session.user.name))
        return delivered, msgid

    async def leave_message(self, session: Optional[Session], to: Any, text: Any,
                            ip: str = "") -> int:
        if session is None:
            now = self.clock.seconds()
            who = address_key(ip)
            if not self.anonymous_limit.take(who, now):
                self._refused("message", ip)
                raise TooMany("too many messages from this address; try again later",
                              retry_after=self.anonymous_limit.wait(who, now))
        text = check_text(text)
        if session is not None:
            await self._chat_allowance(session, ip or None)
        peer = await self.user_named(to)
        sender = session.user.name if session is not None else "anonymous"
        ident = await self.keep_message(peer, sender, text)
        self.hub.deliver(peer, frames.message(sender))
        return ident

    async def messages(self, session: Session) -> Dict[str, Any]:
        name = session.user.name
        return {"messages": await self.store.messages(name),
                "unread": await self.store.unread(name)}

    async def mark_read(self, session: Session, ident: Any) -> None:
        if not isinstance(ident, int) and not (
                isinstance(ident, str) and ident.isascii() and ident.isdigit()):
            raise NotFound("no such message")  # no message has that id
        number = whole_number(ident, "the message id")  # 400 past what the store holds
        if not await self.store.mark_read(session.user.name, number):
            raise NotFound("no such message")

    async def welcome(self, session: Session) -> Dict[str, Any]:
        figures = dict(session.welcome or {})
        figures["unread"] = await self.unread(session)
        return figures

    async def unread(self, session: Session) -> int:
        """How many unread messages the user of ``session`` has (a guest has
        no message box: 0)."""
        return 0 if session.user.guest else await self.store.unread(session.user.name)

    async def group_names(self, session: Session) -> List[str]:
        """The groups the user of ``session`` is a member of, sorted."""
        groups, _ = await self.store.memberships(session.user.name)
        return sorted(groups)

    async def handset_number(self, name: str) -> Optional[str]:
        """The handset number (``wireless``) user ``name`` has stored, or None."""
        return (await self.store.get_user(name) or {}).get("wireless") or None

    async def user_by_handset(self, number: str) -> Optional[str]:
        """The user whose stored handset number is ``number``, or None."""
        return await self.store.user_by_wireless(number)

    async def page_hit(self, name: str) -> None:
        """Someone opened ``name``'s page: count it if they are offline."""
        if not self.hub.is_online(name):
            await self.store.add_hit(name)

    # -- names (spec section 10): greeting, update token, presence sources ------

    async def greeting(self, name: str) -> str:
        """User ``name``'s greeting (the text of their page while they are
        offline), "" when none."""
        if name.startswith(GUEST_PREFIX):
            return ""
        return (await self.store.extras(name)).get("greeting") or ""

    async def set_greeting(self, session: Session, text: Any) -> str:
        """Set the greeting of the session's user (empty: none); 400 past
        ``MAX_GREETING`` characters or for text that is not text."""
        self._member_only(session)
        self._change_allowance(session)
        if text is None:
            text = ""
        if not isinstance(text, str) or not valid_text(text):
            raise BadRequest("the greeting must be text")
        text = text.replace("\r\n", "\n").strip()
        if len(text) > MAX_GREETING:
            raise TooLarge(f"the greeting is longer than {MAX_GREETING} characters")
        if any(ord(c) < 32 and c not in "\n\t" for c in text):
            raise BadRequest("the greeting may not hold control characters")
        await self.store.set_extra(session.user.name, "greeting", text or None)
        return text

    async def new_update_token(self, session: Session) -> str:
        """A new dyndns2 update token for the session's user (the old one
        stops working); kept only as its hash, shown once."""
        self._member_only(session)
        self._change_allowance(session)
        token = secrets.token_urlsafe(UPDATE_TOKEN_BYTES)
        await self.store.set_extra(session.user.name, "update_token", token_hash(token))
        self.log.info("{user} made a new update token", user=session.user.name)
        return token

    async def drop_update_token(self, session: Session) -> None:
        self._member_only(session)
        self._change_allowance(session)
        await self.store.set_extra(session.user.name, "update_token", None)

    async def has_update_token(self, name: str) -> bool:
        return bool((await self.store.extras(name)).get("update_token"))

    async def check_update_secret(self, name: Any, secret: Any, ip: str = "") -> None:
        """Nothing if ``secret`` is user ``name``'s update token or password
        (a dyndns2 update's Basic auth); else as :meth:`check_password`."""
        if (isinstance(name, str) and NAME_RE.match(name) and isinstance(secret, str)
                and 0 < len(secret) <= MAX_TOKEN and secret.isascii()):
            stored = (await self.store.extras(name)).get("update_token")
            if stored and hmac.compare_digest(stored, token_hash(secret)):
                await self._not_locked(name)
                return
        await self.check_password(name, secret, ip)

    async def open_source(self, name: str, ip: str, scope: str = "dyndns") -> Session:
        """A session of user ``name`` held by this box for a presence source
        that is not a heartbeat (a dyndns2 name, see presence/names/; a SIP
        registration, scope ``sip``, see presence/sip/registrar.py): its
        groups as a login's, limited to no front-end (its scope is in
        :data:`SOURCE_SCOPES`: its ID opens nothing)."""
        groups, owners = await self.store.memberships(name)
        session = self.hub.login_local(name, secrets.token_urlsafe(24), ip,
                                       groups + [book_key(o) for o in owners])
        session.scope = scope
        return session

    # -- communications pages, home page and settings (spec section 6) ---------

    async def page_rows(self, names: List[str]) -> List[Dict[str, Any]]:
        """The rows of a communications page: ``{"name", "online", "state",
        "text", "phone", "handset"}`` per name.  ``phone`` is the stored phone number (pages
        offer it as a ``tel:`` link) or None; ``handset`` only says whether a
        handset number is stored (the number itself stays private)."""
        rows = []
        for name in names:
            user = None if name.startswith(GUEST_PREFIX) else await self.store.get_user(name)
            row = self._presence_row(name)
            rows.append({
                "name": name,
                "online": row["online"],
                "state": row["state"],
                "text": row["text"],
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
                    "rows": await self.page_rows([canonical]),
                    "greeting": await self.greeting(canonical)}
        group = await self.store.get_group(canonical)
        self._learn_mode(group)
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
        group = await self.group_named(name)
        if not await self._check_group_password(group, password, ip):
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
            if found:
                self._learn_mode(found)
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
        extras = await self.store.extras(me)
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
            "greeting": extras.get("greeting") or "",
            "update_token": bool(extras.get("update_token")),
            "guests_may_call": extras.get("guest_calls") == "1",
        }

    async def guests_may_call(self, name: str) -> bool:
        """Whether user ``name`` takes browser calls from guests (their
        setting; off unless they turned it on)."""
        return (await self.store.extras(name)).get("guest_calls") == "1"

    async def set_guests_may_call(self, session: Session, allow: bool) -> None:
        """The session's user lets guests call them in the browser, or not."""
        self._member_only(session)
        self._change_allowance(session)
        await self.store.set_extra(session.user.name, "guest_calls", "1" if allow else None)

    async def update_profile(self, session: Session, email: Any = None, phone: Any = None,
                             wireless: Any = None) -> None:
        """Set the user's e-mail, phone and handset number; an empty or
        missing value clears it."""
        self._member_only(session)
        self._change_allowance(session)
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


def session_handle(ident: str) -> str:
    """How the operator console names a session: not its ID, which would let
    whoever reads the console act as the user, but 64 bits of its hash."""
    return hashlib.sha256(b"operator handle " + ident.encode("ascii", "replace")).hexdigest()[:16]


class Operator:
    """What the operator console (``presence.admin``) may do to users: the
    actions go through here like every other use of the directory."""

    log = Logger()

    def __init__(self, service: PresenceService) -> None:
        self.service = service
        self.hub = service.hub

    async def user(self, name: Any) -> Dict[str, Any]:
        """A user's account and their sessions on every box."""
        name = required(name, "name").strip()
        if len(name) > 64:
            raise BadRequest("name is longer than 64 characters")
        store = self.service.store
        account = await store.get_user(name) if NAME_RE.match(name) else None
        if account is None and not self.hub.knows(name):
            raise NotFound(f"no user {name!r}")
        unread, used = await store.box_usage(name)
        return {
            "name": name, "registered": account is not None,
            "locked": bool(account) and await store.is_locked(name),
            "online": self.hub.is_online(name), "state": self.hub.state_of(name)[0],
            "unread": unread, "unread_bytes": used,
            "sessions": [self._session_row(s) for s in self._sessions(name)],
        }

    def _sessions(self, name: str) -> List[Session]:
        """Every session of ``name`` on any box: this box's, then stand-ins
        of the others' (a cluster)."""
        found = (self.hub.session(sid) for sid in self.hub.session_ids(name))
        return [s for s in found if s is not None]

    def _session_row(self, s: Session) -> Dict[str, Any]:
        here = s.host_box == self.hub.config.host_box
        return {"handle": session_handle(s.id), "host_box": s.host_box,
                "since": s.login_time, "address": f"{s.ip}:{s.port}",
                # another box's session: its mailbox and heartbeat are there
                "mailbox": len(s.mailbox) if here else None,
                "heartbeat": s.channel is not None if here else None}

    def end_session(self, name: Any, handle: Any, who: str) -> str:
        """End the session of user ``name`` whose handle (as :meth:`user`
        lists it) is ``handle``."""
        name = required(name, "name")
        session = next((s for s in self._sessions(name)
                        if isinstance(handle, str) and session_handle(s.id) == handle), None)
        if session is None:
            raise NotFound("no such session")
        self.hub.end(session, "admin")
        self.log.info("admin {who} ended a session of {user}", who=who, user=session.user.name)
        return session.user.name

    async def lock(self, name: Any, locked: bool, who: str) -> int:
        """Lock (and end every session of) or unlock an account; how many
        sessions ended."""
        name = check_name(name, "name")
        if not await self.service.store.set_locked(name, locked):
            raise NotFound(f"no account {name!r}")
        ended = self.hub.end_user(name, "locked") if locked else 0
        self.log.info("admin {who} {did} the account {user}", who=who, user=name,
                      did="locked" if locked else "unlocked")
        return ended

    async def purge(self, name: Any, sender: Any, who: str) -> int:
        name = check_name(name, "name")
        if sender in (None, ""):
            sender = None
        elif not isinstance(sender, str) or len(sender) > 64:
            raise BadRequest("from must be a user name")
        removed = await self.service.store.purge_messages(name, sender)
        self.log.info("admin {who} removed {n} unread messages from {user}'s message box"
                      " (from {sender})", who=who, n=removed, user=name,
                      sender=sender or "anyone")
        return removed

    def notice(self, text: Any, who: str) -> int:
        text = check_text(text)
        count = self.hub.broadcast(frames.notice(text))
        self.log.info("admin {who} sent a notice to {n} sessions", who=who, n=count)
        return count


def _box_full(peer: str) -> TooMany:
    return TooMany(f"{peer}'s message box is full: it holds as much unread as it may;"
                   " try again once they have read their messages")


def _shown(value: Any) -> str:
    """A client-given name, safe and short enough to echo in an error."""
    text = value if isinstance(value, str) else repr(value)
    return text[:64].encode("ascii", "backslashreplace").decode("ascii")
