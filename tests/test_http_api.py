"""The JSON API of spec sections 2, 4 and 5, in memory.

The real resource tree (``make_site``) with a ``Clock`` as the hub's clock, a
real SQLite directory (``runner=run_now``) and inline password hashing, driven
through ``treq.testing.StubTreq``; a few tests that need the real
``PresenceSite`` (bounded bodies, the access log, another client address)
feed it raw bytes over a ``StringTransport``.
"""

from __future__ import annotations

import json
import string
from urllib.parse import quote

import pytest
from twisted.logger import capturedLogs, formatEvent

from helpers import (  # noqa: F401  (logged_errors, world: fixtures)
    PASSWORD, logged_errors, raw_request, result_of, world,
)
from presence.store import passwords
from twisted.internet.task import Clock

from presence.web.http import MAX_BODY, AccessLogFile, PresenceSite, mask, masked_log_formatter

SECRET_PASSWORD = "s3cret-Pa55word"


def frames_of(hb):
    return hb.heads()


# -- registration ------------------------------------------------------------------

def test_register_answers_201_with_the_name(world):
    reply = world.register("alice")
    assert reply.status == 201
    assert reply.json == {"username": "alice"}


def test_register_with_a_json_body(world):
    reply = world.browser().post_json("/api/register",
                                      {"username": "alice", "password": PASSWORD})
    assert reply.status == 201
    assert reply.json == {"username": "alice"}
    assert world.login("alice").name == "alice"


def test_register_keeps_optional_fields(world):
    reply = world.register("alice", email="alice@example.com", phone="+49 30 1234",
                           wireless="+491701234567")
    assert reply.status == 201
    user = result_of(world.store.get_user("alice"))
    assert user["email"] == "alice@example.com"
    assert user["phone"] == "+49 30 1234"
    assert user["wireless"] == "+491701234567"


def test_password_is_stored_only_as_a_salted_hash(world):
    world.register("alice", SECRET_PASSWORD)
    world.register("bob", SECRET_PASSWORD)
    alice = result_of(world.store.get_user("alice"))["password_hash"]
    bob = result_of(world.store.get_user("bob"))["password_hash"]
    assert SECRET_PASSWORD not in alice
    assert alice != bob  # salted
    assert passwords.check_password(SECRET_PASSWORD, alice)


@pytest.mark.parametrize("name", [
    "", "Alice", "-alice", ".alice", "_alice", "al ice", "al/ice", "ali\u00e7e", "a" * 33,
    "alice@example.com",
])
def test_register_bad_name_is_400(world, name):
    reply = world.register(name)
    assert reply.status == 400
    assert reply.error
    assert result_of(world.store.get_user(name)) is None


@pytest.mark.parametrize("name", ["a", "0", "a" * 32, "al.ice", "al-ice", "al_ice", "9lives"])
def test_register_good_names(world, name):
    assert world.register(name).status == 201


@pytest.mark.parametrize("name", [
    "api", "jchat", "chat", "initchat", "call", "sip", "static", "wml", "nic",
])
def test_register_reserved_name_is_400(world, name):
    reply = world.register(name)
    assert reply.status == 400
    assert "reserved" in reply.error


@pytest.mark.parametrize("name", ["guest.alice", "guest.1a2b3c4d", "guest."])
def test_register_guest_prefix_is_400(world, name):
    reply = world.register(name)
    assert reply.status == 400


@pytest.mark.parametrize("password", ["", "12345", "alice", None])
def test_register_weak_or_missing_password_is_400(world, password):
    browser = world.browser()
    data = {"username": "alice"}
    if password is not None:
        data["password"] = password
    reply = browser.post("/api/register", **data)
    assert reply.status == 400
    if password:
        assert password not in reply.error
    assert result_of(world.store.get_user("alice")) is None


def test_register_missing_username_is_400(world):
    reply = world.browser().post("/api/register", password=PASSWORD)
    assert reply.status == 400


@pytest.mark.parametrize("extra", [
    {"email": "not-an-address"},
    {"wireless": "0170 1234"},
    {"wireless": "+12"},
    {"email": "a@b" + "x" * 200},
])
def test_register_bad_contact_fields_are_400(world, extra):
    reply = world.register("alice", **extra)
    assert reply.status == 400
    assert result_of(world.store.get_user("alice")) is None


def test_register_taken_user_name_is_409(world):
    assert world.register("alice").status == 201
    reply = world.register("alice", "another password")
    assert reply.status == 409
    assert "another password" not in reply.error
    # the first account keeps its password
    world.login("alice")


def test_register_name_of_a_group_or_alias_is_409(world):
    alice = world.user("alice")
    assert alice.post("/api/groups", name="friends").status == 201
    assert alice.post("/api/aliases", alias="ally").status == 201
    assert world.register("friends").status == 409
    assert world.register("ally").status == 409


# -- login, guests, logout ---------------------------------------------------------------

def test_login_answer(world):
    world.register("alice")
    browser = world.browser()
    reply = browser.post("/api/login", username="alice", password=PASSWORD)
    assert reply.status == 200
    body = reply.json
    assert set(body) == {"session", "username", "heartbeat", "host_box", "resume"}
    assert body["username"] == "alice"
    assert body["heartbeat"] == f"/jchat?me=alice&id={body['session']}"
    assert body["host_box"] == "box1.test:8080"
    cookie = reply.header("set-cookie")
    assert cookie.startswith(f"presence_session={body['session']}")
    assert "httponly" in cookie.lower()
    assert "samesite=lax" in cookie.lower()


def test_session_ids_are_long_random_and_distinct(world):
    world.register("alice")
    ids = {world.login("alice").session for _ in range(12)}
    assert len(ids) == 12
    for ident in ids:
        # at least 128 bits: 22 characters of a 64-symbol alphabet
        assert len(ident) >= 22
        assert set(ident) <= set(string.ascii_letters + string.digits + "-_")


def test_login_with_a_json_body(world):
    world.register("alice")
    reply = world.browser().post_json("/api/login",
                                      {"username": "alice", "password": PASSWORD})
    assert reply.status == 200 and reply.json["username"] == "alice"


@pytest.mark.parametrize("username,password", [
    ("alice", SECRET_PASSWORD), ("nobody", SECRET_PASSWORD), ("Alice", PASSWORD),
])
def test_login_refused_is_401(world, username, password):
    world.register("alice")
    reply = world.browser().post("/api/login", username=username, password=password)
    assert reply.status == 401
    assert SECRET_PASSWORD not in reply.error
    assert reply.header("set-cookie") is None


@pytest.mark.parametrize("data", [{}, {"username": "alice"}, {"password": PASSWORD},
                                  {"username": "", "password": PASSWORD}])
def test_login_missing_fields_is_400(world, data):
    world.register("alice")
    reply = world.browser().post("/api/login", **data)
    assert reply.status == 400
    assert reply.error


