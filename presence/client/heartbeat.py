"""
The reusable client of a presence server: L{HeartbeatClient} and the HTTP
client it uses by default, L{TreqHTTP}.

L{HeartbeatClient} logs in (optionally registering first, or as a guest),
holds the heartbeat ``GET /jchat`` in stream or poll mode, parses the
``text/event-stream`` body as it arrives, drops duplicate frames by id, hands
each new frame to a callback, acknowledges frames (``POST /ack`` at least every
100 frames or 10 seconds, and ``ack=<last id>`` on every new heartbeat
request), reconnects after any drop with exponential backoff (0.5 s doubling
to 30 s, each wait shortened by up to half at random so that clients
dropped together do not come back together; reset by each successful
heartbeat), logs in again when the server
says the session is gone (``403``), sends chat messages with a sender
sequence number so that retries are never delivered twice, and logs out.
After a password login it keeps the answer's resume token (in memory, and in
a file if given one, mode 0600), and logs in again with ``POST /api/resume``
instead of the password: one SHA-256 on the server instead of an scrypt
hash, which is what lets a whole box's users come back at once.  The password
is used again only when the server refuses the token.

It takes the reactor (only C{callLater} and C{seconds} are used, so
L{twisted.internet.task.Clock} works in tests) and an HTTP client with the
treq calls C{request}, C{collect} and C{content} (the C{treq} module itself,
L{treq.testing.StubTreq}, or L{TreqHTTP} which is the default). The console
scripts (``presence-client``, the SIP bridge, the handset emulator, all in
L{presence.cli}) and the server's wireless gateway (L{TreqHTTP}) use it;
nothing here reads a terminal or a command line.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import quote, urlencode

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from presence.client.eventstream import Event, EventStreamParser, FrameError, parse_frame

__all__ = [
    "ClientStopped",
    "HTTPClientLike",
    "HeartbeatClient",
    "LoginRefused",
    "ServerError",
    "SessionInfo",
    "TreqHTTP",
    "format_frame",
]

log = Logger(namespace="presence.client")


class HTTPClientLike(Protocol):
    """
    The part of the treq API the client uses. The C{treq} module, a
    L{treq.testing.StubTreq} and L{TreqHTTP} all provide it.
    """

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """
        Issue a request; fire with an L{IResponse} once the headers arrived.
        The client passes C{headers}, C{data} (a dict, form-encoded) and, for
        the heartbeat, C{unbuffered=True}.
        """

    def collect(self, response: Any, collector: Callable[[bytes], None]) -> Deferred[None]:
        """
        Call C{collector} with each piece of the body as it arrives; fire
        when the body ends. If C{collector} raises, close the connection.
        """

    def content(self, response: Any) -> Deferred[bytes]:
        """
        Fire with the whole body.
        """


class TreqHTTP:
    """
    The default HTTP client: a L{treq.client.HTTPClient} on an L{Agent} with a
    persistent connection pool, bound to the given reactor.
    """

    def __init__(self, reactor: Any, connect_timeout: float = 10.0) -> None:
        from treq import collect, content
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

        no_delay = _no_delay_protocol()

        class QuietFactory(_HTTP11ClientFactory):
            noisy = False  # no "Starting factory" line per connection

            def buildProtocol(self, addr: Any) -> Any:
                return no_delay(self._quiescentCallback)

        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = QuietFactory
        self._client = HTTPClient(Agent(reactor, connectTimeout=connect_timeout, pool=self.pool))
        self._collect = collect
        self._content = content

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """
        See L{treq.request}.
        """
        return self._client.request(method, url, **kwargs)

    def collect(self, response: Any, collector: Callable[[bytes], None]) -> Deferred[None]:
        """
        See L{treq.collect}.
        """
        return self._collect(response, collector)

    def content(self, response: Any) -> Deferred[bytes]:
        """
        See L{treq.content}.
        """
        return self._content(response)

    def close(self) -> Deferred[None]:
        """
        Close the idle connections of the pool.
        """
        return self.pool.closeCachedConnections()


def _no_delay_protocol() -> type:
    from twisted.web._newclient import HTTP11ClientProtocol

    class NoDelay(HTTP11ClientProtocol):
        """No Nagle delay: Twisted writes a request's head and its body (a
        producer) in separate writes, and the body would wait for the
        server's ACK of the head (small posts such as the SIP bridge's media
        would wait up to a delayed ACK, 40 ms)."""

        def connectionMade(self) -> None:
            set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                try:
                    set_no_delay(True)
                except OSError:
                    pass
            super().connectionMade()

    return NoDelay


class ServerError(Exception):
    """
    The server answered with an error status (or, with C{code} 0, a request
    failed for good after its retries).

    @ivar code: the HTTP status.
    @ivar message: the readable text (the JSON C{error} field when present).
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})" if self.code else self.message


