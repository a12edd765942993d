"""SIP messages: parsing and serialising (RFC 3261 sections 7, 18.3, 20, 25).

A :class:`Request` or :class:`Response` keeps its header fields as an ordered
list of ``(name, value)`` pairs exactly as received (names in their original
spelling, values with surrounding white space removed, folded lines joined),
so that a proxy changes only what it must: it inserts or removes a ``Via``,
a ``Record-Route`` or a ``Route``, decrements ``Max-Forwards``, rewrites a
``Contact``.  Lookups go by the canonical lower-case long name (``v`` and
``Via`` are the same header).  :meth:`Message.to_bytes` writes ``CRLF`` line
ends and always a ``Content-Length`` equal to the body's length in bytes.

:func:`parse` takes one whole message (a UDP datagram, one message cut from a
TCP stream by :class:`StreamFramer`, or an HTTP body) and raises
:class:`ParseError` with the SIP status to answer (``400``, ``505``,
``513``) and, when the start line and some header fields could be read, the
partial message, so that the error response can still copy ``Via``,
``From``, ``To``, ``Call-ID`` and ``CSeq``.

Of :mod:`twisted.protocols.sip` only the tables are used (reason phrases and
compact header names); ``docs/sip.md`` says why its parser is not.

Header values that the proxy must understand get small parsers here:
:class:`Via` (sent-by, parameters in order, IPv6 hosts), :class:`SipURI`
(``sip:``/``sips:`` URIs, parameters in order) and :class:`NameAddr`
(``"Name" <uri>;params`` as in From, To, Contact, Route, Record-Route).
Each of them serialises back to the same text when nothing was changed.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

from twisted.protocols.sip import longHeaders, statusCodes

CRLF = b"\r\n"
SIP_VERSION = "SIP/2.0"
#: the largest message taken from any transport or the tunnel (513 beyond)
MAX_MESSAGE = 32 * 1024
#: the largest header section of a stream message before its end is seen
MAX_HEAD = 16 * 1024
#: header fields per message (513 beyond)
MAX_HEADERS = 150
MAGIC_COOKIE = "z9hG4bK"

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_HEADER_NAME = _TOKEN
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:\S+\Z")
_FOLD = re.compile(r"\r?\n[ \t]+")
_SENT_PROTOCOL = re.compile(
    r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(\S+)\s*\Z", re.I)

#: headers whose values may be comma-separated lists that a proxy splits
LIST_HEADERS = frozenset({"via", "route", "record-route", "contact"})
#: canonical spelling of header names this module writes
CANONICAL = {
    "via": "Via", "route": "Route", "record-route": "Record-Route",
    "max-forwards": "Max-Forwards", "content-length": "Content-Length",
    "call-id": "Call-ID", "cseq": "CSeq", "from": "From", "to": "To",
    "contact": "Contact", "allow": "Allow", "unsupported": "Unsupported",
    "retry-after": "Retry-After", "server": "Server", "user-agent": "User-Agent",
    "content-type": "Content-Type", "www-authenticate": "WWW-Authenticate",
}


def canonical(name: str) -> str:
    """The lower-case long form of a header name (``v`` -> ``via``)."""
    lowered = name.lower()
    return longHeaders.get(lowered, lowered)


def reason_phrase(code: int) -> str:
    return statusCodes.get(code, "Unknown")


class ParseError(ValueError):
    """A message that cannot be taken.

    ``status`` is the SIP response a server answers with (when the message
    is a request and enough of it was read to address a response);
    ``partial`` is what could be read, or None.
    """

    def __init__(self, reason: str, status: int = 400,
                 partial: "Optional[Message]" = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial


# -- the messages --------------------------------------------------------------

class Message:
    """Header fields in order and a body (bytes)."""

    def __init__(self, headers: Iterable[Tuple[str, str]] = (), body: bytes = b"") -> None:
        self.headers: List[Tuple[str, str]] = list(headers)
        self.body = body

    # lookups ---------------------------------------------------------------

    def get(self, name: str) -> Optional[str]:
        """The first field of header ``name``, or None."""
        key = canonical(name)
        for n, v in self.headers:
            if canonical(n) == key:
                return v
        return None

    def get_all(self, name: str) -> List[str]:
        """Every field of header ``name``, in order."""
        key = canonical(name)
        return [v for n, v in self.headers if canonical(n) == key]

    def values(self, name: str) -> List[str]:
        """Every value of a list header (``Via``, ``Route`` ...), comma-split."""
        out: List[str] = []
        for field in self.get_all(name):
            out.extend(split_list(field))
        return out

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    # changes ---------------------------------------------------------------

    def _positions(self, name: str) -> List[int]:
        key = canonical(name)
        return [i for i, (n, _) in enumerate(self.headers) if canonical(n) == key]

    def remove(self, name: str) -> None:
        key = canonical(name)
        self.headers = [(n, v) for n, v in self.headers if canonical(n) != key]

    def set(self, name: str, value: str) -> None:
        """One field ``name: value`` where the first one was (else at the end)."""
        self.set_values(name, [value])

    def set_values(self, name: str, values: Sequence[str]) -> None:
        """Replace header ``name`` by one field per value, where its first
        field was (at the end if it had none; nothing if ``values`` is
        empty)."""
        key = canonical(name)
        spelled = CANONICAL.get(key, name)
        out: List[Tuple[str, str]] = []
        placed = False
        for n, v in self.headers:
            if canonical(n) == key:
                if not placed:
                    placed = True
                    if len(n) > 1:
                        spelled = n
                    out.extend((spelled, value) for value in values)
                continue
            out.append((n, v))
        if not placed:
            out.extend((spelled, value) for value in values)
        self.headers = out

    def prepend(self, name: str, value: str) -> None:
        """Put ``value`` first among the values of list header ``name`` (a
        new field before the first one, or the first header of all)."""
        positions = self._positions(name)
        if positions:
            at = positions[0]
        else:  # a new header goes after the Via fields
            vias = self._positions("via") if canonical(name) != "via" else []
            at = vias[-1] + 1 if vias else 0
        self.headers.insert(at, (CANONICAL.get(canonical(name), name), value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((CANONICAL.get(canonical(name), name), value))

    def pop_first_value(self, name: str) -> Optional[str]:
        """Remove and return the first value of list header ``name``."""
        values = self.values(name)
        if not values:
            return None
        self.set_values(name, values[1:])
        return values[0]

    # common fields -----------------------------------------------------------

    @property
    def call_id(self) -> Optional[str]:
        return self.get("call-id")

    @property
    def cseq(self) -> Tuple[int, str]:
        """``(number, method)``; the message was checked by :func:`parse`."""
        return parse_cseq(self.get("cseq") or "")

    def top_via(self) -> Optional["Via"]:
        vias = self.values("via")
        return Via.parse(vias[0]) if vias else None

    def set_top_via(self, via: "Via") -> None:
        vias = self.values("via")
        self.set_values("via", [str(via)] + vias[1:])

    def tag(self, header: str) -> Optional[str]:
        value = self.get(header)
        if value is None:
            return None
        try:
            return NameAddr.parse(value).param("tag")
        except ValueError:
            return None

    # serialising -------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def head_lines(self) -> List[str]:
        lines = [self.start_line()]
        for n, v in self.headers:
            if canonical(n) != "content-length":
                lines.append(f"{n}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return lines

    def to_bytes(self) -> bytes:
        """The message with ``CRLF`` line ends and a right Content-Length."""
        return ("\r\n".join(self.head_lines()) + "\r\n\r\n").encode("utf-8") + self.body

    def to_text(self) -> str:
        """The message as frame text: lines joined by ``\\n`` (the body's
        ``CRLF`` too).  The body must be UTF-8 text (see :func:`text_body`)."""
        body = self.body.decode("utf-8").replace("\r\n", "\n")
        return "\n".join(self.head_lines()) + "\n\n" + body

    def copy(self) -> "Message":
        raise NotImplementedError


class Request(Message):
    def __init__(self, method: str, uri: str, headers: Iterable[Tuple[str, str]] = (),
                 body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    is_request = True

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def copy(self) -> "Request":
        return Request(self.method, self.uri, self.headers, self.body)

    def __repr__(self) -> str:
        return f"<SIP {self.method} {self.uri}>"


class Response(Message):
    def __init__(self, code: int, reason: Optional[str] = None,
                 headers: Iterable[Tuple[str, str]] = (), body: bytes = b"") -> None:
        super().__init__(headers, body)
        self.code = code
        self.reason = reason_phrase(code) if reason is None else reason

    is_request = False

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.code} {self.reason}"

    def copy(self) -> "Response":
        return Response(self.code, self.reason, self.headers, self.body)

    def __repr__(self) -> str:
        return f"<SIP {self.code} {self.reason}>"


# -- parsing ----------------------------------------------------------------------

def head_end(data: bytes) -> Tuple[int, int]:
    """``(end of the header section, start of the body)`` in ``data``, or
    ``(-1, -1)``.  ``CRLF CRLF`` ends it; bare ``LF LF`` is taken too."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return -1, -1
    if lf < 0 or (crlf >= 0 and crlf < lf):
        return crlf, crlf + 4
    return lf, lf + 2


