"""Service Loading documents (WAP-168), parsed with the hardened parser
Service Indications use (:func:`presence.wireless.si.load_xml`)::

    <?xml version="1.0"?>
    <!DOCTYPE sl PUBLIC "-//WAPFORUM//DTD SL 1.0//EN"
      "http://www.wapforum.org/DTD/sl.dtd">
    <sl href="http://host/page.wml" action="execute-low"/>

``action`` is ``execute-low`` (the default), ``execute-high`` or ``cache``;
``href`` an ``http``/``https`` URL of at most 1,024 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from presence.wireless.si import MAX_HREF, SIError, load_xml

CONTENT_TYPE = "text/vnd.wap.sl"
ACTIONS = ("execute-low", "execute-high", "cache")


@dataclass(frozen=True)
class ServiceLoading:
    href: str
    action: str = "execute-low"


def parse(data: bytes) -> ServiceLoading:
    """The Service Loading in ``data``; :class:`SIError` says what is wrong."""
    root = load_xml(data, "Service Loading")
    if root.tag != "sl":
        raise SIError("the root element must be <sl>")
    if len(root) or (root.text or "").strip():
        raise SIError("<sl> is empty")
    unknown = set(root.attrib) - {"href", "action"}
    if unknown:
        raise SIError(f"<sl> has an unknown attribute: {sorted(unknown)[0][:40]}")
    action = root.get("action", "execute-low")
    if action not in ACTIONS:
        raise SIError("action must be one of " + ", ".join(ACTIONS))
    href = (root.get("href") or "").strip()
    if len(href) > MAX_HREF or not re.match(r"https?://[^\s/]+", href, re.I):
        raise SIError(f"href must be an http or https URL of at most {MAX_HREF} characters")
    return ServiceLoading(href=href, action=action)
