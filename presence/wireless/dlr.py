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

Escapes: every one Kannel documents for a ``dlr-url`` (see
:func:`values_for` and the table in docs/wireless.md); a value the
simulator does not have is empty, an escape Kannel does not know is left
as it is.
"""

from __future__ import annotations

import time as _time
from typing import Any, Dict, Iterable, Optional, Set, Tuple
from urllib.parse import quote, quote_from_bytes, unquote, urlsplit

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


class Raw(str):
    """A value :func:`expand` inserts as it is (Kannel does not URL-encode
    it: the ``+`` of ``%t``, the words of ``%S``)."""


def _meta_value(meta: str, group: str, name: str) -> str:
    """``name`` in ``group`` of Kannel meta-data (``?group?k=v&k2=v2?g2?…``)."""
    chunks = meta.split("?")
    for i in range(1, len(chunks) - 1, 2):
        if chunks[i] == group:
            for pair in chunks[i + 1].split("&"):
                key, _, value = pair.partition("=")
                if key == name:
                    return unquote(value)
    return ""


def expand(template: str, values: Dict[str, str]) -> str:
    """Fill Kannel escapes in ``template``; ``values`` maps the escape letter
    to its (unencoded) text, URL-encoded here unless it is :class:`Raw`.
    ``%#group#name#`` is a parameter of the meta-data (``values["D"]``).
    An escape Kannel does not know is left as it is (as Kannel does)."""
    out = []
    i = 0
    n = len(template)
    while i < n:
        c = template[i]
        if c == "%" and i + 1 < n:
            key = template[i + 1]
            if key == "%":
                out.append("%")
            elif key == "#":
                first = template.find("#", i + 2)
                second = template.find("#", first + 1) if first >= 0 else -1
                if second < 0:
                    out.append(template[i:i + 2])
                else:
                    found = _meta_value(values.get("D", ""), template[i + 2:first],
                                        template[first + 1:second])
                    out.append(quote(found, safe=""))
                    i = second + 1
                    continue
            elif key in values:
                value = values[key]
                out.append(value if isinstance(value, Raw) else quote(value, safe=""))
            else:
                out.append(template[i:i + 2])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


CODING_NUMBER = {"gsm7": "0", "8bit": "1", "ucs2": "2"}
CHARSET = {"gsm7": "UTF-8", "8bit": "8-BIT", "ucs2": "UTF-16BE"}


def dcs(coding: str, mclass: int = -1, mwi: int = -1, alt_dcs: int = -1,
        compress: int = -1) -> int:
    """The GSM 03.38 data coding scheme octet the fields make (``%O``)."""
    if mwi >= 0:
        if mwi & 4:
            return 0xC0 | (mwi & 3)
        return (0xE0 if coding == "ucs2" else 0xD0) | 0x08 | (mwi & 3)
    if alt_dcs == 1 and coding != "ucs2":
        return 0xF0 | (0x04 if coding == "8bit" else 0) | (mclass if mclass >= 0 else 1)
    value = {"gsm7": 0x00, "8bit": 0x04, "ucs2": 0x08}.get(coding, 0)
    if mclass >= 0:
        value |= 0x10 | mclass
    if compress == 1:
        value |= 0x20
    return value


def _words(text: str) -> Raw:
    return Raw("+".join(quote(w, safe="") for w in text.split()))


def values_for(event: int, handset: str, sender: str, when: float, report: str,
               msg_id: str, user: str, coding: str, options: Any = None,
               dlr_url: str = "", expires: Optional[float] = None,
               due: Optional[float] = None) -> Dict[str, str]:
    """Every escape's value for one report; ``options`` is the message's
    :class:`presence.wireless.simulator.SmsOptions` (None for a push),
    ``expires`` the end of a sendsms ``validity`` and ``due`` the end of a
    ``deferred`` (``%v``, ``%V``: minutes left).  What the simulator has no
    value for is empty."""

    def number(name: str) -> str:
        value = getattr(options, name, -1)
        return "" if value is None or value < 0 else str(value)

    words = report.split()
    values = {
        "d": str(event),
        "p": handset, "q": _plus(handset),
        "P": sender, "Q": _plus(sender),
        "T": str(int(when)),
        "t": Raw(_time.strftime("%Y-%m-%d+%H:%M:%S", _time.gmtime(when))),
        "A": report, "b": report, "a": _words(report),
        "k": words[0] if words else "",
        "s": words[1] if len(words) > 1 else "",
        "S": Raw((words[1] if len(words) > 1 else "").replace("*", "~")),
        "r": _words(" ".join(words[2:] if len(words) > 1 else [])),
        "I": msg_id, "F": msg_id,
        "i": getattr(options, "smsc", "") or SMSC_ID,
        "n": user,
        "c": CODING_NUMBER.get(coding, "0"),
        "C": CHARSET.get(coding, "UTF-8"),
        "m": number("mclass"), "M": number("mwi"),
        "O": "%02d" % dcs(coding, getattr(options, "mclass", -1),
                          getattr(options, "mwi", -1), getattr(options, "alt_dcs", -1),
                          getattr(options, "compress", -1)),
        "u": Raw(quote_from_bytes(bytes(getattr(options, "udh", b"")), safe="")),
        "B": getattr(options, "binfo", ""),
        "o": getattr(options, "account", ""),
        "D": getattr(options, "meta_data", ""),
        "R": dlr_url,
        "f": "",
        "v": "" if expires is None else str(max(0, int(expires - when)) // 60),
        "V": "" if due is None else str(max(0, int(due - when)) // 60),
    }
    return values


def _plus(number: str) -> str:
    """``%q``/``%Q``: a leading ``00`` becomes ``+``."""
    return "+" + number[2:] if number.startswith("00") else number


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
