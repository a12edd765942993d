"""
The handset emulator, ``presence-handset``: a virtual phone on the SMS /
WAP push simulator.

    presence-handset --smsc http://127.0.0.1:13013 --number +15550001 \\
        --secret-file FILE [--server http://127.0.0.1:8080] [--script FILE] [--no-follow]

The handset's secret (issued on the settings page, or by ``POST
/api/wireless/secret``) comes from ``--secret-file`` or the environment
variable ``PRESENCE_HANDSET_SECRET``, never from the command line (which
``ps`` shows).  Every call to the simulator carries it as ``Authorization:
Bearer``; a push link is opened with ``X-Handset-Proof``, an HMAC of the
link's token keyed by the secret's hash, so the secret never leaves for the
presence server.

It attaches the number to the simulator (a long-poll on
``/handset/<number>/poll``, acknowledging what it printed with ``after=``, so
nothing is lost across a reconnect), prints each SMS and push as it
arrives, opens push URLs (and, with ``--follow-sms-links``, links in SMS)
in its small WML browser (:mod:`presence.wireless.browser`), prints the
card, and as soon as the browser holds a presence session cookie it holds
that session's heartbeat (``GET /jchat``, through
:class:`~presence.client.heartbeat.HeartbeatClient`) and prints its frames like
``presence-client`` does.

Commands, typed or one per line of ``--script`` (``#`` starts a comment);
the script ends with ``quit`` or its last line::

    show                  print the current card again
    N | follow N          activate link, anchor or softkey N
    accept                press the card's accept key
    set NAME VALUE        set a browser variable (a form field)
    reply TEXT            fill the card's first field and press accept
    open URL              open a URL (relative to --server or the page)
    chat NAME             open the chat card with NAME
    login NAME PASSWORD   log in through the WML login card (the rest of the
                          line is the password)
    back                  previous card
    sms TO TEXT           send a text (TO a number, or the shortcode 7777)
    detach | attach       leave or rejoin the network
    wait-for REGEX [S]    wait (default 30 s) until a printed line matches
    sleep S               wait S seconds
    quit                  log out and exit

``wait-for`` looks at every line printed since the previous ``wait-for``
matched, so a line that arrived early still counts.  A ``wait-for`` that
times out ends a script with exit status 1.

Output lines: ``<< SMS from X: text`` (``<< FLASH SMS from X: ...`` for a
class 0 message; notes such as ``[coding: ucs2, 2 parts, port 2948]`` after
the text of anything but a one-part GSM 7-bit text; an 8-bit payload in hex;
the parts put together by their concatenation headers),
``<< PUSH from X: text <href>`` (a Service Indication),
``<< PUSH SL from X: <href> (execute-high)`` (a Service Loading, not opened),
the card between ``--- <url> (<status>)`` and ``---``, heartbeat frames as
``[id] msg ...`` with payload lines indented, notices as ``* ...``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from typing import Any, Callable, List, Optional
from urllib.parse import quote, urlencode, urlsplit

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from presence.cli.client import Output, _fd_flags, _restore_fd_flags, _start_logging
from presence.client.heartbeat import (
    HeartbeatClient, LoginRefused, SessionInfo, TreqHTTP, _describe, format_frame,
)
from presence.wireless.browser import BrowserError, Page, WMLBrowser
from presence.wireless import sms
from presence.wireless.keys import proof_for

log = Logger(namespace="presence.handset")

SESSION_COOKIE = "presence_session"
SECRET_ENV = "PRESENCE_HANDSET_SECRET"
_URL = re.compile(r"https?://\S+")
_LINK = re.compile(r"/wml/t/([A-Za-z0-9_-]{1,64})\Z")
#: a push link's session is limited to the wireless pages: its heartbeat
#: acknowledges and logs out through the wireless calls
_WML_CALLS = {"/ack": "/api/wireless/ack", "/api/logout": "/api/wireless/logout"}


class SessionHeartbeat(HeartbeatClient):
    """A heartbeat for a session the handset already has (from a push link or
    the WML login): it never logs in by itself, and stops when the server
    forgets the session."""

    def __init__(self, reactor: Any, base_url: str, session: SessionInfo, **kw: Any) -> None:
        super().__init__(reactor, base_url, session.username, "", **kw)
        self._given: Optional[SessionInfo] = session

    async def _login(self) -> SessionInfo:
        given, self._given = self._given, None
        if given is None:
            raise LoginRefused(403, "the handset's session has ended: open a new link")
        return given

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        return await super()._call(method, _WML_CALLS.get(path, path), **kw)


class WaitTimeout(Exception):
    pass


class HandsetEmulator:
    """One virtual handset: the simulator link, the browser, the heartbeat."""

    initial_delay = 0.5
    max_delay = 30.0

    def __init__(self, reactor: Any, smsc: str, number: str, server: Optional[str] = None,
                 http: Any = None, out: Optional[Callable[[str], None]] = None,
                 follow: bool = True, follow_sms_links: bool = False, wait: float = 25.0,
                 heartbeat_http: Any = None, secret: str = "") -> None:
        self.reactor = reactor
        self.smsc = smsc.rstrip("/")
        self.number = number
        self.secret = secret
        self.server = server.rstrip("/") if server else None
        self.http = http if http is not None else TreqHTTP(reactor)
        self.heartbeat_http = heartbeat_http
        self._out = out or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
        self.follow_push = follow
        self.follow_sms_links = follow_sms_links
        self.wait = wait
        self.browser = WMLBrowser(self.http)
        self.lock = DeferredLock()
        self.after = 0
        self.attached = False
        self.delay = self.initial_delay
        self._gen = 0
        self._poll_d: Optional[Deferred] = None
        self._retry: Any = None
        self.heartbeat: Optional[SessionHeartbeat] = None
        self.session_id: Optional[str] = None
        self.lines: List[str] = []
        self._cursor = 0
        self._waiters: List[tuple] = []
        self.inbox: List[dict] = []

    # -- output and waiting ------------------------------------------------------

    def say(self, text: str) -> None:
        for line in text.split("\n"):
            self.lines.append(line)
            try:
                self._out(line)
            except Exception:
                pass
        del self.lines[: max(0, len(self.lines) - 5000)]
        self._cursor = min(self._cursor, len(self.lines))
        self._check_waiters()

    def _check_waiters(self) -> None:
        for waiter in list(self._waiters):
            pattern, d, timer = waiter
            for i in range(self._cursor, len(self.lines)):
                if pattern.search(self.lines[i]):
                    self._cursor = i + 1
                    self._waiters.remove(waiter)
                    if timer.active():
                        timer.cancel()
                    d.callback(self.lines[i])
                    break

    def wait_for(self, regex: str, timeout: float = 30.0) -> Deferred:
        """Fire with the first line printed since the last match that
        matches ``regex``; fail with :class:`WaitTimeout` after ``timeout``."""
        pattern = re.compile(regex)
        d: Deferred = Deferred()

        def expire() -> None:
            for waiter in list(self._waiters):
                if waiter[1] is d:
                    self._waiters.remove(waiter)
            d.errback(WaitTimeout(f"nothing matched {regex!r} within {timeout:g}s"))

        timer = self.reactor.callLater(timeout, expire)
        self._waiters.append((pattern, d, timer))
        self._check_waiters()
        return d

    # -- the simulator link ----------------------------------------------------------

    def _handset_url(self, what: str) -> str:
        return f"{self.smsc}/handset/{quote(self.number, safe='+')}/{what}"

    def _auth(self) -> dict:
        return {"Authorization": [f"Bearer {self.secret}"]}

    def attach(self) -> None:
        if self.attached:
            return
        self.attached = True
        self._gen += 1
        self.say(f"* attaching {self.number} to {self.smsc}")
        self._poll(self._gen)

    def _poll(self, gen: int) -> None:
        if gen != self._gen or not self.attached:
            return
        self._retry = None
        url = self._handset_url("poll") + "?" + urlencode({"after": self.after,
                                                           "wait": f"{self.wait:g}"})
        d = self.http.request("GET", url, headers=self._auth())
        d.addTimeout(self.wait + 15, self.reactor)
        self._poll_d = d
        d.addCallback(lambda response: self._answer(gen, response))
        d.addErrback(lambda f: self._failed(gen, f))

    async def _content(self, response: Any) -> Any:
        body = await self.http.content(response)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {"error": body[:200].decode("utf-8", "replace")}

    def _answer(self, gen: int, response: Any) -> Deferred:
        return Deferred.fromCoroutine(self._answered(gen, response))

    async def _answered(self, gen: int, response: Any) -> None:
        body = await self._content(response)
        if gen != self._gen or not self.attached:
            return
        if response.code == 403:
            self.attached = False
            self.say(f"* the network refused {self.number}: {body.get('error', body)}")
            return
        if response.code != 200:
            raise RuntimeError(f"poll answered {response.code}: {body.get('error', body)}")
        self.delay = self.initial_delay
        for message in body.get("messages", []):
            seq = int(message.get("seq", 0))
            if seq <= self.after:
                continue  # handed out again after a reconnect: seen already
            self.after = seq
            await self._arrived(message)
        self._poll(gen)

    def _failed(self, gen: int, failure: Failure) -> None:
        if gen != self._gen or not self.attached:
            return
        self.say(f"* network: {_describe(failure)}; retrying in {self.delay:g}s")
        self._retry = self.reactor.callLater(self.delay, self._poll, gen)
        self.delay = min(self.delay * 2, self.max_delay)

    async def _arrived(self, message: dict) -> None:
        self.inbox.append(message)
        sender = message.get("from", "?")
        if message.get("type") == "push" and message.get("content") == "sl":
            # Service Loading: shown, not loaded (the emulator opens only the
            # links a Service Indication or the user asks for)
            self.say(f"<< PUSH SL from {sender}: <{message.get('href', '')}>"
                     f" ({message.get('action', '')})")
            return
        if message.get("type") == "push":
            action = message.get("action", "")
            if action == "delete":
                self.say(f"<< PUSH from {sender}: delete {message.get('si_id', '')}")
                return
            href = message.get("href", "")
            self.say(f"<< PUSH from {sender}: {message.get('text', '')} <{href}>")
            if self.follow_push and href:
                self._background(self.open_link(href))
        else:
            self.say(sms_line(message))
            links = _URL.findall(message.get("text", ""))
            if links and self.follow_sms_links:
                self._background(self.open_link(links[0]))

    def _background(self, d: Any) -> None:
        if not isinstance(d, Deferred):
            d = Deferred.fromCoroutine(d)
        d.addErrback(lambda f: self.say(f"* error: {_describe(f)}"))

    def _stop_polling(self) -> None:
        """No more polls: the held one is cancelled, a pending retry too."""
        self.attached = False
        self._gen += 1
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._poll_d is not None and not self._poll_d.called:
            self._poll_d.cancel()

    async def detach(self) -> None:
        self._stop_polling()
        try:
            response = await self.http.request("POST", self._handset_url("detach"),
                                               headers=self._auth())
            await self.http.content(response)
        except Exception as e:
            self.say(f"* detach: {_describe(Failure(e))}")
        self.say(f"* detached {self.number}")

    async def send_sms(self, to: str, text: str) -> None:
        response = await self.http.request("POST", self._handset_url("send"),
                                           data={"to": to, "text": text},
                                           headers=self._auth())
        body = await self._content(response)
        if response.code == 202:
            self.say(f">> SMS to {to}: {body.get('status', 'accepted')}")
        else:
            self.say(f"* SMS to {to} refused ({response.code}): {body.get('error', body)}")

    # -- the browser ----------------------------------------------------------------

    def _show(self, page: Page) -> None:
        self.say(f"--- {page.url} ({page.status})\n{page.text}\n---")

    def _absolute(self, url: str) -> str:
        if urlsplit(url).scheme:
            return url
        base = self.server
        if base is None and self.browser.current is not None:
            return url  # relative to the current page
        if base is None:
            raise BrowserError("a relative URL needs --server or an open page")
        return base + ("" if url.startswith("/") else "/") + url

    async def _browse(self, action: Callable[[], Any]) -> Page:
        await self.lock.acquire()
        try:
            page = await action()
            self._show(page)
            await self._check_session(page.url)
            return page
        finally:
            self.lock.release()

    def open(self, url: str) -> Deferred:
        return Deferred.fromCoroutine(self._browse(lambda: self.browser.open(self._absolute(url))))

    def open_link(self, url: str) -> Deferred:
        """Open a link that arrived on this handset: a push link
        (``/wml/t/<token>``) goes with this handset's proof of it."""
        target = self._absolute(url)
        match = _LINK.search(urlsplit(target).path)
        headers = None
        if match is not None and self.secret:
            headers = {"X-Handset-Proof": [proof_for(self.secret, match.group(1))]}
        return Deferred.fromCoroutine(self._browse(
            lambda: self.browser.open(target, headers=headers)))

    def follow(self, n: int) -> Deferred:
        return Deferred.fromCoroutine(self._browse(lambda: self.browser.follow(n)))

    def accept(self) -> Deferred:
        return Deferred.fromCoroutine(self._browse(self.browser.accept))

    def reply(self, text: str) -> Deferred:
        fields = self.browser.inputs()
        self.browser.set(fields[0] if fields else "msg", text)
        return self.accept()

    def back(self) -> None:
        self._show(self.browser.back())

    async def login(self, name: str, password: str) -> None:
        await self.open("/wml/login")
        self.browser.set("u", name)
        self.browser.set("pw", password)
        await self.accept()

    # -- the heartbeat -----------------------------------------------------------------

    def _origin(self, url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    async def _check_session(self, url: str) -> None:
        if not url.startswith("http"):
            return
        sid = self.browser.cookie(url, SESSION_COOKIE)
        if sid == self.session_id:
            return
        if self.heartbeat is not None:
            self.heartbeat.stop("replaced")
            self.heartbeat = None
        self.session_id = sid
        if not sid:
            return
        base = self._origin(url)
        response = await self.http.request(
            "GET", f"{base}/api/wireless/session",
            headers={"Cookie": [f"{SESSION_COOKIE}={sid}"]})
        body = await self._content(response)
        if response.code != 200 or not body.get("user"):
            self.say(f"* no session behind the cookie ({response.code})")
            return
        info = SessionInfo(username=body["user"], session=sid, host_box=body.get("host_box"))
        self.say(f"* holding the heartbeat of {info.username} on {base}")
        self.heartbeat = SessionHeartbeat(
            self.reactor, base, info, http=self.heartbeat_http, bundle=True,
            on_frame=lambda i, text: self.say(format_frame(i, text)),
            on_status=lambda text: self.say(f"* heartbeat: {text}"))
        self.heartbeat.start()

    # -- commands -------------------------------------------------------------------

    async def command(self, line: str) -> bool:
        """Run one command; False once it was ``quit``."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        word, _, rest = line.partition(" ")
        word = word.lower()
        rest = rest.strip()
        if word.isdigit():
            word, rest = "follow", word
        if word == "quit":
            await self.stop()
            return False
        if word == "show":
            self._show(self.browser.page())
        elif word == "follow" and rest.isdigit():
            await self.follow(int(rest))
        elif word == "accept":
            await self.accept()
        elif word == "set" and rest:
            name, _, value = rest.partition(" ")
            self.browser.set(name, value)
        elif word == "reply" and rest:
            await self.reply(rest)
        elif word == "open" and rest:
            await self.open_link(rest)
        elif word == "chat" and rest:
            await self.open("/wml/chat?" + urlencode({"with": rest}))
        elif word == "login" and " " in rest:
            name, _, password = rest.partition(" ")
            await self.login(name, password)
        elif word == "back":
            self.back()
        elif word == "sms" and len(rest.split(" ", 1)) == 2:
            to, text = rest.split(" ", 1)
            await self.send_sms(to, text)
        elif word == "detach":
            await self.detach()
        elif word == "attach":
            self.attach()
        elif word == "wait-for" and rest:
            args = shlex.split(rest)
            timeout = float(args[1]) if len(args) > 1 else 30.0
            await self.wait_for(args[0], timeout)
        elif word == "sleep" and rest:
            await deferLater(self.reactor, float(rest), lambda: None)
        else:
            self.say("* commands: show, N, accept, set NAME VALUE, reply TEXT, open URL,"
                     " chat NAME, login NAME PASSWORD, back, sms TO TEXT, detach, attach,"
                     " wait-for REGEX [S], sleep S, quit")
        return True

    async def stop(self) -> None:
        self._stop_polling()
        for _, d, timer in self._waiters:
            if timer.active():
                timer.cancel()
        self._waiters = []
        if self.heartbeat is not None:
            heartbeat, self.heartbeat = self.heartbeat, None
            await heartbeat.logout()
        close = getattr(self.http, "close", None)
        if close is not None:
            try:
                await close()
            except Exception:
                pass


# -- the console ----------------------------------------------------------------------


class _Lines(LineReceiver):
    delimiter = b"\n"

    def __init__(self, run: Callable[[str], Deferred]) -> None:
        self.run = run
        self.closed: Deferred = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.run(line.rstrip(b"\r").decode("utf-8", "replace"))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.closed.called:
            self.closed.callback(None)


def sms_line(message: dict) -> str:
    """How the handset shows an SMS (see the module's output lines)."""
    coding = message.get("coding", "gsm7")
    segments = message.get("segments")
    complete = True
    payload: Any
    if segments:
        payload, complete = sms.reassemble(segments)
    elif coding == "8bit":
        payload = bytes.fromhex(message.get("data", ""))
    else:
        payload = message.get("text", "")
    body = payload.hex() if isinstance(payload, bytes) else payload
    notes = []
    if coding != "gsm7":
        notes.append(f"coding: {coding}")
    if len(segments or ()) > 1:
        notes.append(f"{len(segments)} parts" + ("" if complete else ", incomplete"))
    ports = message.get("ports")
    if ports:
        notes.append(f"port {ports.get('dst')}")
    mclass = message.get("mclass")
    if mclass not in (None, 0):
        notes.append(f"class {mclass}")
    kind = "FLASH SMS" if message.get("flash") else "SMS"
    line = f"<< {kind} from {message.get('from', '?')}: {body}"
    return line + (f"  [{', '.join(notes)}]" if notes else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="presence-handset",
        description="A virtual handset on the presence server's SMS / WAP push simulator:"
        " prints what arrives, opens push links in a WML browser, holds the heartbeat and"
        " sends replies typed on standard input or read from a script.",
        epilog=__doc__.split("Commands,", 1)[1].split("Output lines", 1)[0].join(
            ["Commands,", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smsc", default="http://127.0.0.1:13013",
                   help="the simulator's URL (default %(default)s)")
    p.add_argument("--number", required=True, help="this handset's number, e.g. +15550001")
    p.add_argument("--secret-file", metavar="FILE",
                   help="a file holding this handset's secret (from the settings page);"
                   f" else the environment variable {SECRET_ENV}")
    p.add_argument("--server", help="the presence server's URL, for relative URLs and login")
    p.add_argument("--script", help="run the commands of this file, then exit")
    p.add_argument("--no-follow", action="store_true", help="do not open push links by itself")
    p.add_argument("--follow-sms-links", action="store_true",
                   help="also open the first link of each SMS")
    p.add_argument("--wait", type=float, default=25.0, metavar="SECONDS",
                   help="long-poll time of the simulator link (default %(default)g)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log diagnostics to standard error")
    return p


def read_secret(path: Optional[str]) -> str:
    """The handset secret from ``path`` (its first line) or ``$PRESENCE_HANDSET_SECRET``."""
    import os

    if path:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"--secret-file: {e}")
    else:
        secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise SystemExit(f"give the handset's secret: --secret-file FILE or {SECRET_ENV}"
                         " (the settings page shows it when you save your handset number)")
    return secret


async def _run(reactor: Any, args: argparse.Namespace) -> None:
    from presence.wireless.numbers import normalize

    number = normalize(args.number)
    if number is None:
        raise SystemExit("--number must be '+' and 3-15 digits")
    secret = read_secret(args.secret_file)
    output = Output()
    emulator = HandsetEmulator(reactor, args.smsc, number, server=args.server, secret=secret,
                               out=lambda line: output.out(line + "\n"),
                               follow=not args.no_follow,
                               follow_sms_links=args.follow_sms_links, wait=args.wait)

    def before_shutdown() -> Deferred:
        d = Deferred.fromCoroutine(emulator.stop())
        d.addTimeout(3, reactor)
        d.addErrback(lambda f: None)
        return d

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    emulator.attach()
    code = 0
    if args.script:
        try:
            with open(args.script, encoding="utf-8") as f:
                commands = f.read().splitlines()
        except OSError as e:
            raise SystemExit(f"--script: {e}")
        for line in commands:
            try:
                if not await emulator.command(line):
                    break
            except WaitTimeout as e:
                emulator.say(f"* script failed: {e}")
                code = 1
                break
            except Exception as e:
                emulator.say(f"* error in {line.strip()[:60]!r}: {_describe(Failure(e))}")
        await emulator.stop()
        if code:
            raise SystemExit(code)
        return
    from twisted.internet.stdio import StandardIO

    done: Deferred = Deferred()
    queue: List[Deferred] = [succeed(None)]

    def run(line: str) -> Deferred:
        async def one(_: Any) -> None:
            if done.called:
                return
            try:
                if not await emulator.command(line):
                    done.callback(None)
            except Exception as e:
                emulator.say(f"* error: {_describe(Failure(e))}")

        queue[0] = queue[0].addCallback(lambda r: Deferred.fromCoroutine(one(r)))
        return queue[0]

    lines = _Lines(run)
    stdio = StandardIO(lines, reactor=reactor)
    output.transport = stdio
    lines.closed.addCallback(lambda _: done.called or done.callback(None))
    await done
    await emulator.stop()
    stdio.loseConnection()


def main(argv: Optional[List[str]] = None) -> None:
    """The ``presence-handset`` console script."""
    args = build_parser().parse_args(argv)
    _start_logging(args.verbose)
    from twisted.internet.task import react

    saved = _fd_flags()
    try:
        react(lambda reactor: Deferred.fromCoroutine(_run(reactor, args)))
    finally:
        _restore_fd_flags(saved)


if __name__ == "__main__":  # pragma: no cover
    main()