def parse(data: bytes, *, stream: bool = False) -> Message:
    """One whole message.

    ``stream``: the message came from a stream transport, where
    ``Content-Length`` is required.  Without it (datagrams, the tunnel) a
    missing ``Content-Length`` means the body is the rest of the data; a
    longer rest is cut to ``Content-Length``, a shorter one is an error.
    """
    data = data.lstrip(b"\r\n")
    if not data:
        raise ParseError("empty message")
    end, body_at = head_end(data)
    if end < 0:
        # no end of the header section: a truncated message
        head, body = data.rstrip(b"\r\n"), None
    else:
        head, body = data[:end], data[body_at:]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # answerable (400) when the start line and a Via can be read
        raise ParseError("the header section is not UTF-8", partial=_partial(head))
    text = _FOLD.sub(" ", text)
    lines = text.replace("\r\n", "\n").split("\n")
    version_error = None
    try:
        message = _start_line(lines[0])
    except ParseError as e:
        if e.status != 505 or e.partial is None:
            raise
        version_error, message = e, e.partial
    too_many = len(lines) - 1 > MAX_HEADERS
    for line in lines[1:MAX_HEADERS + 1]:
        name, colon, value = line.partition(":")
        name = name.strip(" \t")
        if not colon or not _HEADER_NAME.match(name):
            raise ParseError(f"malformed header line {line[:40]!r}", partial=message)
        if "\r" in value or "\x00" in value:
            raise ParseError("control characters in a header value", partial=message)
        message.headers.append((name, value.strip(" \t")))
    if version_error is not None:
        raise ParseError(version_error.reason, 505, message)
    if len(data) > MAX_MESSAGE or too_many:
        raise ParseError("message too large", 513, message)
    if body is None:
        raise ParseError("truncated message: no empty line after the header fields",
                         partial=message)
    lengths = {v.strip() for v in message.get_all("content-length")}
    if len(lengths) > 1:
        raise ParseError("conflicting Content-Length fields", partial=message)
    if lengths:
        raw = lengths.pop()
        if not raw.isdigit() or len(raw) > 9:
            raise ParseError("Content-Length is not a number", partial=message)
        length = int(raw)
        if length > len(body):
            raise ParseError("the body is shorter than Content-Length", partial=message)
        body = body[:length]
    elif stream:
        raise ParseError("Content-Length is required on stream transports", partial=message)
    message.body = body
    _check(message)
    return message


