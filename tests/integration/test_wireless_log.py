"""The wireless front-end's secrets never reach the server's log: handset
secrets (Authorization header, the secret call's answer, the settings
page), push-link tokens and their proofs, and the operator's password on
sendsms and wappush in every spelling (``password=``, ``pass=``,
percent-encoded names).

Some spellings (``pass=``, percent-encoded names, ``/wml/t/<token>``) are
masked because the access log decodes names first and masks a list of
secret-bearing names (``presence.web.http.SECRET_PARAMS``)."""

from __future__ import annotations

import re
import urllib.parse

import pytest

from presence_harness import Api, expect, login, register, unique_name
from test_log_secrets import assert_no_secret_in_logs
from test_wireless import new_handset, open_link, pushed_link

pytestmark = pytest.mark.integration

OPERATOR = ("kannel", "Pw-operator-" + "s3cret")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One server that saw every kind of secret-bearing wireless request;
    yields (server, json log path, secrets by kind)."""
    from conftest import ServerFactory

    base = tmp_path_factory.mktemp("wireless-log")
    factory = ServerFactory(base)
    json_log = base / "presence-log.json"
    s = factory.start(keepalive=5, poll=1, linger=2, json_log=str(json_log),
                      smsc_user=OPERATOR[0], smsc_password=OPERATOR[1])
    api, sim = s.api(), Api(s.host, s.smsc_port)
    found = {"handset": [], "token": [], "password": [OPERATOR[1]]}
    alice = login(api, register(api, unique_name("alice")))
    bob = new_handset(api, "bob")
    found["handset"].append(bob.secret)
    # the settings page shows a secret too
    page = api.post("/settings/handset-secret", headers={
        "Cookie": f"presence_session={bob.user.session}", "Origin": s.base})
    shown = re.findall(r'<code id="handset-secret">([^<]+)</code>', page.text)
    assert page.status == 200 and len(shown) == 1, page
    found["handset"].append(shown[0])
    bob.secret = shown[0]
    # a push link, opened with the proof, then again, then without proof
    link = pushed_link(api, sim, alice, bob)
    token = link.rsplit("/", 1)[1]
    found["token"].append(token)
    assert open_link(api, link, None).status == 403
    assert open_link(api, link, bob).status == 200
    assert open_link(api, link, bob).status == 410
    # wrong secrets on the handset API
    sim.get(bob.path + "/poll", query={"wait": 0},
            headers={"Authorization": "Bearer wrong-" + bob.secret[:8]})
    # the operator password in every spelling sendsms and wappush accept
    to = urllib.parse.quote(bob.number)
    pw = urllib.parse.quote(OPERATOR[1])
    for query in (f"username=kannel&password={pw}", f"user=kannel&pass={pw}",
                  f"username=kannel&pass%77ord={pw}", f"username=kannel&%70ass={pw}",
                  f"username=kannel&PASSWORD={pw}"):
        sim.get(f"/cgi-bin/sendsms?{query}&to={to}&text=hi")
        sim.post(f"/wappush?{query}&to={to}", body="<si/>",
                 headers={"Content-Type": "text/vnd.wap.si"})
    s.stop()
    yield s, json_log, found
    factory.close()


def test_handset_secrets_never_reach_the_log(logged):
    s, json_log, found = logged
    assert_no_secret_in_logs(s, json_log, found["handset"])


def test_the_operator_password_never_reaches_the_log_as_password(logged):
    s, json_log, found = logged
    log = s.output() + json_log.read_text("utf-8", "replace")
    pw = found["password"][0]
    for form in (pw, urllib.parse.quote(pw)):
        assert f"password={form}" not in log and f"PASSWORD={form}" not in log
    # the server's own texts carry their credentials in Basic auth (wappush)
    # or a form body (sendsms), never in a URL
    own = [line for line in s.output().splitlines() if "POST /wappush?to=" in line]
    assert own and not any("pass" in line.lower() for line in own), own


def test_the_operator_password_in_pass_and_encoded_names_never_reaches_the_log(logged):
    s, json_log, found = logged
    assert_no_secret_in_logs(s, json_log, found["password"])


def test_push_link_tokens_never_reach_the_log(logged):
    s, json_log, found = logged
    assert "/wml/t/" in s.output()
    assert_no_secret_in_logs(s, json_log, found["token"])
