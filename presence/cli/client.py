"""
The reference console client, ``presence-client``: L{main}.

It drives a L{presence.client.heartbeat.HeartbeatClient}. The console
protocol (see ``docs/client.md``): every frame is printed to standard output
as ``[<id>] <first line>`` followed by its payload lines indented by two
spaces; standard input takes ``@user text`` (chat), ``/init user``,
``/who name``, ``/state STATE [TEXT]`` and ``/quit``.

Presence state (``--state``, ``--status``, ``/state``; see L{StateReporter}):
set with ``POST /api/status`` once logged in and again for every new
session; with ``--idle SECONDS`` the client reports C{away} after that long
without a command typed, and the chosen state again on the next one.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from presence.client.heartbeat import (
    ClientStopped, HeartbeatClient, ServerError, _describe, format_frame,
)
from presence.core import states

__all__ = ["CommandHandler", "ConsoleLines", "Output", "StateReporter", "build_parser", "main"]


# -- the console front-end ----------------------------------------------------


HELP = """\
commands:
  @USER TEXT    send TEXT to USER
  /init USER    open a chat with USER (GET /initchat)
  /who NAME     show the presence of a user or group
  /state STATE [TEXT]
                set your state (available, away, busy) and status text
  /quit         log out and exit (also Ctrl-C or end of input)"""


class Output:
    """
    Where the console writes: frames to standard output (through the
    Twisted stdio transport when there is one, since it makes the descriptor
    non-blocking), notices and errors to standard error.
    """

    def __init__(self) -> None:
        self.transport: Any = None

    def frame(self, frame_id: int | None, text: str) -> None:
        """
        Print one frame (see L{format_frame}).
        """
        self.out(format_frame(frame_id, text) + "\n")

    def out(self, text: str) -> None:
        """
        Write to standard output now.
        """
        if self.transport is not None:
            self.transport.write(text.encode("utf-8"))
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    def say(self, text: str) -> None:
        """
        A notice on standard error.
        """
        try:
            sys.stderr.write(f"* {text}\n")
            sys.stderr.flush()
        except OSError:
            pass


class StateReporter:
    """
    The presence state of the console client's session (spec section 12).

    The chosen state and text (C{--state}, C{--status}, C{/state}) are sent
    with C{POST /api/status} once there is a session, and again whenever the
    client has a new one (a new session starts C{available}).  With C{idle}
    seconds, while the chosen state is C{available}, the client reports
    C{away} once no command was typed for that long (L{input} is called for
    every line), and C{available} again on the next line.  The check runs
    every C{min(idle / 4, 5)} seconds (every 5 s without C{idle}).
    """

    def __init__(self, client: Any, reactor: IReactorTime, say: Callable[[str], object],
                 state: str = states.AVAILABLE, text: str = "",
                 idle: float | None = None) -> None:
        self.client = client
        self.reactor = reactor
        self.say = say
        self.state = state
        self.text = text
        self.idle = idle or None
        self.last_input = reactor.seconds()
        #: the session last reported for and what the server has for it
        self._session: Any = None
        self._reported: tuple[str, str] = (states.AVAILABLE, "")
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(min(self.idle / 4, 5.0) if self.idle else 5.0, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def wanted(self) -> tuple[str, str]:
        if (self.state == states.AVAILABLE and self.idle is not None
                and self.reactor.seconds() - self.last_input >= self.idle):
            return (states.AWAY, self.text)
        return (self.state, self.text)

    def input(self) -> None:
        """A command was typed."""
        self.last_input = self.reactor.seconds()
        if self._reported[0] == states.AWAY and self.state == states.AVAILABLE:
            self.check()

    def choose(self, state: str, text: str = "") -> str | None:
        """Set the chosen state and text; why not, or None."""
        error = states.state_error(state) or states.text_error(text)
        if error is not None:
            return error
        self.state, self.text = state, text.strip()
        self.last_input = self.reactor.seconds()
        self.check()
        return None

    def check(self) -> None:
        """Send the state wanted now if the server's differs."""
        session = getattr(self.client, "session", None)
        if session is None:
            return
        if session is not self._session:
            self._session, self._reported = session, (states.AVAILABLE, "")
        want = self.wanted()
        if want == self._reported:
            return
        self._reported = want
        d = self.client.call("POST", "/api/status", {"state": want[0], "text": want[1]})

        def failed(failure: Failure) -> None:
            self._reported = ("", "")   # the next check tries again
            self.say(f"state not set: {_describe(failure)}")

        d.addErrback(failed)


