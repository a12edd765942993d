"""HTTP plumbing shared by the web front-end: bounded bodies, JSON answers,
parameters from query, form or JSON bodies, and an access log that never
shows a session ID or a password.
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any, Dict, Optional

from twisted.web import http, server

from presence.errors import BadRequest

MAX_BODY = 64 * 1024
COOKIE = b"presence_session"
_SECRET_PARAM = re.compile(rb"((?:^|[?&;])(?:id|sessionId|password)=)[^&;#\s]*", re.I)


def mask(uri: bytes) -> bytes:
    """``uri`` with the values of ``id``, ``sessionId`` and ``password`` masked."""
    return _SECRET_PARAM.sub(rb"\1***", uri)


def masked_log_formatter(timestamp: str, request: http.Request) -> str:
    """Twisted's combined log format, with secrets masked in the URI."""
    referrer = http._escape(mask(request.getHeader(b"referer") or b"-"))
    agent = http._escape(request.getHeader(b"user-agent") or b"-")
    line = (
        '"%(ip)s" - - %(timestamp)s "%(method)s %(uri)s %(protocol)s" '
        '%(code)d %(length)s "%(referrer)s" "%(agent)s"'
        % dict(
            ip=http._escape(request.getClientAddress().host or b"-")
            if hasattr(request.getClientAddress(), "host") else "-",
            timestamp=timestamp,
            method=http._escape(request.method),
            uri=http._escape(mask(request.uri)),
            protocol=http._escape(request.clientproto),
            code=request.code,
            length=request.sentLength or "-",
            referrer=referrer,
            agent=agent,
        )
    )
    return line


class BoundedRequest(server.Request):
    """A request whose body may not exceed ``MAX_BODY`` bytes.

    A longer body is not kept: its bytes are counted and dropped, and the
    request is answered ``413`` without reaching a resource.
    """

    too_large = False

    def gotLength(self, length: Optional[int]) -> None:
        self._body_seen = 0
        if length is not None and length > MAX_BODY:
            self.too_large = True
            self.content = BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._body_seen += len(data)
        if self._body_seen > MAX_BODY:
            self.too_large = True
            self.content = BytesIO()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # Twisted parses every form body's Content-Type with the e-mail
        # header parser, a tenth of the cost of a chat; the plain urlencoded
        # form (what browsers and clients send) is recognised cheaply here
        # and parsed with the same parse_qs.
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if ctype and command == b"POST" and ctype[0].split(b";")[0].strip().lower() == _FORM:
            self._parsePOSTFormSubmission = False
            self._form_body = True
        super().requestReceived(command, path, version)

    _form_body = False

    def process(self) -> None:
        if self._form_body and not self.too_large and self.content is not None:
            self.content.seek(0, 0)
            self.args.update(http.parse_qs(self.content.read(), 1))
            self.content.seek(0, 0)
        if self.too_large:
            self.site = self.channel.site
            self.setHeader(b"connection", b"close")
            self.write(write_json(self, 413, {"error": f"request body over {MAX_BODY} bytes"}))
            self.finish()
            return
        super().process()


_FORM = b"application/x-www-form-urlencoded"


class PresenceSite(server.Site):
    requestFactory = BoundedRequest

    def __init__(self, resource, reactor=None, **kw: Any) -> None:
        super().__init__(resource, logFormatter=masked_log_formatter, reactor=reactor, **kw)
        self.displayTracebacks = False


def write_json(request: server.Request, status: int, body: Any) -> bytes:
    """Set status and JSON content type; return the encoded body."""
    request.setResponseCode(status)
    data = b""
    if body is not None:
        request.setHeader(b"content-type", b"application/json")
        data = json.dumps(body).encode("utf-8")
    return data


def params(request: server.Request) -> Dict[str, Any]:
    """The request's parameters: query string, then form or JSON body.

    Raises :class:`~presence.errors.BadRequest` on a broken body.
    """
    out: Dict[str, Any] = {}
    for key, values in (request.args or {}).items():
        if values:
            out[key.decode("utf-8", "replace")] = _text(values[0])
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype == b"application/json" and request.content is not None:
        request.content.seek(0)
        raw = request.content.read()
        if raw.strip():
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("the body is not valid JSON")
            if not isinstance(body, dict):
                raise BadRequest("the JSON body must be an object")
            for key, value in body.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = str(value)
                elif value is not None and not isinstance(value, str):
                    raise BadRequest(f"the field {str(key)[:40]!r} must be a string")
                out[key] = value
    return out


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("parameters must be UTF-8")


def client_address(request: server.Request) -> tuple:
    addr = request.getClientAddress()
    return getattr(addr, "host", "") or "", getattr(addr, "port", 0) or 0
