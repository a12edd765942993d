"""Delivery reports the way Kannel makes them.

A submitter asks for reports with ``dlr-mask`` (a bit set of the events it
wants) and ``dlr-url`` (a URL template); for each event in the mask the
simulator fetches the template with its escapes filled in (each value
URL-encoded).  Event values (``%d``):

====  ==========================  =====================================
 1    delivered to phone          the handset acknowledged the message
 2    non-delivered to phone      unknown subscriber, or validity expired
 4    queued on SMSC              the handset was not attached at submit
 8    delivered to SMSC           accepted by the simulator (``ACK/``)
16    non-delivered to SMSC       (never sent: refusals are HTTP errors)
====  ==========================  =====================================

Which URLs are called at all is :class:`DlrPolicy`'s: the operator's
allow-list, and this server's own callback.

Escapes (as in Kannel's delivery reports, where sender and receiver are
those of the report: ``%p`` is the handset, ``%P`` the original sender):
``%d`` event value, ``%p``/``%q`` handset number, ``%P``/``%Q`` original
sender, ``%T`` Unix time of the event, ``%t`` the same as
``YYYY-MM-DD HH:MM`` (UTC), ``%A`` the SMSC's report text (SMPP receipt
style, e.g. ``id:… sub:001 dlvrd:001 submit date:… done date:…
stat:DELIVRD err:000 text:…``), ``%a`` and ``%b`` the same text, ``%I`` and
``%F`` the message id, ``%i`` the SMSC id (``sim``), ``%n`` the sendsms
user, ``%c`` coding (0 GSM-7, 2 UCS-2), ``%k`` the first word of the report
text, ``%%`` a percent sign.  Any other ``%x`` is left as it is.
"""

from __future__ import annotations

import time as _time
from typing import Dict, Iterable, Set, Tuple
from urllib.parse import quote, urlsplit

DELIVERED = 1
UNDELIVERED = 2
QUEUED = 4
SMSC_ACK = 8
SMSC_REJECT = 16
ALL_EVENTS = 31

SMSC_ID = "sim"


def valid_mask(mask: int) -> bool:
    """Kannel accepts -1 (unset) to 63."""
    return -1 <= mask <= 63


def receipt(msg_id: str, event: int, submitted: float, done: float, text: str,
            error: int = 0) -> str:
    """The SMSC's report text (``%A``), in the SMPP delivery-receipt style."""
    if event == SMSC_ACK:
        return "ACK/"
    if event == QUEUED:
        return "Buffered/"
    stat = {DELIVERED: "DELIVRD", UNDELIVERED: "EXPIRED" if error == 0 else "UNDELIV"}.get(
        event, "UNKNOWN")
    delivered = "001" if event == DELIVERED else "000"

    def stamp(t: float) -> str:
        return _time.strftime("%y%m%d%H%M", _time.gmtime(t))

    return (f"id:{msg_id} sub:001 dlvrd:{delivered} submit date:{stamp(submitted)}"
            f" done date:{stamp(done)} stat:{stat} err:{error:03d} text:{text[:20]}")


def expand(template: str, values: Dict[str, str]) -> str:
    """Fill Kannel escapes in ``template``; ``values`` maps the escape letter
    to its (unencoded) text."""
    out = []
    i = 0
    n = len(template)
    while i < n:
        c = template[i]
        if c == "%" and i + 1 < n:
            key = template[i + 1]
            if key == "%":
                out.append("%")
            elif key in values:
                out.append(quote(values[key], safe=""))
            else:
                out.append(template[i:i + 2])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def values_for(event: int, handset: str, sender: str, when: float, report: str,
               msg_id: str, user: str, coding: str) -> Dict[str, str]:
    return {
        "d": str(event),
        "p": handset, "q": handset,
        "P": sender, "Q": sender,
        "T": str(int(when)),
        "t": _time.strftime("%Y-%m-%d %H:%M", _time.gmtime(when)),
        "A": report, "a": report, "b": report,
        "k": report.split(" ", 1)[0] if report else "",
        "I": msg_id, "F": msg_id,
        "i": SMSC_ID,
        "n": user,
        "c": "0" if coding == "gsm7" else "2",
    }


class DlrRefused(ValueError):
    """A ``dlr-url`` the simulator will not call; the text says why."""


#: the path of the presence server's own delivery-report callback
OWN_CALLBACK_PATH = "/api/wireless/dlr"


class DlrPolicy:
    """Which ``dlr-url``s the simulator calls: ``http(s)`` URLs whose host
    is on the operator's list (``--dlr-allow``, exact names or addresses,
    case-insensitive), and this server's own callback (``/api/wireless/dlr``
    on the loopback host and port its HTTP listener has, see :meth:`allow_own`).
    Nothing else: no other loopback, private or link-local address, no
    other name.  The list is the operator's word; a name on it is not
    resolved here."""

    def __init__(self, hosts: Iterable[str] = ()) -> None:
        self.hosts = frozenset(h.strip().lower().strip("[]") for h in hosts if h.strip())
        self.own: Set[Tuple[str, int]] = set()

    def allow_own(self, host: str, port: int) -> None:
        self.own.add((host.lower().strip("[]"), port))

    def check(self, url: str) -> None:
        """Raise :class:`DlrRefused` unless ``url`` may be fetched."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise DlrRefused("it is not a valid URL")
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if scheme not in ("http", "https") or not host:
            raise DlrRefused("only http(s) URLs with a host are called")
        if parts.username is not None or parts.password is not None:
            raise DlrRefused("a URL with credentials is not called")
        if host in self.hosts:
            return
        if port is None:
            port = 443 if scheme == "https" else 80
        if (host, port) in self.own and (parts.path == OWN_CALLBACK_PATH):
            return
        raise DlrRefused(f"the host {host[:64]} is not on the operator's list (--dlr-allow)")