class CommandHandler:
    """
    Runs console commands one after another against a L{HeartbeatClient}.
    Kept apart from the line protocol so it can be tested with strings.
    """

    def __init__(self, client: HeartbeatClient, say: Callable[[str], object],
                 reporter: StateReporter | None = None) -> None:
        self.client = client
        self.say = say
        self.reporter = reporter
        self._queue: Deferred[None] = succeed(None)
        self.quitting = False

    def line(self, line: str) -> Deferred[None]:
        """
        Queue one input line; the returned Deferred fires once it has run.
        """
        line = line.strip()
        if self.reporter is not None and line:
            self.reporter.input()

        async def run() -> None:
            try:
                await self._run(line)
            except ClientStopped:
                self.say("not done: the client has stopped")
            except ServerError as e:
                self.say(f"error: {e}")
            except Exception as e:
                self.say(f"error: {_describe(Failure(e))}")

        self._queue.addCallback(lambda _: Deferred.fromCoroutine(run()))
        return self.idle()

    def idle(self) -> Deferred[None]:
        """
        Fire once every command queued so far has run.
        """
        done: Deferred[None] = Deferred()

        def fire(result: object) -> None:
            if not done.called:
                done.callback(None)

        self._queue.addBoth(fire)
        return done

    async def _run(self, line: str) -> None:
        if not line:
            return
        if line.startswith("@"):
            to, _, text = line[1:].partition(" ")
            if not to or not text.strip():
                self.say("usage: @USER TEXT")
                return
            answer = await self.client.send_chat(to, text)
            answer = answer if isinstance(answer, dict) else {}
            self.say(f"to {to}: {answer.get('delivered', '?')} (msgid {answer.get('msgid', '?')})")
            return
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "/init" and rest:
            answer = await self.client.init_chat(rest)
            if isinstance(answer, dict) and answer.get("online") is False:
                self.say(f"{rest} is offline; a message will be stored for them")
            else:
                self.say(f"chat with {rest} opened")
        elif word == "/who" and rest:
            self.say(_describe_presence(await self.client.presence(rest)))
        elif word == "/state" and rest and self.reporter is not None:
            state, _, text = rest.partition(" ")
            error = self.reporter.choose(state, text)
            self.say(f"error: {error}" if error else f"state: {state}")
        elif word == "/quit":
            self.quitting = True
            await self.client.logout()
        else:
            for help_line in HELP.splitlines():
                self.say(help_line)


def _shown_state(answer: dict) -> str:
    """``online``, ``away: text``, ... of a presence answer (or a row)."""
    state = answer.get("state")
    if state not in ("available", "away", "busy", "offline"):
        state = "available" if answer.get("online") else "offline"
    word = states.wire(state)
    text = answer.get("text")
    return f"{word}: {text}" if text and state != "offline" else word


def _describe_presence(answer: Any) -> str:
    if not isinstance(answer, dict):
        return str(answer)
    if isinstance(answer.get("members"), list):
        members = ", ".join(
            f"{m.get('name')} ({_shown_state(m)})"
            for m in answer["members"]
            if isinstance(m, dict)
        )
        return f"{answer.get('name')}: {members or 'no members'}"
    return f"{answer.get('name')}: {_shown_state(answer)}"


@implementer(IHalfCloseableProtocol)
class ConsoleLines(LineReceiver):
    """
    Standard input, one command per line. The end of input logs out once
    the queued commands have run (waiting at most C{eof_grace} seconds);
    standard output stays open meanwhile, so frames keep being printed.
    """

    delimiter = b"\n"
    MAX_LENGTH = 65536
    eof_grace = 30.0

    def __init__(self, handler: CommandHandler, reactor: IReactorTime) -> None:
        self.handler = handler
        self.reactor = reactor
        self.closed: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        """
        Queue one command.
        """
        self.handler.line(line.rstrip(b"\r").decode("utf-8", errors="replace"))

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Drop an over-long line instead of closing standard input.
        """
        self.handler.say(f"line too long ({len(line)} bytes), ignored")

    def readConnectionLost(self) -> None:
        """
        End of input: finish the queued commands, then log out.
        """
        if self.handler.quitting:
            return
        self.handler.quitting = True
        done = self.handler.idle()
        timer = self.reactor.callLater(self.eof_grace, lambda: done.called or done.callback(None))

        def logout(_: object) -> Deferred[None]:
            if timer.active():
                timer.cancel()
            return self.handler.client.logout()

        done.addCallback(logout)

    def writeConnectionLost(self) -> None:
        """
        Standard output closed: nothing to do, frames are dropped.
        """

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        Both directions closed.
        """
        if not self.closed.called:
            self.closed.callback(None)


