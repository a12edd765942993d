"""Property: no input of a stranger makes the web front-end answer 5xx or log
an error (issue 11, items 4 and 6).

Every parser a request reaches is fed arbitrary bytes, numbers (5,000
digits, past 2^63, NaN), text with lone surrogates, and deep nesting: every
route of the JSON API, ``/chat``, ``/ack``, ``/initchat``, ``/jchat``'s
query parameters and the pages' forms, through the real ``PresenceSite``
(``BoundedRequest``, the access log, the pages) over a ``StringTransport``.
Any answer is fine as long as it is not a 5xx, a JSON error is an object
with a readable ``"error"``, and nothing was logged at error level or above
(no traceback).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, globalLogPublisher

from helpers import PASSWORD, RawConnection, World, dechunk, split_response
from presence.pages.app import Pages
from presence.web.site import make_site

ORIGIN = "http://presence.test"

#: (method, path) of every route a stranger can reach; ``{n}`` is a name or id
ROUTES: List[Tuple[str, str]] = [
    ("POST", "/api/register"), ("POST", "/api/login"), ("POST", "/api/guest"),
    ("POST", "/api/logout"), ("GET", "/api/session"), ("POST", "/api/groups"),
    ("POST", "/api/groups/{n}/join"), ("POST", "/api/groups/{n}/leave"),
    ("POST", "/api/contacts"), ("GET", "/api/contacts"), ("POST", "/api/contacts/remove"),
    ("POST", "/api/active"), ("POST", "/api/aliases"), ("GET", "/api/presence/{n}"),
    ("GET", "/initchat"), ("POST", "/initchat"), ("POST", "/chat"), ("POST", "/ack"),
    ("POST", "/api/messages"), ("GET", "/api/messages"), ("POST", "/api/messages/{n}/read"),
    ("GET", "/api/welcome"), ("GET", "/api/stats"), ("GET", "/jchat"),
    # the pages
    ("GET", "/"), ("GET", "/{n}"), ("GET", "/u/{n}"), ("GET", "/call"), ("POST", "/call"),
    ("POST", "/call/live"), ("POST", "/messages"), ("GET", "/messages/left"),
    ("GET", "/login"), ("POST", "/login"), ("GET", "/register"), ("POST", "/register"),
    ("GET", "/logout"), ("POST", "/logout"), ("GET", "/home"), ("POST", "/home/live"),
    ("POST", "/home/read"), ("GET", "/settings"), ("POST", "/settings/{n}"),
]
#: every parameter name a handler reads, so that values reach its checks
NAMES = ["me", "id", "sessionId", "to", "msg", "seq", "ack", "mode", "wait", "username",
         "password", "password2", "email", "phone", "wireless", "name", "contact", "group",
         "alias", "text", "next", "done"]
ACTIONS = ["profile", "alias", "active", "group-create", "group-join", "group-leave",
           "contact-add", "contact-remove"]

# -- values ------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-2 ** 70, max_value=2 ** 70).map(str),
    st.sampled_from(["1" * 5000, str(2 ** 63), str(2 ** 63 - 1), "-1", "NaN", "1e999",
                     "0x10", "１２", "007", ""]),
)
texts = st.one_of(
    st.text(max_size=30),  # lone surrogates included
    st.sampled_from(["\udc00", "a\ud800b", "\x00", "alice", "bob", "club", "guest.x",
                     "x" * 5000]),
)
words = st.sampled_from(["alice", "bob", "club", "1", "0", "stream", "poll", "hello",
                         PASSWORD, "profile", "/home", "+4917012345", "a@b.c"])
raw_bytes = st.binary(max_size=40)
# most values are good enough to get past the parsers to the handlers' checks
values = st.one_of(
    words.map(str.encode), words.map(str.encode),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20).map(str.encode),
    numbers.map(lambda s: s.encode("utf-8")),
    texts.map(lambda s: s.encode("utf-8", "surrogatepass")), raw_bytes)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)


def form(pairs: List[Tuple[bytes, bytes]]) -> bytes:
    return b"&".join(quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode()
                     for k, v in pairs)


@st.composite
def requests(draw: Any) -> Tuple[str, str, bytes, Dict[str, str], bool]:
    method, path = draw(st.sampled_from(ROUTES))
    if "{n}" in path:
        fill = draw(st.one_of(st.sampled_from(ACTIONS + ["alice", "club", "1"]).map(str.encode),
                              values))
        path = path.replace("{n}", quote_from_bytes(fill, safe=b""))
    names = st.one_of(*[st.sampled_from(NAMES).map(str.encode)] * 3, values)
    pairs = st.one_of(st.tuples(names, values),
                      st.tuples(st.sampled_from([b"ack", b"seq", b"wait", b"id"]),
                                numbers.map(str.encode)))
    query = draw(st.lists(pairs, max_size=4))
    creds = draw(st.sampled_from(["none", "params", "cookie", "cookie-same-origin"]))
    headers: Dict[str, str] = {}
    origin = draw(st.sampled_from([None, ORIGIN, "http://presence.test:8081", "null",
                                   "http://\udc00", "http://presence.test:99999"]))
    if origin is not None:
        headers["Origin"] = origin
    if draw(st.integers(0, 9)) == 0:
        headers["Host"] = draw(st.sampled_from(["\udc00", "h\xff", "a b", "", "x:99999"]))
    if draw(st.booleans()):
        headers["Last-Event-ID"] = draw(numbers)[:6000]
    kind = draw(st.sampled_from(["form", "json", "json-raw", "deep", "bytes", "none"]))
    body = b""
    if kind == "form":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = form(draw(st.lists(pairs, max_size=5)))
    elif kind == "json":
        headers["Content-Type"] = "application/json"
        obj = draw(st.one_of(st.dictionaries(st.sampled_from(NAMES) | texts, json_values,
                                             max_size=5), json_values))
        body = json.dumps(obj).encode("ascii")  # lone surrogates as \udc00 escapes
    elif kind == "json-raw":
        headers["Content-Type"] = "application/json"
        body = draw(st.one_of(raw_bytes, numbers.map(lambda s: s.encode())))
    elif kind == "deep":
        headers["Content-Type"] = "application/json"
        depth = draw(st.sampled_from([33, 1000, 20000]))
        body = ('{"msg": ' + nested(depth) + "}").encode()
    elif kind == "bytes":
        headers["Content-Type"] = draw(st.sampled_from(
            ["text/plain", "multipart/form-data; boundary=x", "application/json; charset=latin-1"]))
        body = draw(raw_bytes)
    # a request line over Twisted's 16 KB line limit is dropped unanswered
    while len(form(query)) > 12000:
        query.pop()
    target = path + ("?" + form(query).decode() if query else "")
    return method, target, body, headers, creds


# -- the server ----------------------------------------------------------------------

class FuzzWorld(World):
    def __init__(self) -> None:
        super().__init__()
        self.pages = Pages(self.service, domain="presence.test")
        self.site = make_site(self.service, self.config.keepalive, reactor=self.clock,
                              mounts=self.pages.mounts(), default=self.pages.resource())
        self.user("alice")
        self.user("bob")
        self.sid = ""

    def session_id(self) -> str:
        """Alice's live session (a request may have logged her out)."""
        if self.hub.session(self.sid) is None:
            self.sid = self.login("alice").session
        return self.sid

    def send(self, method: str, target: str, body: bytes, headers: Dict[str, str],
             creds: str) -> Tuple[int, Dict[str, str], bytes]:
        sid = self.session_id()
        if creds == "params":
            target += ("&" if "?" in target else "?") + f"me=alice&id={sid}"
        elif creds.startswith("cookie"):
            headers = {**headers, "Cookie": f"presence_session={sid}"}
            if creds == "cookie-same-origin":
                headers["Sec-Fetch-Site"] = "same-origin"
        head = {"Host": "presence.test", **headers}
        if method == "POST" or body:
            head["Content-Length"] = str(len(body))
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass")
        conn = RawConnection(self.site)
        try:
            raw = conn.send(data + body)
        finally:
            conn.close()  # a held heartbeat ends with its connection
        status, hdrs, payload = split_response(raw)
        if hdrs.get("transfer-encoding") == "chunked":
            payload = dechunk(payload) if payload.endswith(b"0\r\n\r\n") else b""
        return status, hdrs, payload


