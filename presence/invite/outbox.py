"""The outbox: invitation mails on disk until a smarthost has taken them.

Layout under ``<--data>/outbox/`` (mode 0700: the mails carry tokens)::

    <id>.eml          a mail not yet accepted by the smarthost; without
                      --smtp, the delivered mail itself (status "written")
    sent/<id>.eml     accepted by the smarthost (SMTP 250 after DATA)
    failed/<id>.eml   given up: the invitation expired before any smarthost
                      took it

Each file is written whole (a temporary name, fsync, rename) before the API
answers, so a mail is never lost.  With ``--smtp`` a mail is tried at once;
when the smarthost is down or refuses it (any 4xx or 5xx), it stays in the
outbox and is tried again after 30 s, 60 s, 120 s ... (at most an hour
apart) until the invitation expires, or until the smarthost refused it
for good (a 5xx) five times.  The attempt count and the time of the
next try are in the invitation store, so a restart goes on where it was.

Never twice: one attempt per mail at a time, and the file leaves the outbox
(renamed into ``sent/``) and the store says ``sent`` as soon as the
smarthost has accepted it, before anything else can try it again.  The one
window left is a crash between the smarthost's 250 and that rename (or a
connection lost while waiting for the 250): the mail is then sent again at
the next start, the SMTP rule of "at least once" (docs/invites.md).
"""

from __future__ import annotations

import os
from io import BytesIO
from typing import Any, Callable, Dict, Optional

from twisted.internet import defer
from twisted.logger import Logger

from presence.invite.store import InviteStore

Send = Callable[[str, bytes], defer.Deferred]
#: seconds before the first retry, and the longest wait between two
BACKOFF_FIRST = 30.0
BACKOFF_MAX = 3600.0
#: attempts after which a permanent refusal (an SMTP 5xx) gives the mail up
MAX_REFUSALS = 5
#: seconds one attempt (connect, TLS, AUTH, DATA) may take
SEND_TIMEOUT = 60.0

log = Logger()


def backoff(attempts: int, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...)."""
    return min(most, first * (2 ** max(0, min(attempts - 1, 30))))


def write_whole(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is there whole or not at
    all, and on disk when this returns."""
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _sync_dir(os.path.dirname(path))


