"""Browser calls between the boxes of a cluster: :class:`ClusterCalls`.

A call is **owned by the caller's box** (the box holding the caller's
session): that box's :class:`~presence.core.calls.Calls` runs the call's
state machine, unchanged, as in one process.  The rest is carried over the
cluster's existing machinery (docs/calls.md, "Calls across boxes"):

- **the record** ``incall`` (user -> JSON ``[call id, owning box]``): one
  script (:data:`CLAIM`) at the offer checks and sets it for caller and
  callee at once, so ``busy`` counts the calls of every box; an entry whose
  owning box has no ``node:<box>`` key any more is dead and does not count.
  The owner deletes the entries (:data:`RELEASE`) when the call ends;
- **requests**: a signalling POST lands on any node.  The node checks it
  (the session, the rate limits, the SDP) and finds the call's box: its own
  calls first, else the user's ``incall`` entry.  Another box's call is
  carried out there: the event ``callreq`` on ``to:<box>``, answered by
  ``callrep`` on ``to:<node>`` with the status and body (or the error) of
  the answer, within :data:`TIMEOUT` seconds (else 503);
- **frames** for a session of another box leave as the event ``callframe``
  (the owner, the frame) on that box's channel.  The box keeps, per owning
  box, the calls its sessions are in, so that when the owner dies (the
  cluster's dead-box detection, or its clean stop) it ends them
  ``offline`` itself; the owner, the other way, sees a party's box die as
  its session leaving the view (``Calls.check``).
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.cluster.hub import ClusterHub, _text, decode_frame, encode_frame
from presence.core.calls import Call, Calls, call_frame, carry_out
from presence.core.frames import Frame
from presence.core.hub import Hub
from presence.errors import (BadRequest, ClientError, Conflict, Forbidden, NotFound,
                             ServiceUnavailable, TooLarge, TooMany)

#: seconds a node waits for the call's box to answer a forwarded request
TIMEOUT = 5.0
#: forwarded requests waiting for an answer at most (past it: 503)
MAX_WAITING = 1000

# Check and set the call record of caller and callee (KEYS incall; ARGV call
# id, owning box, caller, callee, node-key prefix).  An entry counts while its
# owning box lives.  Answers {'ok'|'self'|'busy', the entry that decided}.
CLAIM = b"""
local function holder(user)
  local v = redis.call('HGET', KEYS[1], user)
  if not v then return nil end
  local ok, e = pcall(cjson.decode, v)
  if ok and type(e) == 'table' and e[2]
     and redis.call('EXISTS', ARGV[5] .. e[2]) == 1 then return v end
  return nil
