"""Browser calls: the signalling state machine, with no I/O.

A call joins two sessions: the caller's, and (once one of them accepts) one
of the callee's.  Its whole life is a handful of states::

    offer --> ringing --accept--> active --hangup/offline--> ended
                 |                                     ^
                 +--decline/cancel/noanswer/offline----+

and every way out of it sends ``msg call end <peer> <callid> <reason>`` to
each session that was part of it, the one that ended it included, so that
both pages always say the same thing.  The frames (docs/protocol.md,
"Browser calls", and docs/calls.md):

=========================================  ====================================
``msg call offer <caller> <callid>``       to every live session of the callee;
                                           payload: the caller's SDP offer
``msg call ringing <callee> <callid>``     to the caller: at least one session
                                           of the callee rings
``msg call answer <callee> <callid>``      to the caller: payload the SDP answer
``msg call ice <peer> <callid>``           a trickled ICE candidate of the other
                                           side (payload: one line of JSON)
``msg call end <peer> <callid> <reason>``  the call is over
=========================================  ====================================

Reasons: ``hangup`` (a party hung up an active call), ``cancelled`` (the
caller hung up while it rang), ``declined``, ``busy`` (the callee is in a
call already, or rung by one), ``noanswer`` (``ring_timeout`` seconds
without an answer), ``offline`` (the callee has no session that can take a
call, or a party's session went away mid-ring or mid-call), ``elsewhere``
(to the callee's other sessions: one of them accepted).

:class:`Calls` is driven by the front-end's calls (:meth:`Calls.offer`,
:meth:`Calls.answer`, :meth:`Calls.ice`, :meth:`Calls.hangup`,
:meth:`Calls.decline`) and by the clock it is given (ring timeouts, and a
check every ``check_every`` seconds that each party's session is still
alive, through the ``alive`` callable).  Frames leave through ``send``
(session id, frame): the front-end hands them to the hub as direct frames
(``deliver_session``), never behind presence fan-out.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Callable, Dict, List, Optional, Tuple

from presence.core.frames import Frame
from presence.errors import BadRequest, Conflict, Forbidden, NotFound, TooLarge

#: seconds a call rings before it ends with ``noanswer``
RING_TIMEOUT = 30.0
#: seconds between checks that the parties' sessions are alive
CHECK_EVERY = 1.0
#: characters of an SDP offer or answer
MAX_SDP = 16 * 1024
#: characters of one ICE candidate's JSON
MAX_CANDIDATE = 1024
#: candidates of the caller kept while the call rings (sent on accept)
MAX_EARLY_CANDIDATES = 64
#: a call id a client may choose
CALLID_RE = re.compile(r"[A-Za-z0-9_-]{8,64}\Z")
#: the reason words of ``msg call end``
REASONS = ("hangup", "cancelled", "declined", "busy", "noanswer", "offline", "elsewhere")
#: SDP is text lines: no control characters but CR, LF and TAB
_SDP_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def call_frame(action: str, peer: str, callid: str, payload: str = "",
               reason: Optional[str] = None) -> Frame:
    """``msg call <action> <peer> <callid> [<reason>]`` + payload."""
    args = (action, peer, callid) + (() if reason is None else (reason,))
    return Frame("call", args, payload)


def check_sdp(sdp: Any, what: str = "sdp") -> str:
    """An SDP offer or answer as text lines joined by ``\\n``; 400/413 else."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest(f"{what} is required: the session description (SDP)")
    if len(sdp) > MAX_SDP:
        raise TooLarge(f"{what} is longer than {MAX_SDP} characters")
    if _SDP_BAD.search(sdp):
        raise BadRequest(f"{what} holds control characters: it is not SDP")
    if not sdp.lstrip().startswith("v=0"):
        raise BadRequest(f"{what} is not SDP: it must start with v=0")
    return sdp.replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def check_candidate(candidate: Any) -> str:
    """An ICE candidate as one line of JSON (an object with a
    ``candidate`` string: what ``RTCIceCandidate.toJSON()`` gives)."""
    if not isinstance(candidate, str) or not candidate.strip():
        raise BadRequest("candidate is required: the ICE candidate as JSON")
    if len(candidate) > MAX_CANDIDATE:
        raise TooLarge(f"candidate is longer than {MAX_CANDIDATE} characters")
    try:
        value = json.loads(candidate)
    except ValueError:
        raise BadRequest("candidate is not JSON")
    if not isinstance(value, dict) or not isinstance(value.get("candidate"), str):
        raise BadRequest('candidate must be a JSON object with a "candidate" string')
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Party:
    """One side of a call: a user and the session the call is with."""

    __slots__ = ("user", "session")

    def __init__(self, user: str, session: str) -> None:
        self.user = user
        self.session = session


