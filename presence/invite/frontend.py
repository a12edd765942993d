"""Wiring of the invitations into ``twistd presence``: options, the store,
the outbox and its smarthost, the routes.

Options (docs/operations.md, docs/invites.md):

``--smtp ENDPOINT``          the smarthost, a Twisted client endpoint string
                             (``tcp:host=smtp.example.org:port=587``); unset:
                             mails are written as ``.eml`` files to
                             ``<--data>/outbox/``
``--smtp-from ADDRESS``      the envelope and ``From`` address
                             [default: ``presence@<--domain>``]
``--smtp-user NAME``         AUTH with the smarthost (then over TLS only)
``--smtp-password-file F``   its password, read from a file (never logged)
``--smtp-retry SECONDS``     first wait before a mail is tried again (``30``;
                             doubling, at most an hour apart)
``--invites-per-day N``      invitations one user may send a day (``50``)
``--invite-ttl DURATION``    how long an invitation's link and badge work
                             (``30d``; seconds, or a number with s/m/h/d)
``--invite-base URL``        this server as the invited reach it, the base of
                             the links in the mail [default: ``http://`` and
                             ``--domain`` with the ``--http`` port]
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from presence.errors import BadRequest
from presence.invite.mail import check_address
from presence.invite.outbox import BACKOFF_FIRST, BACKOFF_MAX, Outbox, smtp_sender
from presence.invite.service import DEFAULT_PER_DAY, DEFAULT_TTL, Invitations
from presence.invite.store import InviteStore
from presence.invite.web import InviteWeb

log = Logger()
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str) -> float:
    match = _DURATION.match(value.strip().lower())
    if not match:
        raise ValueError(f"not a duration: {value!r} (seconds, or e.g. 12h, 30d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 60 <= seconds <= 366 * 86400:
        raise ValueError("must be from one minute to a year")
    return seconds


duration.coerceDoc = ""  # type: ignore[attr-defined]  (the option's help says it)


def _per_day(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 100000:
        raise ValueError("must be 1 to 100000")
    return number


def _retry(value: str) -> float:
    number = float(value)
    if not 0.1 <= number <= BACKOFF_MAX:
        raise ValueError(f"must be from 0.1 to {BACKOFF_MAX:.0f} seconds")
    return number


OPTIONS = [
    ["smtp", None, None,
     "Send invitation mails to this smarthost, a Twisted client endpoint string (e.g."
     " tcp:host=smtp.example.org:port=587); STARTTLS whenever it offers it. Unset: the"
     " mails are written as .eml files to <--data>/outbox/."],
    ["smtp-from", None, None,
     "Envelope and From address of invitation mails [default: presence@<--domain>]."],
    ["smtp-user", None, None,
     "Log in to the smarthost (SMTP AUTH) as this user; the mail is then sent only over"
     " TLS. Needs --smtp-password-file."],
    ["smtp-password-file", None, None,
     "File holding the smarthost password (first line); never logged."],
    ["smtp-retry", None, BACKOFF_FIRST,
     "Seconds before a mail the smarthost did not take is tried again; each further"
     " wait doubles, up to an hour.", _retry],
    ["invites-per-day", None, DEFAULT_PER_DAY,
     "Invitations one user may send in a day (429 past it).", _per_day],
    ["invite-ttl", None, "30d",
     "How long an invitation's link and badge work after it was sent: seconds, or a"
     " number with s, m, h or d (e.g. 30d).", duration],
    ["invite-base", None, None,
     "Base URL of this server as invited people reach it, for the links and the badge"
     " in the mail [default: http:// and --domain with the port of --http]."],
]


def check_options(options: Any) -> None:
    """The invitations' part of ``Options.postOptions``."""
    if isinstance(options["invite-ttl"], str):
        try:
            options["invite-ttl"] = duration(options["invite-ttl"])
        except ValueError as e:
            raise usage.UsageError(f"--invite-ttl: {e}")
    smtp = options["smtp"]
    if smtp is not None:
        from twisted.internet import endpoints
        from twisted.internet.testing import MemoryReactor
        try:
            endpoints.clientFromString(MemoryReactor(), smtp)
        except Exception as e:
            raise usage.UsageError(f"--smtp: not a client endpoint string ({e}); e.g."
                                   " tcp:host=smtp.example.org:port=587")
    sender = options["smtp-from"]
    if sender is not None:
        try:
            options["smtp-from"] = check_address(sender)
        except BadRequest:
            raise usage.UsageError("--smtp-from must be one e-mail address,"
                                   " e.g. presence@example.org")
    if (options["smtp-user"] is None) != (options["smtp-password-file"] is None):
        raise usage.UsageError("--smtp-user and --smtp-password-file go together")
    if options["smtp-user"] is not None and smtp is None:
        raise usage.UsageError("--smtp-user needs --smtp")
    if smtp is not None and smtp.split(":", 1)[0].lower() == "ssl":
        raise usage.UsageError("--smtp: an ssl: endpoint does not check the smarthost's"
                               " certificate; use tls:host=HOST:port=465 (or tcp: with"
                               " STARTTLS)")
    path = options["smtp-password-file"]
    if path is not None and not os.access(path, os.R_OK):
        raise usage.UsageError(f"--smtp-password-file: cannot read {path}")
    base = options["invite-base"]
    if base is not None:
        if not re.match(r"https?://[^/?#\s]+(/[^?#\s]*)?\Z", base):
            raise usage.UsageError("--invite-base must be an http:// or https:// URL")
        options["invite-base"] = base.rstrip("/")


