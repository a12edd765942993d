"""A ``ThreadPool`` whose calls leave no cyclic garbage behind.

``twisted.python.threadpool.ThreadPool.callInThreadWithCallback`` (under
``deferToThreadPool``) wraps every call in a closure that refers to itself
(``inContext.theWork``/``inContext.onResult``): four objects per call that
only the cyclic garbage collector frees.  The server makes such a call per
password hash and per store write (a login, a user going on- or offline), so
every connection left a little cyclic garbage behind.

:class:`Pool` hands its team a small ``__slots__`` object instead, which
forgets the call once it has run; nothing else changes (threads, limits,
``start``/``stop``, context propagation).  Use it with ``deferToThreadPool``
as any ``ThreadPool``.  On a Twisted whose pool has no ``_team`` it falls
back to Twisted's own method, and logs a warning once.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger
from twisted.python import context, log
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

_log = Logger()
#: set once the fallback has been reported (it is reported once per process)
_warned: list = []


def _fallback_warning() -> None:
    if not _warned:
        _warned.append(True)
        _log.warn("presence.threads: this Twisted's ThreadPool has no _team; its own"
                  " callInThreadWithCallback is used, and every call leaves cyclic"
                  " garbage again (tests/test_twisted_private.py names what changed)")


class _Call:
    """One call for a worker thread; it forgets everything once run."""

    __slots__ = ("ctx", "on_result", "func", "args", "kw")

    def __init__(self, ctx: Any, on_result: Optional[Callable[[bool, Any], object]],
                 func: Callable[..., Any], args: tuple, kw: dict) -> None:
        self.ctx = ctx
        self.on_result = on_result
        self.func = func
        self.args = args
        self.kw = kw

    def __call__(self) -> None:
        ctx, on_result, func, args, kw = self.ctx, self.on_result, self.func, self.args, self.kw
        self.ctx = self.on_result = self.func = self.args = self.kw = None
        try:
            result = context.call(ctx, func, *args, **kw)
            ok = True
        except BaseException:
            result = Failure()
            ok = False
        del ctx, func, args, kw
        try:
            if on_result is not None:
                on_result(ok, result)
            elif not ok:
                log.err(result)
        finally:
            # a Failure's traceback holds this frame: drop the frame's
            # reference to the Failure so that the two make no cycle
            del result, on_result


class Pool(ThreadPool):
    """A ``ThreadPool`` whose calls make no reference cycles."""

    def callInThreadWithCallback(self, onResult, func, *args, **kw) -> None:
        team = getattr(self, "_team", None)
        if team is None:  # a Twisted laid out otherwise: its own way
            _fallback_warning()
            return super().callInThreadWithCallback(onResult, func, *args, **kw)
        if self.joined:
            return
        ctx = context.theContextTracker.currentContext().contexts[-1]
        team.do(_Call(ctx, onResult, func, args, kw))
