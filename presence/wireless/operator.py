"""The simulator's HTTP face on ``--smsc``: the operator API and the handset
API.  Wire formats in docs/wireless.md; the network's rules in
:mod:`presence.wireless.simulator`.

Operator API (shaped like Kannel's smsbox and push proxy gateway)::

    GET|POST /cgi-bin/sendsms?username=&password=&from=&to=&text=
             [&dlr-mask=&dlr-url=&validity=&charset=]
        202 "0: Accepted for delivery"
        403 "Authorization failed for sendsms"
        400 "Missing receiver number, rejected" (and Kannel's other words)
    POST /cgi-bin/sendsms  Content-Type: text/plain, body = the text,
        X-Kannel-Username/-Password/-To/-From/-DLR-Mask/-DLR-URL headers
    POST /wappush?username=&password=&to=[&push-id=&dlr-mask=&dlr-url=]
        body: a Service Indication or Service Loading (text or WBXML), or
        the form field ``si``; or a PAP 2.0 multipart/related push (the
        control document names push-id, addresses and timing); answered
        with a PAP push-response (202, code 1001) or its error codes
        (2000, 2001, 2002, 2007, 3006).

Handset API (JSON), every call with ``Authorization: Bearer <the handset's
secret>`` (403, the same answer for a number with no secret)::

    GET  /handset/<number>/poll?after=<seq>&wait=<s>
    POST /handset/<number>/send   to, text
    POST /handset/<number>/detach
    GET  /handset/<number>

Wrong operator passwords are counted per client address, wrong handset
secrets per address and number: past ``AUTH_FAILURES`` in a row (then one
per ``1 / AUTH_RATE`` seconds) the address (for that number) gets ``429``
whatever it sends.
"""

from __future__ import annotations

import hmac
import json
import re
import uuid
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple

from klein import Klein
from twisted.logger import Logger
from twisted.web import server
from werkzeug.exceptions import HTTPException

from presence.core.ratelimit import RateLimiter
from presence.web.http import client_address
from presence.wireless import kannel_xml, numbers, pap, si, sl, sms, wbxml
from presence.wireless.dlr import DlrPolicy, DlrRefused
from presence.wireless.pap import PapError
from presence.wireless.simulator import (DEFAULT_WAIT, MAX_WAIT, Simulator, SimulatorError,
                                         SmsOptions)

MAX_RECEIVERS = 100
#: wrong passwords or secrets one address may send in a row, and the refill
AUTH_FAILURES = 10
AUTH_RATE = 1 / 6
#: the charsets sendsms accepts for ``text`` (text codecs only)
CHARSETS = frozenset({"utf-8", "utf8", "iso-8859-1", "latin-1", "latin1", "iso-8859-15",
                      "windows-1252", "cp1252", "us-ascii", "ascii", "utf-16", "utf-16be",
                      "utf-16le", "ucs-2", "ucs2"})
HANDSET_DENIED = "handset authentication failed: give this number's secret"
#: (number, secret) -> whether the secret is that handset's; None: deny all
HandsetAuth = Callable[[str, Optional[str]], Awaitable[bool]]
_LEADING_INT = re.compile(r"\s*([+-]?[0-9]{1,9})")
FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data", b"")
#: the sendsms fields the POST interface takes from X-Kannel-<field> headers
KANNEL_FIELDS = ("username", "password", "from", "to", "udh", "smsc", "mclass", "mwi",
                 "coding", "compress", "validity", "deferred", "dlr-mask", "dlr-url",
                 "account", "pid", "alt-dcs", "rpi", "binfo", "priority", "meta-data",
                 "charset")
