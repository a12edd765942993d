"""The operator network the simulator stands in for: virtual handsets, their
message queues, validity periods and delivery reports.

Pure logic: time comes from the injected clock (an ``IReactorTime``;
``twisted.internet.task.Clock`` in tests) and delivery reports leave through
the injected ``fetch(url) -> Deferred`` (an HTTP GET in the server).  The
HTTP faces are in :mod:`presence.wireless.operator`.

Rules (see docs/wireless.md):

* A handset is named by its number (``+`` and digits).  It becomes *known*
  to the network the first time it attaches (holds a poll) or sends a text,
  and stays known while the server runs.
* Every message to a handset gets the next sequence number of that handset
  and waits in its queue, in order, until the handset acknowledges it (a poll
  with ``after`` at or past its number): that is delivery, and the report
  ``1`` (delivered to phone) goes out.  A message handed to a poll but not
  acknowledged stays queued and is handed out again on the next poll, so a
  reconnecting handset loses nothing.
* A message not acknowledged within its validity period (``--smsc-validity``,
  default 60 s, counted from when it is due; a sendsms ``validity`` in
  minutes counted from the submission, an SI ``si-expires`` or a PAP
  ``deliver-before-timestamp`` may shorten it) leaves the queue and its
  report says ``2`` (non-delivered, ``stat:EXPIRED``).  A ``deferred``
  message (or a PAP ``deliver-after-timestamp``) joins the queue when due.
* A message's ``on_final`` (PAP result notifications) is called once when
  it is delivered, expires or fails.  A message to a number the network has never seen fails
  at once: report ``2`` with ``stat:UNDELIV err:001`` (unknown subscriber).
* A newer poll of a handset answers the one held before it (with nothing);
  detaching answers the held poll and marks the handset detached.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger

from presence.wireless import dlr, numbers, sms
from presence.wireless.si import ServiceIndication
from presence.wireless.sl import ServiceLoading

DEFAULT_VALIDITY = 60.0
DEFAULT_WAIT = 25.0
MAX_WAIT = 120.0
POLL_BATCH = 50
#: a handset counts as attached this long after its last poll ended
ATTACH_GRACE = 30.0
SHORTCODE = "7777"
REPORT_RETRIES = (1.0, 5.0)
#: fetches of a message's dlr-url at most, retries included (a message has
#: at most three report events: 8, 4, then 1 or 2)
MAX_REPORT_FETCHES = 6

Fetch = Callable[[str], defer.Deferred]


@dataclass(frozen=True)
class SmsOptions:
    """What a sendsms request may say about an SMS beside its text (Kannel's
    fields; -1 is Kannel's "not given").  ``coding`` None: GSM 7-bit when the
    text fits the alphabet, else UCS-2 (8-bit when a ``udh`` is given);
    ``data`` is the payload of an 8-bit message."""

    coding: Optional[str] = None
    udh: bytes = b""
    data: bytes = b""
    mclass: int = -1
    mwi: int = -1
    pid: int = -1
    alt_dcs: int = -1
    rpi: int = -1
    compress: int = -1
    priority: int = -1
    validity: int = -1         # minutes, as given
    deferred: int = -1         # minutes, as given
    account: str = ""
    binfo: str = ""
    meta_data: str = ""
    smsc: str = ""

    def wire(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for name in ("mclass", "mwi", "pid", "alt_dcs", "rpi", "compress", "priority",
                     "validity", "deferred"):
            value = getattr(self, name)
            if value != -1:
                out[name.replace("_", "-")] = value
        for name in ("account", "binfo", "meta_data", "smsc"):
            value = getattr(self, name)
            if value:
                out[name.replace("_", "-")] = value
        if self.udh:
            out["udh"] = self.udh.hex()
            found = sms.ports(self.udh)
            if found is not None:
                out["ports"] = found
        if self.mclass == 0:
            out["flash"] = True
        return out


NO_OPTIONS = SmsOptions()


class SimulatorError(Exception):
    """A request the network refuses; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class Message:
    """One SMS or WAP push on its way to a handset."""

    kind: str                      # "sms" or "push"
    msg_id: str
    sender: str
    receiver: str
    text: str
    coding: str = "gsm7"
    parts: int = 1
    submitted: float = 0.0
    expires_at: float = 0.0
    si: Optional[ServiceIndication] = None
    dlr_mask: int = 0
    dlr_url: str = ""
    user: str = ""
    seq: int = 0
    sent: bool = False
    state: str = "queued"          # queued, delivered, expired, failed
    timer: Any = field(default=None, repr=False)
    fetches: int = 0               # dlr-url fetches so far (MAX_REPORT_FETCHES)
    options: SmsOptions = NO_OPTIONS
    segments: List[sms.Segment] = field(default_factory=list)
    defer_timer: Any = field(default=None, repr=False)
    due: Optional[float] = None    # when a deferred message is queued
    sl: Optional[ServiceLoading] = None
    #: called once with the message when it is delivered, expired or failed
    on_final: Optional[Callable[["Message"], Any]] = field(default=None, repr=False)

    def wire(self) -> Dict[str, Any]:
        """What the handset receives."""
        out: Dict[str, Any] = {"seq": self.seq, "type": self.kind, "id": self.msg_id,
                               "from": self.sender, "time": self.submitted}
        if self.kind == "push" and self.sl is not None:
            out.update({"content": "sl", "href": self.sl.href, "action": self.sl.action})
        elif self.kind == "push" and self.si is not None:
            out.update({"content": "si", "href": self.si.href, "text": self.si.text,
                        "si_id": self.si.si_id, "action": self.si.action})
        else:
            out.update({"text": self.text, "coding": self.coding, "parts": self.parts})
            out.update(self.options.wire())
            if self.coding == "8bit":
                out["data"] = self.options.data.hex()
            if self.segments and (len(self.segments) > 1 or self.options.udh):
                out["segments"] = [seg.wire(self.coding) for seg in self.segments]
        return out


class Handset:
    __slots__ = ("number", "queue", "next_seq", "waiter", "wait_timer", "attached",
                 "last_poll")

    def __init__(self, number: str) -> None:
        self.number = number
        self.queue: Deque[Message] = deque()
        self.next_seq = 1
        self.waiter: Optional[defer.Deferred] = None
        self.wait_timer: Any = None
        self.attached = False
        self.last_poll: Optional[float] = None


class Simulator:
    log = Logger()

    def __init__(self, clock, validity: float = DEFAULT_VALIDITY,
                 fetch: Optional[Fetch] = None, shortcode: str = SHORTCODE,
                 max_parts: int = 10, max_queue: int = 500,
                 max_handsets: int = 10000,
                 dlr_policy: Optional[dlr.DlrPolicy] = None) -> None:
        self.clock = clock
        #: which dlr-urls are called (checked again on the filled-in URL)
        self.dlr_policy = dlr_policy if dlr_policy is not None else dlr.DlrPolicy()
        self.validity = validity
        self.fetch = fetch
        self.shortcode = shortcode
        self.max_parts = max_parts
        self.max_queue = max_queue
        self.max_handsets = max_handsets
        self.handsets: Dict[str, Handset] = {}
        #: POSTs (url, body, content type) -> Deferred(HTTP status): PAP notifications
        self.post: Optional[Callable[[str, bytes, str], defer.Deferred]] = None
        #: called with (number, to, text) for texts to the shortcode
        self.on_mo: Optional[Callable[[str, str, str], Any]] = None
        #: the last reports sent, newest last: (url, event) - for operators and tests
        self.reports: Deque[tuple] = deque(maxlen=200)
        self._retries: set = set()
        self._deferred: set = set()
        self._ref = 0
        self.stopped = False

    # -- handsets ---------------------------------------------------------

    def handset(self, number: str) -> Optional[Handset]:
        return self.handsets.get(number)

    def known(self, number: str) -> bool:
        return number in self.handsets

    def _ensure(self, number: str) -> Handset:
        h = self.handsets.get(number)
        if h is None:
            if len(self.handsets) >= self.max_handsets:
                raise SimulatorError(503, "the network holds as many handsets as it can")
            h = self.handsets[number] = Handset(number)
        return h

    def is_attached(self, h: Handset) -> bool:
        if not h.attached:
            return False
        if h.waiter is not None:
            return True
        return h.last_poll is not None and self.clock.seconds() - h.last_poll < ATTACH_GRACE

    def status(self, number: str) -> Dict[str, Any]:
        h = self.handsets.get(number)
        if h is None:
            return {"number": number, "known": False, "attached": False, "pending": 0}
        return {"number": number, "known": True, "attached": self.is_attached(h),
                "pending": len(h.queue), "next_seq": h.next_seq}

    # -- the handset side ---------------------------------------------------

    def poll(self, number: str, after: int = 0, wait: float = DEFAULT_WAIT) -> defer.Deferred:
        """Attach ``number`` and fire with its queued messages (seq > after):
        at once if there are any, else when one arrives or after ``wait``
        seconds (with an empty list).  Acknowledges the messages up to
        ``after``."""
        h = self._ensure(number)
        self._ack(h, after)
        self._answer(h)  # a newer poll releases the one held before
        h.attached = True
        h.last_poll = self.clock.seconds()
        pending = self._pending(h)
        if pending or wait <= 0:
            return defer.succeed(pending)

        def cancelled(d: defer.Deferred) -> None:
            if h.waiter is d:
                h.waiter = None
                h.last_poll = self.clock.seconds()
                if h.wait_timer is not None and h.wait_timer.active():
                    h.wait_timer.cancel()
                h.wait_timer = None

        d: defer.Deferred = defer.Deferred(cancelled)
        h.waiter = d
        h.wait_timer = self.clock.callLater(min(wait, MAX_WAIT), self._answer, h)
        return d

    def detach(self, number: str) -> bool:
        h = self.handsets.get(number)
        if h is None:
            return False
        self._answer(h)
        h.attached = False
        h.last_poll = self.clock.seconds()
        return True

    def _pending(self, h: Handset) -> List[Message]:
        out = []
        for m in h.queue:
            if len(out) >= POLL_BATCH:
                break
            m.sent = True
            out.append(m)
        return out

    def _answer(self, h: Handset) -> None:
        """Answer the held poll of ``h`` with what is queued (maybe nothing)."""
        d, h.waiter = h.waiter, None
        if h.wait_timer is not None and h.wait_timer.active():
            h.wait_timer.cancel()
        h.wait_timer = None
        if d is not None:
            h.last_poll = self.clock.seconds()
            d.callback(self._pending(h))

    def _ack(self, h: Handset, after: int) -> None:
        while h.queue and h.queue[0].seq <= after and h.queue[0].sent:
            m = h.queue.popleft()
            self._cancel(m)
            m.state = "delivered"
            self._report(m, dlr.DELIVERED)
            self._final(m)

    def send_mo(self, number: str, to: str, text: str) -> Dict[str, Any]:
        """A mobile-originated text from ``number``.  To the shortcode it goes
        to the presence server; to another handset's number it is delivered
        like any SMS.  Returns the answer for the handset."""
        h = self._ensure(number)
        self.check_text(text)
        if to == self.shortcode:
            if self.on_mo is None:
                raise SimulatorError(503, "the service behind the shortcode is not running")
            d = defer.maybeDeferred(self.on_mo, number, to, text)
            d.addErrback(lambda f: self.log.failure("a text from {number} failed", f,
                                                    number=number))
            return {"status": "accepted", "to": to}
        dest = numbers.normalize(to)
        if dest is None:
            raise SimulatorError(400, "the receiver is not a number")
        if not self.known(dest):
            raise SimulatorError(404, "unknown subscriber")
        m = self.submit("sms", h.number, dest, text)
        return {"status": "accepted", "to": dest, "id": m.msg_id}

    # -- the operator side ----------------------------------------------------

    def check_text(self, text: str) -> tuple:
        """``(coding, parts)`` of an SMS text, or SimulatorError (400) when it
        is not a text or needs more than ``max_parts`` parts."""
        if not isinstance(text, str):
            raise SimulatorError(400, "the text is missing")
        if not numbers.scalar(text):
            raise SimulatorError(400, "the text is not valid Unicode")
        coding, parts = numbers.split(text)
        self._check_parts(len(parts))
        return coding, parts

    def _check_parts(self, count: int) -> None:
        if count > self.max_parts:
            raise SimulatorError(400, f"Text too long ({count} parts, at most "
                                      f"{self.max_parts}), rejected")

    def encode(self, text: str, options: SmsOptions = NO_OPTIONS
               ) -> "tuple[str, str, List[sms.Segment]]":
        """``(coding, text, segments)`` of an SMS: the coding the options
        ask for (or the one the text needs), the text as the handset shows
        it (a GSM 7-bit text loses what the alphabet lacks, as ``?``; an
        8-bit message has none) and the SMS that carry it; SimulatorError
        (400) past ``max_parts``."""
        coding = options.coding
        if coding is None:
            coding = "8bit" if options.udh else None
        if coding == "8bit":
            segments = sms.split(options.data or b"", "8bit", options.udh,
                                 ref=self._next_ref())
            self._check_parts(len(segments))
            return coding, "", segments
        if not isinstance(text, str) or not numbers.scalar(text):
            raise SimulatorError(400, "the text is not valid Unicode")
        if coding is None:
            coding = sms.auto_coding(text)
        elif coding == "gsm7":
            text = sms.to_gsm7(text)
        segments = sms.split(text, coding, options.udh, ref=self._next_ref())
        self._check_parts(len(segments))
        return coding, text, segments

    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) % 256
        return self._ref

    def submit(self, kind: str, sender: str, number: str, text: str = "",
               si: Optional[ServiceIndication] = None, dlr_mask: int = 0,
               dlr_url: str = "", user: str = "", validity: Optional[float] = None,
               options: SmsOptions = NO_OPTIONS, deferred: float = 0.0,
               sl: Optional[ServiceLoading] = None,
               on_final: Optional[Callable[[Message], Any]] = None) -> Message:
        """Queue a message for the handset ``number`` (already normalised),
        ``deferred`` seconds from now (Kannel's ``deferred``).  Returns the
        message; its ``state`` is ``failed`` at once for an unknown
        subscriber or a full queue."""
        now = self.clock.seconds()
        segments: List[sms.Segment] = []
        if kind == "sms":
            coding, text, segments = self.encode(text, options)
        else:
            coding = "gsm7"
        m = Message(kind=kind, msg_id=str(uuid.uuid4()), sender=sender, receiver=number,
                    text=text, coding=coding, parts=max(1, len(segments)), submitted=now,
                    si=si, dlr_mask=dlr_mask if dlr_mask > 0 else 0, dlr_url=dlr_url or "",
                    user=user, options=options, segments=segments, sl=sl,
                    on_final=on_final)
        # the network holds a message its validity from when it is due; a
        # sendsms validity counts from the submission, as in Kannel
        expires = now + max(deferred, 0.0) + self.validity
        if validity is not None:
            expires = min(expires, now + validity)
        if si is not None and si.expires is not None:
            expires = min(expires, si.expires)
        m.expires_at = expires
        if deferred > 0:
            m.due = now + deferred
        self._report(m, dlr.SMSC_ACK)
        h = self.handsets.get(number)
        if h is None:
            self._fail(m, "failed", error=1)
            return m
        if len(h.queue) >= self.max_queue:
            self._fail(m, "failed", error=8)
            return m
        m.timer = self.clock.callLater(max(0.0, expires - now), self._expire, h, m)
        if deferred > 0:
            m.state = "deferred"
            self._report(m, dlr.QUEUED)
            m.defer_timer = self.clock.callLater(deferred, self._enqueue, h, m, True)
            self._deferred.add(m)
            return m
        self._enqueue(h, m)
        return m

    def _enqueue(self, h: Handset, m: Message, deferred: bool = False) -> None:
        m.defer_timer = None
        self._deferred.discard(m)
        m.state = "queued"
        m.seq = h.next_seq
        h.next_seq += 1
        h.queue.append(m)
        if not deferred and not self.is_attached(h):
            self._report(m, dlr.QUEUED)
        if h.waiter is not None:
            self._answer(h)

    def _expire(self, h: Handset, m: Message) -> None:
        m.timer = None
        if m.state == "deferred":
            if m.defer_timer is not None and m.defer_timer.active():
                m.defer_timer.cancel()
            m.defer_timer = None
            self._deferred.discard(m)
        else:
            try:
                h.queue.remove(m)
            except ValueError:
                return
        self._fail(m, "expired", error=0)

    def _fail(self, m: Message, state: str, error: int) -> None:
        m.state = state
        self._report(m, dlr.UNDELIVERED, error)
        self._final(m)

    def _final(self, m: Message) -> None:
        callback, m.on_final = m.on_final, None
        if callback is not None and not self.stopped:
            d = defer.maybeDeferred(callback, m)
            d.addErrback(lambda f: self.log.warn("a push result notification failed: {why}",
                                                 why=f.getErrorMessage()))

    def _cancel(self, m: Message) -> None:
        if m.timer is not None and m.timer.active():
            m.timer.cancel()
        m.timer = None

    # -- delivery reports -------------------------------------------------------

    def _report(self, m: Message, event: int, error: int = 0) -> None:
        if not m.dlr_url or not (m.dlr_mask & event):
            return
        now = self.clock.seconds()
        text = m.si.text if m.si is not None else m.text
        report = dlr.receipt(m.msg_id, event, m.submitted, now, text, error)
        url = dlr.expand(m.dlr_url, dlr.values_for(
            event, m.receiver, m.sender, now, report, m.msg_id, m.user, m.coding,
            options=m.options, dlr_url=m.dlr_url, due=m.due,
            expires=(m.submitted + m.options.validity * 60 if m.options.validity >= 0
                     else None)))
        try:
            self.dlr_policy.check(url)
        except dlr.DlrRefused as e:
            self.log.warn("a delivery report was not sent: {why}", why=str(e))
            return
        self.reports.append((url, event))
        self._send_report(m, url, 0)

    def _send_report(self, m: Message, url: str, attempt: int) -> None:
        if self.fetch is None or self.stopped:
            return
        if m.fetches >= MAX_REPORT_FETCHES:
            self.log.warn("a delivery report was not sent: {n} calls for one message"
                          " already", n=m.fetches)
            return
        m.fetches += 1
        d = defer.maybeDeferred(self.fetch, url)

        def check(code: Any) -> None:
            if isinstance(code, int) and code >= 500:
                raise RuntimeError(f"HTTP {code}")

        def retry(failure: Any) -> None:
            if attempt < len(REPORT_RETRIES) and not self.stopped:
                call = self.clock.callLater(REPORT_RETRIES[attempt], self._retry, m, url,
                                            attempt + 1)
                self._retries.add(call)
            else:
                self.log.warn("a delivery report could not be sent ({why})",
                              why=failure.getErrorMessage())

        d.addCallback(check)
        d.addErrback(retry)

    def _retry(self, m: Message, url: str, attempt: int) -> None:
        self._retries = {c for c in self._retries if c.active()}
        self._send_report(m, url, attempt)

    def stop(self) -> None:
        """Cancel every timer and answer held polls (server shutdown)."""
        self.stopped = True
        for h in self.handsets.values():
            self._answer(h)
            for m in h.queue:
                self._cancel(m)
        for m in self._deferred:
            self._cancel(m)
            if m.defer_timer is not None and m.defer_timer.active():
                m.defer_timer.cancel()
        self._deferred.clear()
        for call in self._retries:
            if call.active():
                call.cancel()
        self._retries.clear()
