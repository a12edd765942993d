"""Listening services: every port is bound in ``privilegedStartService``.

``twistd`` calls ``privilegedStartService`` on the whole tree before it
drops privileges (``-u``/``-g``) and ``startService`` after, so a server
started as root binds port 80 (or 5060) and then runs as the user it was
told.  ``startService`` binds too when nothing called the privileged step
(a test, ``twistd`` as a plain user); it then tells the ready gate.

A port that cannot be bound (taken, not permitted, no such address) ends the
start with :class:`ListenFailed`: one line naming the option, its value and
the reason, printed to the log, and ``twistd`` exits with status 1 before the
reactor runs, without a traceback.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from presence.web.transport import use_turn_flush

log = Logger()


class ListenFailed(SystemExit):
    """A listener could not bind.  A ``SystemExit`` so that ``twistd`` stops
    with its message (status 1) instead of a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def listen_failed(option: str, value: Any, reason: Any, what: str = "") -> ListenFailed:
    """The :class:`ListenFailed` for ``--option value`` (``twistd`` writes
    the message of the ``SystemExit`` to its log and to standard error).
    ``reason`` is a ``Failure`` or an exception; ``what`` names the
    protocol where one option makes several listeners (``UDP``, ``TCP``)."""
    if isinstance(reason, Failure):
        reason = reason.getErrorMessage()
    kind = f" ({what})" if what else ""
    return ListenFailed(f"presence: cannot listen on --{option} {value}{kind}: {reason}")


class Listener(Service):
    """Binds in ``privilegedStartService`` (or, failing that, in
    ``startService``) and reports once started.  Subclasses say how to bind
    (:meth:`bind`, returning the listening port or raising) and what to do
    once listening (:meth:`listening`)."""

    #: the command-line option this listener comes from, and its value
    option = ""
    value: Any = ""
    #: the protocol named in a failure ("UDP", "TCP") if the option has more
    what = ""

    port: Any = None
    _bound = False

    def bind(self) -> Any:
        raise NotImplementedError

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind_once()

    def startService(self) -> None:
        super().startService()
        self._bind_once()
        if self.port is not None:
            self.listening(self.port)

    def _bind_once(self) -> None:
        if self._bound:
            return
        self._bound = True
        try:
            self.port = self.bind()
        except ListenFailed:
            raise
        except Exception as e:
            raise listen_failed(self.option, self.value, e, self.what) from None

    def listening(self, port: Any) -> None:
        """Listening and started."""

    def address(self) -> str:
        host = self.port.getHost()
        return f"{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}"

    def stopService(self) -> Any:
        super().stopService()
        self._bound = False
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class ListenService(Listener):
    """Listens on a stream server endpoint and tells ``on_ready`` once
    started.  ``option`` and ``value`` name the command-line option in an
    error (``label`` by default)."""

    def __init__(self, label: str, endpoint: Any, factory: Any,
                 on_ready: Optional[Callable[["ListenService"], object]] = None,
                 turn_flush: bool = False, option: str = "", value: Any = "") -> None:
        self.label = label
        self.turn_flush = turn_flush
        self.endpoint = endpoint
        self.factory = factory
        self.on_ready = on_ready
        self.option = option or label
        self.value = value

    def bind(self) -> Any:
        outcome: list = []

        def keep(result: Any) -> Any:
            outcome.append(result)
            return result

        d = self.endpoint.listen(self.factory)
        d.addBoth(keep)
        if not outcome:
            # an endpoint that answers later: started when it does
            self._waiting = d
            d.addCallbacks(self._late, self._late_failure)
            return None
        if isinstance(outcome[0], Failure):
            d.addErrback(lambda _: None)  # handled: raised here
            raise listen_failed(self.option, self.value, outcome[0], self.what)
        return outcome[0]

    _waiting: Any = None

    def stopService(self) -> Any:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.cancel()  # stopped before the endpoint answered
        return super().stopService()

    def _late(self, port: Any) -> None:
        self._waiting = None
        self.port = port
        if self.running:
            self.listening(port)

    def _late_failure(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.critical("{message}", message=listen_failed(
                self.option, self.value, failure, self.what).message)

    def listening(self, port: Any) -> None:
        self._listening(port)

    def _listening(self, port: Any) -> None:
        self.port = port
        if self.turn_flush:
            use_turn_flush(port)
        if self.on_ready is not None:
            self.on_ready(self)