def test_login_rate_limit_after_failed_logins(world):
    world.register("alice")
    browser = world.browser()
    for _ in range(10):
        assert browser.post("/api/login", username="alice",
                            password=SECRET_PASSWORD).status == 401
    limited = browser.post("/api/login", username="alice", password=SECRET_PASSWORD)
    assert limited.status == 429
    assert SECRET_PASSWORD not in limited.error
    # the right password is refused too while the address is limited
    right = browser.post("/api/login", username="alice", password=PASSWORD)
    assert right.status == 429
    assert PASSWORD not in right.error
    # from another browser on the same address as well
    assert world.browser().post("/api/login", username="alice",
                                password=PASSWORD).status == 429
    # one more try after a while
    world.advance(6)
    assert browser.post("/api/login", username="alice", password=PASSWORD).status == 200


def test_login_rate_limit_is_per_address(world):
    world.register("alice")
    browser = world.browser()
    for _ in range(11):
        browser.post("/api/login", username="alice", password=SECRET_PASSWORD)
    assert browser.post("/api/login", username="alice", password=PASSWORD).status == 429
    body = f"username=alice&password={quote(PASSWORD)}".encode()
    status, _, answer = raw_request(
        world.site, "POST", "/api/login", body,
        {"Content-Type": "application/x-www-form-urlencoded"}, peer=("10.1.2.3", 5555))
    assert status == 200, answer
    assert json.loads(answer)["username"] == "alice"


def test_successful_logins_do_not_count_as_failures(world):
    world.register("alice")
    for _ in range(15):
        world.login("alice")


def test_guest_session(world):
    browser = world.browser()
    reply = browser.post("/api/guest")
    assert reply.status == 200
    body = reply.json
    assert body["username"].startswith("guest.")
    assert body["heartbeat"] == f"/jchat?me={body['username']}&id={body['session']}"
    assert set(body) == {"session", "username", "heartbeat", "host_box", "resume"}
    assert body["resume"] is None          # guests get no resume token
    me = browser.get("/api/session", me=body["username"], id=body["session"])
    assert me.status == 200 and me.json["user"] == body["username"]
    # each guest is someone else
    assert world.browser().post("/api/guest").json["username"] != body["username"]


def test_guest_flood_is_429(world):
    browser = world.browser()
    names = set()
    for _ in range(30):
        reply = browser.post("/api/guest")
        assert reply.status == 200
        names.add(reply.json["username"])
    assert len(names) == 30
    flood = browser.post("/api/guest")
    assert flood.status == 429
    assert flood.error
    world.advance(2)
    assert browser.post("/api/guest").status == 200
    assert browser.post("/api/guest").status == 429


def test_guest_cannot_take_a_registered_only_action(world):
    world.user("alice")
    guest = world.guest()
    assert guest.post("/api/groups", name="guests-club").status == 403
    assert guest.post("/api/contacts", contact="alice").status == 403


def test_logout(world):
    alice = world.user("alice")
    reply = alice.post("/api/logout")
    assert reply.status == 204
    assert reply.body == b""
    cookie = reply.header("set-cookie")
    assert cookie.startswith("presence_session=;") or "max-age=0" in cookie.lower()
    assert alice.get("/api/welcome").status == 403
    assert alice.post("/api/logout").status == 403
    assert alice.browser.heartbeat_reply(**alice.creds).status == 403


def test_logout_ends_only_that_session(world):
    alice = world.user("alice")
    other = world.login("alice")
    assert alice.post("/api/logout").status == 204
    assert other.get("/api/welcome").status == 200


@pytest.mark.parametrize("creds", [
    {}, {"me": "alice"}, {"me": "alice", "id": "nope"}, {"id": "nope"},
])
def test_logout_bad_session_is_403(world, creds):
    world.user("alice")
    reply = world.browser().post("/api/logout", **creds)
    assert reply.status == 403
    assert "nope" not in reply.error


# -- sessions: id, sessionId, cookie, me -------------------------------------------------

def test_session_id_synonym(world):
    alice = world.user("alice")
    reply = world.browser().get("/api/welcome", me="alice", sessionId=alice.session)
    assert reply.status == 200


def test_session_cookie(world):
    world.register("alice")
    browser = world.browser()
    alice = world.login("alice", browser=browser)
    reply = browser.get("/api/welcome")  # no me, no id: the cookie set at login
    assert reply.status == 200
    chat = browser.post("/api/groups", name="cookies")
    assert chat.status == 201
    assert world.hub.session(alice.session) is not None
    # after logout the cookie no longer works
    assert browser.post("/api/logout").status == 204
    assert browser.get("/api/welcome").status == 403


def test_session_cookie_with_me(world):
    world.register("alice")
    browser = world.browser()
    world.login("alice", browser=browser)
    assert browser.get("/api/welcome", me="alice").status == 200
    assert browser.get("/api/welcome", me="bob").status == 403


def test_session_in_a_json_body(world):
    alice = world.user("alice")
    reply = world.browser().post_json(
        "/api/groups", {"me": "alice", "id": alice.session, "name": "friends"})
    assert reply.status == 201


def test_me_must_match_the_session(world):
    alice = world.user("alice")
    world.user("bob")
    reply = world.browser().get("/api/welcome", me="bob", id=alice.session)
    assert reply.status == 403
    assert alice.session not in reply.body.decode()
    reply = world.browser().post("/api/groups", me="bob", id=alice.session, name="x")
    assert reply.status == 403
    assert result_of(world.store.get_group("x")) is None


@pytest.mark.parametrize("method,path,data", [
    ("GET", "/api/welcome", {}),
    ("GET", "/api/messages", {}),
    ("GET", "/api/contacts", {}),
    ("GET", "/api/session", {}),
    ("POST", "/api/groups", {"name": "friends"}),
    ("POST", "/api/groups/friends/join", {}),
    ("POST", "/api/groups/friends/leave", {}),
    ("POST", "/api/contacts", {"contact": "bob"}),
    ("POST", "/api/contacts/remove", {"contact": "bob"}),
    ("POST", "/api/active", {"group": "friends"}),
    ("POST", "/api/aliases", {"alias": "ally"}),
    ("POST", "/api/messages/1/read", {}),
    ("GET", "/initchat", {"to": "bob"}),
    ("POST", "/chat", {"to": "bob", "msg": "hi"}),
    ("POST", "/ack", {"ack": "1"}),
    ("POST", "/api/logout", {}),
])
@pytest.mark.parametrize("creds", ["missing", "wrong", "other-me", "expired"])
def test_bad_sessions_are_403_everywhere(world, method, path, data, creds):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.post("/api/groups", name="friends")
    if creds == "missing":
        c = {}
    elif creds == "wrong":
        c = {"me": "alice", "id": alice.session[:-2] + "xx"}
    elif creds == "other-me":
        c = {"me": "bob", "id": alice.session}
    else:
        alice.post("/api/logout")
        c = alice.creds
    browser = world.browser()
    if method == "GET":
        reply = browser.get(path, **c, **data)
    else:
        reply = browser.post(path, **c, **data)
    assert reply.status == 403, (reply.status, reply.body)
    assert alice.session not in reply.body.decode()
    assert alice.session[:-2] not in reply.body.decode()


