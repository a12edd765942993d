"""Digest authentication for SIP (``presence.sip.digest``) with a Clock."""

from __future__ import annotations

import hashlib
from typing import Dict, Optional

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from presence.sip import digest
from presence.sip.digest import DigestAuth, ha1, parse_credentials
from presence.sip.message import Request

REALM = "example.org"
SECRET = b"s" * 32


def make(ttl: float = 300, max_nonces: int = 100, users: Optional[Dict[str, str]] = None):
    clock = Clock()
    clock.advance(1_000_000)
    users = {"alice": "wonder land"} if users is None else users
    asked = []

    def ha1_of(user, realm, algorithm):
        asked.append((user, realm, algorithm))
        if user not in users:
            return defer.succeed(None)
        return defer.succeed(ha1(algorithm, user, realm, users[user]))

    auth = DigestAuth(REALM, ha1_of, clock, SECRET, nonce_ttl=ttl, max_nonces=max_nonces)
    return auth, clock, asked


def params_of(header_value: str) -> Dict[str, str]:
    scheme, params = parse_credentials(header_value)
    assert scheme == "Digest"
    return params


def register(uri: str = "sip:example.org") -> Request:
    req = Request("REGISTER", uri)
    req.add("Call-ID", "c1")
    req.add("CSeq", "1 REGISTER")
    return req


def answer_challenge(req: Request, challenge_value: str, user: str = "alice",
                     password: str = "wonder land", nc: int = 1, cnonce: str = "abc",
                     header: str = "Authorization", uri: Optional[str] = None,
                     algorithm: Optional[str] = None) -> Request:
    """What a user agent sends (RFC 7616 section 3.4)."""
    c = params_of(challenge_value)
    algorithm = algorithm or c["algorithm"]
    uri = uri or req.uri
    h = hashlib.md5 if algorithm == "MD5" else hashlib.sha256

    def H(s):
        return h(s.encode()).hexdigest()

    ha1_hex = H(f"{user}:{c['realm']}:{password}")
    ha2 = H(f"{req.method}:{uri}")
    ncs = f"{nc:08x}"
    resp = H(f"{ha1_hex}:{c['nonce']}:{ncs}:{cnonce}:auth:{ha2}")
    out = Request(req.method, req.uri, req.headers)
    out.remove(header)
    out.add(header, f'Digest username="{user}", realm="{c["realm"]}", nonce="{c["nonce"]}", '
                    f'uri="{uri}", response="{resp}", algorithm={algorithm}, '
                    f'cnonce="{cnonce}", qop=auth, nc={ncs}')
    return out


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred did not fire"
    return out[0]


def test_challenge_offers_md5_then_sha256_with_qop_auth_and_realm():
    auth, _, _ = make()
    fields = auth.challenge(register())
    assert [n for n, _ in fields] == ["WWW-Authenticate", "WWW-Authenticate"]
    algs = [params_of(v)["algorithm"] for _, v in fields]
    assert algs == ["MD5", "SHA-256"]
    for _, v in fields:
        p = params_of(v)
        assert p["realm"] == REALM and p["qop"] == "auth" and "stale" not in p
    assert len({params_of(v)["nonce"] for _, v in fields}) == 1
    proxy = auth.challenge(register(), proxy=True, stale=True)
    assert all(n == "Proxy-Authenticate" for n, _ in proxy)
    assert all(params_of(v)["stale"] == "true" for _, v in proxy)


@pytest.mark.parametrize("which", [0, 1])
def test_right_password_authenticates_for_each_algorithm(which):
    auth, _, asked = make()
    req = register()
    ch = auth.challenge(req)[which][1]
    assert result(auth.check(answer_challenge(req, ch))) == "alice"
    assert asked[-1] == ("alice", REALM, ["MD5", "SHA-256"][which])


def test_proxy_authorization_is_checked_for_proxy():
    auth, _, _ = make()
    req = register()
    ch = auth.challenge(req, proxy=True)[0][1]
    signed = answer_challenge(req, ch, header="Proxy-Authorization")
    assert result(auth.check(signed, proxy=True)) == "alice"
    assert result(auth.check(signed)) is None  # no Authorization at all