_world: Optional[FuzzWorld] = None


def fuzz_world() -> FuzzWorld:
    global _world
    if _world is None:
        _world = FuzzWorld()
    return _world


JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
# the cases of issue 11, item 6, always tried
@example(("POST", "/chat", b'{"to": "bob", "msg": ' + nested(20000).encode() + b"}", JSON,
          "params"))
@example(("GET", "/jchat?ack=" + "1" * 5000, b"", {}, "params"))
@example(("POST", "/ack?ack=" + "1" * 5000, b"", {}, "params"))
@example(("POST", "/chat", b"to=bob&msg=x&ack=" + b"9" * 5000, FORM, "params"))
@example(("POST", f"/api/messages/{2 ** 63}/read", b"", {}, "params"))
@example(("POST", "/api/login", b'{"username": "alice", "password": "\\udc00"}', JSON,
          "none"))
@example(("POST", "/api/register", b"username=carol&password=ab%ED%B0%80cdefg", FORM, "none"))
@example(("POST", "/chat", b'{"to": "bob", "msg": "\\udc00"}', JSON, "params"))
@example(("POST", "/api/messages", b'{"to": "bob", "text": "\\ud800x"}', JSON, "params"))
@example(("POST", "/login", b"username=alice&password=%ED%B0%80", FORM, "none"))
def test_no_input_makes_a_5xx_or_logs_an_error(request):
    world = fuzz_world()
    errors: List[dict] = []

    def observe(event: dict) -> None:
        level = event.get("log_level")
        if (level is not None and level >= LogLevel.error) or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        status, headers, body = world.send(*request)
        world.advance(1)  # timers a request started (poll waits, the pacer)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert status < 500, (status, request[:2], body[:300])
    assert not errors, [e.get("log_format") or e for e in errors]
    if headers.get("content-type") == "application/json" and status >= 400 and body:
        error = json.loads(body)["error"]
        assert isinstance(error, str) and error and len(error) < 300, error