# -- groups ---------------------------------------------------------------------------

def test_create_group(world):
    alice = world.user("alice")
    reply = alice.post("/api/groups", name="friends")
    assert reply.status == 201
    assert reply.json == {"name": "friends"}
    presence = world.browser().get("/api/presence/friends")
    assert presence.status == 200
    assert presence.json == {"name": "friends", "members": [{"name": "alice",
                                                             "online": False, "state": "offline", "text": ""}]}


@pytest.mark.parametrize("name", ["alice", "friends", "ally"])
def test_create_group_taken_name_is_409(world, name):
    alice = world.user("alice")
    world.user("bob").post("/api/groups", name="friends")
    alice.post("/api/aliases", alias="ally")
    reply = alice.post("/api/groups", name=name)
    assert reply.status == 409
    assert reply.error


@pytest.mark.parametrize("name", ["", "Friends", "my friends", "guest.club", "api", None])
def test_create_group_bad_name_is_400(world, name):
    alice = world.user("alice")
    data = {} if name is None else {"name": name}
    assert alice.post("/api/groups", **data).status == 400


def test_join_and_leave(world):
    alice = world.user("alice")
    bob = world.user("bob")
    alice.post("/api/groups", name="friends")
    assert bob.post("/api/groups/friends/join").status == 204
    assert bob.post("/api/groups/friends/join").status == 204  # already in: fine
    members = world.browser().get("/api/presence/friends").json["members"]
    assert [m["name"] for m in members] == ["alice", "bob"]
    reply = bob.post("/api/groups/friends/leave")
    assert reply.status == 204 and reply.body == b""
    members = world.browser().get("/api/presence/friends").json["members"]
    assert [m["name"] for m in members] == ["alice"]
    assert bob.post("/api/groups/friends/leave").status == 404


def test_join_or_leave_unknown_group_is_404(world):
    alice = world.user("alice")
    world.user("bob")
    assert alice.post("/api/groups/nothing/join").status == 404
    assert alice.post("/api/groups/nothing/leave").status == 404
    # a user is not a group
    assert alice.post("/api/groups/bob/join").status == 404


def test_join_protected_group(world):
    alice = world.user("alice")
    bob = world.user("bob")
    assert alice.post("/api/groups", name="club", password=SECRET_PASSWORD).status == 201
    no_password = bob.post("/api/groups/club/join")
    assert no_password.status == 403
    wrong = bob.post("/api/groups/club/join", password="guess-guess")
    assert wrong.status == 403
    assert "guess-guess" not in wrong.error
    members = result_of(world.store.members("club"))
    assert members == ["alice"]
    assert bob.post("/api/groups/club/join", password=SECRET_PASSWORD).status == 204
    assert result_of(world.store.members("club")) == ["alice", "bob"]
    # the group password is kept hashed
    assert SECRET_PASSWORD not in result_of(world.store.get_group("club"))["password_hash"]


def test_membership_change_refreshes_sessions_showing_the_group(world):
    alice = world.user("alice")
    bob = world.user("bob")
    alice.post("/api/groups", name="friends")
    assert alice.post("/api/active", group="friends").status == 204
    hb = alice.heartbeat()
    assert bob.post("/api/groups/friends/join").status == 204
    assert "msg refresh friends" in frames_of(hb)
    before = len(hb.events())
    assert bob.post("/api/groups/friends/leave").status == 204
    assert frames_of(hb)[before:].count("msg refresh friends") == 1


# -- contacts (the address book) ----------------------------------------------------------

def test_contacts_add_list_remove(world):
    alice = world.user("alice")
    world.user("bob")
    world.user("carol")
    assert alice.post("/api/contacts", contact="bob").status == 204
    assert alice.post("/api/contacts", contact="carol").status == 204
    book = alice.get("/api/contacts")
    assert book.status == 200
    assert book.json == {"name": "alice", "members": [
        {"name": "bob", "online": False, "state": "offline", "text": ""}, {"name": "carol", "online": False, "state": "offline", "text": ""}]}
    assert alice.post("/api/contacts/remove", contact="bob").status == 204
    assert [m["name"] for m in alice.get("/api/contacts").json["members"]] == ["carol"]
    assert alice.post("/api/contacts/remove", contact="bob").status == 404


def test_contacts_unknown_is_404(world):
    alice = world.user("alice")
    assert alice.post("/api/contacts", contact="nobody").status == 404
    assert alice.post("/api/contacts/remove", contact="nobody").status == 404
    assert alice.get("/api/contacts").json["members"] == []


def test_contact_by_alias_is_stored_by_canonical_name(world):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.post("/api/aliases", alias="bob@example.com")
    assert alice.post("/api/contacts", contact="bob@example.com").status == 204
    assert [m["name"] for m in alice.get("/api/contacts").json["members"]] == ["bob"]
    assert alice.post("/api/contacts/remove", contact="bob@example.com").status == 204
    assert alice.get("/api/contacts").json["members"] == []


