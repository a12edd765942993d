"""``IDirectory``: the persistent "first database" of users, groups and boxes.

Every method returns a ``Deferred``; an implementation never blocks the
reactor and a write has reached durable storage before its Deferred fires.
The embedded default is :mod:`presence.store.sqlite`; cluster mode puts the
same interface over Redis.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional

from twisted.internet import defer
from zope.interface import Interface

from presence.errors import ServiceUnavailable


#: resume tokens kept per user (one per device); a new one past it drops the oldest
RESUME_PER_USER = 32

class Resumed(NamedTuple):
    """What :meth:`IDirectory.resume_login` found for a resume token."""
    user: str
    #: an operator locked the account (nothing was recorded)
    locked: bool
    #: the user's record before this login, as ``record_login`` answers it
    before: dict
    #: the user's groups, and the owners of the address books listing them
    groups: List[str]
    owners: List[str]


@defer.inlineCallbacks
def resume_login_in_steps(store: Any, token_hash: str, not_before: Optional[float],
                          now: float):
    """:meth:`IDirectory.resume_login` as four calls of ``store`` (for a
    directory where a call costs little)."""
    user = yield store.resume_user(token_hash, not_before)
    if user is None:
        return None
    if (yield store.is_locked(user)):
        return Resumed(user, True, {}, [], [])
    before = yield store.record_login(user, now)
    groups, owners = yield store.memberships(user)
    return Resumed(user, False, before, groups, owners)


class NameTaken(Exception):
    """The name is already a user, a group or an alias."""


class BoxFull(Exception):
    """The recipient's message box holds as much unread as its quota allows."""


class StoreUnavailable(ServiceUnavailable):
    """The directory cannot be reached now (Redis down or too slow); the
    call failed within a bounded time, and trying again shortly may work.
    The message is the one clients see (503); the reason is in the log."""

    def __init__(self, message: str = "the directory is unavailable, try again shortly",
                 retry_after: "float | None" = 2.0) -> None:
        super().__init__(message, retry_after)


