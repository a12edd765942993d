"""Wiring of the wireless front-end into ``twistd presence``: its options,
the simulator's listener, the pages and the gateway.

Options (see docs/operations.md and docs/wireless.md):

``--smsc ENDPOINT``          the simulator's operator and handset API
                             (``tcp:13013:interface=127.0.0.1``; ``none``
                             turns wireless off)
``--smsc-user NAME``         operator API user name (``presence``)
``--smsc-password TEXT``     its password [default: a random one, written to
                             ``<--data>/smsc-password`` (mode 0600), never
                             logged]
``--dlr-allow HOST[,HOST]``  hosts a ``dlr-url`` may call (default: none but
                             this server's own callback)
``--smsc-validity SECONDS``  validity period of a message (``60``)
``--wireless-via push|sms``  how a handset is texted (``push``)
``--wml-link-ttl SECONDS``   how long a push link may be used (``300``)
``--wml-base URL``           this server as handsets reach it, the base of
                             push links [default: ``http://`` + the
                             ``--http`` address, ``--domain`` for a wildcard]
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from presence.endpoint_option import check_server_endpoint
from presence.service import PresenceService
from presence.web.http import PresenceSite
from presence.wireless.dlr import DlrPolicy
from presence.wireless.gateway import LINK_TTL, WirelessGateway
from presence.wireless.keys import FILENAME as KEYS_FILE, HandsetKeys
from presence.wireless.operator import OperatorAPI
from presence.wireless.simulator import DEFAULT_VALIDITY, Simulator
from presence.wireless.web import WirelessWeb, mount

log = Logger()
DEFAULT_SMSC = "tcp:13013:interface=127.0.0.1"
PASSWORD_FILE = "smsc-password"
#: seconds a delivery report fetch may take (connect, answer and body)
DLR_TIMEOUT = 10.0


def _validity(value: str) -> float:
    number = float(value)
    if not 0 < number <= 7 * 86400:
        raise ValueError("must be 0-604800 seconds")
    return number


_validity.coerceDoc = "Seconds, more than 0."  # type: ignore[attr-defined]

OPTIONS = [
    ["smsc", None, DEFAULT_SMSC,
     "Endpoint of the SMS / WAP push simulator's operator and handset API; 'none' turns"
     " it off. Loopback by default: open it (e.g. tcp:13013) only on a test bench."],
    ["smsc-user", None, "presence", "User name of the simulator's operator API."],
    ["smsc-password", None, None,
     "Password of the simulator's operator API [default: a random one, kept in"
     " <--data>/smsc-password (mode 0600); the log names the file, never the password]."],
    ["dlr-allow", None, "",
     "Comma-separated hosts a delivery-report URL (dlr-url) may name [default: none;"
     " this server's own report callback is always allowed]."],
    ["smsc-validity", None, DEFAULT_VALIDITY,
     "Seconds a message waits for its handset before its delivery report says failed.",
     _validity],
    ["wireless-via", None, "push", "How a handset is texted: push (WAP push) or sms."],
    ["wml-link-ttl", None, LINK_TTL,
     "Seconds a push link may be used after it was sent (once, by the handset it went to).",
     _validity],
    ["wml-base", None, None,
     "Base URL of this server as handsets reach it, for push links [default: http:// and"
     " the --http address, or --domain when it listens on all interfaces]."],
]


def check_options(options: Any) -> None:
    """The wireless part of ``Options.postOptions``."""
    smsc = options["smsc"]
    if smsc != "none":
        check_server_endpoint("smsc", smsc, also=" (or none)")
    if options["wireless-via"] not in ("push", "sms"):
        raise usage.UsageError("--wireless-via must be push or sms")
    base = options["wml-base"]
    if base is not None and not (base.startswith("http://") or base.startswith("https://")):
        raise usage.UsageError("--wml-base must be an http:// or https:// URL")
    if not options["smsc-user"]:
        raise usage.UsageError("--smsc-user must not be empty")
    if options["smsc-password"] is not None and not options["smsc-password"]:
        raise usage.UsageError("--smsc-password must not be empty")
    for host in (options["dlr-allow"] or "").split(","):
        host = host.strip()
        if host and (len(host) > 253 or any(c in host for c in "/@?#% ")):
            raise usage.UsageError(f"--dlr-allow: {host[:64]!r} is not a host name")


def operator_password(options: Any) -> str:
    """``--smsc-password``, or the random one kept in ``<--data>/smsc-password``
    (made on first use, mode 0600).  Only the file's path is ever logged."""
    given = options.get("smsc-password")
    if given:
        return given
    data = options.get("data")
    if not data:
        return secrets.token_urlsafe(24)  # in memory only (tests)
    path = os.path.join(data, PASSWORD_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            kept = f.read().strip()
        if kept:
            log.info("the simulator's operator password is in {path}", path=path)
            return kept
    except FileNotFoundError:
        pass
    password = secrets.token_urlsafe(24)
    os.makedirs(data, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    log.info("a random operator password for the simulator was written to {path}",
             path=path)
    return password


def _host_port(address: str) -> Optional[tuple]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host, int(port)


def _url_host(host: str, wildcard: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = wildcard
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host


class WirelessFrontEnd(Service):
    """The simulator, the gateway and the WML pages of one server."""

    def __init__(self, options: Any, service: PresenceService, reactor: Any,
                 http: Any = None) -> None:
        self.options = options
        self.reactor = reactor
        self.smsc = options.get("smsc", "none") or "none"
        self.enabled = self.smsc != "none"
        self.operator_user = options.get("smsc-user", "presence")
        # the gateway's own account on the simulator: random, in memory only
        own = (f"presence-gateway-{secrets.token_hex(4)}", secrets.token_urlsafe(24))
        validity = options.get("smsc-validity", DEFAULT_VALIDITY)
        if http is None:
            from presence.client.heartbeat import TreqHTTP
            http = TreqHTTP(reactor)
        self.http = http
        data = options.get("data")
        keys = HandsetKeys(os.path.join(data, KEYS_FILE) if data else None)
        self.gateway = WirelessGateway(service, http, own[0], own[1],
                                       via=options.get("wireless-via", "push"),
                                       validity=validity, keys=keys,
                                       link_ttl=options.get("wml-link-ttl", LINK_TTL))
        self.web = WirelessWeb(service, self.gateway)
        self.dlr_policy = DlrPolicy((options.get("dlr-allow") or "").split(","))
        self.simulator: Optional[Simulator] = None
        self.site: Optional[PresenceSite] = None
        if self.enabled:
            self.simulator = Simulator(reactor, validity, fetch=self._fetch,
                                       dlr_policy=self.dlr_policy)
            self.simulator.post = self._post
            self.simulator.on_mo = self.gateway.mobile_text
            # the operator's password is read or made at start, as the user
            # the server runs as (twistd -u), not as whoever built the tree
            self.operator = OperatorAPI(self.simulator, {},
                                        handset_auth=self.gateway.check_handset,
                                        dlr_policy=self.dlr_policy, trusted=own)
            self.site = PresenceSite(self.operator.app.resource(), reactor=reactor)

    def endpoint(self) -> Any:
        return endpoints.serverFromString(self.reactor, self.smsc)

    async def _fetch(self, url: str) -> int:
        """One delivery report: no redirects (a redirect could lead past the
        allow-list), at most ``DLR_TIMEOUT`` seconds for all of it."""
        response = await self.http.request("GET", url, timeout=DLR_TIMEOUT,
                                           allow_redirects=False)
        body = self.http.content(response)
        body.addTimeout(DLR_TIMEOUT, self.reactor)
        await body
        return response.code

    async def _post(self, url: str, body: bytes, content_type: str) -> int:
        """One PAP result notification, under the rules of :meth:`_fetch`."""
        response = await self.http.request("POST", url, data=body, timeout=DLR_TIMEOUT,
                                           allow_redirects=False,
                                           headers={"Content-Type": [content_type]})
        answer = self.http.content(response)
        answer.addTimeout(DLR_TIMEOUT, self.reactor)
        await answer
        return response.code

    def mount(self, root: Any) -> None:
        mount(root, self.web)

    def ready(self, addresses: dict) -> None:
        """Every listener is up: point the gateway at the operator and at
        this server."""
        if not self.enabled:
            return
        http = _host_port(addresses.get("http", ""))
        smsc = _host_port(addresses.get("smsc", ""))
        if http is None or smsc is None:
            log.warn("wireless texting is off: --http and --smsc must be TCP endpoints")
            return
        domain = self.options.get("domain", "localhost")
        public = self.options.get("wml-base") or (
            f"http://{_url_host(http[0], domain)}:{http[1]}")
        callback_host = _url_host(http[0], "127.0.0.1")
        callback = f"http://{callback_host}:{http[1]}"
        self.dlr_policy.allow_own(callback_host, http[1])
        operator = f"http://{_url_host(smsc[0], '127.0.0.1')}:{smsc[1]}"
        self.gateway.configure(operator, callback, public)

    def startService(self) -> None:
        super().startService()
        if self.enabled:
            self.operator.credentials[self.operator_user] = operator_password(self.options)

    def stopService(self) -> Any:
        super().stopService()
        if self.simulator is not None:
            self.simulator.stop()
        close = getattr(self.http, "close", None)
        if close is not None:
            return close()
        return None