def _start_line(line: str) -> Message:
    parts = line.split(" ")
    if len(parts) >= 2 and parts[0].upper() == SIP_VERSION:
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise ParseError(f"bad status code {code[:10]!r}")
        return Response(int(code), " ".join(parts[2:]))
    if len(parts) != 3:
        raise ParseError(f"malformed start line {line[:60]!r}")
    method, uri, version = parts
    if not _TOKEN.match(method):
        raise ParseError(f"malformed method {method[:20]!r}")
    if version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise ParseError(f"version {version[:12]!r} not supported", 505,
                             Request(method, uri if _SCHEME.match(uri) else "sip:invalid"))
        raise ParseError(f"malformed start line {line[:60]!r}")
    if not _SCHEME.match(uri):
        raise ParseError(f"malformed Request-URI {uri[:60]!r}")
    return Request(method, uri)


def _check(message: Message) -> None:
    """The header fields every message needs, and their syntax."""
    for name in ("via", "from", "to", "call-id", "cseq"):
        if not message.has(name):
            raise ParseError(f"missing {CANONICAL.get(name, name)} header", partial=message)
    if not message.call_id or " " in message.call_id.strip():
        raise ParseError("malformed Call-ID", partial=message)
    try:
        number, method = message.cseq
    except ValueError as e:
        raise ParseError(str(e), partial=message)
    for via in message.values("via"):
        try:
            Via.parse(via)
        except ValueError as e:
            raise ParseError(f"malformed Via: {e}", partial=message)
    for name in ("from", "to"):
        try:
            NameAddr.parse(message.get(name) or "")
        except ValueError as e:
            raise ParseError(f"malformed {name.capitalize()}: {e}", partial=message)
    if isinstance(message, Request):
        if method != message.method:
            raise ParseError("the CSeq method is not the request's method", partial=message)
        mf = message.get("max-forwards")
        if mf is not None and not (mf.isdigit() and len(mf) <= 3 and int(mf) <= 255):
            raise ParseError("malformed Max-Forwards", partial=message)