def _sync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Outbox:
    """``send`` (None: no smarthost, the file is the delivery) hands one
    mail to the smarthost: ``send(recipient, data)`` fires once it was
    accepted, fails otherwise.  ``clock`` is an ``IReactorTime``."""

    def __init__(self, folder: str, store: InviteStore, clock: Any,
                 send: Optional[Send] = None, first: float = BACKOFF_FIRST,
                 most: float = BACKOFF_MAX) -> None:
        self.folder = folder
        self.store = store
        self.clock = clock
        self.send = send
        self.first = first
        self.most = most
        self._timers: Dict[int, Any] = {}
        self._inflight: set = set()
        self.running = False
        #: mails handed to the smarthost since start (for tests and stats)
        self.sent = 0

    def path(self, ident: int, where: str = "") -> str:
        return os.path.join(self.folder, where, f"{ident}.eml")

    def prepare(self) -> None:
        for where in ("", "sent", "failed"):
            os.makedirs(os.path.join(self.folder, where), mode=0o700, exist_ok=True)

    def put(self, ident: int, data: bytes) -> defer.Deferred:
        """Keep the mail of invitation ``ident`` in the outbox; fires once
        it is on disk (written on the store's worker thread)."""
        def write() -> None:
            self.prepare()
            write_whole(self.path(ident), data)
        return self.store.run(write)

    # -- delivery ------------------------------------------------------------

    async def start(self) -> None:
        """Schedule every mail the store says is still queued."""
        self.running = True
        if self.send is None:
            return
        self.prepare()
        now = self.clock.seconds()
        for inv in await self.store.queued():
            self._schedule(inv["id"], max(0.0, (inv["next_try"] or now) - now))

    def stop(self) -> None:
        self.running = False
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def _schedule(self, ident: int, delay: float) -> None:
        old = self._timers.pop(ident, None)
        if old is not None and old.active():
            old.cancel()
        self._timers[ident] = self.clock.callLater(delay, self._due, ident)

    def _due(self, ident: int) -> None:
        self._timers.pop(ident, None)
        d = defer.ensureDeferred(self.attempt(ident))
        d.addErrback(lambda f: log.failure("sending invitation mail {id} failed", f,
                                           id=ident))

    async def attempt(self, ident: int) -> bool:
        """One attempt at handing invitation ``ident``'s mail over; True once
        the smarthost has it (now or before).  A failure schedules the next
        attempt."""
        if self.send is None or ident in self._inflight:
            return False
        # in flight from here on, before the first wait: a second attempt
        # (a timer, a restart) can never read the same "queued"
        self._inflight.add(ident)
        try:
            return await self._attempt(ident)
        finally:
            self._inflight.discard(ident)

    async def _attempt(self, ident: int) -> bool:
        inv = await self.store.get(ident)
        if inv is None or inv["status"] != "queued":
            return inv is not None and inv["status"] == "sent"
        data = await self.store.run(_read, self.path(ident))
        if data is None:
            log.error("invitation mail {id} is missing from the outbox {folder}", id=ident,
                      folder=self.folder)
            await self.store.set_status(ident, "failed", error="missing from the outbox")
            return False
        now = self.clock.seconds()
        if now >= inv["expires"]:
            await self._move(ident, "failed")
            await self.store.set_status(ident, "failed", error=inv["error"] or "expired")
            log.warn("invitation mail {id} given up: the invitation expired before a"
                     " smarthost took it", id=ident)
            return False
        try:
            await self.send(inv["email"], data)
        except Exception as e:
            attempts = (inv["attempts"] or 0) + 1
            wait = backoff(attempts, self.first, self.most)
            error = _describe(e)
            code = getattr(e, "code", None)
            if isinstance(code, int) and 500 <= code < 600 and attempts >= MAX_REFUSALS:
                # refused for good (no such mailbox...), and not only once
                await self._move(ident, "failed")
                await self.store.set_status(ident, "failed", attempts=attempts, error=error)
                log.warn("invitation mail {id} given up: the smarthost refused it"
                         " {n} times ({error})", id=ident, n=attempts, error=error)
                return False
            await self.store.set_status(ident, "queued", attempts=attempts,
                                        next_try=now + wait, error=error)
            log.warn("invitation mail {id} not sent ({error}); attempt {n}, next in"
                     " {wait:.0f} s", id=ident, error=error, n=attempts, wait=wait)
            if self.running:
                self._schedule(ident, wait)
            return False
        # accepted: out of the outbox first, so that nothing tries it again
        await self._move(ident, "sent")
        await self.store.set_status(ident, "sent", attempts=(inv["attempts"] or 0) + 1)
        self.sent += 1
        log.info("invitation mail {id} handed to the smarthost", id=ident)
        return True

    def _move(self, ident: int, where: str) -> defer.Deferred:
        def move() -> None:
            self.prepare()
            try:
                os.replace(self.path(ident), self.path(ident, where))
            except FileNotFoundError:
                pass
            _sync_dir(self.folder)
        return self.store.run(move)


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _describe(e: BaseException) -> str:
    code = getattr(e, "code", None)
    text = getattr(e, "resp", None)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    base = type(e).__name__
    if code:
        return f"{base} {code} {str(text or '')[:120]}".strip()
    return f"{base}: {str(e)[:160]}"


def smtp_sender(reactor: Any, endpoint: str, sender: str, username: Optional[str] = None,
                password: Optional[str] = None, timeout: float = SEND_TIMEOUT) -> Send:
    """A ``send`` for :class:`Outbox` over twisted.mail's ESMTP client to
    the smarthost at the client endpoint string ``endpoint``: STARTTLS
    whenever the smarthost offers it (the certificate checked against the
    host name of the endpoint), AUTH with ``username``/``password`` when
    given (and then only over TLS)."""
    from twisted.internet import endpoints
    from twisted.mail.smtp import ESMTPSenderFactory

    host = endpoint_host(endpoint)
    # a tls: endpoint is TLS from the first byte (and checks the certificate):
    # no STARTTLS is needed, or offered, before AUTH
    implicit_tls = endpoint.split(":", 1)[0].lower() == "tls"

    def send(recipient: str, data: bytes) -> defer.Deferred:
        result: defer.Deferred = defer.Deferred()
        factory = ESMTPSenderFactory(
            username.encode("utf-8") if username else None,
            password.encode("utf-8") if password else None,
            sender, [recipient], BytesIO(data), result, retries=0, timeout=timeout,
            heloFallback=not username, requireAuthentication=bool(username),
            requireTransportSecurity=bool(username) and not implicit_tls, hostname=host)
        connecting = endpoints.clientFromString(reactor, endpoint).connect(factory)

        def refused(failure: Any) -> None:
            if not result.called:
                result.errback(failure)
        connecting.addErrback(refused)
        result.addTimeout(timeout + 5, reactor)
        return result

    return send


def endpoint_host(endpoint: str) -> Optional[str]:
    """The host a client endpoint string names (``tcp:HOST:PORT``,
    ``tcp:host=HOST:port=PORT``, ``tls:...``), or None."""
    parts = endpoint.split(":")
    if len(parts) < 2 or parts[0].lower() not in ("tcp", "tcp6", "tls", "host"):
        return None  # unix: and the like name no host to check a certificate of
    for part in parts[1:]:
        if part.startswith("host="):
            return part[5:] or None
    return parts[1] if "=" not in parts[1] else None
