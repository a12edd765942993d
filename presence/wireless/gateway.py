"""The presence server as a client of the operator: texting a handset,
delivery reports, one-time push tokens and mobile-originated texts.

Texting a handset (``POST /api/wireless/text``, :meth:`WirelessGateway.text`):

1. the target user's stored handset number is looked up (404 without one);
2. a one-time token is made and the URL ``<public base>/wml/t/<token>``;
3. a WAP push (Service Indication, ``--wireless-via push``, the default) or
   an SMS carrying the URL (``--wireless-via sms``) goes to the operator API
   over HTTP, exactly as to a Kannel box, with ``dlr-mask=3`` and a
   ``dlr-url`` back to ``/api/wireless/dlr?ref=<ref>&status=%d`` on this
   server;
4. the operator's ``202`` is answered ``202 {"status": "sent"}``; a refusal
   is ``502``, an unreachable operator ``503``;
5. the delivery report ``1`` becomes ``msg initChat <user>`` for the sender,
   ``2`` (or ``16``) ``msg wireless unavailable <user>``;
6. the handset opens the URL with proof that it is the handset the push
   went to (``X-Handset-Proof``, an HMAC of the token keyed by its secret's
   hash, :func:`presence.wireless.keys.link_proof`): the token opens a
   session *limited to the WML pages* (scope ``"wml"``), once, within
   ``LINK_TTL`` seconds (see :mod:`presence.wireless.web`).

Texts are limited per client address and per receiving user, never by the
sender's name (which a guest picks at random).

Handset secrets (:mod:`presence.wireless.keys`) are issued here
(:meth:`WirelessGateway.issue_secret`) and checked here for the simulator's
handset API (:meth:`WirelessGateway.check_handset`): the secret must be the
number's, and the number must still be the user's stored handset.

Mobile-originated texts to the shortcode (:meth:`WirelessGateway.mobile_text`):
``@name text`` (or ``name: text``) from a registered handset number is a
chat from that number's user to ``name``, by the service's own chat rule
(:meth:`PresenceService.chat`: kept in ``name``'s message box when ``name``
is offline); the user gets an SMS saying what happened.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from twisted.logger import Logger

from presence.core import frames
from presence.core.counters import WIRELESS_OUTCOMES
from presence.core.ratelimit import RateLimiter
from presence.core.tables import Session
from presence.errors import BadRequest, ClientError, Forbidden, NotFound, TooLarge, TooMany
from presence.service import MAX_TEXT, PresenceService
from presence.wireless import si
from presence.wireless.keys import HandsetKeys

#: seconds a push link may be used after it was made (single use)
LINK_TTL = 300.0
#: wrong handset proofs for one link before it is void
LINK_TRIES = 3
MAX_TOKENS = 20000
#: a report may come in this long after the text was sent
PENDING_TTL = 900.0
_MO = re.compile(r"@?([a-z0-9][a-z0-9._-]{0,31})(?::\s*|\s+)(.+)\Z", re.S | re.I)


class BadGateway(ClientError):
    status = 502


class Unavailable(ClientError):
    status = 503


class Gone(ClientError):
    status = 410


@dataclass
class Token:
    user: str
    peer: str
    expires: float
    number: str = ""
    used: bool = False
    tries: int = 0


@dataclass
class Pending:
    sender: str
    target: str
    token: str
    expires: float


class WirelessGateway:
    log = Logger()

    def __init__(self, service: PresenceService, http: Any, username: str, password: str,
                 via: str = "push", validity: float = 60.0,
                 shortcode: str = "7777", keys: Optional[HandsetKeys] = None,
                 link_ttl: float = LINK_TTL) -> None:
        if via not in ("push", "sms"):
            raise ValueError("via must be push or sms")
        self.service = service
        self.hub = service.hub
        self.clock = service.clock
        self.http = http
        self.username = username
        self.password = password
        self.via = via
        self.validity = validity
        self.shortcode = shortcode
        self.operator: Optional[str] = None     # e.g. http://127.0.0.1:13013
        self.callback: Optional[str] = None     # this server, as the operator reaches it
        self.public: Optional[str] = None       # this server, as handsets reach it
        self.tokens: "OrderedDict[str, Token]" = OrderedDict()
        self.pending: "OrderedDict[str, Pending]" = OrderedDict()
        self.keys = keys if keys is not None else HandsetKeys()
        self.link_ttl = link_ttl
        #: texts to handsets per client address, and per receiving user
        self.address_limit = RateLimiter(capacity=10, rate=1 / 6)
        self.recipient_limit = RateLimiter(capacity=5, rate=1 / 30)
        self.mo_limit = RateLimiter(capacity=20, rate=1 / 3)

    def configure(self, operator: str, callback: str, public: str) -> None:
        self.operator = operator.rstrip("/")
        self.callback = callback.rstrip("/")
        self.public = public.rstrip("/")

    @property
    def ready(self) -> bool:
        return bool(self.operator and self.callback and self.public)

    # -- tokens ------------------------------------------------------------

    def _purge(self, now: float) -> None:
        for store in (self.tokens, self.pending):
            while store:
                key, item = next(iter(store.items()))
                if item.expires > now and len(store) <= MAX_TOKENS:
                    break
                store.popitem(last=False)

    def issue(self, user: str, peer: str, number: str = "") -> str:
        """A push link token for ``user``'s handset ``number``, from ``peer``."""
        now = self.clock.seconds()
        self._purge(now)
        token = secrets.token_urlsafe(16)
        self.tokens[token] = Token(user, peer, now + self.link_ttl, number)
        return token

    def consume(self, token: str, proof: Optional[str]) -> Tuple[str, str]:
        """``(user, peer)`` of a live token, which is used up, when ``proof``
        shows the request comes from the handset the link was sent to (see
        :func:`presence.wireless.keys.link_proof`).  Forbidden (403) without
        that proof (``LINK_TRIES`` wrong ones void the link), Gone (410) for a
        used or expired link, NotFound (404) for one never issued."""
        now = self.clock.seconds()
        found = self.tokens.get(token) if isinstance(token, str) else None
        if found is None:
            self._purge(now)
            raise NotFound("this link is not known here")
        if found.used or found.expires <= now:
            raise Gone("this link has expired or was used already")
        if not self.keys.check_proof(found.number, token, proof):
            found.tries += 1
            if found.tries >= LINK_TRIES:
                found.used = True
            raise Forbidden("this link works only on the handset it was sent to")
        found.used = True
        return found.user, found.peer

    # -- handset secrets ---------------------------------------------------------

    async def issue_secret(self, session: Session) -> Dict[str, str]:
        """A new secret for the handset number ``session``'s user has stored
        (shown once; the old one stops working).  NotFound without one."""
        if session.user.guest:
            raise Forbidden("guests have no handset")
        user = session.user.name
        number = await self.service.handset_number(user)
        if not number:
            raise NotFound("store your handset number first")
        secret = self.keys.issue(user, number)
        self.log.info("{user} was given a new handset secret", user=user)
        return {"number": number, "secret": secret}

    async def check_handset(self, number: str, secret: Optional[str]) -> bool:
        """Whether ``secret`` is the handset ``number``'s and the number is
        still its user's stored handset (the store is asked either way, so a
        number with no secret takes as long)."""
        user = self.keys.check(number, secret)
        owner = await self.service.user_by_handset(number)
        return user is not None and owner == user

    # -- texting a handset -----------------------------------------------------

    async def text(self, session: Session, to: Any, ip: str = "") -> Dict[str, str]:
        """Text ``to``'s handset for ``session``, whose request came from
        ``ip`` (the address limit's key)."""
        target = await self.service.user_named(to)
        number = await self.service.handset_number(target)
        if not number:
            raise NotFound(f"{target} has no handset number stored")
        if not self.ready:
            raise Unavailable("texting handsets is off on this server")
        sender = session.user.name
        now = self.clock.seconds()
        if not self.address_limit.allowed(ip, now):
            self.service.counters.refused("wireless", ip, now)
            raise TooMany("too many texts to handsets from this address; try again later")
        if not self.recipient_limit.allowed(target, now):
            self.service.counters.refused("wireless", ip, now)
            raise TooMany(f"{target}'s handset was texted too often; try again later")
        self.address_limit.take(ip, now)
        self.recipient_limit.take(target, now)
        token = self.issue(target, sender, number)
        ref = secrets.token_urlsafe(12)
        self.pending[ref] = Pending(sender, target, token, now + self.validity + PENDING_TTL)
        url = f"{self.public}/wml/t/{token}"
        words = f"{sender} wants to chat"
        dlr_url = f"{self.callback}/api/wireless/dlr?ref={ref}&status=%d"
        common = {"to": number, "dlr-mask": "3", "dlr-url": dlr_url}
        try:
            if self.via == "push":
                # the credentials in HTTP Basic auth: never in a URL (or a log)
                response = await self.http.request(
                    "POST", f"{self.operator}/wappush", params=common,
                    data=si.document(url, words, si_id=ref, action="signal-high"),
                    headers={"Content-Type": [si.CONTENT_TYPE]},
                    auth=(self.username, self.password))
            else:
                response = await self.http.request(
                    "POST", f"{self.operator}/cgi-bin/sendsms",
                    data={**common, "username": self.username, "password": self.password,
                          "from": self.shortcode, "text": f"{words}: {url}"})
            body = await self.http.content(response)
        except Exception as e:
            self._forget(ref)
            self._outcome("unreachable")
            self.log.warn("the operator is unreachable: {why}", why=str(e) or repr(e))
            raise Unavailable("the operator network is unreachable; try again later")
        if response.code != 202:
            self._forget(ref)
            self._outcome("refused")
            answer = body.decode("utf-8", "replace")
            match = re.search(r'desc="([^"]*)"', answer)
            answer = " ".join((match.group(1) if match else answer).split())[:160]
            self.log.warn("the operator refused a text to {user}: {code} {answer}",
                          user=target, code=response.code, answer=answer)
            raise BadGateway(f"the operator refused the text: {answer}")
        self._outcome("sent")
        self.log.info("{sender} texted {user}'s handset ({via})", sender=sender, user=target,
                      via=self.via)
        return {"status": "sent"}

    def _outcome(self, what: str) -> None:
        """Count a text's outcome for the operator endpoint."""
        self.service.counters.count("wireless", what, WIRELESS_OUTCOMES)

    def _forget(self, ref: str) -> None:
        pending = self.pending.pop(ref, None)
        if pending is not None:
            self.tokens.pop(pending.token, None)

    def report(self, ref: Any, status: Any) -> bool:
        """A delivery report for ``ref``; False if the ref is not known."""
        pending = self.pending.get(ref) if isinstance(ref, str) else None
        if pending is None:
            return False
        try:
            event = int(status)
        except (TypeError, ValueError):
            return True
        if event == 1:
            del self.pending[ref]
            self._outcome("delivered")
            self.hub.deliver(pending.sender, frames.init_chat(pending.target))
        elif event in (2, 16):
            del self.pending[ref]
            self._outcome("failed")
            token = self.tokens.get(pending.token)
            if token is not None:
                token.used = True
            self.hub.deliver(pending.sender, frames.wireless_unavailable(pending.target))
            self.log.info("a text to {user}'s handset was not delivered", user=pending.target)
        return True

    # -- mobile-originated texts -------------------------------------------------

    async def mobile_text(self, number: str, to: str, text: str) -> None:
        """A text from handset ``number`` to the shortcode."""
        if not self.mo_limit.take(number, self.clock.seconds()):
            return
        reply = await self._mobile_text(number, text)
        if reply:
            await self.sms(number, reply)

    async def _mobile_text(self, number: str, text: str) -> str:
        user = await self.service.user_by_handset(number)
        if user is None:
            return "This number is not registered with presence."
        match = _MO.match(text.strip())
        if match is None:
            return "To chat, text: @name your message"
        name, body = match.group(1).lower(), match.group(2).strip()
        try:
            peer = await self.service.user_named(name)
        except NotFound:
            return f"No such user: {name[:32]}"
        session, transient = await self._sender(user, number)
        try:
            delivered, _ = await self.service.chat(session, peer, body)
        except TooLarge:
            return f"Too long: at most {MAX_TEXT} characters"
        except (BadRequest, TooMany) as e:
            return f"Not sent: {e.message}"[:160]
        finally:
            if transient:
                self.hub.end(session, "logout")
        if delivered == "online":
            return f"To {peer}: delivered"
        return f"{peer} is offline: left in their message box"

    async def _sender(self, user: str, number: str) -> Tuple[Session, bool]:
        """A session to send ``user``'s text with: their newest live one, or
        a transient one limited to the wireless pages (True: end it after)."""
        sessions = self.hub.sessions_of(user)
        if sessions:
            return sessions[-1], False
        session = await self.service.login_verified(user, f"sms:{number}", 0, scope="wml")
        return session, True

    async def sms(self, number: str, text: str) -> bool:
        """Send a plain SMS from the shortcode (replies); True if accepted."""
        if not self.operator:
            return False
        try:
            response = await self.http.request(
                "POST", f"{self.operator}/cgi-bin/sendsms",
                data={"username": self.username, "password": self.password,
                      "from": self.shortcode, "to": number, "text": text})
            await self.http.content(response)
        except Exception as e:
            self.log.warn("a reply SMS could not be sent: {why}", why=str(e) or repr(e))
            return False
        return response.code == 202