def test_address_book_is_the_default_active_group(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = alice.heartbeat()
    alice.post("/api/contacts", contact="bob")
    assert frames_of(hb) == ["msg refresh alice"]
    bob.heartbeat()
    assert frames_of(hb) == ["msg refresh alice", "msg update online bob"]
    assert alice.get("/api/contacts").json["members"] == [{"name": "bob", "online": True, "state": "available", "text": ""}]


def test_contact_added_while_offline_is_watched_after_login(world):
    bob = world.user("bob")
    world.register("carol")  # no session yet
    assert bob.post("/api/contacts", contact="carol").status == 204
    hb = bob.heartbeat(ack="1")
    carol = world.login("carol")
    carol.heartbeat()
    assert hb.heads() == ["msg update online carol"]


def test_removed_contact_is_no_longer_watched(world):
    bob = world.user("bob")
    carol = world.user("carol")
    bob.post("/api/contacts", contact="carol")
    hb = bob.heartbeat(ack="1")
    assert bob.post("/api/contacts/remove", contact="carol").status == 204
    assert hb.heads() == ["msg refresh bob"]
    carol.heartbeat()
    assert hb.heads() == ["msg refresh bob"]


def test_member_who_left_is_no_longer_watched(world):
    alice = world.user("alice")
    bob = world.user("bob")
    carol = world.user("carol")
    bob.post("/api/groups", name="friends")
    carol.post("/api/groups/friends/join")
    alice.post("/api/groups/friends/join")
    alice.post("/api/active", group="friends")
    hb = alice.heartbeat()
    assert carol.post("/api/groups/friends/leave").status == 204
    carol.heartbeat()
    assert hb.heads() == ["msg refresh friends"]
    bob.heartbeat()
    assert hb.heads() == ["msg refresh friends", "msg update online bob"]


# -- the active group ----------------------------------------------------------------

def test_active_group_selects_whose_updates_arrive(world):
    alice = world.user("alice")
    bob = world.user("bob")
    carol = world.user("carol")
    bob.post("/api/groups", name="friends")
    assert alice.post("/api/groups/friends/join").status == 204
    hb = alice.heartbeat()
    assert alice.post("/api/active", group="friends").status == 204
    carol.heartbeat()  # not in friends: nothing for alice
    bob.heartbeat()
    assert frames_of(hb) == ["msg update online bob"]


def test_active_single_user(world):
    alice = world.user("alice")
    bob = world.user("bob")
    world.user("carol")
    hb = alice.heartbeat()
    assert alice.post("/api/active", group="bob").status == 204
    bob.heartbeat()
    assert frames_of(hb) == ["msg update online bob"]


def test_active_back_to_the_address_book(world):
    alice = world.user("alice")
    bob = world.user("bob")
    carol = world.user("carol")
    alice.post("/api/contacts", contact="carol")
    hb = alice.heartbeat(ack="1")
    alice.post("/api/active", group="bob")
    assert alice.post("/api/active", group="alice").status == 204
    bob.heartbeat()
    carol.heartbeat()
    assert frames_of(hb)[-1] == "msg update online carol"
    assert "msg update online bob" not in frames_of(hb)


def test_active_unknown_is_404(world):
    alice = world.user("alice")
    assert alice.post("/api/active", group="nothing").status == 404


def test_active_protected_group_needs_membership(world):
    alice = world.user("alice")
    bob = world.user("bob")
    alice.post("/api/groups", name="club", password=SECRET_PASSWORD)
    assert bob.post("/api/active", group="club").status == 403
    assert alice.post("/api/active", group="club").status == 204


# -- aliases ---------------------------------------------------------------------------

def test_alias(world):
    alice = world.user("alice")
    reply = alice.post("/api/aliases", alias="Alice@Example.com")
    assert reply.status == 201
    assert reply.json == {"alias": "alice@example.com"}
    presence = world.browser().get("/api/presence/alice@example.com")
    assert presence.status == 200 and presence.json["name"] == "alice"
    assert alice.post("/api/aliases", alias="+4930123456").status == 201
    assert world.browser().get("/api/presence/+4930123456").json["name"] == "alice"


@pytest.mark.parametrize("alias", ["alice", "bob", "friends", "ally"])
def test_alias_taken_is_409(world, alias):
    alice = world.user("alice")
    bob = world.user("bob")
    alice.post("/api/groups", name="friends")
    bob.post("/api/aliases", alias="ally")
    assert alice.post("/api/aliases", alias=alias).status == 409


@pytest.mark.parametrize("alias", ["", "guest.x", "api", "two words", "a/b", None])
def test_alias_bad_is_400(world, alias):
    alice = world.user("alice")
    data = {} if alias is None else {"alias": alias}
    assert alice.post("/api/aliases", **data).status == 400


# -- presence ------------------------------------------------------------------------

def test_presence_of_a_user(world):
    world.user("alice")
    reply = world.browser().get("/api/presence/alice")
    assert reply.status == 200
    assert reply.json == {"name": "alice", "online": False, "state": "offline", "text": "", "last_seen": None}


def test_presence_online_and_last_seen(world):
    alice = world.user("alice")
    hb = alice.heartbeat()
    now = world.clock.seconds()
    body = world.browser().get("/api/presence/alice").json
    assert body["online"] is True and body["last_seen"] == now
    world.advance(5)
    alice.post("/api/logout")
    assert hb.finished
    went = world.clock.seconds()
    world.advance(100)
    body = world.browser().get("/api/presence/alice").json
    assert body == {"name": "alice", "online": False, "state": "offline", "text": "", "last_seen": went}


def test_presence_unknown_is_404(world):
    reply = world.browser().get("/api/presence/nobody")
    assert reply.status == 404
    assert reply.error


def test_presence_of_a_group(world):
    alice = world.user("alice")
    bob = world.user("bob")
    alice.post("/api/groups", name="friends")
    bob.post("/api/groups/friends/join")
    bob.heartbeat()
    reply = world.browser().get("/api/presence/friends")
    assert reply.json == {"name": "friends", "members": [
        {"name": "alice", "online": False, "state": "offline", "text": ""}, {"name": "bob", "online": True, "state": "available", "text": ""}]}


def test_presence_of_a_protected_group(world):
    alice = world.user("alice")
    world.user("bob")
    alice.post("/api/groups", name="club", password=SECRET_PASSWORD)
    anonymous = world.browser().get("/api/presence/club")
    assert anonymous.status == 401
    assert anonymous.error
    wrong = world.browser().get("/api/presence/club", password="not-it-at-all")
    assert wrong.status == 401
    assert "not-it-at-all" not in wrong.error
    right = world.browser().get("/api/presence/club", password=SECRET_PASSWORD)
    assert right.status == 200
    assert [m["name"] for m in right.json["members"]] == ["alice"]
    # a member's session needs no password
    assert alice.get("/api/presence/club").status == 200
    # a non-member's session does
    bob = world.login("bob")
    assert bob.get("/api/presence/club").status == 401


def test_presence_of_a_protected_group_with_the_session_cookie(world):
    world.register("alice")
    browser = world.browser()
    alice = world.login("alice", browser=browser)
    alice.post("/api/groups", name="club", password=SECRET_PASSWORD)
    reply = browser.get("/api/presence/club")  # the cookie set at login only
    assert reply.status == 200
    assert [m["name"] for m in reply.json["members"]] == ["alice"]


# -- initchat and chat (section 4) ---------------------------------------------------------

def test_initchat_online(world):
    alice = world.user("alice")
    bob = world.user("bob")
    ha = alice.heartbeat()
    hb = bob.heartbeat()
    reply = alice.get("/initchat", to="bob")
    assert reply.status == 204
    assert reply.body == b""
    assert frames_of(ha)[-1] == "msg initChat bob"
    assert frames_of(hb)[-1] == "msg initChat alice"


def test_initchat_offline(world):
    alice = world.user("alice")
    world.user("bob")
    reply = alice.get("/initchat", to="bob")
    assert reply.status == 200
    assert reply.json == {"online": False}


def test_initchat_unknown_is_404(world):
    alice = world.user("alice")
    assert alice.get("/initchat", to="nobody").status == 404


def test_initchat_by_post(world):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.heartbeat()
    assert alice.post("/initchat", to="bob").status == 204


def test_chat_online(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb1 = bob.heartbeat()
    pc2 = world.login("bob")  # a second session of bob: a handset
    hb2 = pc2.heartbeat()
    reply = alice.post("/chat", to="bob", msg="hello bob\nsecond line")
    assert reply.status == 202
    body = reply.json
    assert body["delivered"] == "online"
    msgid = body["msgid"]
    assert msgid and " " not in msgid
    for hb in (hb1, hb2):
        chats = [e for e in hb.events() if e.head.startswith("msg chat")]
        assert [e.text for e in chats] == [f"msg chat alice {msgid}\nhello bob\nsecond line"]


def test_chat_text_lines_become_data_lines(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    alice.post("/chat", to="bob", msg="a\r\nb\n\nc")
    raw = hb.read().decode()
    assert "data: a\ndata: b\ndata: \ndata: c\n\n" in raw


def test_chat_offline_is_stored_and_announced(world):
    alice = world.user("alice")
    bob = world.user("bob")  # logged in, no heartbeat: offline
    reply = alice.post("/chat", to="bob", msg="are you there?")
    assert reply.status == 202
    assert reply.json["delivered"] == "stored"
    box = bob.get("/api/messages").json
    assert box["unread"] == 1
    assert [(m["from"], m["text"]) for m in box["messages"]] == [("alice", "are you there?")]
    # the frame waits in bob's mailbox until he holds a heartbeat
    hb = bob.heartbeat()
    assert "msg message alice" in frames_of(hb)
    assert not [h for h in frames_of(hb) if h.startswith("msg chat")]


def test_chat_to_a_user_without_session_is_stored(world):
    alice = world.user("alice")
    world.register("bob")
    reply = alice.post("/chat", to="bob", msg="for later")
    assert reply.json["delivered"] == "stored"
    bob = world.login("bob")
    assert [m["text"] for m in bob.get("/api/messages").json["messages"]] == ["for later"]
    assert bob.get("/api/welcome").json["unread"] == 1


def test_chat_repeated_seq_delivered_once(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    first = alice.post("/chat", to="bob", msg="once", seq="7")
    again = alice.post("/chat", to="bob", msg="once", seq="7")
    assert first.status == again.status == 202
    assert first.json == again.json
    chats = [e for e in hb.events() if e.head.startswith("msg chat")]
    assert len(chats) == 1
    # another seq is another message
    third = alice.post("/chat", to="bob", msg="once", seq="8")
    assert third.json["msgid"] != first.json["msgid"]
    assert len([h for h in frames_of(hb) if h.startswith("msg chat")]) == 2


def test_chat_seq_is_per_session(world):
    alice = world.user("alice")
    alice2 = world.login("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    alice.post("/chat", to="bob", msg="from the pc", seq="1")
    alice2.post("/chat", to="bob", msg="from the phone", seq="1")
    chats = [e.text.split("\n")[1] for e in hb.events() if e.head.startswith("msg chat")]
    assert chats == ["from the pc", "from the phone"]


def test_chat_repeated_seq_stored_once(world):
    alice = world.user("alice")
    bob = world.user("bob")
    first = alice.post("/chat", to="bob", msg="only once", seq="1")
    again = alice.post("/chat", to="bob", msg="only once", seq="1")
    assert first.json == again.json
    assert first.json["delivered"] == "stored"
    assert [m["text"] for m in bob.get("/api/messages").json["messages"]] == ["only once"]


def test_chat_seq_as_json_number(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    body = {"me": "alice", "id": alice.session, "to": "bob", "msg": "n", "seq": 5}
    first = world.browser().post_json("/chat", body)
    again = world.browser().post_json("/chat", body)
    assert first.status == 202 and first.json == again.json
    assert len([h for h in frames_of(hb) if h.startswith("msg chat")]) == 1


def test_chat_order_is_kept(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    for i in range(20):
        assert alice.post("/chat", to="bob", msg=f"m{i}", seq=str(i)).status == 202
    texts = [e.text.split("\n")[1] for e in hb.events() if e.head.startswith("msg chat")]
    assert texts == [f"m{i}" for i in range(20)]
    ids = hb.ids()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_chat_text_limit(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    too_long = alice.post("/chat", to="bob", msg="x" * 4097)
    assert too_long.status == 413
    assert too_long.error
    assert not [h for h in frames_of(hb) if h.startswith("msg chat")]
    # the limit is in characters, not bytes
    ok = alice.post("/chat", to="bob", msg="\u00e9" * 4096)
    assert ok.status == 202
    chat = [e for e in hb.events() if e.head.startswith("msg chat")][0]
    assert chat.text.split("\n", 1)[1] == "\u00e9" * 4096


def test_chat_offline_text_limit(world):
    alice = world.user("alice")
    bob = world.user("bob")
    assert alice.post("/chat", to="bob", msg="y" * 5000).status == 413
    assert bob.get("/api/messages").json["messages"] == []


@pytest.mark.parametrize("msg", ["", "   ", None])
def test_chat_empty_text_is_400(world, msg):
    alice = world.user("alice")
    world.user("bob")
    data = {"to": "bob"} if msg is None else {"to": "bob", "msg": msg}
    assert alice.post("/chat", **data).status == 400


def test_chat_unknown_recipient_is_404(world):
    alice = world.user("alice")
    assert alice.post("/chat", to="nobody", msg="hi").status == 404


def test_chat_by_alias(world):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.post("/api/aliases", alias="bobby")
    hb = bob.heartbeat()
    assert alice.post("/chat", to="bobby", msg="hi").json["delivered"] == "online"
    assert any(h.startswith("msg chat alice ") for h in frames_of(hb))


def test_guests_chat_both_ways(world):
    alice = world.user("alice")
    guest = world.guest()
    hg = guest.heartbeat()
    ha = alice.heartbeat()
    assert guest.post("/initchat", to="alice").status == 204
    reply = guest.post("/chat", to="alice", msg="hello from a visitor")
    assert reply.json["delivered"] == "online"
    assert any(e.text.startswith(f"msg chat {guest.name} ") for e in ha.events())
    answer = alice.post("/chat", to=guest.name, msg="welcome!")
    assert answer.status == 202 and answer.json["delivered"] == "online"
    assert any(e.text.startswith("msg chat alice ") and e.text.endswith("welcome!")
               for e in hg.events())


def test_ack_on_chat_acknowledges_frames(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    for i in range(3):
        alice.post("/chat", to="bob", msg=f"m{i}")
    assert hb.ids() == [1, 2, 3]
    assert bob.post("/chat", to="alice", msg="got them", ack="2").status == 202
    again = bob.heartbeat()  # re-sends only what is not acknowledged
    assert again.ids() == [3]


def test_ack_endpoint(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    for i in range(4):
        alice.post("/chat", to="bob", msg=f"m{i}")
    reply = bob.post("/ack", ack="3")
    assert reply.status == 204 and reply.body == b""
    assert hb.ids() == [1, 2, 3, 4]
    assert bob.heartbeat().ids() == [4]


@pytest.mark.parametrize("ack", [None, "", "x", "1.5"])
def test_ack_endpoint_bad_ack_is_400(world, ack):
    bob = world.user("bob")
    data = {} if ack is None else {"ack": ack}
    assert bob.post("/ack", **data).status == 400


def test_ack_with_query_parameters(world):
    alice = world.user("alice")
    bob = world.user("bob")
    bob.heartbeat()
    alice.post("/chat", to="bob", msg="one")
    reply = bob.browser.request("POST", "/ack", params={"me": "bob", "id": bob.session,
                                                        "ack": "1"})
    assert reply.status == 204
    assert bob.heartbeat().ids() == []


# -- the message box (section 5) ----------------------------------------------------------

def test_leave_a_message_anonymously(world):
    bob = world.user("bob")
    hb = bob.heartbeat()
    reply = world.browser().post("/api/messages", to="bob", text="call me back")
    assert reply.status == 201
    ident = reply.json["id"]
    assert isinstance(ident, int)
    assert frames_of(hb)[-1] == "msg message anonymous"
    box = bob.get("/api/messages").json
    assert box["messages"] == [{"id": ident, "from": "anonymous", "text": "call me back",
                                "time": world.clock.seconds(), "read": False}]
    assert box["unread"] == 1


def test_leave_a_message_as_a_user(world):
    alice = world.user("alice")
    bob = world.user("bob")
    hb = bob.heartbeat()
    assert alice.post("/api/messages", to="bob", text="from alice").status == 201
    assert frames_of(hb)[-1] == "msg message alice"
    assert bob.get("/api/messages").json["messages"][0]["from"] == "alice"


def test_leave_a_message_to_an_alias(world):
    bob = world.user("bob")
    bob.post("/api/aliases", alias="+4930999")
    assert world.browser().post("/api/messages", to="+4930999", text="hi").status == 201
    assert bob.get("/api/messages").json["unread"] == 1


def test_leave_a_message_failures(world):
    world.user("bob")
    browser = world.browser()
    assert browser.post("/api/messages", to="nobody", text="hi").status == 404
    assert browser.post("/api/messages", to="bob", text="z" * 4097).status == 413
    assert browser.post("/api/messages", to="bob", text="").status == 400
    assert browser.post("/api/messages", to="bob").status == 400
    # a wrong session is refused, not turned into an anonymous message
    assert browser.post("/api/messages", to="bob", text="hi", me="bob",
                        id="forged").status == 403


def test_anonymous_message_flood_is_429(world):
    bob = world.user("bob")
    browser = world.browser()
    for i in range(20):
        assert browser.post("/api/messages", to="bob", text=f"spam {i}").status == 201
    flood = browser.post("/api/messages", to="bob", text="one too many")
    assert flood.status == 429
    assert bob.get("/api/messages").json["unread"] == 20
    # a logged-in sender is not limited by the anonymous bucket
    alice = world.user("alice")
    assert alice.post("/api/messages", to="bob", text="real").status == 201
    world.advance(3)
    assert browser.post("/api/messages", to="bob", text="later").status == 201


def test_messages_newest_first_and_mark_read(world):
    alice = world.user("alice")
    bob = world.user("bob")
    ids = []
    for i in range(3):
        ids.append(alice.post("/api/messages", to="bob", text=f"m{i}").json["id"])
        world.advance(1)
    box = bob.get("/api/messages").json
    assert [m["id"] for m in box["messages"]] == ids[::-1]
    assert [m["text"] for m in box["messages"]] == ["m2", "m1", "m0"]
    times = [m["time"] for m in box["messages"]]
    assert times == sorted(times, reverse=True)
    assert box["unread"] == 3
    reply = bob.post(f"/api/messages/{ids[1]}/read")
    assert reply.status == 204
    box = bob.get("/api/messages").json
    assert {m["id"]: m["read"] for m in box["messages"]} == {
        ids[0]: False, ids[1]: True, ids[2]: False}
    assert box["unread"] == 2


def test_mark_read_of_someone_elses_message_is_404(world):
    alice = world.user("alice")
    bob = world.user("bob")
    carol = world.user("carol")
    ident = alice.post("/api/messages", to="bob", text="private").json["id"]
    assert carol.post(f"/api/messages/{ident}/read").status == 404
    assert bob.get("/api/messages").json["unread"] == 1
    assert bob.post("/api/messages/999999/read").status == 404
    assert bob.post("/api/messages/abc/read").status == 404
    # past what the store holds: 400, not a 500 (issue 11)
    for ident in (str(2 ** 63), "9" * 19, "1" * 5000):
        reply = bob.post(f"/api/messages/{ident}/read")
        assert reply.status == 400, (ident[:20], reply.body[:200])
        assert "whole number" in reply.error and len(reply.error) < 100


def test_messages_of_another_user_are_not_shown(world):
    alice = world.user("alice")
    world.user("bob")
    alice.post("/api/messages", to="bob", text="for bob")
    assert alice.get("/api/messages").json == {"messages": [], "unread": 0}


def test_welcome_figures(world):
    t0 = world.clock.seconds()
    world.register("alice")
    alice = world.login("alice")
    first = alice.get("/api/welcome")
    assert first.status == 200
    assert first.json == {"last_login": None, "offline_seconds": 0,
                          "hits_while_offline": 0, "unread": 0}
    hb = alice.heartbeat()
    # a page opened while alice is online is not a hit
    result_of(world.service.page_hit("alice"))
    world.advance(10)
    alice.post("/api/logout")
    assert hb.finished
    world.advance(100)
    for _ in range(3):
        result_of(world.service.page_hit("alice"))
    world.browser().post("/api/messages", to="alice", text="one")
    world.browser().post("/api/messages", to="alice", text="two")

    back = world.login("alice")
    back_hb = back.heartbeat()
    figures = back.get("/api/welcome").json
    assert figures == {"last_login": t0, "offline_seconds": 100,
                       "hits_while_offline": 3, "unread": 2}
    # unread is live; the other figures are those of this session's login
    newest = back.get("/api/messages").json["messages"][0]["id"]
    back.post(f"/api/messages/{newest}/read")
    assert back.get("/api/welcome").json == {**figures, "unread": 1}
    # a second session while she is online: not away, hits already counted
    world.advance(5)
    other = world.login("alice")
    assert other.get("/api/welcome").json == {
        "last_login": t0 + 110, "offline_seconds": 0, "hits_while_offline": 0, "unread": 1}
    assert not back_hb.finished


def test_welcome_of_a_guest(world):
    guest = world.guest()
    assert guest.get("/api/welcome").json == {
        "last_login": None, "offline_seconds": 0, "hits_while_offline": 0, "unread": 0}


# -- the user limit of sessions ----------------------------------------------------------

def test_seventeenth_session_replaces_the_oldest(world):
    world.register("alice")
    oldest = world.login("alice")
    hb = oldest.heartbeat()
    for _ in range(15):
        world.login("alice")
    assert oldest.get("/api/welcome").status == 200
    world.login("alice")  # the 17th
    assert hb.finished
    assert frames_of(hb)[-1] == "msg bye replaced"
    assert oldest.get("/api/welcome").status == 403


def test_logout_says_bye_to_the_held_heartbeat(world):
    alice = world.user("alice")
    hb = alice.heartbeat()
    alice.post("/api/logout")
    assert hb.finished and hb.reason is None
    assert frames_of(hb) == ["msg bye logout"]


def test_logout_ends_a_held_poll_with_bye(world):
    alice = world.user("alice")
    hb = alice.heartbeat(mode="poll")
    assert not hb.finished
    assert alice.post("/api/logout").status == 204
    assert hb.finished
    assert frames_of(hb) == ["msg bye logout"]
    assert world.hub.held == 0


# -- request shapes ------------------------------------------------------------------------

def test_broken_json_body_is_400(world):
    world.register("alice")
    reply = world.browser().request(
        "POST", "/api/login", body=b'{"username": "alice", "password": ',
        headers={"Content-Type": ["application/json"]})
    assert reply.status == 400
    assert "JSON" in reply.error


@pytest.mark.parametrize("body", [b'["alice"]', b'"alice"', b"42",
                                  b'{"username": ["alice"], "password": "x"}',
                                  b'{"username": {"a": 1}, "password": "x"}',
                                  b'\xff\xfe{}'])
def test_malformed_json_body_is_400(world, body):
    world.register("alice")
    reply = world.browser().request("POST", "/api/login", body=body,
                                    headers={"Content-Type": ["application/json"]})
    assert reply.status == 400
    assert reply.error


def test_non_utf8_form_is_400(world):
    reply = world.browser().request(
        "POST", "/api/register", body=b"username=al%FFice&password=secret-pass",
        headers={"Content-Type": ["application/x-www-form-urlencoded"]})
    assert reply.status == 400
    assert reply.error


def test_query_string_parameters_work_for_post(world):
    world.register("alice")
    reply = world.browser().request("POST", "/api/login",
                                    params={"username": "alice", "password": PASSWORD})
    assert reply.status == 200


def test_unknown_endpoint_is_404_json(world):
    reply = world.browser().get("/api/nothing-here")
    assert reply.status == 404
    assert reply.error


def test_wrong_method_is_405_json(world):
    reply = world.browser().get("/api/login")
    assert reply.status == 405
    assert reply.error
    assert world.browser().request("DELETE", "/chat").status == 405


def test_every_answer_is_json_and_not_cached(world):
    alice = world.user("alice")
    for reply in (alice.get("/api/welcome"), alice.get("/api/messages"),
                  world.browser().get("/api/presence/alice"),
                  world.browser().post("/api/login", username="x", password="yyyyyy")):
        assert reply.header("content-type") == "application/json"
        assert reply.header("cache-control") == "no-store"


def test_session_info(world):
    alice = world.user("alice")
    info = alice.get("/api/session")
    assert info.status == 200
    body = info.json
    assert body["user"] == "alice"
    assert body["host_box"] == "box1.test:8080"
    assert body["ip"] == "127.0.0.1"
    assert body["active"] == "alice"
    assert body["held"] is False
    assert alice.session not in info.body.decode()


def test_stats_from_loopback(world):
    alice = world.user("alice")
    alice.heartbeat()
    reply = world.browser().get("/api/stats")
    assert reply.status == 200
    body = reply.json
    assert body["sessions"] == 1 and body["held"] == 1 and body["online_users"] == 1


def test_stats_refused_from_elsewhere(world):
    status, headers, body = raw_request(world.site, "GET", "/api/stats",
                                        peer=("192.0.2.7", 4444))
    assert status == 403
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(body)


# -- missing parameters --------------------------------------------------------------

@pytest.mark.parametrize("method,path,data", [
    ("GET", "/initchat", {}),
    ("POST", "/chat", {"msg": "hi"}),
    ("POST", "/api/contacts", {}),
    ("POST", "/api/contacts/remove", {}),
    ("POST", "/api/active", {}),
    ("POST", "/api/messages", {"text": "hi"}),
])
def test_missing_name_parameter_is_400(world, method, path, data):
    alice = world.user("alice")
    reply = alice.get(path, **data) if method == "GET" else alice.post(path, **data)
    assert reply.status == 400
    assert "None" not in reply.error


# -- no secrets in error bodies -------------------------------------------------------------

def test_no_error_body_echoes_a_password_or_session(world):
    alice = world.user("alice", SECRET_PASSWORD)
    bob = world.user("bob")
    alice.post("/api/groups", name="club", password="club-secret-pw")
    sid = alice.session
    forged = sid[:-3] + "zzz"
    b = world.browser()
    replies = [
        b.post("/api/register", username="alice", password=SECRET_PASSWORD),
        b.post("/api/register", username="Bad Name", password=SECRET_PASSWORD),
        b.post("/api/register", username="carol", password="carol"),
        b.post("/api/register", username="dave", password="12345"),
        b.post("/api/login", username="alice", password=SECRET_PASSWORD + "x"),
        b.post("/api/login", username="alice"),
        b.post("/api/logout", me="alice", id=forged),
        b.post("/api/logout", me="bob", id=sid),
        b.get("/api/welcome", me="bob", sessionId=sid),
        b.post("/chat", me="bob", id=sid, to="alice", msg="x"),
        b.post("/ack", me="alice", id=sid, ack="nope"),
        b.get("/api/presence/club", password="wrong-club-pw"),
        bob.post("/api/groups/club/join", password="wrong-club-pw"),
        b.heartbeat_reply(me="bob", id=sid),
        b.heartbeat_reply(me="alice", id=forged),
        b.heartbeat_reply(me="alice", id=sid, mode="fast"),
        b.heartbeat_reply(me="alice", id=sid, ack="-1"),
    ]
    for reply in replies:
        assert reply.status >= 400, reply.body
        text = reply.body.decode()
        json.loads(text)
        for secret in (SECRET_PASSWORD, sid, forged, "club-secret-pw", "wrong-club-pw"):
            assert secret not in text, (reply.status, text)


# -- the real site: bounded bodies ----------------------------------------------------------

def test_body_over_64_kib_is_413(world):
    world.register("alice")
    body = b"username=alice&password=" + b"x" * (MAX_BODY + 1)
    status, headers, answer = raw_request(
        world.site, "POST", "/api/login", body,
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(answer)
    assert b"xxxx" not in answer


def test_chunked_body_over_64_kib_is_413(world):
    chunk = b"a" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(9)) + b"0\r\n\r\n"
    status, _, answer = raw_request(
        world.site, "POST", "/api/messages", body,
        {"Content-Type": "application/x-www-form-urlencoded",
         "Transfer-Encoding": "chunked"})
    assert status == 413
    assert "error" in json.loads(answer)


def test_body_of_64_kib_is_accepted(world):
    world.register("alice")
    prefix = f"username=alice&password={quote(PASSWORD)}&pad=".encode()
    body = prefix + b"p" * (MAX_BODY - len(prefix))
    assert len(body) == MAX_BODY
    status, _, answer = raw_request(
        world.site, "POST", "/api/login", body,
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, answer
    assert json.loads(answer)["username"] == "alice"


def test_oversized_body_does_not_reach_the_resource(world):
    # a registration hidden in an oversized JSON body is not carried out
    payload = json.dumps({"username": "alice", "password": PASSWORD,
                          "pad": "q" * (MAX_BODY + 10)}).encode()
    status, _, _ = raw_request(world.site, "POST", "/api/register", payload,
                               {"Content-Type": "application/json"})
    assert status == 413
    assert result_of(world.store.get_user("alice")) is None


# -- the access log ------------------------------------------------------------------

def test_mask_hides_ids_and_passwords():
    uri = b"/jchat?me=alice&id=S3ss10n&mode=poll&sessionId=Other1;password=pw9&ack=4"
    masked = mask(uri)
    for secret in (b"S3ss10n", b"Other1", b"pw9"):
        assert secret not in masked
    assert b"me=alice" in masked and b"mode=poll" in masked and b"ack=4" in masked
    assert mask(b"/?ID=abc&SessionID=def") == b"/?ID=***&SessionID=***"
    assert mask(b"/api/welcome?uid=keep&id=") == b"/api/welcome?uid=keep&id=***"
    assert mask(b"/static/app.js") == b"/static/app.js"


class _LogRequest:
    """What the formatter reads of a finished request."""

    def __init__(self, uri, referer=None):
        from twisted.internet.address import IPv4Address
        from twisted.web.http_headers import Headers
        self.uri = uri
        self.method = b"GET"
        self.clientproto = b"HTTP/1.1"
        self.code = 200
        self.sentLength = 12
        self.requestHeaders = Headers()
        if referer:
            self.requestHeaders.setRawHeaders(b"referer", [referer])
        self._addr = IPv4Address("TCP", "198.51.100.4", 1234)

    def getHeader(self, name):
        values = self.requestHeaders.getRawHeaders(name)
        return values[0] if values else None

    def getClientAddress(self):
        return self._addr


def test_masked_log_formatter():
    line = masked_log_formatter(
        "[01/Jan/2026:00:00:00 +0000]",
        _LogRequest(b"/jchat?me=alice&id=TOPSECRET&password=hunter22"))
    assert "TOPSECRET" not in line and "hunter22" not in line
    assert '"GET /jchat?me=alice&id=***&password=*** HTTP/1.1" 200 12' in line
    assert line.startswith('"198.51.100.4"')


def _access_log(world, requests):
    """Run raw requests through the started real site; return the log text."""
    site = world.site
    site.doStart()
    try:
        with capturedLogs() as events:
            answers = [raw_request(site, *r) for r in requests]
    finally:
        site.doStop()
    return "\n".join(formatEvent(e) for e in events), answers


def test_access_log_never_shows_session_or_password(world):
    world.register("alice")
    alice = world.login("alice")
    sid = alice.session
    text, answers = _access_log(world, [
        ("GET", f"/api/welcome?me=alice&id={sid}"),
        ("GET", f"/api/welcome?me=alice&sessionId={sid}"),
        ("POST", f"/api/login?username=alice&password={quote(PASSWORD)}"),
        ("GET", f"/jchat?me=alice&id={sid}&mode=poll&wait=0"),
    ])
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert "/api/welcome?me=alice&id=***" in text
    assert "sessionId=***" in text
    assert sid not in text
    assert quote(PASSWORD) not in text and PASSWORD not in text


def test_the_access_log_can_be_turned_off(world):
    world.register("alice")
    text, _ = _access_log(world, [("GET", "/api/presence/alice")])
    assert '"GET /api/presence/alice HTTP/1.1" 200' in text
    world.site.access_log = False  # what --no-access-log sets
    text, answers = _access_log(world, [("GET", "/api/presence/alice")])
    assert answers[0][0] == 200
    assert "/api/presence/alice" not in text


def test_access_log_file_holds_lines_until_a_second_has_passed(tmp_path):
    clock = Clock()
    path = tmp_path / "access.log"
    f = AccessLogFile(str(path), clock)
    f.write("one\n")
    f.write("two\n")
    assert path.read_text() == ""  # waiting, not yet written
    clock.advance(0.999)
    assert path.read_text() == ""
    clock.advance(0.001)
    assert path.read_text() == "one\ntwo\n"
    assert not clock.getDelayedCalls()  # nothing waits, nothing scheduled
    f.write("three\n")
    f.close()  # at stop: what waits is written, and no call is left behind
    assert path.read_text() == "one\ntwo\nthree\n"
    assert not clock.getDelayedCalls()


def test_access_log_file_writes_early_when_much_is_waiting(tmp_path):
    clock = Clock()
    path = tmp_path / "access.log"
    f = AccessLogFile(str(path), clock)
    line = "x" * 1023 + "\n"
    for _ in range(AccessLogFile.MAX_WAITING // len(line) - 1):
        f.write(line)
    assert path.read_text() == ""
    f.write(line)  # the 64 KiB that may wait: written at once
    assert len(path.read_text()) == AccessLogFile.MAX_WAITING
    assert not clock.getDelayedCalls()
    f.close()


def test_access_log_file_appends_to_what_is_there(tmp_path):
    path = tmp_path / "access.log"
    path.write_text("old line\n")
    f = AccessLogFile(str(path), Clock())
    f.write("new line\n")
    f.close()
    assert path.read_text() == "old line\nnew line\n"


def test_a_failing_access_log_drops_lines_and_says_so_once(tmp_path):
    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    clock = Clock()
    f = AccessLogFile(str(tmp_path / "access.log"), clock)
    f._file.close()
    f._file = Full()
    with capturedLogs() as events:
        for _ in range(3):
            f.write("line\n")
            clock.advance(1)  # never raises into the reactor
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    f.close()


def test_access_log_to_a_file_of_its_own(world, tmp_path):
    world.register("alice")
    sid = world.login("alice").session
    path = tmp_path / "access.log"
    site = PresenceSite(world.site.resource, reactor=world.clock, access_log=str(path))
    site.doStart()
    try:
        with capturedLogs() as events:
            answers = [raw_request(site, "GET", f"/api/welcome?me=alice&id={sid}"),
                       raw_request(site, "GET", "/api/presence/nobody")]
            world.clock.advance(1)
    finally:
        site.doStop()
    assert [a[0] for a in answers] == [200, 404]
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert '"GET /api/welcome?me=alice&id=*** HTTP/1.1" 200' in lines[0]
    assert '"GET /api/presence/nobody HTTP/1.1" 404' in lines[1]
    assert sid not in path.read_text()
    # and not in the server's own log as well
    assert not any("/api/presence/nobody" in formatEvent(e) for e in events)


def test_access_log_masks_the_referrer(world):
    alice = world.user("alice")
    sid = alice.session
    text, answers = _access_log(world, [
        ("GET", "/api/presence/alice", b"",
         {"Referer": f"http://presence.test/call?name=bob&me=alice&id={sid}"}),
    ])
    assert answers[0][0] == 200
    assert sid not in text


def test_no_log_event_carries_a_password_or_session(world):
    site = world.site
    site.doStart()
    try:
        with capturedLogs() as events:
            world.register("alice", SECRET_PASSWORD)
            alice = world.login("alice", SECRET_PASSWORD)
            world.browser().post("/api/login", username="alice", password="wrong-" + "x" * 9)
            hb = alice.heartbeat()
            alice.post("/chat", to="alice", msg="note to self")
            alice.post("/api/groups", name="club", password="club-pass-99")
            alice.post("/api/logout")
            raw_request(site, "GET", f"/jchat?me=alice&id={alice.session}")
    finally:
        site.doStop()
    assert hb.finished
    text = "\n".join(formatEvent(e) + repr(sorted(e.items(), key=str)) for e in events)
    for secret in (SECRET_PASSWORD, alice.session, "wrong-xxxxxxxxx", "club-pass-99"):
        assert secret not in text