#: (field, low, high, Kannel's name): Kannel's ranges, -1 meaning not given;
#: validity and deferred (minutes) bounded to a week here
INT_FIELDS = (("mclass", -1, 3, "MClass"), ("pid", -1, 255, "PID"), ("rpi", -1, 2, "RPI"),
              ("alt-dcs", -1, 1, "Alt-DCS"), ("mwi", -1, 7, "MWI"),
              ("coding", -1, 2, "Coding"), ("compress", -1, 1, "Compress"),
              ("validity", -1, 10080, "Validity"), ("deferred", -1, 10080, "Deferred"),
              ("priority", -1, 3, "Priority"))
ACCOUNT_MAX = 64
TEXT_FIELD_MAX = 1024
_SENDER = re.compile(r"[A-Za-z0-9 +._-]{1,20}\Z")
PAP_STATUS = {1001: 202, 2000: 400, 2001: 403, 2002: 400, 2007: 400, 3000: 500, 3006: 400}
#: the push contents the PPG takes: (kind, binary)
PUSH_TYPES = {b"text/vnd.wap.si": ("si", False), b"application/vnd.wap.sic": ("si", True),
              b"text/vnd.wap.sl": ("sl", False), b"application/vnd.wap.slc": ("sl", True),
              b"text/xml": ("si", False), b"application/xml": ("si", False), b"": ("si", False)}

log = Logger()