def build_parser() -> argparse.ArgumentParser:
    """
    The command line of ``presence-client``.
    """
    p = argparse.ArgumentParser(
        prog="presence-client",
        description="Log in to a presence server, hold the heartbeat, print frames "
        "as they arrive and send chat messages typed on standard input.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--server", default="http://127.0.0.1:8080", help="base URL (default %(default)s)")
    p.add_argument("--user", help="username (required unless --guest)")
    p.add_argument(
        "--password", help="password (default: $PRESENCE_PASSWORD, else asked on the terminal)"
    )
    p.add_argument("--register", action="store_true", help="register the user first (an existing name is fine)")
    p.add_argument("--guest", action="store_true", help="log in as a guest instead of a user")
    p.add_argument("--mode", choices=("stream", "poll"), default="stream", help="heartbeat mode (default %(default)s)")
    p.add_argument("--no-stdin", action="store_true", help="read no commands; run until interrupted")
    p.add_argument(
        "--unbundled",
        action="store_true",
        help="one 'msg update' frame per presence change instead of the bundled 'msg updates'"
        " frame per window (bundle=1, the default)",
    )
    p.add_argument(
        "--resume-file",
        metavar="PATH",
        help="keep the resume token in this file (mode 0600) so that the next run, after "
        "a crash or a reboot, resumes without the password; a clean exit logs out and "
        "removes it",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=65.0,
        metavar="SECONDS",
        help="replace a heartbeat that received nothing for this long; keep it above the "
        "server's --keepalive plus --poll (default %(default)g)",
    )
    p.add_argument(
        "--state",
        choices=states.STATES,
        default=states.AVAILABLE,
        help="presence state to set once logged in (default %(default)s)",
    )
    p.add_argument("--status", default="", metavar="TEXT", help="status text to set with it (at most 140 characters)")
    p.add_argument(
        "--away-after",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="report away after this long without a command typed on standard input (with "
        "--no-stdin: this long after the start), available again on the next command",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="log diagnostics to standard error (-vv: debug)"
    )
    return p


def _positive_seconds(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return number


def _start_logging(verbosity: int) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = {0: LogLevel.error, 1: LogLevel.info}.get(verbosity, LogLevel.debug)
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


async def _run(reactor: Any, args: argparse.Namespace, password: str | None) -> None:
    output = Output()
    client = HeartbeatClient(
        reactor,
        args.server,
        None if args.guest else args.user,
        None if args.guest else password,
        on_frame=output.frame,
        mode=args.mode,
        bundle=not args.unbundled,
        register=args.register,
        guest=args.guest,
        # With -v the same lines go to the log instead.
        on_status=output.say if args.verbose == 0 else None,
        idle_timeout=args.idle_timeout,
        resume_file=None if args.guest else args.resume_file,
    )
    stopped = client.when_stopped()
    reporter = StateReporter(client, reactor, output.say, args.state, args.status.strip(),
                             args.away_after)

    def before_shutdown() -> Deferred[None]:
        # Ctrl-C or a signal: log out, but do not hold the exit for long.
        d = client.logout()
        d.addTimeout(3, reactor)
        d.addErrback(lambda f: None)
        return d

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    lines: ConsoleLines | None = None
    stdio: Any = None
    if not args.no_stdin:
        from twisted.internet.stdio import StandardIO

        lines = ConsoleLines(CommandHandler(client, output.say, reporter), reactor)
        stdio = StandardIO(lines, reactor=reactor)
        output.transport = stdio
    client.start()
    reporter.start()
    code = 0
    try:
        reason = await stopped
        reporter.stop()
    except Exception as e:
        reporter.stop()
        output.say(f"error: {_describe(Failure(e))}")
        code = 1
    else:
        if reason != "logout":
            # The server ended the session (msg bye ...).
            output.say(f"stopped: {reason}")
            code = 2
            await client.logout()
    if lines is not None and stdio is not None:
        # Let what is buffered for standard output be written first.
        lines.handler.quitting = True
        stdio.loseConnection()
        timer = reactor.callLater(2, lambda: lines.closed.called or lines.closed.callback(None))
        await lines.closed
        if timer.active():
            timer.cancel()
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """
    The ``presence-client`` console script.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.guest and not args.user:
        parser.error("--user is required (or use --guest)")
    error = states.text_error(args.status.strip())
    if error:
        parser.error(f"--status: {error}")
    password = args.password
    if not args.guest and password is None:
        password = os.environ.get("PRESENCE_PASSWORD")
        if password is None and args.resume_file and os.path.exists(args.resume_file):
            pass  # resume with the token; a refused token stops the client
        elif password is None:
            if not sys.stdin.isatty():
                parser.error("--password or $PRESENCE_PASSWORD is needed when stdin is not a terminal")
            password = getpass.getpass(f"password for {args.user}: ")
    _start_logging(args.verbose)
    from twisted.internet.task import react

    # Twisted's stdio makes the descriptors non-blocking, which a terminal
    # shares with the shell: put them back as they were on the way out.
    saved = _fd_flags()
    try:
        react(lambda reactor: Deferred.fromCoroutine(_run(reactor, args, password)))
    finally:
        _restore_fd_flags(saved)


def _fd_flags() -> dict[int, int]:
    import fcntl

    flags = {}
    for fd in (0, 1, 2):
        try:
            flags[fd] = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            pass
    return flags


def _restore_fd_flags(flags: dict[int, int]) -> None:
    import fcntl

    for fd, value in flags.items():
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, value)
        except OSError:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