end
local mine = holder(ARGV[3])
if mine then return {'self', mine} end
local theirs = holder(ARGV[4])
if theirs then return {'busy', theirs} end
local v = cjson.encode({ARGV[1], ARGV[2]})
redis.call('HSET', KEYS[1], ARGV[3], v, ARGV[4], v)
return {'ok', v}
"""

# Delete the entries of these users that are this call's (KEYS incall; ARGV
# call id, owning box, users...)
RELEASE = b"""
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    local ok, e = pcall(cjson.decode, v)
    if not ok or type(e) ~= 'table' or (e[1] == ARGV[1] and e[2] == ARGV[2]) then
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
end
return 1
"""

# The call record of one user (KEYS incall; ARGV user)
RECORD = b"return redis.call('HGET', KEYS[1], ARGV[1]) -- incall"

_ERRORS = {e.status: e for e in (BadRequest, Forbidden, NotFound, Conflict, TooLarge)}


def _error_answer(error: ClientError) -> Dict[str, Any]:
    answer: Dict[str, Any] = {"st": error.status, "m": error.message}
    retry = getattr(error, "retry_after", None)
    if retry is not None:
        answer["ra"] = retry
    return answer


def _error_of(event: Dict[str, Any]) -> ClientError:
    status, message = int(event.get("st") or 503), str(event.get("m") or "")
    if status == 429:
        return TooMany(message, retry_after=event.get("ra"))
    if status in _ERRORS:
        return _ERRORS[status](message)
    return ServiceUnavailable(message or "the call's box failed; try again",
                              retry_after=event.get("ra"))


class ClusterCalls:
    """The router of :class:`presence.web.calls.CallsWeb` in a cluster (see
    the module docstring): ``calls`` is this box's state machine, whose
    frames and ends it takes over."""

    log = Logger()

    def __init__(self, hub: ClusterHub, calls: Calls, clock: Any,
                 timeout: float = TIMEOUT) -> None:
        self.hub = hub
        self.calls = calls
        self.clock = clock
        self.timeout = timeout
        calls.send = self._send
        calls.on_end = self._ended
        hub.extra_handlers.update(callreq=self._on_request, callrep=self._on_reply,
                                  callframe=self._on_frame)
        hub.box_observers.append(self._box_gone)
        #: forwarded requests: id -> (the Deferred, its time-out)
        self.waiting: Dict[str, Tuple[defer.Deferred, Any]] = {}
        self._ids = itertools.count(1)
        #: the calls of other boxes this box's sessions are in: owning box ->
        #: call id -> session -> the peer's name (to end them if it dies)
        self.remote: Dict[str, Dict[str, Dict[str, str]]] = {}
        self._remote_count = 0

    @property
    def me(self) -> str:
        return self.hub.me

    def incall(self) -> bytes:
        return self.hub.key("incall")

    # -- the front-end's side ---------------------------------------------------

    def sessions(self, callee: str) -> List[str]:
        """The callee's sessions on every box that may ring."""
        out = []
        for sid in self.hub.session_ids(callee):
            session = self.hub.session(sid)
            if session is not None and session.scope is None:
                out.append(sid)
        return out

    async def act(self, action: str, session: str, user: str,
                  p: Dict[str, Any]) -> Tuple[int, Any]:
        """Carry out a checked action where its call lives."""
        if action == "offer":
            found = self.hub.session(session)
            owner = found.host_box if found is not None else self.me
        else:
            owner = await self._owner(session, user, p.get("call"))
        if owner == self.me:
            return await self.here(action, session, user, p)
        if owner not in self.hub.live:
            if action == "offer":
                raise ServiceUnavailable("the box holding your session does not answer;"
                                         " try again", retry_after=1)
            raise NotFound("no such call: it ended, or it never was")
        return await self._forward(owner, action, session, user, p)

    async def _owner(self, session: str, user: str, callid: Any) -> str:
        """The box whose call ``callid`` of ``user`` (session ``session``)
        is (this one when no box's is: its Calls answers 400/404)."""
        if not isinstance(callid, str) or not callid or callid in self.calls.calls:
            return self.me
        for owner, calls in self.remote.items():    # a party held here: no look-up
            if session in calls.get(callid, ()):
                return owner
        try:
            raw = await self.hub._eval(RECORD, [self.incall()], [user])
        except Exception as e:
            self._unavailable(e, "looking a call up")
        entry = self._entry(raw)
        if entry is None or entry[0] != callid:
            return self.me
        return entry[1]

    @staticmethod
    def _entry(raw: Any) -> Optional[Tuple[str, str]]:
        try:
            callid, box = json.loads(_text(raw))
            return str(callid), str(box)
        except (TypeError, ValueError):
            return None

    def _unavailable(self, error: Exception, what: str) -> None:
        self.hub._failed(Failure(error), what)
        raise ServiceUnavailable("the cluster's directory is unavailable, try again shortly",
                                 retry_after=2)

    async def here(self, action: str, session: str, user: str,
                   p: Dict[str, Any]) -> Tuple[int, Any]:
        """Carry out an action on this box's calls; an offer claims the
        record first (``busy`` over every box)."""
        if action != "offer":
            return carry_out(self.calls, action, session, user, p, self.sessions)
        callee = p["to"]
        callid = self.calls.check_offer(user, callee, p.get("call"))
        verdict, holder = await self._claim(callid, user, callee)
        if verdict == "self":
            raise Conflict("you are in a call already: hang up first")
        try:
            return carry_out(self.calls, action, session, user, dict(p, call=callid),
                             self.sessions, busy=verdict == "busy")
        except ClientError:
            self._release(callid, [user, callee])
            raise

    async def _claim(self, callid: str, user: str, callee: str) -> Tuple[str, Any]:
        for _ in range(2):
            try:
                reply = await self.hub._eval(CLAIM, [self.incall()],
                                             [callid, self.me, user, callee,
                                              self.hub.prefix + "node:"])
            except Exception as e:
                self._unavailable(e, "recording a call")
            verdict, entry = _text(reply[0]), self._entry(reply[1])
            if verdict == "ok" or entry is None:
                return verdict, entry
            if entry[1] != self.me or entry[0] in self.calls.calls:
                return verdict, entry
            # this box's entry of a call it no longer has (it restarted, or
            # its release was lost in an outage): released, and once again
            self._release(entry[0], [user, callee])
        return verdict, entry

    def _release(self, callid: str, users: List[str]) -> None:
        self.hub._do("releasing a call's record", RELEASE, [self.incall()],
                     [callid, self.me] + users)

    def _ended(self, call: Call) -> None:
        self._release(call.id, [call.caller.user, call.callee])

    # -- forwarding -----------------------------------------------------------------

    def _forward(self, owner: str, action: str, session: str, user: str,
                 p: Dict[str, Any]) -> defer.Deferred:
        if len(self.waiting) >= MAX_WAITING:
            raise ServiceUnavailable("too many calls are being signalled; try again",
                                     retry_after=1)
        rid = f"{next(self._ids)}"
        d: defer.Deferred = defer.Deferred()
        timer = self.clock.callLater(self.timeout, self._timed_out, rid)
        self.waiting[rid] = (d, timer)
        self.hub.send_to_box(owner, {"e": "callreq", "b": self.me, "r": rid, "a": action,
                                     "s": session, "u": user, "p": p})
        return d

    def _timed_out(self, rid: str) -> None:
        found = self.waiting.pop(rid, None)
        if found is not None:
            found[0].errback(ServiceUnavailable(
                "the call's box did not answer in time; try again", retry_after=1))

    def _on_reply(self, event: Dict[str, Any]) -> None:
        found = self.waiting.pop(str(event.get("r")), None)
        if found is None:
            return          # timed out already
        d, timer = found
        if timer.active():
            timer.cancel()
        status = int(event.get("st") or 503)
        if status < 400:
            d.callback((status, event.get("body")))
        else:
            d.errback(_error_of(event))

    def _on_request(self, event: Dict[str, Any]) -> None:
        origin, rid = str(event["b"]), event["r"]
        d = defer.ensureDeferred(self.here(str(event["a"]), str(event["s"]), str(event["u"]),
                                           dict(event["p"])))

        def done(result):
            status, body = result
            self.hub.send_to_box(origin, {"e": "callrep", "r": rid, "st": status,
                                          "body": body})

        def failed(failure):
            if failure.check(ClientError):
                answer = _error_answer(failure.value)
            else:
                self.log.failure("cluster: a forwarded call request failed", failure)
                answer = {"st": 503, "m": "the call's box failed; try again"}
            self.hub.send_to_box(origin, dict(answer, e="callrep", r=rid))
        d.addCallbacks(done, failed)

    # -- frames -----------------------------------------------------------------------

    def _send(self, ident: str, frame: Frame) -> None:
        """A frame of this box's calls for session ``ident``, on any box."""
        session = self.hub.session(ident)
        if session is None:
            return
        if session.host_box == self.me:
            Hub.deliver_session(self.hub, session, frame)
        else:
            self.hub.send_to_box(session.host_box, {"e": "callframe", "s": ident,
                                                    "o": self.me, "f": encode_frame(frame)})

    def _on_frame(self, event: Dict[str, Any]) -> None:
        """A frame of another box's call for a session of this box."""
        session = self.hub.users.session(str(event["s"]))
        if session is None:
            return
        frame, owner = decode_frame(event["f"]), str(event["o"])
        action, peer, callid = frame.args[0], frame.args[1], frame.args[2]
        calls = self.remote.setdefault(owner, {})
        if action == "end":
            parties = calls.get(callid, {})
            if parties.pop(session.id, None) is not None:
                self._remote_count -= 1
            if not parties:
                calls.pop(callid, None)
            if not calls:
                self.remote.pop(owner, None)
        else:
            parties = calls.setdefault(callid, {})
            if session.id not in parties:
                self._remote_count += 1
                self._sweep()
            parties[session.id] = peer
        Hub.deliver_session(self.hub, session, frame)

    def _sweep(self) -> None:
        """Forget the parties of other boxes' calls whose session this box
        no longer holds (their call's end may never come here), once they
        outnumber the sessions."""
        if self._remote_count <= 2 * len(self.hub.users.sessions) + 64:
            return
        count = 0
        for owner in list(self.remote):
            calls = self.remote[owner]
            for callid in list(calls):
                parties = {s: p for s, p in calls[callid].items()
                           if self.hub.users.session(s) is not None}
                if parties:
                    calls[callid] = parties
                    count += len(parties)
                else:
                    del calls[callid]
            if not calls:
                del self.remote[owner]
        self._remote_count = count

    def _box_gone(self, box: str) -> None:
        """``box`` is gone: the calls it owned end ``offline`` here."""
        for callid, parties in self.remote.pop(box, {}).items():
            for sid, peer in parties.items():
                self._remote_count -= 1
                session = self.hub.users.session(sid)
                if session is not None:
                    Hub.deliver_session(self.hub, session,
                                        call_frame("end", peer, callid, reason="offline"))