def parse_cseq(value: str) -> Tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10 \
            or int(parts[0]) >= 2 ** 31 or not _TOKEN.match(parts[1]):
        raise ValueError("malformed CSeq")
    return int(parts[0]), parts[1]


def text_body(message: Message) -> bool:
    """Whether the body is UTF-8 text that can travel in a frame."""
    try:
        message.body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- framing a stream ----------------------------------------------------------

class StreamFramer:
    """Cuts a byte stream (TCP) into whole messages by ``Content-Length``.

    :meth:`feed` returns the messages' bytes complete so far.  A header
    section longer than :data:`MAX_HEAD`, a missing or bad
    ``Content-Length``, or a body over :data:`MAX_MESSAGE` raise
    :class:`ParseError` (with the partial message when there is one): the
    stream cannot be framed any more and must be closed after the answer.
    Leading empty lines (RFC 5626 keep-alives) are skipped and counted in
    ``pings``.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.pings = 0
        self._need: Optional[int] = None  # bytes of the message being read

    def feed(self, data: bytes) -> List[bytes]:
        self.buffer += data
        out: List[bytes] = []
        while True:
            if self._need is None:
                stripped = self.buffer.lstrip(b"\r\n")
                if len(stripped) != len(self.buffer):
                    if b"\r\n\r\n" in self.buffer[:len(self.buffer) - len(stripped)]:
                        self.pings += 1
                    self.buffer = stripped
                if not self.buffer:
                    break
                end, body_at = head_end(self.buffer)
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        raise ParseError("header section too large", 513,
                                         _partial(self.buffer))
                    break
                head = self.buffer[:end]
                length = _content_length(head)
                if body_at + length > MAX_MESSAGE:
                    raise ParseError("message too large", 513, _partial(head))
                self._need = body_at + length
            if len(self.buffer) < self._need:
                break
            out.append(self.buffer[:self._need])
            self.buffer = self.buffer[self._need:]
            self._need = None
        return out


def _content_length(head: bytes) -> int:
    found: Optional[int] = None
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            raw = value.strip()
            if not raw.isdigit() or len(raw) > 9:
                raise ParseError("Content-Length is not a number", partial=_partial(head))
            if found is not None and found != int(raw):
                raise ParseError("conflicting Content-Length fields", partial=_partial(head))
            found = int(raw)
    if found is None:
        raise ParseError("Content-Length is required on stream transports",
                         partial=_partial(head))
    return found


def _partial(head: bytes) -> Optional[Message]:
    """Whatever start line and whole header lines can be read from ``head``."""
    text = head[:MAX_HEAD].decode("utf-8", "replace")
    lines = _FOLD.sub(" ", text).replace("\r\n", "\n").split("\n")
    if len(head) > MAX_HEAD and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    try:
        message = _start_line(lines[0].lstrip("\r\n"))
    except ParseError:
        return None
    for line in lines[1:MAX_HEADERS + 1]:
        name, colon, value = line.partition(":")
        if colon and _HEADER_NAME.match(name.strip()):
            message.headers.append((name.strip(), value.strip()))
    return message


# -- header values -------------------------------------------------------------------

def split_list(value: str) -> List[str]:
    """Split a header value on commas outside quotes and angle brackets."""
    out: List[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


Params = List[Tuple[str, Optional[str]]]


def parse_params(text: str) -> Params:
    """``;a=1;b;c=2`` -> ``[("a", "1"), ("b", None), ("c", "2")]``."""
    out: Params = []
    for part in _split_params(text):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not name or not _TOKEN.match(name):
            raise ValueError(f"bad parameter {part[:30]!r}")
        out.append((name, value.strip() if eq else None))
    return out


def _split_params(text: str) -> List[str]:
    parts: List[str] = []
    quoted = False
    cur = ""
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            if cur.strip():
                parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def format_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _param(params: Params, name: str) -> Optional[str]:
    lowered = name.lower()
    for n, v in params:
        if n.lower() == lowered:
            return v if v is not None else ""
    return None


def _with_param(params: Params, name: str, value: Optional[str]) -> Params:
    lowered = name.lower()
    out = [(n, v) for n, v in params if n.lower() != lowered]
    out.append((name, value))
    return out


def split_hostport(text: str) -> Tuple[str, Optional[int]]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("unclosed IPv6 reference")
        host, rest = text[:close + 1], text[close + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after an IPv6 reference")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            port_text = None
    if not host or any(c in host for c in " \t<>\"@;,?"):
        raise ValueError(f"bad host {host[:40]!r}")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text[:10]!r}")
        port = int(port_text)
    return host, port


def bare_host(host: str) -> str:
    """A host without the brackets of an IPv6 reference, lower-case."""
    return host[1:-1].lower() if host.startswith("[") else host.lower()


def format_hostport(host: str, port: Optional[int]) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


class Via:
    """One ``Via`` value: ``SIP/2.0/UDP host:port;branch=...;received=...``."""

    def __init__(self, transport: str, host: str, port: Optional[int] = None,
                 params: Optional[Params] = None) -> None:
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params: Params = list(params or [])

    @classmethod
    def parse(cls, value: str) -> "Via":
        head, _, rest = value.strip().partition(";")
        m = _SENT_PROTOCOL.match(head)
        if m is None:
            raise ValueError(f"bad sent-protocol or sent-by {head[:40]!r}")
        host, port = split_hostport(m.group(2))
        return cls(m.group(1), host, port, parse_params(rest) if rest else [])

    def param(self, name: str) -> Optional[str]:
        """A parameter's value; ``""`` for a parameter without value."""
        return _param(self.params, name)

    def set_param(self, name: str, value: Optional[str]) -> None:
        """Set a parameter (where it was; else at the end)."""
        lowered = name.lower()
        for i, (n, _) in enumerate(self.params):
            if n.lower() == lowered:
                self.params[i] = (n, value)
                return
        self.params.append((name, value))

    @property
    def branch(self) -> Optional[str]:
        return self.param("branch")

    @property
    def sent_by(self) -> Tuple[str, Optional[int]]:
        return bare_host(self.host), self.port

    def __str__(self) -> str:
        return (f"SIP/2.0/{self.transport} {format_hostport(self.host, self.port)}"
                + format_params(self.params))