def test_wrong_password_unknown_user_and_absent_credentials_fail():
    auth, _, _ = make()
    req = register()
    ch = auth.challenge(req)[1][1]
    assert result(auth.check(answer_challenge(req, ch, password="nope"))) is None
    assert result(auth.check(answer_challenge(req, ch, user="mallory"))) is None
    v = result(auth.verify(req))
    assert v.user is None and not v.present and v.error is None


def test_a_nonce_of_another_secret_or_forged_is_refused_and_stale_whatever_the_digest():
    auth, clock, _ = make()
    other = DigestAuth(REALM, auth.ha1_of, clock, b"t" * 32)   # the server before a restart
    req = register()
    ch = other.challenge(req)[0][1]
    v = result(auth.verify(answer_challenge(req, ch)))
    assert v.user is None and v.stale            # right password: just a new nonce
    # a wrong one too: the answer never tells a right password from a wrong one
    v = result(auth.verify(answer_challenge(req, ch, password="bad")))
    assert v.user is None and v.stale and v.present


def test_a_nonce_is_bound_to_the_address_it_was_sent_to():
    auth, clock, _ = make()
    req = register()
    ch = auth.challenge(req, source="198.51.100.1")[0][1]
    v = result(auth.verify(answer_challenge(req, ch), source="192.0.2.66"))
    assert v.user is None and v.stale
    assert result(auth.check(answer_challenge(req, ch), source="198.51.100.1")) == "alice"
    forged = answer_challenge(req, ch.replace(params_of(ch)["nonce"], "AAAA" * 9))
    assert result(auth.check(forged)) is None
    assert auth.nonce_issued("!!!") is None and auth.nonce_issued("x" * 500) is None


def test_expired_nonce_is_stale_and_a_new_challenge_works():
    auth, clock, _ = make(ttl=60)
    req = register()
    ch = auth.challenge(req)[0][1]
    clock.advance(61)
    v = result(auth.verify(answer_challenge(req, ch)))
    assert v.user is None and v.stale
    v = result(auth.verify(answer_challenge(req, ch, password="bad")))
    assert not v.stale  # stale only when the digest itself was right
    ch2 = auth.challenge(req, stale=True)[0][1]
    assert result(auth.check(answer_challenge(req, ch2))) == "alice"


def test_nonce_count_must_grow_replays_are_refused():
    auth, _, _ = make()
    req = register()
    ch = auth.challenge(req)[0][1]
    first = answer_challenge(req, ch, nc=1)
    assert result(auth.check(first)) == "alice"
    v = result(auth.verify(first))  # the very same request again
    assert v.user is None and v.stale
    assert result(auth.check(answer_challenge(req, ch, nc=2))) == "alice"
    assert result(auth.check(answer_challenge(req, ch, nc=2, cnonce="x"))) is None
    assert result(auth.check(answer_challenge(req, ch, nc=5))) == "alice"


def test_nonce_table_is_bounded_and_evicted_nonces_cannot_be_replayed():
    auth, clock, _ = make(max_nonces=3)
    req = register()
    signed = []
    for _ in range(5):
        ch = auth.challenge(req)[0][1]
        s = answer_challenge(req, ch)
        assert result(auth.check(s)) == "alice"
        signed.append(s)
        clock.advance(1)
    assert len(auth._counts) == 3
    for s in signed:  # every one a replay now, whether still in the table or evicted
        assert result(auth.check(s)) is None
    # nonces expire out of the table too
    clock.advance(400)
    ch = auth.challenge(req)[0][1]
    assert result(auth.check(answer_challenge(req, ch))) == "alice"
    assert len(auth._counts) == 1


def test_uri_must_match_and_unoffered_algorithms_or_qop_are_challenged_again():
    auth, _, _ = make()
    req = register()
    ch = auth.challenge(req)[0][1]
    v = result(auth.verify(answer_challenge(req, ch, uri="sip:elsewhere.net")))
    assert v.error and "uri" in v.error
    signed = answer_challenge(req, ch, algorithm="SHA-512-256")
    v = result(auth.verify(signed))
    assert v.user is None and v.error is None and v.present
    no_qop = Request("REGISTER", req.uri)
    no_qop.add("Authorization", f'Digest username="alice", realm="{REALM}", '
                                f'nonce="{params_of(ch)["nonce"]}", uri="{req.uri}", '
                                f'response="{"0" * 32}"')
    v = result(auth.verify(no_qop))
    assert v.user is None and v.error is None


