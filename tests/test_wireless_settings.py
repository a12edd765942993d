"""Handset secrets: issued on the settings page (shown once) or by ``POST
/api/wireless/secret``, kept only hashed, asked for by every call of the
simulator's handset API; a wrong or missing one gets the same 403 whether
or not the number is registered; a push link's session is no visitor of
the HTML pages."""

from __future__ import annotations

import json
import re

import pytest

from helpers import BASE, PASSWORD, logged_errors  # noqa: F401
from presence.wireless.keys import HandsetKeys, digest, proof_for
from test_wireless_support import SIM, Net

BOB_PHONE = "+15550001"
ORIGIN = {"Origin": [BASE]}


@pytest.fixture
def net(logged_errors):
    n = Net(pages=True)
    assert n.world.register("bob", wireless=BOB_PHONE).status == 201
    n.bob = n.world.login("bob")
    yield n
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def cookie(user) -> dict:
    return {"Cookie": [f"presence_session={user.session}"], **ORIGIN}


def poll(net, number, secret=None, headers=None):
    if headers is None:
        headers = {"Authorization": [f"Bearer {secret}"]} if secret is not None else {}
    return net.call("GET", f"{SIM}/handset/{number}/poll", params={"wait": "0"},
                    headers=headers)


def shown_secret(reply) -> str:
    found = re.findall(r'<code id="handset-secret">([^<]+)</code>', reply.text)
    assert len(found) == 1, reply.text[-2000:]
    return found[0]


def test_the_settings_page_shows_a_new_secret_once(net):
    page = net.call("GET", BASE + "/settings", headers=cookie(net.bob))
    assert page.status == 200 and "New handset secret" in page.text
    assert 'id="handset-secret"' not in page.text
    r = net.call("POST", BASE + "/settings/handset-secret", headers=cookie(net.bob))
    assert r.status == 200 and r.header("cache-control") == "no-store"
    secret = shown_secret(r)
    assert poll(net, BOB_PHONE, secret).status == 200
    # never again: reloading the settings shows no secret
    assert 'id="handset-secret"' not in net.call("GET", BASE + "/settings",
                                                 headers=cookie(net.bob)).text
    # a new one replaces it
    newer = shown_secret(net.call("POST", BASE + "/settings/handset-secret",
                                  headers=cookie(net.bob)))
    assert poll(net, BOB_PHONE, secret).status == 403
    assert poll(net, BOB_PHONE, newer).status == 200


def test_saving_a_new_number_issues_its_secret_and_voids_the_old_numbers(net):
    old = net.handset("bob", BOB_PHONE)
    r = net.call("POST", BASE + "/settings/profile", headers=cookie(net.bob),
                 data={"wireless": "+15550077"})
    secret = shown_secret(r)
    assert poll(net, "+15550077", secret).status == 200
    assert poll(net, BOB_PHONE, old).status == 403   # no longer bob's number
    # saving the profile without changing the number issues nothing
    again = net.call("POST", BASE + "/settings/profile", headers=cookie(net.bob),
                     data={"wireless": "+15550077", "email": "bob@example.org"},
                     allow_redirects=False)
    assert again.status in (302, 303)


def test_the_json_call_issues_a_secret_for_a_full_session_only(net):
    r = net.call("POST", BASE + "/api/wireless/secret",
                 data={"me": "bob", "id": net.bob.session})
    assert r.status == 201 and r.json["number"] == BOB_PHONE
    assert poll(net, BOB_PHONE, r.json["secret"]).status == 200
    carol = net.world.user("carol")
    r = net.call("POST", BASE + "/api/wireless/secret",
                 data={"me": "carol", "id": carol.session})
    assert r.status == 404   # no number stored
    guest = net.world.guest()
    assert net.call("POST", BASE + "/api/wireless/secret",
                    data={"me": guest.name, "id": guest.session}).status == 403


