"""HTTP plumbing shared by the web front-end: bounded bodies, JSON answers,
parameters from query, form or JSON bodies (decoded and checked once, here:
UTF-8, Unicode scalar values, bounded JSON), and an access log that never
shows a session ID, a password or a token (:func:`mask`).
"""

from __future__ import annotations

import json
import math
import re
from io import BytesIO
from urllib.parse import unquote_to_bytes
from typing import Any, Dict, List, Optional, Union

from twisted.logger import Logger
from twisted.web import http, server

from presence.errors import BadRequest, ClientError
from presence.service import valid_text
from presence.web.auth import COOKIE  # noqa: F401  (re-exported)

MAX_BODY = 64 * 1024
#: nesting of arrays and objects a JSON body may have (ours are flat objects)
MAX_JSON_DEPTH = 32
#: characters of one number in a JSON body
MAX_JSON_NUMBER = 40
#: characters of a client's value quoted back in an error message at most
QUOTE = 40

#: Names of every parameter whose value is a secret: the access log (and
#: the Referer it shows) masks their values, however the name is written
#: (percent-encoded, ``+`` for a space, any case).  Parts of the server that
#: accept another secret add its name here when imported
#: (``SECRET_PARAMS.add("name")``); names are lower case.
SECRET_PARAMS = {
    # session IDs (spec section 2) and what login answers
    "id", "sessionid", "session", "sid",
    # passwords: the API and the pages' forms, the operator API, WML forms
    "password", "password2", "pass", "passwd", "pwd", "pw", "old_password",
    "new_password",
    # one-time tokens and secrets: push links, handset secrets, resumption
    "token", "t", "resume", "secret", "handset_secret", "key",
}
#: Paths whose next segment is a secret (lower case segments, decoded):
#: ``/wml/t/<token>`` is a one-time push link.  Extend like SECRET_PARAMS.
SECRET_PATHS = {("wml", "t")}
MASKED = b"***"
_HOST_END = re.compile(rb"[/?#]")


def _name(raw: bytes) -> str:
    """A query parameter's name as the server reads it: ``+`` is a space,
    percent-escapes decoded, case and surrounding blanks ignored."""
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "replace").strip().lower()


def _mask_query(query: bytes, depth: int) -> bytes:
    pairs = []
    for part in re.split(rb"([&;])", query):
        if part in (b"&", b";"):
            pairs.append(part)
            continue
        key, sep, value = part.partition(b"=")
        if sep and _name(key) in SECRET_PARAMS:
            value = MASKED
        elif sep and value and depth < 3:
            # a value that carries a URL with a secret (next=/jchat?id=...)
            decoded = unquote_to_bytes(value.replace(b"+", b" "))
            if (b"=" in decoded or b"/" in decoded) and _mask_uri(decoded, depth + 1) != decoded:
                value = MASKED
        pairs.append(key + sep + value)
    return b"".join(pairs)


def _mask_path(path: bytes) -> bytes:
    segments = path.split(b"/")
    names = [_name(s) for s in segments]
    for prefix in SECRET_PATHS:
        n = len(prefix)
        for i in range(1, len(segments) - n):
            if tuple(names[i:i + n]) == prefix and segments[i + n]:
                segments[i + n] = MASKED
    return b"/".join(segments)


def _mask_uri(uri: bytes, depth: int = 0) -> bytes:
    scheme, sep, rest = uri.partition(b"://")
    if sep and b"/" not in scheme and b"?" not in scheme:
        # an absolute URL (a Referer): keep scheme and host as they are
        end = _HOST_END.search(rest)
        if end is None:
            return uri
        return scheme + sep + rest[:end.start()] + _mask_uri(rest[end.start():], depth)
    path, q, query = uri.partition(b"?")
    fragment = b""
    if b"#" in query:
        query, _, fragment = query.partition(b"#")
        fragment = b"#" + fragment
    return _mask_path(path) + q + (_mask_query(query, depth) if q else b"") + fragment


def mask(uri: bytes) -> bytes:
    """``uri`` (a request target or a whole URL, as a Referer) with the
    value of every secret parameter (:data:`SECRET_PARAMS`) and every secret
    path segment (:data:`SECRET_PATHS`) replaced by ``***``.

    Names are compared as the server reads them, after decoding, so
    ``%69d=`` and ``pass%77ord=`` are masked like ``id=`` and ``password=``;
    a parameter whose decoded value is a URL carrying a secret is masked
    whole.  Never raises: the access log never stops a request."""
    try:
        return _mask_uri(uri)
    except Exception:
        return MASKED


