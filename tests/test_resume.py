"""Resume tokens (spec section 9; docs/security.md, "Resume tokens"): the
service's rules and the JSON API in memory (``World``: a ``Clock``, a real
SQLite directory run inline, ``StubTreq``), and the one race a fake
directory shows: a password change while a resume is being looked up.
"""

from __future__ import annotations

import hashlib

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from helpers import PASSWORD, World, failure_of, hasher, logged_errors, result_of, world  # noqa: F401
from presence.core.hub import Hub, HubConfig
from presence.errors import BadRequest, Forbidden, TooMany, Unauthorized
from presence.service import PresenceService, token_hash
from presence.store.sqlite import SQLiteDirectory, run_now

NEW_PASSWORD = "battery staple"


def stored_hashes(world, user):
    return [r["token_hash"] for r in world.store._db.execute(
        "SELECT token_hash FROM resume WHERE user=?", (user,))]


# -- what a login gives ---------------------------------------------------------------

def test_login_carries_a_long_random_resume_token_stored_only_hashed(world):
    alice = world.user("alice")
    token = alice.login["resume"]
    assert isinstance(token, str) and len(token) >= 43      # 32 bytes, base64url
    again = world.login("alice").login["resume"]
    assert again != token                                   # one per login (device)
    hashes = stored_hashes(world, "alice")
    assert sorted(hashes) == sorted([hashlib.sha256(t.encode()).hexdigest()
                                     for t in (token, again)])
    assert token not in repr(list(world.store._db.execute("SELECT * FROM resume")))


def test_resume_opens_a_working_session_without_the_password(world):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.post("/api/contacts", contact="alice")
    token = alice.login["resume"]
    world.hub.end(alice.hub_session, "expired")             # the session is gone
    browser = world.browser()
    reply = browser.post("/api/resume", token=token)
    assert reply.status == 200
    body = reply.json
    assert set(body) == {"session", "username", "heartbeat", "host_box", "resume"}
    assert body["username"] == "alice" and body["resume"] == token   # stable per device
    assert body["session"] != alice.session
    assert body["heartbeat"] == f"/jchat?me=alice&id={body['session']}"
    assert reply.header("set-cookie").startswith(f"presence_session={body['session']}")
    creds = {"me": "alice", "id": body["session"]}
    session = world.hub.session(body["session"])
    assert session.scope is None                            # a password login's rights
    assert browser.post("/api/groups", name="resumed", **creds).status == 201
    hb = browser.heartbeat(**creds)
    bob_hb = bob.heartbeat()
    assert "msg update online alice" in bob_hb.heads()
    assert bob.post("/chat", to="alice", msg="welcome back").status == 202
    assert "msg chat bob" in " ".join(hb.heads())
    # and again with the same token (another node, a later restart)
    assert world.browser().post("/api/resume", token=token).status == 200


def test_logout_revokes_only_that_devices_token(world):
    alice = world.user("alice")
    phone = world.login("alice")
    assert alice.post("/api/logout").status == 204
    refused = world.browser().post("/api/resume", token=alice.login["resume"])
    assert refused.status == 401
    assert "log in" in refused.error and alice.login["resume"] not in refused.body.decode()
    assert world.browser().post("/api/resume", token=phone.login["resume"]).status == 200


def test_logout_of_a_resumed_session_revokes_the_token(world):
    alice = world.user("alice")
    token = alice.login["resume"]
    resumed = world.browser().post("/api/resume", token=token).json
    b = world.browser()
    assert b.post("/api/logout", me="alice", id=resumed["session"]).status == 204
    assert world.browser().post("/api/resume", token=token).status == 401


def test_a_session_ending_otherwise_keeps_the_token(world):
    alice = world.user("alice")
    world.advance(4000)
    world.sweep()                                           # expired (session-ttl)
    assert alice.get("/api/welcome").status == 403
    assert world.browser().post("/api/resume", token=alice.login["resume"]).status == 200


def test_a_resume_token_expires_resume_ttl_after_its_login(logged_errors):
    from presence.service import Limits
    from helpers import TEST_LIMITS
    import dataclasses
    world = World(limits=dataclasses.replace(TEST_LIMITS, resume_ttl=600.0))
    alice = world.user("alice")
    token = alice.login["resume"]
    world.advance(599)
    resumed = world.browser().post("/api/resume", token=token)
    assert resumed.status == 200                 # a resume does not renew the token
    world.advance(2)
    refused = world.browser().post("/api/resume", token=token)
    assert refused.status == 401 and "log in" in refused.error
    assert stored_hashes(world, "alice") == []   # forgotten
    # a new password login gives a new token, which works
    fresh = world.login("alice").login["resume"]
    assert world.browser().post("/api/resume", token=fresh).status == 200
    assert Limits().resume_ttl == 30 * 24 * 3600


