"""Invitations by e-mail (spec section 11; docs/invites.md): the rules.

:class:`Invitations` sits beside :class:`~presence.service.PresenceService`
and uses it for everything that is not an invitation (sessions, guests,
registration, address books, presence).  Its front-end is
:mod:`presence.invite.web`.

An invitation has two tokens, each random (192 bits), single-purpose and
kept only hashed: the *invitation token* of ``/badge/<token>.svg|.png`` and
``/i/<token>`` (it shows the inviter's presence and opens a guest chat with
them, nothing else: no session, no account), and the *unsubscribe token*
of ``/i/u/<token>``.  The invitation token expires ``--invite-ttl`` seconds
after sending; an expired or unknown one shows nobody.
"""

from __future__ import annotations

import secrets
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from presence.core.ratelimit import RateLimiter, address_key
from presence.core.tables import Session
from presence.errors import BadRequest, Conflict, Forbidden, NotFound, TooMany
from presence.invite.mail import Links, build_invitation, check_address, check_note
from presence.invite.outbox import Outbox
from presence.invite.store import InviteStore
from presence.service import PresenceService

log = Logger()

TOKEN_BYTES = 24
#: a "token" longer than this is not one of ours and is not looked up
MAX_TOKEN = 64
DEFAULT_TTL = 30 * 86400.0
DEFAULT_PER_DAY = 50
#: seconds POST /api/invite waits for the smarthost before answering 202
ANSWER_WAIT = 10.0


def well_formed(token: Any) -> bool:
    return (isinstance(token, str) and 16 <= len(token) <= MAX_TOKEN and token.isascii()
            and all(c.isalnum() or c in "-_" for c in token))