class IDirectory(Interface):
    # -- users -------------------------------------------------------------
    def create_user(name, password_hash, email=None, phone=None, wireless=None, now=0.0):
        """Create a user; fails with :class:`NameTaken`."""

    def get_user(name):
        """A dict (name, password_hash, email, phone, wireless, created,
        last_login, last_seen, hits_offline) or None."""

    def user_by_wireless(number):
        """The name of the user whose handset number (``wireless``) is
        ``number``, or None; with several, the earliest registered."""

    def resolve(name):
        """``("user"|"group", canonical name)`` for a user, group or alias
        name; None when unknown."""

    def add_alias(user, alias):
        """Another static name for ``user``; fails with :class:`NameTaken`."""

    def aliases(user):
        """The aliases of ``user``."""

    def record_login(user, now):
        """Note a login at ``now``; return the figures as they were before it:
        ``{"last_login", "last_seen", "hits_offline"}`` (hits reset to 0)."""

    def record_offline(user, now):
        """``user`` went offline at ``now``."""

    def add_hit(user):
        """Count one opening of ``user``'s page while they were offline."""

    def update_profile(user, email=None, phone=None, wireless=None):
        """Set ``user``'s e-mail, phone and handset number (None clears
        one); True if the user exists."""

    def set_password(user, password_hash):
        """Replace ``user``'s password hash and forget their SIP digest
        HA1s (they were derived from the old password); Deferred of True if
        the user exists."""

    # -- SIP digest secrets (docs/security.md, "SIP digest secrets") ----------
    def set_sip_ha1(user, realm, ha1s):
        """Keep ``ha1s`` (``{algorithm: hex HA1}``, HA1 = H(user:realm:password))
        for ``realm`` in place of any kept before, whatever their realm;
        Deferred of True if the user exists.  A password equivalent for SIP:
        never logged, never in an answer."""

    def sip_ha1(user, realm, algorithm):
        """The hex HA1 kept for ``user`` in ``realm`` with ``algorithm``
        (``MD5``, ``SHA-256``); None if none is kept for that realm and
        algorithm (another realm's are never given out); Deferred."""

    # -- resume tokens (spec section 9) ------------------------------------------
    def store_resume(token_hash, user, device, now):
        """Keep a resume token's hash for ``user`` (``device`` a short label); Deferred of None."""

    def resume_user(token_hash, not_before=None):
        """The user a resume token's hash belongs to, or None; Deferred.  A
        token created before ``not_before`` (a time) has expired: None, and
        it is forgotten."""

    def revoke_resume(user, token_hash=None):
        """Forget ``user``'s resume token ``token_hash``, or all of theirs when None; Deferred of how many."""

    def resume_login(token_hash, not_before, now):
        """A login with a resume token, in one call (a session set up from a
        token must cost little): ``resume_user(token_hash, not_before)``;
        for a user found, whether the account is locked, and if not,
        ``record_login(user, now)`` and ``memberships(user)``.  Deferred of
        a :class:`Resumed`, or None for a token unknown, revoked or
        expired."""

    # -- groups and address books --------------------------------------------
    def create_group(name, owner, password_hash=None, now=0.0):
        """Create a group owned by (and containing) ``owner``; fails with
        :class:`NameTaken`."""

    def get_group(name):
        """A dict (name, owner, password_hash, created, on_demand) or None."""

    def set_on_demand(group, on_demand):
        """Record whether ``group``'s owner chose presence on demand
        (nothing pushed to its watchers)."""

    def join(group, user):
        """Add ``user`` to ``group``; True if they were not a member yet."""

    def leave(group, user):
        """Remove ``user`` from ``group``; True if they were a member."""

    def members(group):
        """The members of ``group``, sorted."""

    def is_member(group, user):
        """Whether ``user`` is a member of ``group``: one index look-up,
        whatever the group's size."""

    def memberships(user):
        """``(groups, book_owners)``: the groups ``user`` is in and the owners
        of the address books that list ``user``."""

    def add_contact(owner, contact):
        """Add ``contact`` to ``owner``'s address book; True if new."""

    def remove_contact(owner, contact):
        """True if ``contact`` was in ``owner``'s address book."""

    def contacts(owner):
        """The names in ``owner``'s address book, sorted."""

    def has_contact(owner, contact):
        """Whether ``contact`` is in ``owner``'s address book: one index
        look-up, whatever the book's size."""

    # -- message boxes -------------------------------------------------------
    def store_message(recipient, sender, text, now, msgid=None, quota=None):
        """Keep a message; return its id.  A repeated ``msgid`` is kept once
        and returns the first id.  ``quota`` ``(messages, bytes)``: fail with
        :class:`BoxFull` if the recipient already has ``messages`` unread, or
        the text (in UTF-8 bytes) would take their unread past ``bytes``."""

    def spill(recipient, sender, text, now, msgid=None):
        """Keep chat that left a mailbox unread, past any quota (it was
        accepted already); returns nothing.  Spills are written in batches,
        in order, and at most one batch write waits for the storage at a
        time; every spill made before the directory stops is kept (in
        Redis: those that find it down are sent again when it is back; only
        what still waits if it is down at stop is lost, and logged).  A
        repeated ``msgid`` is kept once."""

    def box_usage(recipient):
        """``(unread messages, their size in UTF-8 bytes)`` of ``recipient``."""

    def messages(recipient, limit=100):
        """The newest ``limit`` messages, newest first, as dicts (id, from,
        text, time, read)."""

    def mark_read(recipient, ident):
        """True if message ``ident`` of ``recipient`` exists (now read)."""

    def unread(recipient):
        """How many unread messages ``recipient`` has."""

    # -- per-user settings of the front-ends (names: greeting, update token) --
    def set_extra(user, key, value):
        """Keep ``value`` (text; None removes it) under ``key`` for ``user``
        (the greeting of their page, the hash of their dyndns2 update token);
        Deferred of None.  Keys are short fixed words chosen by the service."""

    def extras(user):
        """Every ``key -> value`` kept for ``user`` by :meth:`set_extra`; Deferred of a dict."""

    def purge_messages(recipient, sender=None):
        """Delete ``recipient``'s unread messages from ``sender`` (every
        unread one when None): an operator removing a flood.  Deferred of
        how many went."""

    # -- operator locks ------------------------------------------------------
    def set_locked(user, locked):
        """Lock (no login, no resume) or unlock account ``user``; Deferred
        of True if the user exists."""

    def is_locked(user):
        """Whether account ``user`` is locked; Deferred."""

    # -- resume tokens -------------------------------------------------------
    def store_resume(token_hash, user, device, now):
        """Keep a resume token's hash for ``user`` (``device`` a short label); Deferred of None."""

    def resume_user(token_hash, not_before=None):
        """The user a resume token's hash belongs to, or None; Deferred.  A
        token created before ``not_before`` (a time) has expired: None, and
        it is forgotten."""

    def revoke_resume(user, token_hash=None):
        """Forget ``user``'s resume token ``token_hash``, or all of theirs when None; Deferred of how many."""