class SipURI:
    """``sip:user:password@host:port;params?headers`` (also ``sips:``)."""

    def __init__(self, host: str, user: Optional[str] = None, port: Optional[int] = None,
                 params: Optional[Params] = None, headers: str = "",
                 scheme: str = "sip", password: Optional[str] = None) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params: Params = list(params or [])
        self.headers = headers

    @classmethod
    def parse(cls, text: str) -> "SipURI":
        scheme, colon, rest = text.strip().partition(":")
        if not colon or scheme.lower() not in ("sip", "sips"):
            raise ValueError(f"not a SIP URI: {text[:40]!r}")
        rest, _, headers = rest.partition("?")
        user = password = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            user, pcolon, pw = userinfo.partition(":")
            password = pw if pcolon else None
            if not user:
                raise ValueError("empty user part")
        hostport, semi, params = rest.partition(";")
        host, port = split_hostport(hostport)
        return cls(host, user, port, parse_params(params) if semi else [], headers,
                   scheme.lower(), password)

    def param(self, name: str) -> Optional[str]:
        return _param(self.params, name)

    def with_param(self, name: str, value: Optional[str]) -> "SipURI":
        return SipURI(self.host, self.user, self.port, _with_param(self.params, name, value),
                      self.headers, self.scheme, self.password)

    def without_params(self) -> "SipURI":
        return SipURI(self.host, self.user, self.port, [], "", self.scheme, self.password)

    @property
    def transport(self) -> str:
        value = self.param("transport")
        return (value or "udp").upper()

    def __str__(self) -> str:
        user = ""
        if self.user is not None:
            user = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        text = f"{self.scheme}:{user}{format_hostport(self.host, self.port)}" \
            + format_params(self.params)
        return text + (f"?{self.headers}" if self.headers else "")