def test_secrets_are_kept_only_hashed_in_a_private_file(tmp_path):
    path = str(tmp_path / "handset-keys.json")
    keys = HandsetKeys(path)
    secret = keys.issue("bob", BOB_PHONE)
    assert len(secret) >= 32
    text = open(path).read()
    assert secret not in text and digest(secret).hex() in text
    assert (tmp_path / "handset-keys.json").stat().st_mode & 0o777 == 0o600
    again = HandsetKeys(path)
    assert again.check(BOB_PHONE, secret) == "bob"
    assert again.check(BOB_PHONE, secret + "x") is None
    assert again.check("+15559999", secret) is None
    assert again.check_proof(BOB_PHONE, "tok", proof_for(secret, "tok"))
    assert not again.check_proof(BOB_PHONE, "tok2", proof_for(secret, "tok"))


@pytest.mark.parametrize("headers", [
    {},                                                    # no secret
    {"Authorization": ["Bearer wrong-secret"]},            # a wrong one
    {"Authorization": ["Basic Ym9iOnNlY3JldA=="]},         # not a bearer token
])
def test_without_the_secret_a_known_and_an_unknown_number_answer_the_same(net, headers):
    net.handset("bob", BOB_PHONE)
    assert poll(net, BOB_PHONE, net.secrets[BOB_PHONE]).status == 200   # attached
    assert net.call("POST", BASE + "/api/wireless/text",  # a push waits for bob
                    data={"me": "bob", "id": net.bob.session, "to": "bob"}).status == 202
    known = poll(net, BOB_PHONE, headers=headers)
    unknown = poll(net, "+15559876", headers=headers)
    assert (known.status, known.body) == (unknown.status, unknown.body)
    assert known.status == 403 and b"wml/t" not in known.body
    for what in ("send", "detach"):
        k = net.call("POST", f"{SIM}/handset/{BOB_PHONE}/{what}", data={"to": "7777",
                     "text": "x"}, headers=headers)
        u = net.call("POST", f"{SIM}/handset/+15559876/{what}", data={"to": "7777",
                     "text": "x"}, headers=headers)
        assert (k.status, k.body) == (u.status, u.body) == (403, known.body)
    k = net.call("GET", f"{SIM}/handset/{BOB_PHONE}", headers=headers)
    assert (k.status, k.body) == (403, known.body)
    assert json.loads(known.body) == {"error": "handset authentication failed:"
                                      " give this number's secret"}
    # the push is still there for the real handset
    [push] = poll(net, BOB_PHONE, net.secrets[BOB_PHONE]).json["messages"]
    assert push["type"] == "push"


def test_wrong_secrets_are_throttled_per_address(net):
    net.handset("bob", BOB_PHONE)
    statuses = [poll(net, BOB_PHONE, f"guess{i}").status for i in range(12)]
    assert statuses[:10] == [403] * 10 and statuses[10:] == [429, 429]
    net.world.clock.advance(6)
    assert poll(net, BOB_PHONE, net.secrets[BOB_PHONE]).status == 200


def test_a_push_links_session_is_no_visitor_of_the_html_pages(net):
    net.handset("bob", BOB_PHONE)
    token = net.gateway.issue("bob", "alice", BOB_PHONE)
    r = net.call("GET", f"{BASE}/wml/t/{token}",
                 headers={"X-Handset-Proof": [proof_for(net.secrets[BOB_PHONE], token)]})
    assert r.status == 200
    sid = r.header("set-cookie").split(";")[0].split("=", 1)[1]
    page = net.call("GET", BASE + "/settings", headers={"Cookie": [f"presence_session={sid}"]},
                    allow_redirects=False)
    assert page.status in (302, 303) and "/login" in page.header("location")
    r = net.call("POST", BASE + "/settings/handset-secret", allow_redirects=False,
                 headers={"Cookie": [f"presence_session={sid}"], **ORIGIN})
    assert r.status in (302, 303) and "/login" in r.header("location")