@pytest.mark.parametrize("token", ["x" * 43, "", "é" * 10, "x" * 5000, ["a", "b"]])
def test_wrong_or_missing_token_is_a_clear_error(world, token):
    world.user("alice")
    b = world.browser()
    reply = (b.post_json("/api/resume", {"token": token}) if isinstance(token, list)
             else b.post("/api/resume", token=token))
    assert reply.status == (400 if token == "" or isinstance(token, list) else 401)
    assert reply.json["error"]
    assert reply.header("set-cookie") is None or "presence_session=" not in reply.header(
        "set-cookie")


def test_wrong_tokens_are_rate_limited_per_address_and_right_ones_not(world):
    alice = world.user("alice")
    b = world.browser()
    codes = [b.post("/api/resume", token=f"wrong{i}" + "x" * 40).status for i in range(25)]
    assert codes[:20] == [401] * 20 and codes[-1] == 429
    limited = b.post("/api/resume", token=alice.login["resume"])
    assert limited.status == 429 and limited.header("retry-after")
    world.advance(10)
    assert b.post("/api/resume", token=alice.login["resume"]).status == 200
    # successes do not count
    for _ in range(30):
        assert b.post("/api/resume", token=alice.login["resume"]).status == 200


def test_unknown_and_revoked_tokens_cost_the_same(world):
    """One hash and one look-up each: the same directory calls."""
    alice = world.user("alice")
    token = alice.login["resume"]
    assert alice.post("/api/logout").status == 204
    looked_up = []
    real = world.store.resume_user
    world.store.resume_user = lambda h, *rest: (looked_up.append(h), real(h, *rest))[1]
    for t in (token, "y" * len(token)):
        assert world.browser().post("/api/resume", token=t).status == 401
    assert looked_up == [token_hash(token), token_hash("y" * len(token))]


def test_guests_get_no_token(world):
    guest = world.guest()
    assert guest.login["resume"] is None
    assert list(world.store._db.execute("SELECT * FROM resume")) == []


def test_resume_from_another_site_is_refused(world):
    alice = world.user("alice")
    reply = world.browser().request("POST", "/api/resume", data={
        "token": alice.login["resume"]}, headers={"Origin": ["http://evil.example"]})
    assert reply.status == 403


# -- the pages' cookie ---------------------------------------------------------------------

def test_resume_with_the_cookie_keeps_the_token_out_of_the_answer(world):
    alice = world.user("alice")
    token = alice.login["resume"]
    b = world.browser()
    reply = b.request("POST", "/api/resume",
                      headers={"Cookie": [f"presence_resume={token}"],
                               "Sec-Fetch-Site": ["same-origin"]})
    assert reply.status == 200
    assert reply.json["resume"] is None and reply.json["username"] == "alice"
    assert token not in reply.body.decode()
    refused = b.request("POST", "/api/resume", headers={
        "Cookie": ["presence_resume=" + "z" * 43], "Sec-Fetch-Site": ["same-origin"]})
    assert refused.status == 401
    cleared = refused.header("set-cookie")
    assert cleared.startswith("presence_resume=;") and "max-age=0" in cleared.lower()


# -- password changes -------------------------------------------------------------------

def test_password_change_revokes_all_tokens_and_ends_other_sessions(world):
    alice = world.user("alice")
    laptop = world.login("alice")
    laptop_hb = laptop.heartbeat()
    reply = alice.post("/api/password", password=PASSWORD, new_password=NEW_PASSWORD)
    assert reply.status == 204
    assert "msg bye password" in laptop_hb.heads()
    assert laptop.get("/api/welcome").status == 403
    assert alice.get("/api/welcome").status == 200          # the changing session stays
    for token in (alice.login["resume"], laptop.login["resume"]):
        assert world.browser().post("/api/resume", token=token).status == 401
    assert stored_hashes(world, "alice") == []
    b = world.browser()
    assert b.post("/api/login", username="alice", password=PASSWORD).status == 401
    assert world.login("alice", NEW_PASSWORD).login["resume"]


def test_password_change_with_the_wrong_password_is_401_and_rate_limited(world):
    alice = world.user("alice")
    codes = [alice.post("/api/password", password="not it", new_password=NEW_PASSWORD).status
             for _ in range(12)]
    assert codes[:10] == [401] * 10 and codes[-1] == 429
    assert world.browser().post("/api/resume", token=alice.login["resume"]).status == 200
    world.advance(3600)
    assert alice.post("/api/password", password=PASSWORD,
                      new_password=NEW_PASSWORD).status == 204


@pytest.mark.parametrize("new, status", [
    ("short", 400), ("alice", 400), ("x" * 2000, 400), (None, 400)])