class Call:
    """One call.  ``ringing``: the callee's sessions that ring (until one
    accepts); ``callee_session``: the one that accepted (``active``)."""

    __slots__ = ("id", "caller", "callee", "state", "ringing", "callee_session",
                 "early", "timer", "started", "reason")

    def __init__(self, ident: str, caller: Party, callee: str, started: float) -> None:
        self.id = ident
        self.caller = caller
        self.callee = callee
        self.state = "ringing"
        self.ringing: List[str] = []
        self.callee_session: Optional[str] = None
        #: the caller's ICE candidates while it rings
        self.early: List[str] = []
        self.timer: Any = None
        self.started = started
        #: why it ended (one of REASONS), once it did
        self.reason: Optional[str] = None

    def sessions(self) -> List[str]:
        """Every session the call involves now."""
        others = [self.callee_session] if self.callee_session else list(self.ringing)
        return [self.caller.session] + others

    def info(self) -> Dict[str, Any]:
        info = {"call": self.id, "caller": self.caller.user, "callee": self.callee,
                "state": self.state}
        if self.reason is not None:
            info["reason"] = self.reason
        return info


class Calls:
    """The live calls of this server (one process), or of one box of a
    cluster: the calls its callers make (presence.cluster.calls)."""

    def __init__(self, clock: Any, send: Callable[[str, Frame], None],
                 alive: Callable[[str], bool], ring_timeout: float = RING_TIMEOUT,
                 check_every: float = CHECK_EVERY,
                 new_id: Callable[[], str] = lambda: secrets.token_hex(12)) -> None:
        self.clock = clock
        self.send = send
        self.alive = alive
        self.ring_timeout = ring_timeout
        self.check_every = check_every
        self.new_id = new_id
        self.calls: Dict[str, Call] = {}
        #: user -> their call (a user is in at most one call at a time)
        self.by_user: Dict[str, Call] = {}
        self._checker: Any = None
        #: calls that ended, by reason (the operator's figures)
        self.ended: Dict[str, int] = {}
        #: called with each call as it ends (a cluster releases its record)
        self.on_end: Optional[Callable[[Call], None]] = None

    # -- queries ------------------------------------------------------------

    def in_call(self, user: str) -> bool:
        return user in self.by_user

    def call_of(self, user: str) -> Optional[Call]:
        return self.by_user.get(user)

    def stats(self) -> Dict[str, Any]:
        return {"live": len(self.calls),
                "active": sum(1 for c in self.calls.values() if c.state == "active"),
                "ended": dict(self.ended)}

    # -- what the parties do ----------------------------------------------------

    def check_offer(self, caller: str, callee: str, callid: Optional[str] = None) -> str:
        """What :meth:`offer` checks first (400/409), before any state
        changes: the call id to use (a new one for none)."""
        if callee == caller:
            raise BadRequest("you cannot call yourself")
        if caller in self.by_user:
            raise Conflict("you are in a call already: hang up first")
        if callid is None or callid == "":
            return self.new_id()
        if not isinstance(callid, str) or not CALLID_RE.match(callid):
            raise BadRequest("call must be 8-64 characters of A-Z, a-z, 0-9, '_' and '-'")
        if callid in self.calls:
            raise Conflict("that call id is taken: choose another")
        return callid

    def offer(self, caller: Party, callee: str, sessions: List[str], sdp: str,
              callid: Optional[str] = None, busy: bool = False) -> Call:
        """``caller`` calls ``callee``, whose live sessions able to take a
        call are ``sessions`` (none: the call ends at once, ``offline``).
        Already checked by the caller: that ``caller`` may call ``callee``
        and that ``sdp`` is SDP (:func:`check_sdp`).  ``busy``: the callee
        is in a call this process does not hold (another box's: the call
        ends at once, ``busy``)."""
        callid = self.check_offer(caller.user, callee, callid)
        call = Call(callid, caller, callee, self.clock.seconds())
        self.calls[callid] = call
        self.by_user[caller.user] = call
        if busy or callee in self.by_user:
            self._end(call, "busy")
            return call
        live = [s for s in sessions if self.alive(s)]
        if not live:
            self._end(call, "offline")
            return call
        self.by_user[callee] = call
        call.ringing = live
        frame = call_frame("offer", caller.user, callid, sdp)
        for session in live:
            self.send(session, frame)
        self.send(caller.session, call_frame("ringing", callee, callid))
        call.timer = self.clock.callLater(self.ring_timeout, self._ring_out, call)
        self._check_soon()
        return call

    def answer(self, session: str, callid: str, sdp: str) -> Call:
        """Session ``session`` of the callee accepts with its SDP answer: the
        callee's other sessions stop ringing (``elsewhere``)."""
        call = self._call(callid)
        if call.state != "ringing" or session not in call.ringing:
            if session == call.callee_session or session == call.caller.session:
                raise Conflict("this call was answered already")
            raise Conflict("this call is not ringing here (it was answered elsewhere"
                           " or it ended)")
        call.state = "active"
        call.callee_session = session
        others = [s for s in call.ringing if s != session]
        call.ringing = []
        self._cancel_timer(call)
        for other in others:
            self.send(other, call_frame("end", call.caller.user, callid, reason="elsewhere"))
        self.send(call.caller.session, call_frame("answer", call.callee, callid, sdp))
        for candidate in call.early:
            self.send(session, call_frame("ice", call.caller.user, callid, candidate))
        call.early = []
        return call

    def ice(self, session: str, callid: str, candidate: str) -> None:
        """A trickled ICE candidate of ``session``'s side, for the other."""
        call = self._call(callid)
        if session == call.caller.session:
            if call.state == "ringing":
                if len(call.early) >= MAX_EARLY_CANDIDATES:
                    raise TooLarge(f"at most {MAX_EARLY_CANDIDATES} candidates before"
                                   " the call is answered")
                call.early.append(candidate)
                return
            self.send(call.callee_session, call_frame("ice", call.caller.user, callid,
                                                      candidate))
        elif session == call.callee_session:
            self.send(call.caller.session, call_frame("ice", call.callee, callid, candidate))
        elif session in call.ringing:
            raise Conflict("answer the call before sending candidates")
        else:
            raise Forbidden("this is not your call")

    def hangup(self, session: str, callid: str) -> Call:
        """A party hangs up: ``cancelled`` (the caller, while it rings),
        ``declined`` (a ringing session of the callee), ``hangup``."""
        call = self._call(callid)
        if session == call.caller.session:
            self._end(call, "cancelled" if call.state == "ringing" else "hangup")
        elif session == call.callee_session:
            self._end(call, "hangup")
        elif session in call.ringing:
            self._end(call, "declined")
        else:
            raise Forbidden("this is not your call")
        return call

    def decline(self, session: str, callid: str) -> Call:
        """A ringing session of the callee declines: the call ends for all."""
        call = self._call(callid)
        if session in call.ringing:
            self._end(call, "declined")
            return call
        if session in (call.caller.session, call.callee_session):
            raise Conflict("only a call that rings can be declined: hang up instead")
        raise Forbidden("this is not your call")

    # -- ending -------------------------------------------------------------------

    def _call(self, callid: Any) -> Call:
        if not isinstance(callid, str) or not callid:
            raise BadRequest("call is required: the call's id")
        call = self.calls.get(callid)
        if call is None:
            raise NotFound("no such call: it ended, or it never was")
        return call

    def _end(self, call: Call, reason: str, gone: Optional[str] = None) -> None:
        """End ``call`` with ``reason`` on both sides (not to the session
        ``gone``, which is no more)."""
        if self.calls.get(call.id) is not call:
            return
        del self.calls[call.id]
        for user in (call.caller.user, call.callee):
            if self.by_user.get(user) is call:
                del self.by_user[user]
        self._cancel_timer(call)
        self.ended[reason] = self.ended.get(reason, 0) + 1
        to_caller = call_frame("end", call.callee, call.id, reason=reason)
        to_callee = call_frame("end", call.caller.user, call.id, reason=reason)
        for session in call.sessions():
            if session != gone:
                self.send(session, to_caller if session == call.caller.session else to_callee)
        call.state = "ended"
        call.reason = reason
        call.ringing = []
        if self.on_end is not None:
            self.on_end(call)
        if not self.calls and self._checker is not None and self._checker.active():
            self._checker.cancel()
            self._checker = None

    def _cancel_timer(self, call: Call) -> None:
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None

    def _ring_out(self, call: Call) -> None:
        call.timer = None
        if call.state == "ringing":
            self._end(call, "noanswer")

    def check(self) -> None:
        """End the calls a party's session left: the caller's, the one that
        accepted, or (mid-ring) the last ringing one of the callee."""
        for call in list(self.calls.values()):
            if not self.alive(call.caller.session):
                self._end(call, "offline", gone=call.caller.session)
            elif call.state == "active":
                if not self.alive(call.callee_session):
                    self._end(call, "offline", gone=call.callee_session)
            else:
                call.ringing = [s for s in call.ringing if self.alive(s)]
                if not call.ringing:
                    self._end(call, "offline")

    def close_all(self) -> None:
        """The server stops: every call ends (``offline``)."""
        for call in list(self.calls.values()):
            self._end(call, "offline")
        if self._checker is not None and self._checker.active():
            self._checker.cancel()
        self._checker = None

    def _check_soon(self) -> None:
        if self._checker is None or not self._checker.active():
            self._checker = self.clock.callLater(self.check_every, self._tick)

    def _tick(self) -> None:
        self._checker = None
        self.check()
        if self.calls:
            self._check_soon()


def carry_out(calls: Calls, action: str, session: str, user: str, p: Dict[str, Any],
              sessions: Callable[[str], List[str]], busy: bool = False) -> Tuple[int, Any]:
    """Carry out a checked action (see ``presence.web.calls.CallsWeb._checked``) of session
    ``session`` of ``user`` on ``calls``: the status and body of the answer.
    ``sessions(callee)``: the callee's sessions that may ring."""
    callid = p.get("call")
    if action == "offer":
        callee = p["to"]
        call = calls.offer(Party(user, session), callee, sessions(callee), p["sdp"],
                           callid, busy=busy)
        return 200, call.info()
    if action == "answer":
        return 200, calls.answer(session, callid, p["sdp"]).info()
    if action == "ice":
        calls.ice(session, callid, p["candidate"])
    elif action == "hangup":
        calls.hangup(session, callid)
    else:
        calls.decline(session, callid)
    return 204, None
