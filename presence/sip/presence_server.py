"""SIP presence: the server answers ``SUBSCRIBE`` for its users itself.

The presence event package (RFC 3856) over SIP-specific event notification
(RFC 6665), with PIDF bodies (RFC 3863; RPID, RFC 4480, for away and busy).
A ``SUBSCRIBE`` with ``Event: presence`` to ``sip:<user>@<domain>`` (or at
the server's address, an alias too) never reaches the user's sessions: the
proxy hands it to :class:`SipPresence`, which answers from the hub's
presence tables (``IHub.state_of``) and sends ``NOTIFY`` requests itself:

* ``200`` with ``Expires`` (asked for, at most :data:`MAX_EXPIRES`;
  :data:`DEFAULT_EXPIRES` when absent; below :data:`MIN_EXPIRES` ``423``
  with ``Min-Expires``) and a ``Contact`` of the server, then at once a
  ``NOTIFY`` with ``Subscription-State: active;expires=N`` and the PIDF;
* a ``NOTIFY`` on every change of the watched user's combined state
  (``IHub.observe_states``), one at a time per subscription (a change while
  one is outstanding is sent once it is answered: the latest state, not
  each step);
* a refresh is a ``SUBSCRIBE`` in the dialog (answered as the first, with a
  ``NOTIFY``); ``Expires: 0`` or expiry ends it with a final ``NOTIFY``
  ``terminated;reason=timeout`` (a first ``SUBSCRIBE`` with ``Expires: 0``
  is a fetch: one such ``NOTIFY``); the server stopping sends
  ``terminated;reason=deactivated``, a watched guest logging out (a guest
  exists only while logged in) ``terminated;reason=noresource``;
* ``NOTIFY`` is a non-INVITE client transaction (RFC 3261 17.1.2):
  retransmitted over UDP (timer E, ``T1`` doubling to ``T2``), given up after
  ``64*T1`` (timer F); a ``481``, any other final failure or the timeout
  drops the subscription without a further ``NOTIFY``.

Subscribers are authenticated: a tunnel session (``POST /sip``) by its
session (its ``NOTIFY``s come to it as ``msg sipreq NOTIFY`` frames and end
with it), a phone on the network with digest (:class:`~presence.sip.digest.
DigestAuth`, a ``401`` challenge whose nonce is good from the address it
went to only; wrong digests spend the address's login allowance, past it
``403``; without digest configured the network gets ``403``).  ``NOTIFY``s to the network go to the address the (last)
``SUBSCRIBE`` came from, over its transport (on its TCP connection while it
is open), never to an address the ``Contact`` names: the ``Contact`` is only
the Request-URI, so a subscriber cannot make the server send elsewhere.

Bounded: :data:`MAX_PER_SUBSCRIBER` subscriptions per subscriber (``403``
beyond), :data:`MAX_SUBSCRIPTIONS` in all (``503`` with ``Retry-After``).
Other events get ``489 Bad Event`` with ``Allow-Events: presence``, an
``Accept`` without PIDF ``406``, an unknown user ``404``, a refresh of a
subscription that is not (or no longer) there ``481``.  See
``docs/calls.md``, "SIP presence".
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Dict, List, Optional, Set, Tuple
from xml.sax.saxutils import escape, quoteattr

from twisted.internet import defer
from twisted.logger import Logger

from presence.core.states import AVAILABLE, AWAY, BUSY, OFFLINE
from presence.service import GUEST_PREFIX
from presence.sip.digest import source_of
from presence.sip.message import MAGIC_COOKIE, NameAddr, Request, Response, SipURI, Via
from presence.sip.proxy import T1, T2, T4, TCP, TIMER_B, TUNNEL, UDP, Hop
from presence.sip.registrar import TOO_MANY, refusal

log = Logger(namespace="presence.sip")

EVENT = "presence"
ALLOW_EVENTS = EVENT
PIDF = "application/pidf+xml"
#: seconds a subscription lasts when the SUBSCRIBE names none, and the most
#: it may ask for (more is shortened, RFC 6665 4.2.1.1)
DEFAULT_EXPIRES = 3600
MAX_EXPIRES = 3600
#: the shortest subscription taken (shorter: 423 with Min-Expires)
MIN_EXPIRES = 60
#: subscriptions one subscriber (a user) may hold, and the server in all
MAX_PER_SUBSCRIBER = 64
MAX_SUBSCRIPTIONS = 10_000
#: media types an Accept must name one of for PIDF to be acceptable
_ACCEPTABLE = frozenset({PIDF, "application/*", "*/*"})

#: the note of each state in the PIDF (RPID activity for away and busy)
NOTES = {AVAILABLE: "Available", AWAY: "Away", BUSY: "Busy", OFFLINE: "Offline"}

Reply = Callable[[int, List[Tuple[str, str]], Optional[str]], None]


def pidf(entity: str, state: str, text: str = "") -> bytes:
    """The PIDF document (RFC 3863) of ``entity`` in ``state`` (one of the
    presence states, ``offline`` included) with status ``text``: basic
    ``open`` while online, ``closed`` offline; a note saying the state (and
    the text); for away and busy an RPID activity (RFC 4480) as well."""
    basic = "closed" if state == OFFLINE else "open"
    note = NOTES.get(state, state.capitalize())
    if text and state != OFFLINE:
        note = f"{note}: {text}" if state in (AWAY, BUSY) else text
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<presence xmlns="urn:ietf:params:xml:ns:pidf"'
        ' xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        ' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"'
        f" entity={quoteattr(entity)}>",
        '  <tuple id="sip">',
        f"    <status><basic>{basic}</basic></status>",
        f"    <note>{escape(note)}</note>",
        "  </tuple>",
    ]
    if state in (AWAY, BUSY):
        lines += [
            '  <dm:person id="p">',
            f"    <rpid:activities><rpid:{state}/></rpid:activities>",
            "  </dm:person>",
        ]
    lines += [f"  <note>{escape(note)}</note>", "</presence>", ""]
    return "\r\n".join(lines).encode("utf-8")


def event_of(request: Request) -> Tuple[Optional[str], str]:
    """``(package, id)`` of the ``Event`` header (package lower-case, None
    when absent; ``id`` ``""`` when not given)."""
    value = request.get("event")
    if value is None:
        return None, ""
    package, _, params = value.partition(";")
    event_id = ""
    for part in params.split(";"):
        name, _, val = part.partition("=")
        if name.strip().lower() == "id":
            event_id = val.strip()
    return package.strip().lower(), event_id


def expires_of(request: Request) -> Optional[int]:
    """The ``Expires`` asked for (``DEFAULT_EXPIRES`` when absent), or None
    when it is no number."""
    value = request.get("expires")
    if value is None:
        return DEFAULT_EXPIRES
    value = value.strip()
    if not value.isdigit() or len(value) > 10:
        return None
    return int(value)


def accepts_pidf(request: Request) -> bool:
    """Whether PIDF is acceptable by the ``Accept`` header (absent: yes)."""
    fields = request.get_all("accept")
    if not fields:
        return True
    for field in fields:
        for item in field.split(","):
            if item.split(";")[0].strip().lower() in _ACCEPTABLE:
                return True
    return False


def _with_tag(value: str, tag: str) -> str:
    address = NameAddr.parse(value)
    if address.param("tag") is None:
        address.params.append(("tag", tag))
    return str(address)


class Subscription:
    """One subscription (the notifier's side of its dialog)."""

    __slots__ = ("key", "subscriber", "watched", "entity", "event", "hop", "target",
                 "route", "local", "remote", "call_id", "contact", "cseq", "expires_at",
                 "timer", "outstanding", "dirty", "final", "gone")

    def __init__(self, key: tuple, subscriber: str, watched: str, entity: str, event: str,
                 local: str, remote: str, call_id: str) -> None:
        self.key = key
        self.subscriber = subscriber
        self.watched = watched
        self.entity = entity
        self.event = event
        self.local = local      # From of our NOTIFYs: the SUBSCRIBE's To, with our tag
        self.remote = remote    # To of our NOTIFYs: the SUBSCRIBE's From
        self.call_id = call_id
        self.hop: Hop = Hop(UDP)
        self.target = ""        # the subscriber's Contact: the NOTIFY's Request-URI
        self.route: List[str] = []
        self.contact = ""       # ours
        self.cseq = 0
        self.expires_at = 0.0
        self.timer: Any = None
        #: the NOTIFY waiting for its answer, if any
        self.outstanding: Optional["Notify"] = None
        #: the state changed while a NOTIFY was outstanding
        self.dirty = False
        #: the reason of the final NOTIFY still to send (terminated)
        self.final: Optional[str] = None
        #: dropped: no NOTIFY goes any more
        self.gone = False


class Notify:
    """One NOTIFY client transaction (RFC 3261 17.1.2)."""

    __slots__ = ("branch", "sub", "request", "hop", "interval", "calls", "done",
                 "provisional", "final")

    def __init__(self, branch: str, sub: Subscription, request: Request, final: bool) -> None:
        self.branch = branch
        self.sub = sub
        self.request = request
        self.hop = sub.hop
        self.interval = T1
        self.calls: Dict[str, Any] = {}
        self.done = False
        self.provisional = False
        #: the final NOTIFY of the subscription (terminated)
        self.final = final


class SipPresence:
    """The presence notifier of one server (see the module doc).

    ``service`` resolves names (``resolve``) and has the hub (an ``IHub``:
    ``state_of``, ``observe_states``, ``session``, ``deliver_session``);
    ``proxy`` is the :class:`~presence.sip.proxy.SipProxy` that hands it
    SUBSCRIBEs and NOTIFY responses, and sends (``send_request``,
    ``local_host``, ``port``, ``domain``); ``auth`` a
    :class:`~presence.sip.digest.DigestAuth` for network subscribers (None:
    the network may not subscribe)."""

    def __init__(self, service: Any, proxy: Any, clock: Any, auth: Any = None, *,
                 max_per_subscriber: int = MAX_PER_SUBSCRIBER,
                 max_subscriptions: int = MAX_SUBSCRIPTIONS,
                 min_expires: int = MIN_EXPIRES, max_expires: int = MAX_EXPIRES) -> None:
        self.service = service
        self.hub = service.hub
        self.proxy = proxy
        self.clock = clock
        self.auth = auth
        self.max_per_subscriber = max_per_subscriber
        self.max_subscriptions = max_subscriptions
        self.min_expires = min_expires
        self.max_expires = max(max_expires, min_expires)
        self.subs: Dict[tuple, Subscription] = {}
        self.by_watched: Dict[str, Set[Subscription]] = {}
        self.by_subscriber: Dict[str, int] = {}
        #: NOTIFY transactions by branch (answered ones for T4, to absorb repeats)
        self.notifies: Dict[str, Notify] = {}
        self._changed: Set[str] = set()
        self._flush_call: Any = None
        self.counters: Dict[str, int] = {}
        self.hub.observe_states(self._state_changed)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def stats(self) -> Dict[str, int]:
        figures = {f"presence_{k}": v for k, v in self.counters.items()}
        figures["subscriptions"] = len(self.subs)
        return figures

    # -- SUBSCRIBE ------------------------------------------------------------------

    def subscribe(self, request: Request, hop: Hop, name: str, to_tag: str,
                  reply: Reply) -> None:
        """A SUBSCRIBE to our user ``name`` (as the Request-URI names them),
        received from ``hop``; ``reply(code, headers, reason)`` answers it
        (its server transaction adds ``to_tag`` to a To without one)."""
        package, event_id = event_of(request)
        if package != EVENT:
            self._count("bad_event")
            reply(489, [("Allow-Events", ALLOW_EVENTS)],
                  "Bad Event" if package is not None else "Bad Event (no Event header)")
            return
        expires = expires_of(request)
        if expires is None:
            reply(400, [], "Bad Request (Expires is no number of seconds)")
            return
        if 0 < expires < self.min_expires:
            reply(423, [("Min-Expires", str(self.min_expires))], "Interval Too Brief")
            return
        if not accepts_pidf(request):
            reply(406, [("Accept", PIDF)], "Not Acceptable (only application/pidf+xml)")
            return
        try:
            contact = NameAddr.parse(request.get("contact") or "")
        except ValueError:
            contact = None
        if contact is None or contact.uri == "*":
            reply(400, [], "Bad Request (a SUBSCRIBE needs a Contact)")
            return
        d = self._subscriber(request, hop)
        d.addCallback(self._authenticated, request, hop, name, to_tag, reply,
                      min(expires, self.max_expires), event_id, contact.uri)
        d.addErrback(self._failed, reply)

    def _subscriber(self, request: Request, hop: Hop) -> defer.Deferred:
        """Deferred ``(user, None)`` of the authenticated subscriber, or
        ``(None, (code, headers, reason))`` to answer with."""
        if hop.tunnel:
            return defer.succeed((hop.session.user.name.lower(), None))
        if self.auth is None:
            return defer.succeed((None, (403, [], "Forbidden (SIP presence is for the users"
                                                 " of this server through their sessions)")))
        # digests count as password logins do (the address's and the
        # account's allowances), as a REGISTER's: no password oracle beside them
        too_many = (None, (403, [], TOO_MANY))
        if not self.service.digest_allowed(hop.host):
            self._count("refused_failures")
            return defer.succeed(too_many)
        source = source_of(hop)

        def judged(verdict: Any) -> Any:
            refused = refusal(verdict, self.service, hop.host)
            if refused is not None:
                if refused[0] == 403:
                    self._count("refused_failures")
                return None, (refused[0], [], refused[1])
            if verdict.user is None:
                self._count("challenged")
                return None, (401, self.auth.challenge(request, stale=verdict.stale,
                                                       source=source), "Unauthorized")
            user = verdict.user.lower()
            return defer.maybeDeferred(self.service.is_locked, user).addCallback(
                lambda locked: (None, (403, [], "Forbidden (this account is locked)"))
                if locked else (user, None))

        return self.auth.verify(request, source=source).addCallback(judged)

    def _authenticated(self, who: tuple, request: Request, hop: Hop, name: str, to_tag: str,
                       reply: Reply, expires: int, event_id: str, target: str) -> Any:
        subscriber, refusal = who
        if refusal is not None:
            reply(*refusal)
            return None
        if request.tag("to"):
            self._refresh(request, hop, subscriber, reply, expires, event_id, target)
            return None
        d = defer.ensureDeferred(self.service.resolve(name))
        d.addCallback(self._found, request, hop, subscriber, to_tag, reply, expires,
                      event_id, target)
        return d

    def _failed(self, failure: Any, reply: Reply) -> None:
        log.failure("a SIP SUBSCRIBE could not be answered", failure)
        reply(500, [], "Server Internal Error")

    def _found(self, found: Optional[tuple], request: Request, hop: Hop, subscriber: str,
               to_tag: str, reply: Reply, expires: int, event_id: str, target: str) -> None:
        if found is None or found[0] != "user":
            self._count("not_found")
            reply(404, [], "Not Found")
            return
        watched = found[1]
        if expires and len(self.subs) >= self.max_subscriptions:
            self._count("refused_total")
            reply(503, [("Retry-After", "60")], "Service Unavailable (too many subscriptions)")
            return
        if expires and self.by_subscriber.get(subscriber, 0) >= self.max_per_subscriber:
            self._count("refused_subscriber")
            reply(403, [], f"Forbidden (at most {self.max_per_subscriber} presence"
                           " subscriptions per subscriber)")
            return
        uri = SipURI.parse(request.uri)
        entity = f"sip:{uri.user}@{self.proxy.domain}"
        event = EVENT + (f";id={event_id}" if event_id else "")
        key = (request.call_id, request.tag("from"), to_tag, event_id)
        sub = Subscription(key, subscriber, watched, entity, event,
                           _with_tag(request.get("to") or "", to_tag),
                           request.get("from") or "", request.call_id or "")
        sub.route = request.values("record-route")
        self._place(sub, request, hop, target)
        if expires:
            self.subs[key] = sub
            self.by_watched.setdefault(watched, set()).add(sub)
            self.by_subscriber[subscriber] = self.by_subscriber.get(subscriber, 0) + 1
            self._count("subscribed")
        else:
            self._count("fetched")
        self._accept(sub, reply, expires)

    def _place(self, sub: Subscription, request: Request, hop: Hop, target: str) -> None:
        """Where the NOTIFYs of ``sub`` go: back where ``request`` came from."""
        sub.hop = hop if hop.tunnel else Hop(hop.transport, hop.host, hop.port, hop.conn)
        sub.target = target
        host = self.proxy.local_host(hop)
        user = SipURI.parse(request.uri).user
        transport = [("transport", "tcp")] if hop.transport == TCP else []
        sub.contact = f"<{SipURI(host, user, self.proxy.port, transport)}>"

    def _accept(self, sub: Subscription, reply: Reply, expires: int) -> None:
        reply(200, [("Expires", str(expires)), ("Contact", sub.contact),
                    ("Allow-Events", ALLOW_EVENTS)], None)
        if expires:
            self._arm(sub, expires)
            self._notify(sub)
        else:
            self._terminate(sub, "timeout")

    def _refresh(self, request: Request, hop: Hop, subscriber: str, reply: Reply,
                 expires: int, event_id: str, target: str) -> None:
        key = (request.call_id, request.tag("from"), request.tag("to"), event_id)
        sub = self.subs.get(key)
        if sub is None or sub.gone:
            self._count("refresh_unknown")
            reply(481, [], "Subscription Does Not Exist")
            return
        if sub.subscriber != subscriber:
            reply(403, [], "Forbidden (another subscriber's subscription)")
            return
        self._place(sub, request, hop, target)
        self._count("refreshed" if expires else "unsubscribed")
        if expires:
            self._accept(sub, reply, expires)
        else:
            self._forget(sub)
            self._accept(sub, reply, 0)

    def _arm(self, sub: Subscription, expires: int) -> None:
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.expires_at = self.clock.seconds() + expires
        sub.timer = self.clock.callLater(expires, self._expired, sub)

    def _expired(self, sub: Subscription) -> None:
        sub.timer = None
        self._count("expired")
        self._forget(sub)
        self._terminate(sub, "timeout")

    # -- the tables -------------------------------------------------------------------

    def _forget(self, sub: Subscription) -> None:
        """Take ``sub`` out of the tables (its final NOTIFY may still go)."""
        if self.subs.get(sub.key) is not sub:
            return
        del self.subs[sub.key]
        watchers = self.by_watched.get(sub.watched)
        if watchers is not None:
            watchers.discard(sub)
            if not watchers:
                del self.by_watched[sub.watched]
        left = self.by_subscriber.get(sub.subscriber, 0) - 1
        if left > 0:
            self.by_subscriber[sub.subscriber] = left
        else:
            self.by_subscriber.pop(sub.subscriber, None)
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = None

    def _drop(self, sub: Subscription, why: str) -> None:
        """The subscriber is gone (481, no answer, its session ended): no
        NOTIFY any more."""
        self._count(f"dropped_{why}")
        log.debug("a SIP presence subscription to {user} was dropped: {why}",
                  user=sub.watched, why=why)
        sub.gone = True
        self._forget(sub)

    # -- NOTIFY ------------------------------------------------------------------------

    def _state_changed(self, name: str, state: Tuple[str, str]) -> None:
        """IHub.observe_states: NOTIFYs go after the change is done (not
        from inside the hub), once per user and turn."""
        if name not in self.by_watched:
            return
        self._changed.add(name)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        changed, self._changed = self._changed, set()
        for name in changed:
            # a guest exists only while logged in: once gone, so is the
            # resource (RFC 6665 4.2.2 noresource)
            gone = name.startswith(GUEST_PREFIX) and not self.hub.knows(name)
            for sub in list(self.by_watched.get(name, ())):
                try:
                    if gone:
                        self._forget(sub)
                        self._terminate(sub, "noresource")
                    else:
                        self._notify(sub)
                except Exception:
                    log.failure("a SIP presence NOTIFY could not be sent")

    def _terminate(self, sub: Subscription, reason: str) -> None:
        sub.final = reason
        self._notify(sub)

    def _notify(self, sub: Subscription) -> None:
        """Send the current state to the subscriber, or note that it is due
        once the outstanding NOTIFY is answered."""
        if sub.gone:
            return
        if sub.outstanding is not None:
            sub.dirty = True
            return
        sub.dirty = False
        if sub.hop.tunnel and self.hub.session(sub.hop.session.id) is not sub.hop.session:
            self._drop(sub, "session_ended")
            return
        state, text = self.hub.state_of(sub.watched)
        final = sub.final is not None
        if final:
            substate = f"terminated;reason={sub.final}"
        else:
            left = max(0, int(sub.expires_at - self.clock.seconds() + 0.5))
            substate = f"active;expires={left}"
        branch = f"{MAGIC_COOKIE}{secrets.token_hex(8)}"
        request = self._notify_request(sub, branch, substate, pidf(sub.entity, state, text))
        notify = Notify(branch, sub, request, final)
        sub.outstanding = notify
        self.notifies[branch] = notify
        self._count("notifies")
        self._send(notify)
        if notify.done:
            return
        if notify.hop.transport == UDP:
            self._later(notify, "E", notify.interval, self._retransmit, notify)
        self._later(notify, "F", TIMER_B, self._timeout, notify)

    def _notify_request(self, sub: Subscription, branch: str, substate: str,
                        body: bytes) -> Request:
        request = Request("NOTIFY", sub.target)
        transport = TCP if sub.hop.transport == TCP else UDP
        request.add("Via", str(Via(transport, self.proxy.local_host(sub.hop), self.proxy.port,
                                   [("branch", branch)])))
        request.add("Max-Forwards", "70")
        for value in sub.route:
            request.add("Route", value)
        request.add("From", sub.local)
        request.add("To", sub.remote)
        request.add("Call-ID", sub.call_id)
        sub.cseq += 1
        request.add("CSeq", f"{sub.cseq} NOTIFY")
        request.add("Contact", sub.contact)
        request.add("Event", sub.event)
        request.add("Subscription-State", substate)
        request.add("Content-Type", PIDF)
        request.body = body
        return request

    def _send(self, notify: Notify) -> None:
        self.proxy.send_request(notify.request, notify.hop,
                                lambda: self._finished(notify, "unreachable"))

    def _later(self, notify: Notify, name: str, delay: float, fn: Callable,
               *args: Any) -> None:
        old = notify.calls.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        notify.calls[name] = self.clock.callLater(delay, fn, *args)

    def _retransmit(self, notify: Notify) -> None:
        notify.calls.pop("E", None)
        if notify.done:
            return
        self._send(notify)
        notify.interval = T2 if notify.provisional else min(2 * notify.interval, T2)
        self._later(notify, "E", notify.interval, self._retransmit, notify)

    def _timeout(self, notify: Notify) -> None:
        notify.calls.pop("F", None)
        if not notify.done:
            self._finished(notify, "timeout")

    def response(self, response: Response, hop: Hop) -> bool:
        """A response that may answer one of our NOTIFYs: True if it did
        (it is then taken), False if it is not ours."""
        if response.cseq[1] != "NOTIFY":
            return False
        via = response.top_via()
        notify = self.notifies.get(via.branch or "") if via is not None else None
        if notify is None:
            return False
        if notify.hop.tunnel != hop.tunnel or (
                hop.tunnel and notify.hop.session is not hop.session):
            return False
        if notify.done:
            return True  # a repeated final, absorbed
        code = response.code
        if code < 200:
            notify.provisional = True
            return True
        self._finished(notify, "ok" if code < 300 else str(code))
        return True

    def _finished(self, notify: Notify, outcome: str) -> None:
        """The NOTIFY got its final answer (``ok`` or the code), or none
        (``timeout``, ``unreachable``)."""
        if notify.done:
            return
        notify.done = True
        for call in notify.calls.values():
            if call.active():
                call.cancel()
        notify.calls.clear()
        # answered: kept a while to absorb repeated finals (timer K)
        self.clock.callLater(T4, self.notifies.pop, notify.branch, None)
        sub = notify.sub
        if sub.outstanding is notify:
            sub.outstanding = None
        if outcome != "ok":
            self._drop(sub, outcome)
            return
        if notify.final:
            sub.gone = True
            return
        if sub.dirty or sub.final is not None:
            self._notify(sub)

    def stop(self) -> None:
        """The server stops: every subscription ends with a final NOTIFY
        ``terminated;reason=deactivated`` (sent once, not waited for)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        for sub in list(self.subs.values()):
            self._forget(sub)
            sub.outstanding = None
            try:
                self._terminate(sub, "deactivated")
            except Exception:
                log.failure("a final SIP presence NOTIFY could not be sent")
        for notify in list(self.notifies.values()):
            notify.done = True
            for call in notify.calls.values():
                if call.active():
                    call.cancel()
        self.notifies.clear()