class LoginRefused(ServerError):
    """
    Registering or logging in failed for good (wrong password, bad name): the
    client stops rather than retrying.
    """


class ClientStopped(Exception):
    """
    The client was stopped (logout, fatal error, session ended by the server)
    before the operation could complete.
    """


@dataclass(frozen=True)
class SessionInfo:
    """
    One logged-in session, as returned by ``POST /api/login``.
    """

    username: str
    session: str
    host_box: str | None = None

    def __repr__(self) -> str:
        # Never show the session ID (logs, tracebacks).
        return f"SessionInfo(username={self.username!r}, host_box={self.host_box!r})"


FrameCallback = Callable[[int | None, str], object]


def format_frame(frame_id: int | None, text: str) -> str:
    """
    Render a frame for the console: ``[<id>] <first line>`` then each payload
    line indented by two spaces.

    >>> print(format_frame(3, "msg chat bob 9\\nhi\\nthere"))
    [3] msg chat bob 9
      hi
      there
    """
    first, *rest = text.split("\n")
    shown = "?" if frame_id is None else str(frame_id)
    return "\n".join([f"[{shown}] {first}"] + ["  " + line for line in rest])


class HeartbeatClient:
    """
    A presence session kept alive: login, heartbeat, acks, reconnects, chat.

    Call L{start} once. Frames are passed to C{on_frame(id, text)} in order,
    each id at most once per session (ids only grow; a frame whose id is not
    above the last one seen is a re-sent duplicate and is dropped). After a
    re-login the new session numbers its frames from 1 again.

    @ivar session: the current L{SessionInfo}, or C{None} while logged out.
    @ivar last_id: the highest frame id seen in this session.
    @ivar acked_id: the highest id the server has taken as acknowledged (by
        C{POST /ack}, or by C{ack=} on a heartbeat or chat request).
    @ivar connected: whether the heartbeat link is up (in poll mode: the
        last poll was answered and the next one is on its way).
    @ivar delay: the wait before the next reconnection attempt.
    """

    initial_delay = 0.5
    max_delay = 30.0
    #: each backoff wait is the delay less up to this fraction of it, at random
    jitter = 0.5
    ack_every_frames = 100
    ack_every_seconds = 10.0
    retry_attempts = 6
    # A session this old that the server forgets is re-created at once;
    # a younger one waits for the backoff delay (no tight login loop).
    settled_session_age = 10.0

    def __init__(
        self,
        reactor: IReactorTime,
        base_url: str,
        username: str | None,
        password: str | None,
        http: HTTPClientLike | None = None,
        on_frame: FrameCallback | None = None,
        *,
        mode: str = "stream",
        register: bool = False,
        guest: bool = False,
        on_status: Callable[[str], object] | None = None,
        on_connected: Callable[[SessionInfo], object] | None = None,
        idle_timeout: float = 65.0,
        request_timeout: float = 30.0,
        resume_file: str | None = None,
        rng: random.Random | None = None,
        bundle: bool = False,
    ) -> None:
        """
        @param reactor: provides C{callLater} and C{seconds}; all timers use it.
        @param base_url: e.g. C{"http://127.0.0.1:8080"}.
        @param username: the account (ignored when C{guest}).
        @param password: its password (ignored when C{guest}).
        @param http: treq-like client; defaults to L{TreqHTTP}C{(reactor)}.
        @param on_frame: called with C{(id, text)} for each new frame.
        @param mode: C{"stream"} (one held response) or C{"poll"} (ask
            again at once after each answer).
        @param register: C{POST /api/register} before the first login (an
            existing name, C{409}, is not an error: login decides).
        @param guest: log in with C{POST /api/guest} instead.
        @param on_status: called with short human-readable status lines
            (logged in, connected, dropped, retrying); for a console.
        @param on_connected: called with the session each time the heartbeat
            link comes up.
        @param idle_timeout: a heartbeat that receives no byte (not even a
            keep-alive) for this long is given up and replaced.
        @param request_timeout: how long other requests wait for response
            headers before they count as a connection error.
        @param resume_file: keep the resume token in this file too (written
            with mode 0600, read at start, removed at logout), so that the
            next run resumes without the password.  Without a password the
            client can only resume; a refused token then stops it.
        @param rng: the random numbers of the backoff's jitter (a seeded
            C{random.Random} in tests); default: a C{random.Random} of its own.
        @param bundle: ask for bundled presence (C{bundle=1}): the changes
            of the watched group arrive as one C{msg updates} frame per
            window of the server's C{--presence-batch}, one
            C{<state> <user>} per payload line, instead of one C{msg update}
            each.
        """
        if mode not in ("stream", "poll"):
            raise ValueError(f"mode must be 'stream' or 'poll', not {mode!r}")
        if not guest and (username is None or (password is None and resume_file is None)):
            raise ValueError("username and password are required unless guest=True")
        self._reactor = reactor
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._http: HTTPClientLike = http if http is not None else TreqHTTP(reactor)
        self._on_frame = on_frame
        self._on_status = on_status
        self._on_connected = on_connected
        self.mode = mode
        self.bundle = bundle
        self.register = register
        self.guest = guest
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout

        self.session: SessionInfo | None = None
        self.last_id = 0
        self.acked_id = 0
        self.connected = False
        self.delay = self.initial_delay
        self._random = rng if rng is not None else random.Random()

        self._started = False
        self._stopped = False
        self._stop_result: Failure | str | None = None
        self._registered = False
        self._seq = 0
        self._gen = 0
        self._session_since = 0.0
        self._hb_request: Deferred[Any] | None = None
        self._watchdog: IDelayedCall | None = None
        self._retry_call: IDelayedCall | None = None
        self._ack_timer: IDelayedCall | None = None
        self._ack_sent = 0
        self._login_in_progress = False
        self._login_d: Deferred[Any] | None = None
        self._login_waiters: list[Deferred[SessionInfo]] = []
        self._connected_waiters: list[Deferred[SessionInfo]] = []
        self._stopped_waiters: list[Deferred[str]] = []
        self._sleeps: set[Deferred[None]] = set()
        self._logout_d: Deferred[None] | None = None
        self.resume_file = resume_file
        #: the resume token of this device (never shown: see L{_keep_resume})
        self._resume: str | None = None if guest else _read_token(resume_file)

    # -- public API -------------------------------------------------------

    @property
    def http(self) -> HTTPClientLike:
        """
        The HTTP client the client uses (for other requests of the same
        program to the same server, as the SIP bridge's media streams).
        """
        return self._http

    def start(self) -> None:
        """
        Log in and hold the heartbeat; keep doing so until L{logout} or
        L{stop}, or a fatal error (see L{when_stopped}).
        """
        if self._started:
            return
        self._started = True
        self._attempt()

    @property
    def stopped(self) -> bool:
        """
        Whether the client has stopped for good.
        """
        return self._stopped

    def when_connected(self) -> Deferred[SessionInfo]:
        """
        Fire with the session once a heartbeat is held (at once if it is);
        fail with L{ClientStopped} if the client stops first.
        """
        if self.connected and self.session is not None:
            return succeed(self.session)
        if self._stopped:
            return _failed(ClientStopped("client stopped"))
        d: Deferred[SessionInfo] = Deferred()
        self._connected_waiters.append(d)
        return d

    def when_stopped(self) -> Deferred[str]:
        """
        Fire with a reason (C{"logout"}, C{"stopped"}, C{"bye <reason>"})
        when the client has stopped for good (after logging out, if it
        does), or fail with the fatal error that stopped it (for instance
        L{LoginRefused}).
        """
        d: Deferred[str] = Deferred()
        if self._stop_result is not None and (self._logout_d is None or self._logout_d.called):
            _fire(d, self._stop_result)
        else:
            self._stopped_waiters.append(d)
        return d

    def send_chat(self, to: str, text: str) -> Deferred[Any]:
        """
        C{POST /chat}: fire with the server's answer (C{{"delivered":
        "online"|"stored", "msgid": ...}}).

        Each message gets the next C{seq}; a connection error or a C{5xx} is
        retried (up to L{retry_attempts} tries, with backoff) with the same
        C{seq}, so the server delivers it once. A C{403} (session gone)
        waits for the new session and tries again. Other errors fail with
        L{ServerError}; if the client stops first, with L{ClientStopped}.
        """
        self._seq += 1
        fields = {"to": to, "msg": text, "seq": str(self._seq)}
        return Deferred.fromCoroutine(self._session_call("POST", "/chat", form=fields, retry=True))

    def init_chat(self, to: str) -> Deferred[Any]:
        """
        C{GET /initchat}: fire with C{None} (C{204}: both sides get
        C{msg initChat}) or the JSON answer (C{{"online": false}}).
        """
        return Deferred.fromCoroutine(self._session_call("GET", "/initchat", query={"to": to}))

    def presence(self, name: str) -> Deferred[Any]:
        """
        C{GET /api/presence/{name}}: a user's or a group's presence.
        """
        return Deferred.fromCoroutine(self._call("GET", "/api/presence/" + quote(name, safe="")))

    def call(
        self,
        method: str,
        path: str,
        fields: dict[str, str] | None = None,
        *,
        retry: bool = False,
    ) -> Deferred[Any]:
        """
        Any call that acts for the user: C{me} and C{id} are added (to the
        query for C{GET}, to the form body otherwise), the client waits for a
        session if there is none yet, and the JSON answer (or C{None}) is
        returned. With C{retry}, connection errors and C{5xx} answers are
        retried as for chat: only for calls that are safe to repeat.
        """
        if method.upper() == "GET":
            coro = self._session_call(method, path, query=fields or {}, retry=retry)
        else:
            coro = self._session_call(method, path, form=fields or {}, retry=retry)
        return Deferred.fromCoroutine(coro)

    def post_body(
        self, path: str, body: bytes, content_type: str, *, retry: bool = False
    ) -> Deferred[Any]:
        """
        C{POST} a raw body for the user (C{me} and C{id} in the query), for
        instance a SIP message to C{/sip} with C{"message/sip"}. Fires with
        the JSON answer or C{None}; errors as for L{call}.
        """
        return Deferred.fromCoroutine(
            self._session_call("POST", path, body=body, content_type=content_type, retry=retry)
        )

    def ack(self) -> Deferred[None]:
        """
        Acknowledge every frame seen so far now (C{POST /ack}); the client
        also does this by itself.
        """
        self._cancel_ack_timer()
        return Deferred.fromCoroutine(self._send_ack())

    def logout(self) -> Deferred[None]:
        """
        Stop reconnecting, release the heartbeat and C{POST /api/logout}.
        Never fails; calling it again waits for the same logout.
        """
        if self._logout_d is None:
            self._logout_d = Deferred.fromCoroutine(self._logout())
        d: Deferred[None] = Deferred()

        def done(result: object) -> object:
            if not d.called:
                d.callback(None)
            return result

        self._logout_d.addBoth(done)
        return d

    def stop(self, reason: str = "stopped") -> None:
        """
        Stop without logging out (the session lives on until it expires).
        """
        if self._stopped:
            return
        self._halt(reason)
        self._fire_stopped()

    # -- the heartbeat loop ------------------------------------------------

    def _status(self, text: str) -> None:
        log.info("{text}", text=text)
        if self._on_status is not None:
            try:
                self._on_status(text)
            except Exception:
                log.failure("on_status callback failed")

    def _attempt(self) -> None:
        """
        One step of the loop: log in if there is no session, then hold a
        heartbeat.
        """
        self._retry_call = None
        if self._stopped:
            return
        if self.session is None:
            if self._login_in_progress:
                return
            self._login_in_progress = True
            d = Deferred.fromCoroutine(self._login())
            self._login_d = d
            d.addCallbacks(self._logged_in, self._login_failed)
        else:
            self._heartbeat()

    def _schedule(self, delay: float | None = None) -> None:
        """
        Run L{_attempt} after C{delay}, or after the backoff delay (which
        then doubles, up to L{max_delay}).
        """
        if self._stopped or self._retry_call is not None:
            return
        if delay is None:
            # jitter: clients dropped at once (a box died) come back spread
            # over the second half of the delay, not all at the same instant
            delay = self.delay * (1 - self.jitter * self._random.random())
            self.delay = min(self.delay * 2, self.max_delay)
        self._retry_call = self._reactor.callLater(delay, self._attempt)

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    def _logged_in(self, session: SessionInfo) -> None:
        self._login_in_progress = False
        if self._stopped:
            # Logging out meanwhile: keep it so that logout ends it.
            self.session = session
            return
        self._set_session(session)
        self._heartbeat()

    def _set_session(self, session: SessionInfo) -> None:
        """
        Adopt a new session: frame ids start again from 1.
        """
        self.session = session
        self.username = session.username
        self.last_id = 0
        self.acked_id = 0
        self._ack_sent = 0
        self._cancel_ack_timer()
        self._session_since = self._reactor.seconds()
        self._status(f"logged in as {session.username}")
        waiters, self._login_waiters = self._login_waiters, []
        for w in waiters:
            w.callback(session)

    def _login_failed(self, failure: Failure) -> None:
        self._login_in_progress = False
        if self._stopped:
            if failure.check(LoginRefused):
                # Nobody waits for this error any more; still say it.
                self._status(f"login refused: {failure.value}")
            return
        if failure.check(LoginRefused):
            # when_stopped() fails with it: no status line of its own.
            log.info("login refused: {why}", why=str(failure.value))
            self._halt(failure)
            self._fire_stopped()
            return
        self._status(f"login failed ({_describe(failure)}); retrying within {self.delay:g}s")
        self._schedule()

    def _invalidate(self, session: SessionInfo | None) -> None:
        """
        The server no longer knows C{session}: drop it and log in again.
        """
        if session is None or session is not self.session or self._stopped:
            return
        self.session = None
        self.connected = False
        self._abandon()
        self._cancel_ack_timer()
        self._cancel_retry()
        if self._reactor.seconds() - self._session_since >= self.settled_session_age:
            # A session that worked for a while has expired: log in again now.
            self._schedule(0)
        else:
            self._schedule()

    def _heartbeat(self) -> None:
        session = self.session
        assert session is not None
        self._abandon()
        gen = self._gen
        ack = self.last_id
        query = [("me", session.username), ("id", session.session), ("mode", self.mode)]
        if self.bundle:
            query.append(("bundle", "1"))
        if ack:
            query.append(("ack", str(ack)))
        url = f"{self.base_url}/jchat?{urlencode(query)}"
        log.debug("heartbeat request mode={mode} ack={ack}", mode=self.mode, ack=ack)
        self._arm_watchdog(gen)
        d = self._http.request(
            "GET",
            url,
            headers={"Accept": ["text/event-stream"], "Cache-Control": ["no-cache"]},
            unbuffered=True,
        )
        self._hb_request = d
        d.addCallbacks(
            self._hb_response,
            self._hb_error,
            callbackArgs=(gen, session, ack),
            errbackArgs=(gen,),
        )

    def _abandon(self) -> None:
        """
        Forget the current heartbeat request, if any: its later data and end
        are ignored (its connection is closed when more data arrives; the
        server also releases it when the next request of the session comes).
        """
        self._gen += 1
        self._cancel_watchdog()
        d, self._hb_request = self._hb_request, None
        if d is not None and not d.called:
            d.cancel()

    def _arm_watchdog(self, gen: int) -> None:
        self._cancel_watchdog()
        self._watchdog = self._reactor.callLater(self.idle_timeout, self._idle, gen)

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _idle(self, gen: int) -> None:
        self._watchdog = None
        self._dropped(gen, f"nothing received for {self.idle_timeout:g}s")

    def _dropped(self, gen: int, why: str) -> None:
        """
        The heartbeat C{gen} ended or failed: reconnect with backoff.
        """
        if gen != self._gen or self._stopped:
            return
        was_connected, self.connected = self.connected, False
        self._abandon()
        self._status(
            f"heartbeat {'dropped' if was_connected else 'failed'} ({why}); "
            f"reconnecting within {self.delay:g}s"
        )
        self._schedule()

    def _hb_error(self, failure: Failure, gen: int) -> None:
        self._dropped(gen, _describe(failure))

    def _hb_response(self, response: IResponse, gen: int, session: SessionInfo, ack: int) -> None:
        if gen != self._gen or self._stopped:
            _discard(self._http, response)
            return
        self._hb_request = None
        if response.code == 403:
            _discard(self._http, response)
            self._status("session no longer valid (403); logging in again")
            self._invalidate(session)
            return
        if response.code != 200:
            d = Deferred.fromCoroutine(_error_of(self._http, response))
            d.addCallback(lambda error: self._dropped(gen, str(error)))
            return
        self.delay = self.initial_delay
        self.acked_id = max(self.acked_id, ack)
        self._ack_sent = max(self._ack_sent, ack)
        self._arm_watchdog(gen)
        if not self.connected:
            self.connected = True
            self._status(f"connected ({self.mode} mode, ack={ack})")
            if self._on_connected is not None:
                try:
                    self._on_connected(session)
                except Exception:
                    log.failure("on_connected callback failed")
        waiters, self._connected_waiters = self._connected_waiters, []
        for w in waiters:
            w.callback(session)
        if gen != self._gen:
            # A callback stopped or restarted the client.
            _discard(self._http, response)
            return
        parser = EventStreamParser()
        body = self._http.collect(response, lambda data: self._data(gen, parser, data))
        body.addCallbacks(self._stream_end, self._stream_failed, (gen,), None, (gen,))

    def _data(self, gen: int, parser: EventStreamParser, data: bytes) -> None:
        if gen != self._gen:
            raise _Abandoned()
        self._arm_watchdog(gen)
        for event in parser.feed(data):
            self._event(event)
            if gen != self._gen:
                # That frame ended this heartbeat (bye, or a callback).
                raise _Abandoned()

    def _stream_end(self, _: None, gen: int) -> None:
        if gen != self._gen or self._stopped:
            return
        if self.mode == "poll":
            # A poll answer: ask again at once, acknowledging what it carried.
            self._heartbeat()
        else:
            self._dropped(gen, "the server ended the stream")

    def _stream_failed(self, failure: Failure, gen: int) -> None:
        if gen != self._gen or failure.check(_Abandoned):
            return
        self._dropped(gen, _describe(failure))

    # -- frames and acks ----------------------------------------------------

    def _event(self, event: Event) -> None:
        frame_id: int | None
        try:
            frame_id = int(event.id) if event.id is not None else None
        except ValueError:
            frame_id = None
        if frame_id is None:
            log.warn("frame without a numeric id: {id!r}", id=event.id)
        elif frame_id <= self.last_id:
            log.debug("duplicate frame {id} dropped", id=frame_id)
            return
        else:
            self.last_id = frame_id
        if self._on_frame is not None:
            try:
                self._on_frame(frame_id, event.data)
            except Exception:
                log.failure("on_frame callback failed for frame {id}", id=frame_id)
        try:
            frame = parse_frame(event.data)
        except FrameError:
            frame = None
        if frame is not None and frame.kind == "bye":
            self._bye(frame.args[0] if frame.args else "")
        elif frame_id is not None:
            self._frame_counted()

    def _frame_counted(self) -> None:
        if self._stopped:
            return
        if self.last_id - self._ack_sent >= self.ack_every_frames:
            self._cancel_ack_timer()
            self._fire_ack()
        elif self._ack_timer is None and self.last_id > self._ack_sent:
            self._ack_timer = self._reactor.callLater(self.ack_every_seconds, self._ack_timer_fired)

    def _ack_timer_fired(self) -> None:
        self._ack_timer = None
        self._fire_ack()

    def _cancel_ack_timer(self) -> None:
        if self._ack_timer is not None and self._ack_timer.active():
            self._ack_timer.cancel()
        self._ack_timer = None

    def _fire_ack(self) -> None:
        d = Deferred.fromCoroutine(self._send_ack())
        d.addErrback(lambda f: log.failure("ack failed", f))

    async def _send_ack(self) -> None:
        session = self.session
        n = self.last_id
        if session is None or self._stopped or n <= self._ack_sent:
            return
        self._ack_sent = n
        try:
            await self._call("POST", "/ack", query=_auth(session) + [("ack", str(n))])
        except Exception as e:
            log.info("ack {n} failed: {why}", n=n, why=_describe(Failure(e)))
            if session is self.session and not self._stopped:
                # Try again later with whatever is pending then.
                self._ack_sent = min(self._ack_sent, self.acked_id)
                if self._ack_timer is None:
                    self._ack_timer = self._reactor.callLater(
                        self.ack_every_seconds, self._ack_timer_fired
                    )
            return
        if session is self.session:
            self.acked_id = max(self.acked_id, n)

    def _bye(self, reason: str) -> None:
        session = self.session
        self._status(f"the server ended the session ({reason or 'no reason'})")
        if reason == "expired":
            self._session_since = float("-inf")
            self._invalidate(session)
        elif reason == "shutdown" and (self.guest or self._resume is not None):
            # The server is stopping (a restart, or a box of a cluster
            # leaving): come back with the backoff delay, resuming.
            self._session_since = self._reactor.seconds()
            self._invalidate(session)
        else:
            if reason == "password":
                self._keep_resume(None)  # the server revoked every token
            self.session = None
            self._halt(f"bye {reason}".strip())
            self._fire_stopped()

    # -- login, logout, stopping ---------------------------------------------

    @property
    def has_resume_token(self) -> bool:
        """Whether the client holds a resume token (the token itself is
        never shown)."""
        return self._resume is not None

    def _keep_resume(self, token: object) -> None:
        """Hold C{token} (from a login or resume answer) for the next login;
        C{None} forgets the one held."""
        token = token if isinstance(token, str) and token else None
        if token == self._resume:
            return
        self._resume = token
        if self.resume_file is None:
            return
        try:
            if token is None:
                if os.path.exists(self.resume_file):
                    os.remove(self.resume_file)
            else:
                _write_token(self.resume_file, token)
        except OSError as e:
            log.warn("cannot keep the resume token in {path}: {why}",
                     path=self.resume_file, why=e.strerror or str(e))

    async def _resume_login(self) -> Any:
        """C{POST /api/resume} with the token held; the answer, or C{None}
        when the server refused the token (then forgotten)."""
        try:
            return await self._call("POST", "/api/resume", form={"token": self._resume or ""})
        except ServerError as e:
            if e.code not in (400, 401):
                raise  # 429, 5xx: try again later, with the token
            self._status(f"resume token refused ({e.message}); logging in with the password")
            self._keep_resume(None)
            return None

    async def _login(self) -> SessionInfo:
        body = None
        if self.guest:
            body = await self._call("POST", "/api/guest", form={})
        elif self._resume is not None:
            body = await self._resume_login()
        if body is None and self._password is None:
            raise LoginRefused(401, "the resume token was refused and no password is known")
        if body is None:
            assert self.username is not None and self._password is not None
            creds = {"username": self.username, "password": self._password}
            if self.register and not self._registered:
                try:
                    await self._call("POST", "/api/register", form=creds)
                    self._status(f"registered {self.username}")
                except ServerError as e:
                    if e.code == 409:
                        log.info("{user} exists already; logging in", user=self.username)
                    elif 400 <= e.code < 500 and e.code != 429:
                        raise LoginRefused(e.code, e.message) from None
                    else:
                        raise
                self._registered = True
            try:
                body = await self._call("POST", "/api/login", form=creds)
            except ServerError as e:
                if e.code in (400, 401, 403):
                    raise LoginRefused(e.code, e.message) from None
                raise
        if not isinstance(body, dict) or not body.get("session"):
            raise ServerError(200, "the login answer carries no session")
        if not self.guest:
            self._keep_resume(body.get("resume"))
        return SessionInfo(
            username=str(body.get("username") or self.username),
            session=str(body["session"]),
            host_box=body.get("host_box"),
        )

    async def _logout(self) -> None:
        login = self._login_d if self._login_in_progress else None
        self._halt("logout")
        if login is not None:
            # A login is on its way: let it finish, so that the session it
            # creates is ended too rather than left to expire.
            finished: Deferred[None] = Deferred()
            login.addBoth(lambda r: (finished.callback(None), r)[1])
            await finished
        session = self.session
        try:
            if session is not None:
                await self._call("POST", "/api/logout", form=dict(_auth(session)))
                self._status("logged out")
                self._keep_resume(None)  # revoked by the server
        except ServerError as e:
            if e.code != 403:  # 403: the session was gone already
                log.warn("logout: {e}", e=str(e))
        except Exception as e:
            log.warn("logout failed: {why}", why=_describe(Failure(e)))
        finally:
            self.session = None
            close = getattr(self._http, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    pass
            self._fire_stopped()

    def _halt(self, result: Failure | str) -> None:
        """
        Stop the loop and every timer; fail whoever waits for a session.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stop_result = result
        self.connected = False
        self._abandon()
        self._cancel_retry()
        self._cancel_ack_timer()
        for sleep in list(self._sleeps):
            sleep.cancel()
        reason = str(result.value) if isinstance(result, Failure) else result
        waiters = self._login_waiters + self._connected_waiters
        self._login_waiters, self._connected_waiters = [], []
        for w in waiters:
            w.errback(ClientStopped(reason))

    def _fire_stopped(self) -> None:
        result = self._stop_result
        assert result is not None
        waiters, self._stopped_waiters = self._stopped_waiters, []
        for d in waiters:
            _fire(d, result)

    # -- requests -------------------------------------------------------------

    def _when_logged_in(self, not_this: SessionInfo | None = None) -> Deferred[SessionInfo]:
        if self._stopped:
            return _failed(ClientStopped("client stopped"))
        if self.session is not None and self.session is not not_this:
            return succeed(self.session)
        d: Deferred[SessionInfo] = Deferred()
        self._login_waiters.append(d)
        return d

    async def _sleep(self, seconds: float) -> None:
        d: Deferred[None] = deferLater(self._reactor, seconds, lambda: None)  # type: ignore[arg-type]
        self._sleeps.add(d)
        try:
            await d
        except CancelledError:
            raise ClientStopped("client stopped") from None
        finally:
            self._sleeps.discard(d)

    async def _session_call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        retry: bool = False,
    ) -> Any:
        """
        A request that acts for the user: C{me}/C{id} added, and the latest
        frame id acknowledged on the way. A C{403} waits for a new session
        and tries again (at most three times); with C{retry}, connection
        errors and C{5xx} answers are retried with backoff, the request
        unchanged.
        """
        attempts = 0
        relogins = 0
        delay = self.initial_delay
        stale: SessionInfo | None = None
        while True:
            session = await self._when_logged_in(not_this=stale)
            params = _auth(session)
            ack = self.last_id
            if ack:
                params.append(("ack", str(ack)))
            try:
                if form is not None:
                    result = await self._call(method, path, form=dict(params) | form)
                elif body is not None:
                    result = await self._call(
                        method, path, query=params, body=body, content_type=content_type
                    )
                else:
                    result = await self._call(method, path, query=params + list((query or {}).items()))
            except ServerError as e:
                if e.code == 403 and relogins < 3 and not self._stopped:
                    relogins += 1
                    log.info("{path}: session gone; waiting for a new one", path=path)
                    self._invalidate(session)
                    stale = session
                    continue
                if not (retry and e.code >= 500):
                    raise
                why = str(e)
            except ClientStopped:
                raise
            except Exception as e:
                if not retry:
                    raise
                why = _describe(Failure(e))
            else:
                if ack and session is self.session:
                    self.acked_id = max(self.acked_id, ack)
                    self._ack_sent = max(self._ack_sent, ack)
                return result
            attempts += 1
            if attempts >= self.retry_attempts or self._stopped:
                raise ServerError(0, f"gave up after {attempts} tries: {why}")
            log.info("{path} failed ({why}); retrying in {delay}s", path=path, why=why, delay=delay)
            await self._sleep(delay)
            delay = min(delay * 2, self.max_delay)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        form: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        """
        One request; return the decoded JSON answer (C{None} for an empty
        body) or raise L{ServerError} for a status of 400 or more. A C{307}
        or C{308} to an C{http(s)} URL (in a cluster, C{POST /sip} for a
        session another box holds) is followed once with the same method
        and body (treq follows redirects of C{GET} only).
        """
        url = self.base_url + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": ["application/json"]}
        kwargs: dict[str, Any] = {"headers": headers}
        if form is not None:
            kwargs["data"] = form
        elif body is not None:
            kwargs["data"] = body
            headers["Content-Type"] = [content_type or "application/octet-stream"]
        if method.upper() not in ("GET", "HEAD"):
            kwargs["allow_redirects"] = False
        for hops in range(2):
            d = self._http.request(method, url, **kwargs)
            d.addTimeout(self.request_timeout, self._reactor)  # type: ignore[arg-type]
            response = await d
            location = _redirect_of(response) if hops == 0 else None
            if location is None:
                break
            _discard(self._http, response)
            url = location
        if response.code >= 400 or response.code in (307, 308):
            raise await _error_of(self._http, response)
        return _json_or_none(await self._http.content(response))


class _Abandoned(Exception):
    """
    Raised from a stale heartbeat's body collector so that treq closes it.
    """


def _read_token(path: str | None) -> str | None:
    """The resume token kept in C{path}, or C{None} (no such file, unreadable,
    or not a token)."""
    if path is None:
        return None
    try:
        with open(path, encoding="ascii") as f:
            token = f.read(200).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token if 0 < len(token) <= 128 and token.isprintable() else None


def _write_token(path: str, token: str) -> None:
    """Write C{token} to C{path} with mode 0600 (a new file, renamed over the
    old one: never readable by others, never half written)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode("ascii") + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _auth(session: SessionInfo) -> list[tuple[str, str]]:
    return [("me", session.username), ("id", session.session)]


def _failed(exc: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d


def _fire(d: Deferred[str], result: Failure | str) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def _json_or_none(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


async def _error_of(http: HTTPClientLike, response: IResponse) -> ServerError:
    """
    Read an error answer into a L{ServerError} carrying its readable text.
    """
    try:
        body = await http.content(response)
    except Exception:
        body = b""
    data = _json_or_none(body)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data["error"]
    else:
        text = body.decode("utf-8", errors="replace").strip()
        if text and len(text) < 200 and "<" not in text:
            message = text
        else:
            phrase = getattr(response, "phrase", b"") or b""
            message = phrase.decode("latin-1") if isinstance(phrase, bytes) else str(phrase)
            message = message or "HTTP error"
    return ServerError(response.code, message)


def _redirect_of(response: IResponse) -> str | None:
    """
    The URL a C{307}/C{308} answer sends the same request to, if it is an
    C{http(s)} URL; else C{None}.
    """
    if response.code not in (307, 308):
        return None
    values = response.headers.getRawHeaders(b"location") or []
    if len(values) != 1:
        return None
    raw = values[0]
    location = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    if not location.startswith(("http://", "https://")):
        return None
    return location


def _discard(http: HTTPClientLike, response: IResponse) -> None:
    """
    Read and drop a body nobody needs, so that its connection is released.
    """
    http.content(response).addErrback(lambda f: None)


def _describe(failure: Failure) -> str:
    """
    A short readable text for a failure, never a traceback.
    """
    value = failure.value
    if isinstance(value, ServerError):
        return str(value)
    if isinstance(value, (CancelledError, DeferredTimeout, ConnectTimeout)):
        return "timed out"
    reasons = getattr(value, "reasons", None)
    if reasons and isinstance(reasons[0], Failure):
        # ResponseFailed, ResponseNeverReceived... wrap the real causes; the
        # first one says what happened (the others are consequences).
        if reasons[0].check(ConnectionDone, ConnectionLost):
            return "connection lost"
        return _describe(reasons[0])
    if isinstance(value, (ConnectionDone, ConnectionLost)):
        return "connection lost"
    if isinstance(value, ConnectionRefusedError):
        return "connection refused"
    text = str(value).strip()
    name = type(value).__name__
    return f"{name}: {text}" if text else name
