"""PAP 2.0 (WAP-247) push submissions: a ``multipart/related`` body whose
first entity is the PAP control document and whose second is the content::

    Content-Type: multipart/related; boundary=b; type="application/xml"

    --b
    Content-Type: application/xml

    <?xml version="1.0"?>
    <!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 2.0//EN"
      "http://www.wapforum.org/DTD/pap_2.0.dtd">
    <pap>
      <push-message push-id="p1" deliver-before-timestamp="2026-01-02T03:04:05Z"
                    ppg-notify-requested-to="http://app/notify">
        <address address-value="WAPPUSH=+15550001/TYPE=PLMN@ppg.example.com"/>
        <address address-value="WAPPUSH=+15550002/TYPE=PLMN@ppg.example.com"/>
        <quality-of-service delivery-method="unconfirmed"/>
      </push-message>
    </pap>
    --b
    Content-Type: text/vnd.wap.si

    <si>...</si>
    --b--

The control document is read by ``defusedxml`` like every push document.
:func:`response` and :func:`notification` write the PPG's answers.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import List, Optional, Tuple
from xml.sax.saxutils import quoteattr

from presence.wireless import numbers
from presence.wireless.si import SIError, load_xml

MAX_ADDRESSES = 100
MAX_PUSH_ID = 128
DOCTYPE = ('<!DOCTYPE pap PUBLIC "-//WAPFORUM//DTD PAP 2.0//EN"'
           ' "http://www.wapforum.org/DTD/pap_2.0.dtd">')
SENDER_NAME = "presence simulator"
#: PAP 2.0 result codes the simulator uses, and their descriptions
DESC = {
    1000: "OK",
    1001: "Accepted for processing",
    2000: "Bad request",
    2001: "Forbidden",
    2002: "Address error",
    2007: "Duplicate push ID",
    3000: "Internal server error",
    3006: "Transformation failure",
    4000: "Service failure",
}
_ADDRESS = re.compile(r"WAPPUSH=([^/@]+)/TYPE=([A-Za-z0-9]+)@([A-Za-z0-9.-]{1,253})\Z")
_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")


class PapError(Exception):
    """A push the PPG refuses: ``code`` is the PAP result code."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class PushMessage:
    push_id: str
    addresses: List[Tuple[str, str]] = field(default_factory=list)  # (address, number)
    deliver_before: Optional[float] = None
    deliver_after: Optional[float] = None
    notify_to: Optional[str] = None
    source_reference: str = ""


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _time(value: Optional[str], what: str) -> Optional[float]:
    if value is None:
        return None
    if not _STAMP.match(value):
        raise PapError(2000, f"{what} must be a UTC time like 2026-01-02T03:04:05Z")
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        raise PapError(2000, f"{what} is not a valid time") from None


def split(body: bytes, content_type: bytes) -> Tuple[bytes, str, bytes]:
    """``(control document, content type, content)`` of a multipart/related
    push; PapError 2000 when it is not two entities."""
    head = b"Content-Type: " + content_type + b"\r\nMIME-Version: 1.0\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise PapError(2000, "the multipart/related body has no boundary or no parts")
    parts = list(message.iter_parts())
    if len(parts) < 2:
        raise PapError(2000, "a PAP push is a control entity and a content entity")
    control, content = parts[0], parts[1]
    if control.get_content_type() not in ("application/xml", "text/xml"):
        raise PapError(2000, "the first entity must be the PAP control document"
                             " (application/xml)")
    return (control.get_payload(decode=True) or b"", content.get_content_type(),
            content.get_payload(decode=True) or b"")


def address_number(value: str) -> str:
    """The handset number of a PAP ``address-value``
    (``WAPPUSH=+15550001/TYPE=PLMN@ppg.example.com``); PapError 2002."""
    match = _ADDRESS.match(value.strip())
    if match is None:
        raise PapError(2002, f"address-value {value[:80]!r} is not"
                             " WAPPUSH=<number>/TYPE=PLMN@<ppg>")
    if match.group(2).upper() != "PLMN":
        raise PapError(2002, f"address type {match.group(2)[:20]} is not supported (PLMN only)")
    number = numbers.normalize(match.group(1))
    if number is None:
        raise PapError(2002, f"{match.group(1)[:32]!r} is not a handset number")
    return number


def parse_control(data: bytes) -> PushMessage:
    """The push-message of a PAP control document."""
    try:
        root = load_xml(data, "PAP control")
    except SIError as e:
        raise PapError(2000, str(e))
    if root.tag != "pap":
        raise PapError(2000, "the control document's root element must be <pap>")
    message = root.find("push-message")
    if message is None or len(root) != 1:
        raise PapError(2000, "<pap> must hold one <push-message>")
    push_id = message.get("push-id")
    if not push_id or len(push_id) > MAX_PUSH_ID:
        raise PapError(2000, f"push-id is required (1-{MAX_PUSH_ID} characters)")
    out = PushMessage(push_id=push_id,
                      deliver_before=_time(message.get("deliver-before-timestamp"),
                                           "deliver-before-timestamp"),
                      deliver_after=_time(message.get("deliver-after-timestamp"),
                                          "deliver-after-timestamp"),
                      notify_to=message.get("ppg-notify-requested-to"),
                      source_reference=(message.get("source-reference") or "")[:128])
    addresses = message.findall("address")
    if not addresses:
        raise PapError(2002, "<push-message> has no <address>")
    if len(addresses) > MAX_ADDRESSES:
        raise PapError(2002, f"at most {MAX_ADDRESSES} addresses per push")
    seen = set()
    for node in addresses:
        value = node.get("address-value") or ""
        number = address_number(value)
        if number not in seen:
            seen.add(number)
            out.addresses.append((value.strip(), number))
    return out


def _pap(body: str) -> bytes:
    return (f'<?xml version="1.0"?>\n{DOCTYPE}\n<pap>{body}</pap>\n').encode("utf-8")


def response(code: int, detail: str, push_id: Optional[str], now: float) -> bytes:
    """The PPG's push-response."""
    pid = f" push-id={quoteattr(push_id)}" if push_id else ""
    return _pap(f'<push-response{pid} sender-name="{SENDER_NAME}"'
                f' reply-time="{stamp(now)}"><response-result code="{code}"'
                f' desc={quoteattr(DESC[code] + ": " + detail)}/></push-response>')


def notification(push_id: str, address: str, state: str, code: int, received: float,
                 now: float) -> bytes:
    """A resultnotification-message: the push's outcome for one address."""
    return _pap(f"<resultnotification-message push-id={quoteattr(push_id)}"
                f' sender-name="{SENDER_NAME}" received-time="{stamp(received)}"'
                f' event-time="{stamp(now)}" message-state="{state}" code="{code}"'
                f" desc={quoteattr(DESC[code])}>"
                f"<address address-value={quoteattr(address)}/>"
                f'<quality-of-service delivery-method="unconfirmed"/>'
                f"</resultnotification-message>")