def _seconds(value: Any) -> float:
    """``--invite-ttl`` as seconds (usage.Options passes a default through
    as it is written)."""
    return duration(value) if isinstance(value, str) else float(value)


def _password(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()


class InviteFrontEnd(Service):
    """The invitations of one server: store, outbox, routes."""

    def __init__(self, options: Any, service: Any, pages: Any, reactor: Any) -> None:
        self.options = options
        self.reactor = reactor
        data = options.get("data") or "."
        domain = options.get("domain", "localhost")
        self.store = InviteStore(os.path.join(data, "invites.sqlite3"))
        self.smtp = options.get("smtp")
        sender = options.get("smtp-from") or f"presence@{domain}"
        send = None
        if self.smtp:
            send = smtp_sender(reactor, self.smtp, sender, options.get("smtp-user"),
                               _password(options.get("smtp-password-file")))
        self.outbox = Outbox(os.path.join(data, "outbox"), self.store, reactor, send,
                             first=options.get("smtp-retry", BACKOFF_FIRST))
        self.invitations = Invitations(
            service, self.store, self.outbox, sender,
            ttl=_seconds(options.get("invite-ttl", DEFAULT_TTL)),
            per_day=options.get("invites-per-day", DEFAULT_PER_DAY), site=domain,
            base=options.get("invite-base") or f"http://{domain}:8080")
        self.web = InviteWeb(self.invitations, pages)
        pages.invitations = self.invitations

    def mount(self, root: Any) -> None:
        self.web.mount(root)

    def ready(self, addresses: dict) -> None:
        """Every listener is up: the links' base, unless --invite-base gave it."""
        if self.options.get("invite-base"):
            return
        host, _, port = addresses.get("http", "").rpartition(":")
        if port.isdigit():
            domain = self.options.get("domain", "localhost")
            self.invitations.base = f"http://{domain}:{port}"

    def startService(self) -> None:
        super().startService()
        self.store.start(self.reactor)
        self.outbox.prepare()
        d = defer.ensureDeferred(self.outbox.start())
        d.addErrback(lambda f: log.failure("loading the outbox failed", f))
        where = f"smarthost {self.smtp}" if self.smtp else f"files in {self.outbox.folder}"
        log.info("invitation mails go to {where}", where=where)

    def stopService(self) -> Any:
        super().stopService()
        self.outbox.stop()
        self.store.stop()
        return None