class Invitations:
    def __init__(self, service: PresenceService, store: InviteStore, outbox: Outbox,
                 sender: str, ttl: float = DEFAULT_TTL, per_day: int = DEFAULT_PER_DAY,
                 site: str = "presence", base: str = "http://localhost:8080",
                 answer_wait: float = ANSWER_WAIT) -> None:
        self.service = service
        self.hub = service.hub
        self.clock = service.clock
        self.store = store
        self.outbox = outbox
        self.sender = sender
        self.ttl = ttl
        self.per_day = per_day
        self.site = site
        #: this server as the invited reach it (set once --http listens)
        self.base = base.rstrip("/")
        self.answer_wait = answer_wait
        self.per_user = RateLimiter(capacity=per_day, rate=per_day / 86400.0,
                                    max_keys=100000)
        #: badge opens counted per client address (past it: shown, not counted)
        self.counted_opens = RateLimiter(capacity=30, rate=0.5)
        #: unknown tokens per address (a stranger guessing)
        self.misses = RateLimiter(capacity=60, rate=1.0)

    # -- sending ---------------------------------------------------------------

    def links(self, token: str, unsub: str) -> Links:
        b = self.base
        return Links(page=f"{b}/i/{token}", badge_svg=f"{b}/badge/{token}.svg",
                     badge_png=f"{b}/badge/{token}.png", unsubscribe=f"{b}/i/u/{unsub}")

    async def invite(self, session: Session, email: Any, note: Any = None
                     ) -> Tuple[int, Dict[str, Any]]:
        """Send an invitation from the user of ``session``: ``(201, ...)``
        once the smarthost took the mail (or, without one, it is in the
        outbox), ``(202, {"queued": true})`` when it waits in the outbox."""
        if session.user.guest:
            raise Forbidden("guests cannot invite: register first")
        address = check_address(email)
        note = check_note(note)
        me = session.user.name
        now = self.clock.seconds()
        if not self.per_user.allowed(me, now):
            raise TooMany(f"you sent {self.per_day} invitations in a day, as many as one"
                          " may; try again later", retry_after=self.per_user.wait(me, now))
        if await self.store.is_unsubscribed(address):
            raise Forbidden("this address asked not to be invited again")
        self.per_user.take(me, now)
        token, unsub = secrets.token_urlsafe(TOKEN_BYTES), secrets.token_urlsafe(TOKEN_BYTES)
        status = "queued" if self.outbox.send is not None else "written"
        ident = await self.store.add(token, unsub, me, address, note, now, now + self.ttl,
                                     status)
        state, text = self.hub.state_of(me)
        message = build_invitation(me, address, self.sender, note, self.links(token, unsub),
                                   state, text, self.site, now)
        try:
            await self.outbox.put(ident, message.as_bytes())
        except OSError as e:
            await self.store.set_status(ident, "failed", error=f"outbox: {e.strerror}")
            log.error("the invitation mail {id} could not be kept in the outbox: {error}",
                      id=ident, error=e.strerror)
            raise
        log.info("{user} invited someone (invitation {id})", user=me, id=ident)
        answer: Dict[str, Any] = {"id": ident, "expires": now + self.ttl}
        if status == "written":
            return 201, dict(answer, queued=False, status="written")
        sent = await self._first_attempt(ident)
        if sent:
            return 201, dict(answer, queued=False, status="sent")
        return 202, dict(answer, queued=True, status="queued")

    async def _first_attempt(self, ident: int) -> bool:
        """Try the smarthost now, waiting at most ``answer_wait`` seconds for
        the answer (the attempt goes on after that, and is retried if it
        fails)."""
        attempt = defer.ensureDeferred(self.outbox.attempt(ident))
        attempt.addErrback(lambda f: log.failure("sending invitation mail {id} failed", f,
                                                 id=ident) or False)
        answered: defer.Deferred = defer.Deferred()

        def answer(sent: Any) -> None:
            if not answered.called:
                answered.callback(bool(sent))
        attempt.addCallback(answer)
        timer = self.clock.callLater(self.answer_wait, answer, False)
        sent = await answered
        if timer.active():
            timer.cancel()
        return sent

    # -- what the inviter sees --------------------------------------------------

    async def of(self, session: Session) -> List[Dict[str, Any]]:
        """The user's invitations, newest first (at most 100)."""
        if session.user.guest:
            return []
        now = self.clock.seconds()
        shown = []
        for inv in await self.store.of_inviter(session.user.name):
            shown.append({
                "id": inv["id"], "email": inv["email"], "note": inv["note"],
                "sent": inv["created"], "expires": inv["expires"],
                "expired": now >= inv["expires"], "mail": inv["status"],
                "opens": inv["opens"], "opened": inv["first_open"],
                "clicked": inv["clicked"], "accepted": inv["accepted"],
                "accepted_by": inv["accepted_by"],
            })
        return shown

    # -- what the invited see ----------------------------------------------------

    async def find(self, token: Any, ip: str = "") -> Optional[Dict[str, Any]]:
        """The live invitation of ``token``, or None (unknown, expired,
        malformed; guessing from one address is slowed down)."""
        now = self.clock.seconds()
        who = address_key(ip)
        if not self.misses.allowed(who, now):
            raise TooMany("too many unknown invitation links from this address;"
                          " try again later", retry_after=self.misses.wait(who, now))
        inv = await self.store.by_token(token) if well_formed(token) else None
        if inv is None or now >= inv["expires"]:
            self.misses.take(who, now)
            return None
        return inv

    async def badge(self, token: Any, ip: str = "") -> Optional[Tuple[str, str, str]]:
        """``(inviter, state, text)`` for the badge of ``token`` now, counting
        an open; None when the token shows nobody."""
        inv = await self.find(token, ip)
        if inv is None:
            return None
        now = self.clock.seconds()
        if self.counted_opens.take(address_key(ip), now):
            await self.store.opened(inv["id"], now)
        state, text = self.hub.state_of(inv["inviter"])
        return inv["inviter"], state, text

    async def opened_link(self, inv: Dict[str, Any], session: Session) -> bool:
        """The invited opened ``/i/<token>`` with ``session``: counted, and a
        chat between them and the inviter starts (``msg initChat`` to both)
        when the inviter is online.  True if it started."""
        await self.store.clicked(inv["id"], self.clock.seconds())
        if session.user.name == inv["inviter"]:
            return False
        try:
            return await self.service.init_chat(session, inv["inviter"])
        except (TooMany, NotFound):
            return False

    async def register(self, inv: Dict[str, Any], username: Any, password: Any,
                       password2: Any, ip: str = "", port: int = 0) -> Session:
        """A new account from an invitation: registered, logged in, and in
        the inviter's address book as the inviter is in theirs."""
        if inv["accepted"] is not None:
            raise Conflict("this invitation was used to register already: log in instead")
        if password != password2:
            raise BadRequest("The two passwords differ.")
        name = username.strip().lower() if isinstance(username, str) else username
        name = await self.service.register(name, password, None, None, None, ip=ip)
        session = await self.service.login(name, password, ip, port)
        if await self.store.accept(inv["id"], name, self.clock.seconds()):
            await self.service.befriend(inv["inviter"], name)
            log.info("{user} registered from invitation {id} of {inviter}", user=name,
                     id=inv["id"], inviter=inv["inviter"])
        return session

    async def unsubscribe(self, token: Any, ip: str = "") -> bool:
        """The address of the invitation whose unsubscribe token this is
        gets no invitation again.  False for an unknown token."""
        now = self.clock.seconds()
        who = address_key(ip)
        if not self.misses.allowed(who, now):
            raise TooMany("too many unknown links from this address; try again later",
                          retry_after=self.misses.wait(who, now))
        inv = await self.store.by_unsubscribe(token) if well_formed(token) else None
        if inv is None:
            self.misses.take(who, now)
            return False
        await self.store.unsubscribe(inv["email"], now)
        log.info("an invited address asked not to be invited again (invitation {id})",
                 id=inv["id"])
        return True

    async def known_unsubscribe(self, token: Any) -> bool:
        return well_formed(token) and await self.store.by_unsubscribe(token) is not None