class Rejected(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _plain(request: server.Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    return text.encode("utf-8")


def _json(request: server.Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"cache-control", b"no-store")
    if body is None:
        return b""
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _raw_args(request: server.Request) -> Dict[str, bytes]:
    out: Dict[str, bytes] = {}
    for key, values in (request.args or {}).items():
        if values:
            out[key.decode("latin-1").lower()] = values[0]
    return out


def _text(value: Optional[bytes], what: str) -> Optional[str]:
    """Strict UTF-8 (which refuses encoded surrogates), else 400."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, f"{what} field misformed, rejected")


def _bearer(request: server.Request) -> Optional[str]:
    header = request.getHeader(b"authorization") or b""
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"bearer" or not value.strip():
        return None
    try:
        return value.strip().decode("ascii")
    except UnicodeDecodeError:
        return None


def _int(value: Optional[str], what: str, low: int, high: int) -> Optional[int]:
    if value is None or value == "":
        return None
    try:
        number = int(value.strip())
    except ValueError:
        raise Rejected(400, f"{what} field misformed, rejected")
    if not low <= number <= high:
        raise Rejected(400, f"{what} field misformed, rejected")
    return number


def _scan(value: Optional[str]) -> int:
    """``value`` as Kannel's ``sscanf(value, "%d")`` reads it: the leading
    integer, or -1 (not given) when there is none; bounded to 9 digits."""
    match = _LEADING_INT.match(value or "")
    return int(match.group(1)) if match else -1


def _charset_param(header: bytes) -> Optional[bytes]:
    for param in header.split(b";")[1:]:
        key, _, value = param.partition(b"=")
        if key.strip().lower() == b"charset":
            return value.strip().strip(b'"')
    return None


def _dlr_url(value: Optional[str], policy: DlrPolicy) -> str:
    if not value:
        return ""
    if len(value) > 2048 or not re.match(r"https?://", value, re.I):
        raise Rejected(400, "DLR-URL field misformed, rejected")
    try:
        policy.check(value)
    except DlrRefused as e:
        raise Rejected(400, f"DLR-URL not allowed: {e}, rejected")
    return value


def receivers(to: str) -> Tuple[List[str], List[str]]:
    """``(allowed, denied)``: the normalised numbers and the malformed words."""
    allowed: List[str] = []
    denied: List[str] = []
    for word in to.split():
        number = numbers.normalize(word)
        if number is None:
            if word not in denied:
                denied.append(word)
        elif number not in allowed:
            allowed.append(number)
    return allowed, denied


class OperatorAPI:
    """The Klein app of the simulator's listener."""

    app = Klein()

    def __init__(self, simulator: Simulator, credentials: Mapping[str, str],
                 handset_auth: Optional[HandsetAuth] = None,
                 dlr_policy: Optional[DlrPolicy] = None,
                 trusted: Optional[Tuple[str, str]] = None) -> None:
        self.sim = simulator
        self.credentials = dict(credentials)
        #: the in-process gateway's own account (random, in memory only): it
        #: is never throttled, so that wrong guesses from the server's own
        #: address (loopback) cannot stop the server's texts
        self.trusted = trusted
        if trusted is not None:
            self.credentials[trusted[0]] = trusted[1]
        self.handset_auth = handset_auth
        self.dlr_policy = dlr_policy if dlr_policy is not None else DlrPolicy()
        self.failures = RateLimiter(capacity=AUTH_FAILURES, rate=AUTH_RATE)
        self._push_ids: "OrderedDict[str, float]" = OrderedDict()

    def _throttled(self, request: server.Request, number: str = "") -> bool:
        return not self.failures.allowed(self._key(request, number), self.sim.clock.seconds())

    def _failed(self, request: server.Request, number: str = "") -> None:
        self.failures.take(self._key(request, number), self.sim.clock.seconds())

    @staticmethod
    def _key(request: server.Request, number: str) -> str:
        """Operator passwords count per address; handset secrets per address
        and number, so that guessing at one number from an address shared by
        many handsets (loopback, a NAT) does not lock the others out."""
        return client_address(request)[0] + (" " + number if number else "")

    def _authorised(self, request: server.Request, user: Optional[str],
                    password: Optional[str]) -> bool:
        """The operator's credentials; a wrong one counts against the address,
        and an address past its bound is refused (Rejected 429) whatever it
        sends, except the trusted account (which no guess can find)."""
        expected = self.credentials.get(user or "")
        given = (password or "").encode("utf-8")
        ok = hmac.compare_digest(given, (expected if expected is not None else "\0").encode())
        ok = ok and expected is not None and password is not None
        if ok and self.trusted is not None and user == self.trusted[0]:
            return True
        if self._throttled(request):
            raise Rejected(429, "Too many failed authorizations from this address, try later")
        if not ok:
            self._failed(request)
        return ok

    # -- sendsms --------------------------------------------------------------

    @app.route("/cgi-bin/sendsms", methods=["GET", "POST", "HEAD"])
    def sendsms(self, request: server.Request) -> bytes:
        if request.method == b"HEAD":
            # a HEAD (curl -I, a link checker) never sends a message
            request.setHeader(b"allow", b"GET, POST")
            return _plain(request, 405, "Only GET and POST send messages")
        try:
            status, text = self._sendsms(request)
        except Rejected as e:
            status, text = e.status, e.text
        except SimulatorError as e:
            status, text = e.status, e.message
        except Exception:
            log.failure("sendsms failed")
            status, text = 500, "Sending failed."
        return _plain(request, status, text)

    def _sendsms_fields(self, request: server.Request
                        ) -> Tuple[Dict[str, Optional[bytes]], bool]:
        """The request's sendsms fields as Kannel reads them: the query (or
        form) variables; in the POST interface (a ``text/plain`` or
        ``application/octet-stream`` body) the body is the text and the
        rest comes from ``X-Kannel-*`` headers, the charset from the
        content type; a ``text/xml`` body is Kannel's XML submit.  True:
        the fields came by the POST (or XML) interface."""
        raw: Dict[str, Optional[bytes]] = dict(_raw_args(request))
        header = request.getHeader(b"content-type") or b""
        ctype = header.split(b";")[0].strip().lower()
        if request.method != b"POST" or ctype in FORM_TYPES:
            return raw, False
        request.content.seek(0)
        body = request.content.read()
        if ctype in (b"text/plain", b"application/octet-stream"):
            raw["text"] = body
            for name in KANNEL_FIELDS:
                value = request.getHeader(b"x-kannel-" + name.encode())
                if value is not None:
                    raw[name] = value.strip()
            if ctype == b"application/octet-stream" and raw.get("coding") is None:
                raw["coding"] = b"1"
        elif ctype == b"text/xml":
            try:
                raw.update(kannel_xml.parse(body))
            except kannel_xml.KannelXmlError as e:
                raise Rejected(400, str(e))
        else:
            raise Rejected(400, "Invalid content-type")
        charset = _charset_param(header)
        if charset is not None and raw.get("charset") is None:
            raw["charset"] = charset
        return raw, True

    def _sendsms(self, request: server.Request) -> Tuple[int, str]:
        raw, posted = self._sendsms_fields(request)

        def field(*names: str) -> Optional[str]:
            for name in names:
                if raw.get(name) is not None:
                    return _text(raw[name], name.capitalize())
            return None

        user, password = field("username", "user"), field("password", "pass")
        if not self._authorised(request, user, password):
            return 403, "Authorization failed for sendsms"
        to = field("to")
        if to is None:
            # Kannel's two wordings: the GET/form interface and the POST one
            return 400, ("Missing receiver(s) number(s), rejected" if posted
                         else "Missing receiver number, rejected")
        if not to.strip():
            return 400, "Empty receiver number not allowed, rejected"
        options, validity, deferred = self._sms_options(raw, field)
        mask = _scan(field("dlr-mask", "dlrmask"))
        url = _dlr_url(field("dlr-url", "dlrurl"), self.dlr_policy)
        if not -1 <= mask <= 63:
            return 400, "DLR-Mask field misformed, rejected"
        sender = field("from") or self.sim.shortcode
        if not _SENDER.match(sender):
            return 400, "Sender field misformed, rejected"
        allowed, denied = receivers(to)
        if len(allowed) > MAX_RECEIVERS:
            return 400, f"Too many receivers (at most {MAX_RECEIVERS}), rejected"
        if not allowed:
            return 400, "Number(s) has/have been denied by white- and/or black-lists."
        text = "" if options.coding == "8bit" else self._sms_text(raw, options)
        if options.coding == "8bit":
            options = replace(options, data=raw.get("text") or b"")
        self.sim.encode(text, options)  # too many parts: refused before any is sent
        for number in allowed:
            self.sim.submit("sms", sender, number, text, dlr_mask=max(mask, 0), dlr_url=url,
                            user=user or "", validity=validity, options=options,
                            deferred=deferred)
        answer = "0: Accepted for delivery"
        if denied:
            answer += " Denied receivers are: " + " ".join(w[:32] for w in denied[:20])
        return 202, answer

    @staticmethod
    def _sms_text(raw: Mapping[str, Optional[bytes]], options: SmsOptions) -> str:
        """The text, decoded by ``charset`` (UTF-8 without one; UTF-16BE for
        ``coding=2`` with a UCS-2 charset)."""
        text = raw.get("text")
        if text is None:
            return ""
        charset = _text(raw.get("charset"), "Charset")
        if not charset:
            return _text(text, "Text") or ""
        name = charset.strip().lower()
        try:
            if name not in CHARSETS:
                raise LookupError(name)
            decoded = text.decode("utf-16-be" if name in ("ucs-2", "ucs2") else name)
        except (LookupError, UnicodeDecodeError):
            raise Rejected(400, "Charset or body misformed, rejected")
        if not numbers.scalar(decoded):
            raise Rejected(400, "Charset or body misformed, rejected")
        return decoded

    @staticmethod
    def _sms_options(raw: Mapping[str, Optional[bytes]],
                     field: Callable[..., Optional[str]]
                     ) -> Tuple[SmsOptions, Optional[float], float]:
        """Kannel's other sendsms fields, checked with Kannel's ranges and
        words (a number is read as Kannel's ``sscanf("%d")`` reads it: a
        value with no leading number is "not given"), and the validity
        and deferral in seconds."""
        udh = b""
        if raw.get("udh") is not None:
            try:
                udh = sms.udh_bytes(raw["udh"] or b"")
            except sms.UdhError as e:
                raise Rejected(400, str(e))
        values = {}
        for name, low, high, what in INT_FIELDS:
            value = _scan(field(name))
            if value != -1 and not low <= value <= high:
                raise Rejected(400, f"{what} field misformed, rejected")
            values[name] = value
        account = field("account") or ""
        if len(account) > ACCOUNT_MAX or re.search(r"[\[\]\n\r]", account):
            raise Rejected(400, "Account field misformed or too long, rejected")
        texts = {}
        for name, what in (("binfo", "BInfo"), ("meta-data", "Meta-Data"), ("smsc", "SMSC")):
            value = field(name) or ""
            if len(value) > TEXT_FIELD_MAX or not value.isprintable():
                raise Rejected(400, f"{what} field misformed or too long, rejected")
            texts[name] = value
        coding = values["coding"]
        options = SmsOptions(
            coding=sms.KANNEL_CODING.get(coding) or ("8bit" if udh else None), udh=udh, mclass=values["mclass"],
            mwi=values["mwi"], pid=values["pid"], alt_dcs=values["alt-dcs"],
            rpi=values["rpi"], compress=values["compress"], priority=values["priority"],
            validity=values["validity"], deferred=values["deferred"], account=account,
            binfo=texts["binfo"], meta_data=texts["meta-data"], smsc=texts["smsc"])
        validity = values["validity"] * 60.0 if values["validity"] > 0 else None
        deferred = values["deferred"] * 60.0 if values["deferred"] > 0 else 0.0
        return options, validity, deferred

    # -- WAP push -------------------------------------------------------------

    @app.route("/wappush", methods=["POST"])
    def wappush(self, request: server.Request) -> bytes:
        push_id = None
        try:
            push_id, numbers_ = self._wappush(request)
            code, detail = 1001, "queued for " + " ".join(numbers_[:20])
        except PapError as e:
            code, detail = e.code, e.detail
        except Rejected as e:
            code, detail = (2001 if e.status == 429 else 2000), e.text
            if e.status == 429:
                request.setResponseCode(429)
        except SimulatorError as e:
            code, detail = (2000 if e.status < 500 else 3000), e.message
        except Exception:
            log.failure("wappush failed")
            code, detail = 3000, "the push could not be processed"
        if request.code != 429:
            request.setResponseCode(PAP_STATUS[code])
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        return pap.response(code, detail, push_id, self.sim.clock.seconds())

    def _wappush(self, request: server.Request) -> Tuple[str, List[str]]:
        """A push: PAP 2.0 (``multipart/related``: the control document
        names the push-id, the addresses and the timing) or the simple form
        (``to``, ``push-id`` in the query, the document as the body)."""
        raw = _raw_args(request)
        user = _text(raw.get("username", raw.get("user")), "Username")
        password = _text(raw.get("password", raw.get("pass")), "Password")
        if user is None and request.getUser():
            user = request.getUser().decode("utf-8", "replace")
            password = request.getPassword().decode("utf-8", "replace")
        if not self._authorised(request, user, password):
            raise PapError(2001, "wrong username or password")
        header = request.getHeader(b"content-type") or b""
        ctype = header.split(b";")[0].strip().lower()
        request.content.seek(0)
        body = request.content.read()
        mask = _int(_text(raw.get("dlr-mask"), "DLR-Mask"), "DLR-Mask", -1, 63)
        url = _dlr_url(_text(raw.get("dlr-url"), "DLR-URL"), self.dlr_policy)
        if ctype == b"multipart/related":
            control, content_type, document = pap.split(body, header)
            push = pap.parse_control(control)
            content = content_type.encode("ascii", "replace")
        else:
            push = self._simple_push(raw)
            form = ctype in FORM_TYPES[:2]
            content = si.CONTENT_TYPE.encode() if form else ctype
            document = raw.get("si") if form else body
        if push.notify_to is not None:
            try:
                self.dlr_policy.check(push.notify_to)
            except DlrRefused as e:
                raise PapError(2000, f"ppg-notify-requested-to is not allowed: {e}")
        kind, loaded = self._push_content(content, document)
        now = self.sim.clock.seconds()
        expires = push.deliver_before
        if kind == "si" and loaded.expires is not None:
            expires = loaded.expires if expires is None else min(expires, loaded.expires)
        if expires is not None and expires <= now:
            raise PapError(2000, "the push has expired already (deliver-before-timestamp"
                                 " or si-expires)")
        if push.push_id in self._push_ids:
            raise PapError(2007, "that push-id was used already")
        self._push_ids[push.push_id] = now
        while len(self._push_ids) > 10000:
            self._push_ids.popitem(last=False)
        deferred = max(0.0, (push.deliver_after or now) - now)
        for address, number in push.addresses:
            self.sim.submit(
                "push", self.sim.shortcode, number, loaded.text if kind == "si" else "",
                si=loaded if kind == "si" else None, sl=loaded if kind == "sl" else None,
                dlr_mask=mask or 0, dlr_url=url, user=user or "", deferred=deferred,
                validity=None if push.deliver_before is None else push.deliver_before - now,
                on_final=self._notifier(push, address, now))
        return push.push_id, [number for _, number in push.addresses]

    @staticmethod
    def _simple_push(raw: Mapping[str, bytes]) -> pap.PushMessage:
        to = _text(raw.get("to"), "To")
        if to is None or not to.strip():
            raise PapError(2002, "the receiver (to) is missing")
        words = to.split()
        if len(words) > pap.MAX_ADDRESSES:
            raise PapError(2002, f"at most {pap.MAX_ADDRESSES} receivers per push")
        push_id = _text(raw.get("push-id"), "Push-ID")
        if push_id is not None and not (0 < len(push_id) <= pap.MAX_PUSH_ID):
            raise PapError(2000, f"push-id must be 1-{pap.MAX_PUSH_ID} characters")
        push = pap.PushMessage(push_id=push_id or "sim-" + uuid.uuid4().hex)
        for word in words:
            number = numbers.normalize(word)
            if number is None:
                raise PapError(2002, f"the receiver {word[:32]!r} is not a handset number")
            if all(number != n for _, n in push.addresses):
                push.addresses.append((f"WAPPUSH={number}/TYPE=PLMN@sim", number))
        return push

    @staticmethod
    def _push_content(ctype: bytes, document: Optional[bytes]) -> Tuple[str, Any]:
        """``("si", ServiceIndication)`` or ``("sl", ServiceLoading)``."""
        if ctype not in PUSH_TYPES:
            raise PapError(2000, "the content must be a Service Indication or Service"
                                 " Loading (text/vnd.wap.si, application/vnd.wap.sic,"
                                 " text/vnd.wap.sl, application/vnd.wap.slc)")
        kind, binary = PUSH_TYPES[ctype]
        if not document:
            raise PapError(2000, "the Service Indication document is missing" if kind == "si"
                           else "the Service Loading document is missing")
        if len(document) > si.MAX_DOCUMENT:
            raise PapError(2000, f"the document is over {si.MAX_DOCUMENT} bytes")
        try:
            if binary:
                document = wbxml.decode(document, wbxml.SI if kind == "si" else wbxml.SL)
            return kind, (si.parse(document) if kind == "si" else sl.parse(document))
        except wbxml.WbxmlError as e:
            raise PapError(3006, str(e))
        except si.SIError as e:
            raise PapError(2000, str(e))

    def _notifier(self, push: pap.PushMessage, address: str,
                  received: float) -> Optional[Callable[[Any], Any]]:
        """The result notification for one address, when the push asked."""
        url = push.notify_to
        if url is None:
            return None

        def notify(message: Any) -> Any:
            state, code = {"delivered": ("delivered", 1000), "expired": ("expired", 4000),
                           }.get(message.state, ("undeliverable", 2002))
            body = pap.notification(push.push_id, address, state, code, received,
                                    self.sim.clock.seconds())
            if self.sim.post is None:
                return None
            return self.sim.post(url, body, "application/xml")

        return notify

    # -- the handset API ---------------------------------------------------------

    @staticmethod
    def _number(number: str) -> str:
        found = numbers.normalize(number)
        if found is None:
            raise SimulatorError(400, "not a handset number: '+' and 3-15 digits")
        return found

    async def _handset(self, request: server.Request, number: str) -> str:
        """The normalised ``number`` once the request proved it is that
        handset (its secret as a bearer token); SimulatorError 403 otherwise,
        the same for a number that has no secret, 429 for an address that
        sent too many wrong ones."""
        n = self._number(number)
        if self._throttled(request, n):
            raise SimulatorError(429, "too many failed authentications from this address;"
                                      " try again later")
        secret = _bearer(request)
        ok = False
        if self.handset_auth is not None and secret is not None:
            ok = bool(await self.handset_auth(n, secret))
        if not ok:
            self._failed(request, n)
            raise SimulatorError(403, HANDSET_DENIED)
        return n

    @app.route("/handset/<string:number>/poll", methods=["GET"])
    async def poll(self, request: server.Request, number: str) -> Any:
        try:
            raw = _raw_args(request)
            after = _int(_text(raw.get("after"), "After"), "After", 0, 2 ** 62) or 0
            wait_text = _text(raw.get("wait"), "Wait")
            try:
                wait = float(wait_text) if wait_text else DEFAULT_WAIT
            except ValueError:
                raise Rejected(400, "wait must be a number of seconds")
            if not 0 <= wait <= MAX_WAIT:
                raise Rejected(400, f"wait must be 0-{MAX_WAIT:g} seconds")
            n = await self._handset(request, number)
            messages = await self.sim.poll(n, after, wait)
        except SimulatorError as e:
            return _json(request, e.status, {"error": e.message})
        except Rejected as e:
            return _json(request, 400, {"error": e.text})
        return _json(request, 200, {"number": n, "messages": [m.wire() for m in messages]})

    @app.route("/handset/<string:number>/send", methods=["POST"])
    async def send(self, request: server.Request, number: str) -> bytes:
        try:
            n = await self._handset(request, number)
            raw = _raw_args(request)
            to = _text(raw.get("to"), "To")
            text = _text(raw.get("text"), "Text")
            if not to or not to.strip():
                raise Rejected(400, "to is required")
            if text is None or not text.strip():
                raise Rejected(400, "text is required")
            return _json(request, 202, self.sim.send_mo(n, to.strip(), text))
        except SimulatorError as e:
            return _json(request, e.status, {"error": e.message})
        except Rejected as e:
            return _json(request, 400, {"error": e.text})

    @app.route("/handset/<string:number>/detach", methods=["POST"])
    async def detach(self, request: server.Request, number: str) -> bytes:
        try:
            n = await self._handset(request, number)
        except SimulatorError as e:
            return _json(request, e.status, {"error": e.message})
        self.sim.detach(n)
        return _json(request, 204, None)

    @app.route("/handset/<string:number>", methods=["GET"])
    async def status(self, request: server.Request, number: str) -> bytes:
        try:
            n = await self._handset(request, number)
        except SimulatorError as e:
            return _json(request, e.status, {"error": e.message})
        return _json(request, 200, self.sim.status(n))

    @app.route("/", methods=["GET"])
    def index(self, request: server.Request) -> bytes:
        return _plain(request, 200, "presence SMS / WAP push simulator: /cgi-bin/sendsms,"
                                    " /wappush, /handset/<number>/poll (docs/wireless.md)\n")

    @app.handle_errors(HTTPException)
    def http_error(self, request: server.Request, failure: Any) -> bytes:
        error = failure.value
        text = {404: "no such endpoint", 405: "method not allowed here"}.get(
            error.code, error.name)
        return _json(request, error.code, {"error": text})