def masked_log_formatter(timestamp: str, request: http.Request) -> str:
    """Twisted's combined log format, with secrets masked in the URI."""
    referrer = http._escape(mask(request.getHeader(b"referer") or b"-"))
    agent = http._escape(request.getHeader(b"user-agent") or b"-")
    # a held heartbeat keeps only its peer's IP (see heartbeat._slim)
    ip = getattr(request, "peer_ip", None)
    if ip is None:
        ip = getattr(request.getClientAddress(), "host", None)
    line = (
        '"%(ip)s" - - %(timestamp)s "%(method)s %(uri)s %(protocol)s" '
        '%(code)d %(length)s "%(referrer)s" "%(agent)s"'
        % dict(
            ip=http._escape(ip or b"-") if ip is not None else "-",
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

    When it ends (finished, or its connection lost) it drops the references
    that would keep it in a reference cycle, so that a finished request and
    its closed connection are freed by reference counting alone and never
    wait for the cyclic garbage collector (see :meth:`_ended`).
    """

    # Our own per-request state lives in slots, not in the instance dict.
    # CPython 3.11 keeps instance attributes inline (no dict object) only
    # for the attribute names that the first few instances of a class set,
    # about 30 in all, and Twisted's Request uses nearly as many by itself;
    # a request that sets a name past those gets a dict of its own: one
    # more object to scan and ~1 KB more per held heartbeat.
    __slots__ = ("too_large", "_body_seen", "_form_body", "_watcher", "peer_ip")

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.too_large = False
        self._body_seen = 0
        self._form_body = False
        #: told ``ended(reason)`` once when the request ends (see :meth:`watch`)
        self._watcher: Any = None
        #: the peer's IP once a held heartbeat dropped its address objects
        self.peer_ip: Optional[str] = None
        super().__init__(*args, **kw)
        # the one instance attribute of a held heartbeat that not every
        # request sets (a response with a Content-Length is not chunked):
        # set it on every request, so that it is among the names kept inline
        # whatever the first requests of the process were
        self.chunked = 0

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
        # Twisted parses the Content-Type of every POST body with the e-mail
        # header parser: a tenth of the cost of a chat, and a new class each
        # time (cyclic garbage, some 40 objects).  It acts on two types only.
        # The plain urlencoded form (what browsers and clients send) is
        # recognised cheaply here and parsed with the same parse_qs; a
        # multipart form is left to Twisted; any other type (JSON, SIP) is
        # not parsed at all.
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        if ctype and command == b"POST":
            key = ctype[0].split(b";")[0].strip().lower()
            if key == _FORM:
                self._parsePOSTFormSubmission = False
                self._form_body = True
            elif b"multipart" not in key and b"form" not in key:
                self._parsePOSTFormSubmission = False
        super().requestReceived(command, path, version)

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

    def watch(self, watcher: Any) -> None:
        """Have ``watcher.ended(reason)`` called once when this request ends:
        with ``None`` when it finished, with the connection's failure when the
        connection was lost first.

        What ``notifyFinish().addBoth(watcher.ended)`` does, without the
        Deferred, the list and the bound method that a held request would
        keep for hours.  The request forgets ``watcher`` before calling it,
        so a watcher that refers to the request leaves no cycle behind.
        """
        self._watcher = watcher

    def notifyFinish(self):
        if type(self.notifications) is not list:  # a slimmed heartbeat's ()
            self.notifications = list(self.notifications)
        return super().notifyFinish()

    def finish(self) -> None:
        super().finish()
        self._ended(None)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._ended(reason)

    def _ended(self, reason: Any) -> None:
        # Klein caches its IKleinRequest adapter (and URL mapper) among the
        # request's components, and the adapter refers back to the request:
        # a reference cycle.  The request is done; so is the adapter.
        # (Klein's render closures make another cycle with the request that
        # cannot be broken from here: the routes of every session's life are
        # served without Klein, see ``presence.web.site.DIRECT_API``.)
        if self._adapterCache:
            self._adapterCache = {}
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.ended(reason)


_FORM = b"application/x-www-form-urlencoded"


class AccessLogFile:
    """The access log in a file of its own (``--access-log PATH``).

    A request costs its formatted line only: lines wait in memory and are
    written together at most ``FLUSH_EVERY`` seconds after the first of
    them, or as soon as ``MAX_WAITING`` characters wait, and when the
    server stops.  The file is opened for appending (``O_APPEND``), so a
    log rotated by copy-and-truncate goes on at the start of the file.
    A failed write (a full disk) is reported in the server's log once and
    those lines are dropped: the access log never stops a request.
    """

    FLUSH_EVERY = 1.0
    MAX_WAITING = 64 * 1024
    log = Logger()

    def __init__(self, path: str, clock: Any) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8", newline="\n")
        self._clock = clock
        self._lines: List[str] = []
        self._waiting = 0
        self._call: Any = None
        self._failing = False

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._waiting += len(line)
        if self._waiting >= self.MAX_WAITING:
            self.flush()
        elif self._call is None:
            self._call = self._clock.callLater(self.FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._waiting = 0
        try:
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError) as e:
            if not self._failing:
                self.log.error("access log {path}: cannot write ({error}); "
                               "lines dropped until it can", path=self.path, error=e)
            self._failing = True
        else:
            self._failing = False

    def close(self) -> None:
        self.flush()
        self._file.close()


class PresenceSite(server.Site):
    """``access_log``: ``True`` logs each request in the server's log,
    ``False`` logs nothing, a path writes the lines to that file
    (:class:`AccessLogFile`)."""

    requestFactory = BoundedRequest
    _call_later: Any = None

    def __init__(self, resource, reactor=None, access_log: Union[bool, str] = True,
                 **kw: Any) -> None:
        if isinstance(access_log, str):
            kw["logPath"] = access_log
        super().__init__(resource, logFormatter=masked_log_formatter, reactor=reactor, **kw)
        self.displayTracebacks = False
        self.access_log = access_log

    def _openLogFile(self, path):
        return AccessLogFile(path, self.reactor)

    #: where 4xx and 5xx answers are counted (presence.core.counters), if anywhere
    counters: Any = None

    def log(self, request) -> None:
        """The access log line of ``request``, unless turned off or the
        request is marked ``quiet`` (a media packet's post: counted by its
        route instead); a 4xx or 5xx answer is counted by route family."""
        if request.code >= 400 and self.counters is not None:
            path = request.path
            self.counters.http_error(path[1:].split(b"/", 1)[0].decode("ascii", "replace")
                                     if path[:1] == b"/" else "", request.code)
        if self.access_log and not getattr(request, "quiet", False):
            super().log(request)

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        # HTTPFactory hands every connection a bound method of its own
        # (``reactor.callLater``, for the idle timeout); one shared is enough
        call_later = self._call_later
        if call_later is None or getattr(call_later, "__self__", None) is not self.reactor:
            call_later = self._call_later = self.reactor.callLater
        channel.callLater = call_later
        return channel


def error_answer(request: server.Request, error: ClientError) -> tuple:
    """``(status, {"error": message})`` of a client error, with its
    ``Retry-After`` header set when it has one."""
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        request.setHeader(b"retry-after", b"%d" % max(1, math.ceil(retry_after)))
    return error.status, {"error": error.message}


def write_json(request: server.Request, status: int, body: Any) -> bytes:
    """Set status and JSON content type; return the encoded body."""
    request.setResponseCode(status)
    data = b""
    if body is not None:
        request.setHeader(b"content-type", b"application/json")
        data = json.dumps(body).encode("utf-8")
    return data


def params(request: server.Request) -> Dict[str, Any]:
    """The request's parameters: query string, then form or JSON body, each
    name and value decoded once, here, for every route.

    Raises :class:`~presence.errors.BadRequest` (400) on a broken body, on
    bytes that are not UTF-8, on text that is not Unicode scalar values (a
    lone surrogate, written ``\\udc00`` in JSON), on JSON nested deeper than
    :data:`MAX_JSON_DEPTH` or with a number longer than
    :data:`MAX_JSON_NUMBER` characters, ``NaN`` or ``Infinity``.
    """
    out: Dict[str, Any] = {}
    for key, values in (request.args or {}).items():
        if values:
            out[_text(key, "parameter names")] = _text(values[0], "parameters")
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype == b"application/json" and request.content is not None:
        request.content.seek(0)
        raw = request.content.read()
        if raw.strip():
            for key, value in _json_object(raw).items():
                if value is not None and not isinstance(value, str):
                    raise BadRequest(f"the field {quoted(key)} must be a string")
                if not valid_text(key) or (value is not None and not valid_text(value)):
                    raise BadRequest(f"the field {quoted(key)} is not valid Unicode text"
                                     " (a lone surrogate)")
                out[key] = value
    return out


def quoted(value: str, limit: int = QUOTE) -> str:
    """``value`` for an error message: at most ``limit`` characters, as a
    Python literal (escapes control characters and lone surrogates)."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return ascii(text)


def _json_object(raw: bytes) -> Dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the JSON body is not UTF-8")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = _DECODER.decode(text)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object")
    return body


def _json_number(literal: str) -> str:
    """A JSON number is kept as the text it was written as (parameters are
    text): nothing to convert, nothing too large to convert."""
    if len(literal) > MAX_JSON_NUMBER:
        raise BadRequest(f"a number in the JSON body is longer than {MAX_JSON_NUMBER}"
                         " characters")
    return literal


def _json_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number")


#: one decoder for every body (``json.loads`` with hooks builds one per call)
_DECODER = json.JSONDecoder(parse_int=_json_number, parse_float=_json_number,
                            parse_constant=_json_constant)
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped)."""
    depth = deepest = 0
    for token in _JSON_TOKENS.finditer(text):
        c = token.group()
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    break
        elif c in "]}":
            depth -= 1
    return deepest


def _text(value: bytes, what: str = "parameters") -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} must be UTF-8 text")


def client_address(request: server.Request) -> tuple:
    addr = request.getClientAddress()
    return getattr(addr, "host", "") or "", getattr(addr, "port", 0) or 0
