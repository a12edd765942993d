"""Kannel's XML sendsms interface (``POST /cgi-bin/sendsms`` with
``Content-Type: text/xml``), read with ``defusedxml``::

    <?xml version="1.0"?>
    <message>
      <submit>
        <da><number>+15550001</number></da>      (one or more)
        <oa><number>12345</number></oa>
        <ud>the text</ud>                        (URL-encoded or not)
        <udh>0605041582000</udh>                 (hex, as X-Kannel-UDH)
        <meta-data>?smpp?key=value</meta-data>
        <dcs><mclass/><coding/><mwi/><compress/><alt-dcs/></dcs>
        <pid/> <rpi/>
        <vp><delay>minutes</delay></vp>           (validity)
        <timing><delay>minutes</delay></timing>   (deferred)
        <statusrequest><dlr-mask/><dlr-url/></statusrequest>
        <from><user/> or <username/>, <pass/> or <password/>, <account/></from>
        <to>smsc-id</to>
      </submit>
    </message>

:func:`parse` turns it into the same fields a GET carries (bytes, as from a
query string); a document that is not that shape is refused with Kannel's
words for a body it cannot read.  Entities are refused (defusedxml) and
nothing is fetched.
"""

from __future__ import annotations

from typing import Dict, List, Optional
from urllib.parse import unquote_to_bytes
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

MAX_RECEIVERS = 100


class KannelXmlError(ValueError):
    """The body is not a Kannel XML submit; the text says why."""


#: (path below <submit>, the sendsms field)
PATHS = (
    ("oa/number", "from"), ("ud", "text"), ("udh", "udh"), ("meta-data", "meta-data"),
    ("dcs/mclass", "mclass"), ("dcs/coding", "coding"), ("dcs/mwi", "mwi"),
    ("dcs/compress", "compress"), ("dcs/alt-dcs", "alt-dcs"), ("pid", "pid"),
    ("rpi", "rpi"), ("vp/delay", "validity"), ("timing/delay", "deferred"),
    ("statusrequest/dlr-mask", "dlr-mask"), ("statusrequest/dlr-url", "dlr-url"),
    ("from/user", "username"), ("from/username", "username"), ("from/pass", "password"),
    ("from/password", "password"), ("from/account", "account"), ("to", "smsc"),
    ("binfo", "binfo"), ("priority", "priority"), ("charset", "charset"),
)


def parse(body: bytes) -> Dict[str, bytes]:
    """The sendsms fields of a Kannel XML submit; :class:`KannelXmlError`
    (the answer's text) for a body that is not one."""
    try:
        root = fromstring(body, forbid_dtd=False)
    except DefusedXmlException:
        raise KannelXmlError("Invalid XML body: entities are not accepted, rejected")
    except (ParseError, ValueError):
        raise KannelXmlError("Invalid XML body, rejected")
    submit = root.find("submit") if root.tag == "message" else None
    if submit is None:
        raise KannelXmlError("Invalid XML body: no <message><submit>, rejected")
    out: Dict[str, bytes] = {}
    for path, name in PATHS:
        node: Optional[Element] = submit.find(path)
        if node is not None and name not in out:
            if path == "to" and len(node):  # <to> with children is the Kannel->app form
                continue
            value = node.text or ""
            if name in ("text", "udh"):
                # URL-encoded, as Kannel's own XML POST writes them
                out[name] = unquote_to_bytes(value if name == "text" else value.strip())
            else:
                out[name] = value.strip().encode("utf-8")
    numbers: List[str] = []
    for da in submit.findall("da"):
        for number in da.findall("number"):
            if number.text and number.text.strip():
                numbers.append(number.text.strip())
    if len(numbers) > MAX_RECEIVERS:
        raise KannelXmlError(f"Too many receivers (at most {MAX_RECEIVERS}), rejected")
    if numbers:
        out["to"] = " ".join(numbers).encode("utf-8")
    return out