def test_new_password_is_validated_like_registration(world, new, status):
    alice = world.user("alice")
    data = {"password": PASSWORD}
    if new is not None:
        data["new_password"] = new
    reply = alice.post("/api/password", **data)
    assert reply.status == status and reply.json["error"]
    assert PASSWORD not in reply.body.decode()
    assert world.login("alice").name == "alice"             # unchanged


def test_password_change_needs_a_session_and_a_member(world):
    assert world.browser().post("/api/password", me="alice", id="nope", password=PASSWORD,
                                new_password=NEW_PASSWORD).status == 403
    guest = world.guest()
    assert guest.post("/api/password", password="x" * 8,
                      new_password=NEW_PASSWORD).status == 403


def test_no_secret_in_error_answers(world):
    alice = world.user("alice")
    token = alice.login["resume"]
    alice.post("/api/logout")
    answers = [world.browser().post("/api/resume", token=token).body]
    bob = world.user("bob")
    answers.append(bob.post("/api/password", password="wrong-one",
                            new_password=NEW_PASSWORD).body)
    answers.append(bob.post("/api/password", password=PASSWORD, new_password="bob").body)
    for body in answers:
        text = body.decode()
        for secret in (token, "wrong-one", NEW_PASSWORD, PASSWORD, bob.session):
            assert secret not in text


# -- the service, with a directory whose answers wait ---------------------------------

class SlowResume(SQLiteDirectory):
    """SQLite run inline, but ``resume_user`` answers only when told."""

    def __init__(self):
        super().__init__(":memory:", runner=run_now)
        self.waiting = []

    def resume_user(self, token_hash, not_before=None):
        d = defer.Deferred()
        self.waiting.append((d, super().resume_user(token_hash, not_before)))
        return d

    def answer(self):
        d, real = self.waiting.pop(0)
        real.addCallback(d.callback)


def alice_logged_in(store=None):
    """A service over an inline SQLite (or ``store``) where alice is logged
    in: clock, store, hub, service and her session."""
    clock = Clock()
    store = store if store is not None else SQLiteDirectory(":memory:", runner=run_now)
    hub = Hub(clock, HubConfig())
    service = PresenceService(hub, store, hasher, hash_cost=1)
    result_of(defer.ensureDeferred(service.register("alice", PASSWORD)))
    session = result_of(defer.ensureDeferred(service.login("alice", PASSWORD)))
    return clock, store, hub, service, session


def test_a_resume_looked_up_before_a_password_change_is_refused():
    clock, store, hub, service, session = alice_logged_in(SlowResume())
    token = result_of(defer.ensureDeferred(service.issue_resume(session)))
    pending = defer.ensureDeferred(service.resume(token, "10.0.0.1"))
    result_of(defer.ensureDeferred(service.change_password(session, PASSWORD, NEW_PASSWORD)))
    store.answer()                      # found: the look-up ran before the revocation
    failure_of(pending, Unauthorized)
    assert [s.id for s in hub.users.user("alice").sessions] == [session.id]


def test_service_resume_rules():
    clock, store, hub, service, session = alice_logged_in()
    session.scope = "wml"
    assert result_of(defer.ensureDeferred(service.issue_resume(session))) is None
    session.scope = None
    token = result_of(defer.ensureDeferred(service.issue_resume(session)))
    resumed = result_of(defer.ensureDeferred(service.resume(token, "10.0.0.1")))
    assert resumed.user.name == "alice" and resumed.scope is None
    failure_of(defer.ensureDeferred(service.resume(None)), BadRequest)
    for _ in range(20):
        failure_of(defer.ensureDeferred(service.resume("bad", "10.0.0.2")), Unauthorized)
    failure_of(defer.ensureDeferred(service.resume(token, "10.0.0.2")), TooMany)
    assert result_of(defer.ensureDeferred(service.resume(token, "10.0.0.3")))  # per address
    clock.advance(3)
    assert result_of(defer.ensureDeferred(service.resume(token, "10.0.0.2")))
    result_of(service.logout(resumed))
    failure_of(defer.ensureDeferred(service.resume(token, "10.0.0.1")), Unauthorized)


def test_a_locked_account_cannot_resume_and_gets_its_welcome_figures_after():
    clock, store, hub, service, session = alice_logged_in()
    token = result_of(defer.ensureDeferred(service.issue_resume(session)))
    result_of(store.set_locked("alice", True))
    failure_of(defer.ensureDeferred(service.resume(token, "10.0.0.1")), Forbidden)
    assert len(hub.users.user("alice").sessions) == 1      # none opened
    result_of(store.set_locked("alice", False))
    clock.advance(5)
    resumed = result_of(defer.ensureDeferred(service.resume(token, "10.0.0.1")))
    assert resumed.welcome["last_login"] == session.login_time   # the locked try left none