def test_other_realms_and_schemes_are_ignored():
    auth, _, _ = make()
    req = register()
    req.add("Authorization", 'Digest username="alice", realm="other.net", nonce="n", '
                             'uri="sip:x", response="r"')
    req.add("Authorization", "Basic YWxpY2U6cHc=")
    v = result(auth.verify(req))
    assert not v.present and v.error is None and v.user is None


@pytest.mark.parametrize("value", [
    "", "   ", "Digest username", 'Digest username="unterminated', "Digest a=b c=d",
    'Digest username="a", username="b"', "Digest =x", 'Digest realm="example.org", x="\\',
    "Digest " + ", ".join(f"p{i}=1" for i in range(40)),
    'Digest realm="example.org", username="x", nonce="n", uri="u"',  # no response
    'Digest realm="example.org", username="a:b", nonce="n", uri="u", response="r"',
    'Digest realm="example.org", username="a", nonce="n", uri="u", response="r", qop=auth',
    'Digest realm="example.org", username="a", nonce="n", uri="u", response="r", qop=auth, '
    'nc=zz, cnonce="c"',
    "Digest realm=" + '"' + "x" * 2000 + '"',
    "\u00e9\u00e9",
])
def test_malformed_credentials_give_an_error_never_an_exception(value):
    auth, _, _ = make()
    req = register()
    req.add("Authorization", value)
    v = result(auth.verify(req))
    assert v.user is None
    if value.strip() and "example.org" in value:
        assert v.error


def test_too_many_credentials_fields_is_an_error():
    auth, _, _ = make()
    req = register()
    for _ in range(9):
        req.add("Authorization", "Basic eA==")
    assert result(auth.verify(req)).error


def test_a_failing_lookup_does_not_authenticate():
    clock = Clock()
    auth = DigestAuth(REALM, lambda *a: defer.fail(RuntimeError("down")), clock, SECRET)
    req = register()
    ch = auth.challenge(req)[0][1]
    v = result(auth.verify(answer_challenge(req, ch)))
    assert v.user is None and not v.stale


def test_parse_credentials_handles_quotes_escapes_and_spacing():
    scheme, p = parse_credentials('Digest  username = "a\\"b" ,realm="r, s",nc=00000001')
    assert scheme == "Digest"
    assert p == {"username": 'a"b', "realm": "r, s", "nc": "00000001"}


def test_a_uri_check_may_take_more_than_the_request_uri():
    auth, clock, _ = make()
    lenient = DigestAuth(REALM, auth.ha1_of, clock, SECRET,
                         uri_ok=lambda given, req: given == "sip:192.0.2.1:5060")
    req = register()
    ch = lenient.challenge(req)[0][1]
    assert result(lenient.check(answer_challenge(req, ch, uri="sip:192.0.2.1:5060"))) == "alice"
    v = result(lenient.verify(answer_challenge(req, ch, uri="sip:other:5060", nc=2)))
    assert v.error and v.user is None


def test_secret_is_required_and_ha1_helpers_agree():
    with pytest.raises(ValueError):
        DigestAuth(REALM, lambda *a: None, Clock(), b"")
    with pytest.raises(ValueError):
        DigestAuth(REALM, lambda *a: None, Clock(), b"short")
    got = digest.ha1_set("alice", REALM, "pw")
    assert got["MD5"] == hashlib.md5(b"alice:example.org:pw").hexdigest()
    assert got["SHA-256"] == hashlib.sha256(b"alice:example.org:pw").hexdigest()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.sampled_from([
    'Digest username="alice", realm="example.org", nonce="x", uri="sip:example.org", '
    'response="y", qop=auth, nc=00000001, cnonce="z"']).map(lambda t: t + "\\\""))
def test_fuzz_credentials_never_raise(value):
    auth, _, _ = make()
    req = register()
    req.add("Authorization", value)
    v = result(auth.verify(req))
    assert not isinstance(v, Exception) and v.user is None