class NameAddr:
    """``"Display" <uri>;params`` or ``uri;params`` (From, To, Contact,
    Route, Record-Route).  The URI is kept as text; :meth:`sip_uri` parses
    it when it is a SIP URI."""

    def __init__(self, uri: str, display: str = "", params: Optional[Params] = None,
                 angle: bool = True) -> None:
        self.uri = uri
        self.display = display
        self.params: Params = list(params or [])
        self.angle = angle

    @classmethod
    def parse(cls, value: str) -> "NameAddr":
        value = value.strip()
        if not value:
            raise ValueError("empty address")
        lt = _find_unquoted(value, "<")
        if lt >= 0:
            gt = value.find(">", lt)
            if gt < 0:
                raise ValueError("unclosed '<'")
            display = value[:lt].strip()
            uri = value[lt + 1:gt].strip()
            rest = value[gt + 1:].strip()
            if rest and not rest.startswith(";"):
                raise ValueError("junk after '>'")
            params = parse_params(rest) if rest else []
            angle = True
        else:
            if value == "*":
                return cls("*", angle=False)
            uri, _, rest = value.partition(";")
            uri = uri.strip()
            display = ""
            params = parse_params(rest) if rest else []
            angle = False
        if not _SCHEME.match(uri):
            raise ValueError(f"bad URI {uri[:40]!r}")
        return cls(uri, display, params, angle)

    def sip_uri(self) -> Optional[SipURI]:
        try:
            return SipURI.parse(self.uri)
        except ValueError:
            return None

    def param(self, name: str) -> Optional[str]:
        return _param(self.params, name)

    def __str__(self) -> str:
        if self.uri == "*" and not self.angle:
            return "*"
        display = f"{self.display} " if self.display else ""
        uri = f"<{self.uri}>" if self.angle or self.params or self.display else self.uri
        return display + uri + format_params(self.params)


def _find_unquoted(value: str, ch: str) -> int:
    quoted = False
    escaped = False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
    return -1


def make_response(request: Request, code: int, reason: Optional[str] = None,
                  to_tag: Optional[str] = None,
                  extra: Iterable[Tuple[str, str]] = ()) -> Response:
    """A response to ``request`` (RFC 3261 8.2.6): its Via fields, From,
    Call-ID, CSeq and To (with ``to_tag`` added when the To has no tag and
    the response is not ``100``)."""
    response = Response(code, reason)
    for name in ("via", "from", "to", "call-id", "cseq"):
        for value in request.get_all(name):
            if name == "to" and to_tag and code > 100:
                value = _add_tag(value, to_tag)
            response.add(CANONICAL[name], value)
    for name, value in extra:
        response.add(name, value)
    return response


def ack_for(invite: Request, response: Response) -> Request:
    """RFC 3261 17.1.1.3: the ACK of a non-2xx final response to ``invite``,
    sent by the client transaction (same Via, Route set, Call-ID and CSeq
    number; the To of the response)."""
    ack = Request("ACK", invite.uri)
    ack.add("Via", invite.values("via")[0])
    for value in invite.get_all("route"):
        ack.add("Route", value)
    ack.add("Max-Forwards", "70")
    ack.add("From", invite.get("from") or "")
    ack.add("To", response.get("to") or "")
    ack.add("Call-ID", invite.call_id or "")
    ack.add("CSeq", f"{invite.cseq[0]} ACK")
    return ack


def _add_tag(value: str, tag: str) -> str:
    try:
        address = NameAddr.parse(value)
    except ValueError:
        return value
    if address.param("tag") is not None:
        return value
    return value + f";tag={tag}"
