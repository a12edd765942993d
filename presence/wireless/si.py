"""Service Indication documents (WAP-167), parsed with a hardened parser.

    <?xml version="1.0"?>
    <!DOCTYPE si PUBLIC "-//WAPFORUM//DTD SI 1.0//EN"
      "http://www.wapforum.org/DTD/si.dtd">
    <si>
      <indication href="http://host/wml/t/TOKEN" si-id="abc"
                  action="signal-high" created="2026-01-02T03:04:05Z"
                  si-expires="2026-01-03T00:00:00Z">alice wants to chat</indication>
      <info><item class="x">optional</item></info>
    </si>

:func:`parse` accepts exactly that shape and nothing else.  The XML is read
by ``defusedxml``: a document that declares any entity (the "billion laughs"
expansion bomb, external entities, parameter entities) is refused before
anything is expanded, and nothing is ever fetched; a ``DOCTYPE`` that only
names the public SI DTD is fine.  Limits: the document at most
:data:`MAX_DOCUMENT` bytes, ``href`` an ``http``/``https`` URL of at most
1,024 characters, the text at most :data:`MAX_TEXT` characters.  ``si-id``
defaults to ``href``; ``action`` to ``signal-medium``; ``delete`` needs an
``si-id``.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from typing import Optional
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAX_DOCUMENT = 4096
MAX_TEXT = 512
MAX_HREF = 1024
ACTIONS = ("signal-none", "signal-low", "signal-medium", "signal-high", "delete")
_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")
_INDICATION_ATTRS = {"href", "si-id", "created", "si-expires", "action"}

PUBLIC_ID = "-//WAPFORUM//DTD SI 1.0//EN"
SYSTEM_ID = "http://www.wapforum.org/DTD/si.dtd"
CONTENT_TYPE = "text/vnd.wap.si"


class SIError(ValueError):
    """The document is not an acceptable Service Indication."""


@dataclass(frozen=True)
class ServiceIndication:
    href: str
    text: str
    si_id: str
    action: str = "signal-medium"
    created: Optional[float] = None
    expires: Optional[float] = None

    def as_dict(self) -> dict:
        return {"href": self.href, "text": self.text, "si_id": self.si_id,
                "action": self.action, "created": self.created, "si_expires": self.expires}


def _datetime(value: Optional[str], what: str) -> Optional[float]:
    if value is None:
        return None
    if not _DATETIME.match(value):
        raise SIError(f"{what} must be an ISO 8601 UTC time like 2026-01-02T03:04:05Z")
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        raise SIError(f"{what} is not a valid time") from None


def load_xml(data: bytes, what: str):
    """The root element of a push document, read by ``defusedxml`` (no
    entity declarations, nothing fetched) within :data:`MAX_DOCUMENT`."""
    if not isinstance(data, (bytes, bytearray)) or not data.strip():
        raise SIError(f"the {what} document is missing")
    if len(data) > MAX_DOCUMENT:
        raise SIError(f"the {what} document is over {MAX_DOCUMENT} bytes")
    try:
        return fromstring(bytes(data), forbid_dtd=False, forbid_entities=True,
                          forbid_external=True)
    except DefusedXmlException:
        raise SIError("entity declarations and external references are not allowed") from None
    except ParseError as e:
        raise SIError(f"the document is not well-formed XML ({e})") from None
    except (ValueError, UnicodeError):
        raise SIError("the document is not well-formed XML") from None


def parse(data: bytes) -> ServiceIndication:
    """The Service Indication in ``data``; :class:`SIError` says what is wrong."""
    root = load_xml(data, "Service Indication")
    if root.tag != "si":
        raise SIError("the root element must be <si>")
    if root.attrib:
        raise SIError("<si> takes no attributes")
    if (root.text or "").strip():
        raise SIError("<si> holds elements only")
    children = list(root)
    if not children or children[0].tag != "indication":
        raise SIError("<si> must start with one <indication>")
    for extra in children[1:]:
        if extra.tag != "info" or len(children) > 2:
            raise SIError("<si> holds one <indication> and at most one <info>")
        if not len(extra) or any(item.tag != "item" or "class" not in item.attrib
                                 or len(item) for item in extra):
            raise SIError("<info> holds <item class=…> elements")
    for child in children:
        if (child.tail or "").strip():
            raise SIError("<si> holds elements only")
    ind = children[0]
    unknown = set(ind.attrib) - _INDICATION_ATTRS
    if unknown:
        raise SIError(f"<indication> has an unknown attribute: {sorted(unknown)[0][:40]}")
    if len(ind):
        raise SIError("<indication> holds text only")
    action = ind.get("action", "signal-medium")
    if action not in ACTIONS:
        raise SIError("action must be one of " + ", ".join(ACTIONS))
    href = ind.get("href")
    si_id = ind.get("si-id")
    if href is not None:
        href = href.strip()
        if len(href) > MAX_HREF or not re.match(r"https?://[^\s/]+", href, re.I):
            raise SIError(f"href must be an http or https URL of at most {MAX_HREF} characters")
    elif action != "delete":
        raise SIError("<indication> needs an href")
    if action == "delete" and not si_id:
        raise SIError("a delete indication needs an si-id")
    text = " ".join((ind.text or "").split())
    if len(text) > MAX_TEXT:
        raise SIError(f"the indication text is over {MAX_TEXT} characters")
    if si_id is not None and (not si_id.strip() or len(si_id) > 256):
        raise SIError("si-id must be 1-256 characters")
    return ServiceIndication(
        href=href or "", text=text, si_id=si_id or href or "", action=action,
        created=_datetime(ind.get("created"), "created"),
        expires=_datetime(ind.get("si-expires"), "si-expires"),
    )


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def document(href: str, text: str, si_id: Optional[str] = None,
             action: str = "signal-high", created: Optional[float] = None,
             expires: Optional[float] = None) -> bytes:
    """A Service Indication document (UTF-8) with all values escaped."""
    attrs = [f"href={quoteattr(href)}"]
    if si_id:
        attrs.append(f"si-id={quoteattr(si_id)}")
    attrs.append(f"action={quoteattr(action)}")
    if created is not None:
        attrs.append(f"created={quoteattr(_stamp(created))}")
    if expires is not None:
        attrs.append(f"si-expires={quoteattr(_stamp(expires))}")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<!DOCTYPE si PUBLIC "{PUBLIC_ID}" "{SYSTEM_ID}">\n'
        f'<si><indication {" ".join(attrs)}>{escape(text)}</indication></si>\n'
    ).encode("utf-8")
