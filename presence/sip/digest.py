"""Digest authentication for SIP (RFC 3261 section 22, RFC 7616, RFC 8760).

:class:`DigestAuth` challenges a request (``401`` with ``WWW-Authenticate``,
or ``407`` with ``Proxy-Authenticate``) and checks the credentials a user
agent sends back in ``Authorization`` / ``Proxy-Authorization``.  It is pure:
the clock, the server secret and the HA1 look-up are given to it.

* The realm is the server's SIP domain.  Every challenge offers ``qop=auth``
  with ``MD5`` first and ``SHA-256`` second (:data:`ALGORITHMS` says why
  that order); a user agent answers with one of them.  ``qop`` is required in
  the answer: without a nonce count a replay cannot be bounded.
* Nonces are stateless: ``base64url(issued-at | random | HMAC-SHA256(secret,
  issued-at | random | realm | source))``, where ``source`` is the address
  the challenge went to (:func:`source_of`): a nonce answered from another
  address does not verify (it is stale), so nobody can fetch a nonce at
  their own address and then authenticate a REGISTER or SUBSCRIBE from a
  spoofed UDP source, which would point calls or NOTIFYs at a victim.  Any nonce the server issued verifies
  without a table; one the server cannot verify (issued before a restart,
  under the old secret, or to another address) is answered with a new
  challenge carrying ``stale=true`` whatever the digest (which is not
  judged: no password oracle, and no failure counted for an address the
  sender may have forged), and so is one older than ``nonce_ttl`` with an
  otherwise right digest, so the user agent retries without asking its
  user again.
* Replays: the highest nonce count seen per nonce is kept in a bounded table.
  A count that does not grow is a replay.  When the table is full the oldest
  entries go and the issue time of the newest evicted nonce becomes a low
  water mark: a nonce issued at or before it that is no longer in the table
  is treated as stale (a fresh nonce is cheap; a replay never passes).
* The server never sees the password here: ``ha1_of(user, realm,
  algorithm)`` gives the stored ``HA1 = H(user:realm:password)`` (hex) or
  None.  Every comparison of secrets is constant-time.

Malformed credentials (a ``Digest`` header field that cannot be parsed, or
lacks a required parameter) come out of :meth:`DigestAuth.verify` with an
``error`` text, which the caller answers with ``400``; everything else that
does not authenticate comes out without a user, answered with a new
challenge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet import defer

from presence.sip.message import Request

#: algorithms offered, in the order of the challenges: MD5 first, because a
#: user agent from before RFC 8760 reads only the topmost challenge and may
#: give up on one it does not know (SIPp 3.6 aborts on SHA-256); SHA-256 for
#: those whose policy prefers it (RFC 8760 section 2.4 lets it choose)
ALGORITHMS: Tuple[str, ...] = ("MD5", "SHA-256")
_HASHES: Dict[str, Callable] = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}

#: at most this many parameters in one credentials field, each at most this long
MAX_PARAMS = 24
MAX_VALUE = 1024
#: nonce counts kept for replay detection
MAX_NONCES = 10000
#: a user name in credentials: printable, no separators of ``user:realm:password``
_USER = re.compile(r"[^\x00-\x20\x7f\":]{1,128}\Z")
_NC = re.compile(r"[0-9a-fA-F]{8}\Z")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_RANDOM_BYTES = 12
_MAC_BYTES = 16


def source_of(hop) -> str:
    """The address a nonce is bound to for a request from ``hop`` (a
    :class:`~presence.sip.proxy.Hop`): its host from the network (a NAT may
    change the port; a spoofer cannot receive at another's host), ``""``
    through the tunnel (an HTTP session cannot be spoofed)."""
    return "" if getattr(hop, "tunnel", False) else str(hop.host)


def hash_hex(algorithm: str, text: str) -> str:
    """``H(text)`` in lower-case hex for ``algorithm`` (``MD5`` / ``SHA-256``)."""
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, user: str, realm: str, password: str) -> str:
    """``HA1 = H(user:realm:password)`` (RFC 7616 section 3.4.2)."""
    return hash_hex(algorithm, f"{user}:{realm}:{password}")


def ha1_set(user: str, realm: str, password: str) -> Dict[str, str]:
    """HA1 for every algorithm offered: what the directory stores."""
    return {a: ha1(a, user, realm, password) for a in ALGORITHMS}


def expected_response(algorithm: str, ha1_hex: str, method: str, uri: str, nonce: str,
                      nc: str, cnonce: str, qop: str = "auth") -> str:
    """The ``response`` parameter a user agent computes (qop=auth)."""
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    return hash_hex(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class CredentialsError(ValueError):
    """A credentials field that cannot be parsed."""


def parse_credentials(value: str) -> Tuple[str, Dict[str, str]]:
    """``scheme`` and its parameters (names lower-cased, quotes and escapes
    removed) from an ``Authorization`` value; raises :class:`CredentialsError`."""
    text = value.strip()
    m = _TOKEN.match(text)
    if not m:
        raise CredentialsError("no authentication scheme")
    scheme, pos, n = m.group(0), m.end(), len(text)
    params: Dict[str, str] = {}
    while True:
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n:
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise CredentialsError("bad parameter name")
        name, pos = m.group(0).lower(), m.end()
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n or text[pos] != "=":
            raise CredentialsError(f"parameter {name} has no value")
        pos += 1
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] == '"':
            pos += 1
            out: List[str] = []
            while True:
                if pos >= n:
                    raise CredentialsError(f"parameter {name}: unterminated quoted string")
                c = text[pos]
                if c == "\\":
                    if pos + 1 >= n:
                        raise CredentialsError(f"parameter {name}: bad escape")
                    out.append(text[pos + 1])
                    pos += 2
                    continue
                if c == '"':
                    pos += 1
                    break
                out.append(c)
                pos += 1
            val = "".join(out)
        else:
            m = _TOKEN.match(text, pos)
            if not m:
                raise CredentialsError(f"parameter {name} has no value")
            val, pos = m.group(0), m.end()
        if len(val) > MAX_VALUE:
            raise CredentialsError(f"parameter {name} is too long")
        if name in params:
            raise CredentialsError(f"parameter {name} given twice")
        params[name] = val
        if len(params) > MAX_PARAMS:
            raise CredentialsError("too many parameters")
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n:
            break
        if text[pos] != ",":
            raise CredentialsError("parameters must be separated by commas")
        pos += 1
    return scheme, params


@dataclass
class Verdict:
    """What :meth:`DigestAuth.verify` found.

    ``user``: the authenticated user, or None.  ``stale``: the digest may be
    right but the nonce is too old or its count was used (challenge again
    with ``stale=true``).  ``error``: the credentials are malformed (answer
    ``400`` with this reason).  ``present``: some credentials for our realm
    were sent at all."""

    user: Optional[str] = None
    stale: bool = False
    error: Optional[str] = None
    present: bool = False
    #: the user name the credentials were for (right or wrong)
    tried: Optional[str] = None


class DigestAuth:
    """Digest challenges and checks for one realm (see the module doc)."""

    def __init__(self, realm: str, ha1_of: Callable[[str, str, str], "defer.Deferred"],
                 clock, secret: bytes, nonce_ttl: float = 300,
                 max_nonces: int = MAX_NONCES,
                 uri_ok: Optional[Callable[[str, Request], bool]] = None) -> None:
        if not secret or len(secret) < 16:
            raise ValueError("the digest secret must be at least 16 random bytes")
        if nonce_ttl <= 0:
            raise ValueError("nonce_ttl must be positive")
        self.realm = realm
        self.ha1_of = ha1_of
        self.clock = clock
        self._secret = secret
        self.nonce_ttl = nonce_ttl
        self.max_nonces = max_nonces
        #: whether the ``uri`` of credentials fits the request: by default
        #: only its Request-URI (case aside); the proxy also takes a URI
        #: naming itself (SIPp, and some phones, put the registrar's address)
        self.uri_ok = uri_ok or _same_uri
        # nonce -> (issued at, highest nonce count seen), oldest first
        self._counts: "OrderedDict[str, Tuple[float, int]]" = OrderedDict()
        self._low_water = -1.0

    # nonces -------------------------------------------------------------------

    def _mac(self, body: bytes, source: str) -> bytes:
        bound = self.realm.encode("utf-8") + b"\0" + source.encode("utf-8", "replace")
        return hmac.new(self._secret, body + bound, hashlib.sha256).digest()[:_MAC_BYTES]

    def make_nonce(self, source: str = "") -> str:
        """A fresh nonce for a challenge sent to ``source`` (:func:`source_of`)."""
        body = struct.pack(">d", float(self.clock.seconds())) + secrets.token_bytes(_RANDOM_BYTES)
        return base64.urlsafe_b64encode(body + self._mac(body, source)).decode(
            "ascii").rstrip("=")

    def nonce_issued(self, nonce: str, source: str = "") -> Optional[float]:
        """When ``nonce`` was issued, or None if the server did not issue it
        (to ``source``)."""
        if len(nonce) > 64:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 8 + _RANDOM_BYTES + _MAC_BYTES:
            return None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body, source)):
            return None
        return struct.unpack(">d", body[:8])[0]

    # challenges ---------------------------------------------------------------

    def challenge(self, request: Optional[Request] = None, proxy: bool = False,
                  stale: bool = False, source: str = "") -> List[Tuple[str, str]]:
        """Header fields for a ``401`` (``WWW-Authenticate``) or, with
        ``proxy``, a ``407`` (``Proxy-Authenticate``): one per algorithm
        (:data:`ALGORITHMS`), all with the same fresh nonce, bound to
        ``source``, where the challenge goes (:func:`source_of`)."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        nonce = self.make_nonce(source)
        out = []
        for algorithm in ALGORITHMS:
            value = (f'Digest realm="{_quote(self.realm)}", nonce="{nonce}", '
                     f'algorithm={algorithm}, qop="auth"')
            if stale:
                value += ", stale=true"
            out.append((name, value))
        return out

    # checks -------------------------------------------------------------------

    def check(self, request: Request, proxy: bool = False,
              source: str = "") -> "defer.Deferred":
        """Deferred: the authenticated user name, or None."""
        return self.verify(request, proxy, source).addCallback(lambda v: v.user)

    def verify(self, request: Request, proxy: bool = False,
               source: str = "") -> "defer.Deferred":
        """Deferred[:class:`Verdict`] of ``request`` from ``source``
        (:func:`source_of`); never fails."""
        try:
            found = self._credentials(request, proxy)
        except CredentialsError as e:
            # bounded: a parameter name may be as long as the message, and
            # the reason goes back to a source that may be forged
            return defer.succeed(Verdict(error=f"Bad credentials: {str(e)[:80]}",
                                         present=True))
        if found is None:
            return defer.succeed(Verdict())
        return self._verify(request, found, source)

    def _credentials(self, request: Request, proxy: bool) -> Optional[Dict[str, str]]:
        """The Digest parameters for our realm, or None if none were sent."""
        header = "proxy-authorization" if proxy else "authorization"
        fields = request.get_all(header)
        if len(fields) > 8:
            raise CredentialsError("too many credentials")
        mine = None
        for value in fields:
            if value.strip()[:6].lower() != "digest" or value.strip()[6:7] not in (" ", "\t"):
                continue  # another scheme (Basic ...): not ours to judge
            scheme, params = parse_credentials(value)
            if params.get("realm") == self.realm:
                mine = params
                break
        if mine is None:
            return None
        for required in ("username", "nonce", "uri", "response"):
            if required not in mine:
                raise CredentialsError(f"missing {required}")
        if not _USER.match(mine["username"]):
            raise CredentialsError("bad username")
        algorithm = mine.get("algorithm", "MD5")
        mine["algorithm"] = _canonical_algorithm(algorithm)
        qop = mine.get("qop")
        if qop is not None:
            if "nc" not in mine or "cnonce" not in mine:
                raise CredentialsError("qop without nc or cnonce")
            if not _NC.match(mine["nc"]):
                raise CredentialsError("bad nc")
        return mine

    def _verify(self, request: Request, p: Dict[str, str], source: str) -> "defer.Deferred":
        algorithm = p["algorithm"]
        if algorithm not in _HASHES or p.get("qop") != "auth":
            # an algorithm or qop we did not offer: challenge again
            return defer.succeed(Verdict(present=True))
        if not (_same_uri(p["uri"], request.uri) or self.uri_ok(p["uri"], request)):
            return defer.succeed(Verdict(error="Bad credentials: uri does not match the "
                                               "Request-URI", present=True))
        # a nonce we did not issue (before a restart, under another secret,
        # or to another address: a forged UDP source never sees one) is
        # stale whatever the digest: judging the digest would tell a right
        # password (stale) from a wrong one, and a wrong one would spend the
        # login allowance of an address the sender does not hold
        issued = self.nonce_issued(p["nonce"], source)
        user = p["username"]
        if issued is None:
            return defer.succeed(Verdict(stale=True, present=True, tried=user))

        def compare(ha1_hex: Optional[str]) -> Verdict:
            if not ha1_hex:
                return Verdict(present=True, tried=user)
            want = expected_response(algorithm, ha1_hex.lower(), request.method, p["uri"],
                                     p["nonce"], p["nc"], p["cnonce"])
            if not hmac.compare_digest(want.encode("ascii"),
                                       p["response"].lower().encode("ascii", "replace")):
                return Verdict(present=True, tried=user)
            now = float(self.clock.seconds())
            if now - issued > self.nonce_ttl or issued > now + 1:
                return Verdict(stale=True, present=True, tried=user)
            if not self._count(p["nonce"], issued, int(p["nc"], 16), now):
                return Verdict(stale=True, present=True, tried=user)
            return Verdict(user=user, present=True, tried=user)

        d = defer.maybeDeferred(self.ha1_of, user, self.realm, algorithm)
        d.addCallback(compare)
        d.addErrback(lambda _f: Verdict(present=True, tried=user))
        return d

    def _count(self, nonce: str, issued: float, nc: int, now: float) -> bool:
        """Record nonce count ``nc``; False if it is a replay."""
        # drop what has expired anyway (oldest first)
        while self._counts:
            first, (t, _) = next(iter(self._counts.items()))
            if now - t <= self.nonce_ttl:
                break
            self._counts.popitem(last=False)
        seen = self._counts.get(nonce)
        if seen is None:
            if issued <= self._low_water:
                return False
        elif nc <= seen[1]:
            return False
        self._counts[nonce] = (issued, nc)
        while len(self._counts) > self.max_nonces:
            _, (t, _) = self._counts.popitem(last=False)
            self._low_water = max(self._low_water, t)
        return True


def _canonical_algorithm(value: str) -> str:
    for a in _HASHES:
        if value.lower() == a.lower():
            return a
    return value


def _same_uri(given: str, request: "Request | str") -> bool:
    uri = request if isinstance(request, str) else request.uri
    return given.strip().lower() == uri.strip().lower()


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
