"""Abuse limits (issue 11, "Bound every abuse") through the in-memory HTTP API.

Each test runs the abuse and shows that a normal user (another session,
another address, another recipient) is not affected while it runs.  Limits
are set small (``Limits(...)``) so that the tests stay short; the defaults
are checked in ``test_default_limits_are_far_above_a_human``.

StubTreq browsers all come from 127.0.0.1; :func:`send` makes a request
from any other address through the real ``PresenceSite``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple
from urllib.parse import urlencode

import pytest
from twisted.internet import defer

from helpers import (  # noqa: F401  (logged_errors: fixture)
    PASSWORD, User, World, logged_errors, raw_request, result_of,
)
from presence import service as service_module
from presence.service import Limits
from presence.store import passwords
from presence.store.sqlite import run_now

SMALL = Limits(chat_session=(5, 1), chat_address=(8, 2), box_messages=100, box_bytes=10_000,
               guests_per_address=3, registrations=1000)


def make_world(logged_errors, **kw: Any) -> World:
    limits = kw.pop("limits", SMALL)
    return World(limits=limits, **kw)


@pytest.fixture
def w(logged_errors):
    world = make_world(logged_errors)
    yield world
    assert not logged_errors, [e.get("log_format") or e for e in logged_errors]


def send(world: World, ip: str, path: str, **form: Any) -> Tuple[int, Dict[str, str], Any]:
    """POST ``form`` to ``path`` from client address ``ip``."""
    status, headers, body = raw_request(
        world.site, "POST", path, urlencode(form).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"}, peer=(ip, 40000))
    return status, headers, json.loads(body) if body else None


def login_from(world: World, ip: str, name: str, password: str = PASSWORD) -> Dict[str, str]:
    status, _, body = send(world, ip, "/api/login", username=name, password=password)
    assert status == 200, body
    return {"me": name, "id": body["session"]}


def guest_from(world: World, ip: str) -> Tuple[int, Any]:
    status, _, body = send(world, ip, "/api/guest")
    return status, body


def chats(user: User, to: str, n: int, prefix: str = "m") -> List[int]:
    return [user.post("/chat", to=to, msg=f"{prefix}{i}").status for i in range(n)]


# -- 1. chat rate per session and per address --------------------------------------

def test_a_flooding_session_gets_429_and_the_others_chat_on(w):
    bob = w.user("bob")
    bob.heartbeat()
    flooder = w.user("eve")
    friend = w.user("alice")                     # same address (127.0.0.1)
    assert chats(flooder, "bob", 7) == [202] * 5 + [429] * 2
    limited = flooder.post("/chat", to="bob", msg="more")
    assert limited.status == 429
    assert "too fast" in limited.error
    assert limited.header("retry-after") == "1"
    # another session of the same address is not affected
    assert friend.post("/chat", to="bob", msg="hello").status == 202
    # the flooder may go on at the sustained rate
    w.advance(1)
    assert chats(flooder, "bob", 2) == [202, 429]


def test_refused_chat_is_not_delivered(w):
    bob = w.user("bob")
    hb = bob.heartbeat()
    eve = w.user("eve")
    chats(eve, "bob", 8)
    texts = [e.text.split("\n", 1)[1] for e in hb.events() if e.head.startswith("msg chat")]
    assert texts == [f"m{i}" for i in range(5)]


def test_many_sessions_of_one_address_share_its_bucket(w):
    w.user("bob")
    flood = [login_from(w, "10.9.9.9", w.user(f"e{i}").name) for i in range(3)]
    statuses = []
    for creds in flood:
        for i in range(4):
            statuses.append(send(w, "10.9.9.9", "/chat", to="bob", msg=f"x{i}", **creds)[0])
    assert statuses.count(202) == 8              # the address's burst, not 3 x 5
    assert statuses[-1] == 429
    # a user of another address chats on
    alice = login_from(w, "10.1.1.1", w.user("alice").name)
    assert send(w, "10.1.1.1", "/chat", to="bob", msg="hi", **alice)[0] == 202


def test_guests_are_limited_like_users(w):
    w.user("bob")
    status, guest = guest_from(w, "10.2.2.2")
    assert status == 200
    creds = {"me": guest["username"], "id": guest["session"]}
    statuses = [send(w, "10.2.2.2", "/chat", to="bob", msg=f"g{i}", **creds)[0]
                for i in range(6)]
    assert statuses == [202] * 5 + [429]


def test_left_messages_of_a_session_count_as_chat(w):
    bob = w.user("bob")
    eve = w.user("eve")
    statuses = [eve.post("/api/messages", to="bob", text=f"t{i}").status for i in range(3)]
    statuses += chats(eve, "bob", 3)
    assert statuses == [201, 201, 201, 202, 202, 429]
    assert bob.get("/api/messages").json["unread"] == 5    # 3 left + 2 offline chats


def test_default_limits_are_far_above_a_human():
    limits = Limits()
    assert limits.chat_session == (1200, 10)
    assert limits.chat_address == (3000, 50)
    assert (limits.box_messages, limits.box_bytes) == (1000, 4 * 1024 * 1024)
    assert limits.guests_per_address == 100
    assert limits.registrations == 100


def test_with_the_default_limits_a_mailbox_worth_of_quick_chats_pass_and_a_flood_does_not(
        logged_errors):
    # 1,200 chats at once (past the default mailbox bound of 1,000, so its
    # overflow rule can be seen by a client) all pass; what follows does not
    world = make_world(logged_errors, limits=Limits(), mailbox=5000)
    bob = world.user("bob")
    bob.heartbeat()
    eve = world.user("eve")
    assert chats(eve, "bob", 1200) == [202] * 1200
    assert chats(eve, "bob", 50).count(429) == 50
    assert world.user("alice").post("/chat", to="bob", msg="hi").status == 202


# -- 2. the message-box quota ------------------------------------------------------

def test_a_full_box_refuses_offline_chat_and_left_messages(logged_errors):
    w = make_world(logged_errors, limits=Limits(box_messages=4))
    w.user("bob")
    carol = w.user("carol")
    senders = [w.user(f"s{i}") for i in range(5)]
    for s in senders[:4]:
        assert s.post("/chat", to="bob", msg="offline").json["delivered"] == "stored"
    refused = senders[4].post("/chat", to="bob", msg="one too many")
    assert refused.status == 429
    assert "bob's message box is full" in refused.error
    assert senders[4].post("/api/messages", to="bob", text="note").status == 429
    anonymous = w.browser().post("/api/messages", to="bob", text="anonymous")
    assert anonymous.status == 429
    # another recipient is not affected
    assert senders[4].post("/chat", to="carol", msg="hi").json["delivered"] == "stored"
    assert carol.get("/api/messages").json["unread"] == 1
    # once bob reads one, there is room for one more
    bob = w.login("bob")
    box = bob.get("/api/messages").json
    assert box["unread"] == 4
    assert [m["text"] for m in box["messages"]] == ["offline"] * 4   # the oldest kept
    bob.post("/api/logout")
    assert bob.post(f"/api/messages/{box['messages'][0]['id']}/read").status in (204, 403)
    bob = w.login("bob")
    assert bob.post(f"/api/messages/{box['messages'][1]['id']}/read").status == 204
    bob.post("/api/logout")
    assert senders[4].post("/chat", to="bob", msg="now").json["delivered"] == "stored"
    assert senders[4].post("/chat", to="bob", msg="full again").status == 429


def test_the_quota_counts_bytes_too(logged_errors):
    world = make_world(logged_errors, limits=Limits(box_messages=100, box_bytes=9000))
    world.user("bob")
    eve = world.user("eve")
    assert eve.post("/chat", to="bob", msg="\u00e9" * 2000).status == 202   # 4000 bytes
    assert eve.post("/chat", to="bob", msg="\u00e9" * 2000).status == 202   # 8000 bytes
    assert eve.post("/chat", to="bob", msg="x" * 1001).status == 429        # 9001 > 9000
    assert eve.post("/chat", to="bob", msg="x" * 1000).status == 202        # 9000 fits


def test_a_full_mailbox_over_a_full_box_refuses_new_chat_and_keeps_the_oldest(
        logged_errors):
    world = make_world(logged_errors, mailbox=3,
                       limits=Limits(box_messages=2, box_bytes=10_000))
    bob = world.user("bob")
    hb = bob.heartbeat()                         # online, never acknowledges
    eve = world.user("eve")
    statuses = chats(eve, "bob", 7)
    # 3 fill the mailbox; the 4th pushes the oldest two into the box (one for
    # itself, one for the msg refresh it brings): the box is at its quota of
    # 2, and the rest are refused: the sender hears 429
    assert statuses == [202] * 4 + [429] * 3
    refused = eve.post("/chat", to="bob", msg="later")
    assert "message box is full" in refused.error
    texts = [e.text.split("\n", 1)[1] for e in hb.events() if e.head.startswith("msg chat")]
    assert texts == [f"m{i}" for i in range(4)]          # nothing refused was sent
    box = result_of(world.store.messages("bob"))
    assert sorted(m["text"] for m in box) == ["m0", "m1"]
    # bob reads his stream: the mailbox empties and chat flows again
    last = hb.ids()[-1]
    assert bob.post("/ack", ack=str(last)).status == 204
    assert eve.post("/chat", to="bob", msg="read now").status == 202


# -- 3. a session that never reads: spills batched, session released ----------------

class QueuedRunner:
    """The directory's worker as a queue the test runs by hand."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, tuple, defer.Deferred]] = []

    def __call__(self, fn, *args) -> defer.Deferred:
        d = defer.Deferred()
        self.calls.append((fn, args, d))
        return d

    def run_one(self) -> None:
        fn, args, d = self.calls.pop(0)
        d.callback(fn(*args))

    def run_all(self) -> None:
        while self.calls:
            self.run_one()


def test_a_flood_to_a_reader_who_is_not_there_puts_one_write_ahead_of_a_login(
        logged_errors):
    world = make_world(logged_errors)
    bob = world.user("bob")                       # logged in, never reads
    runner = QueuedRunner()
    world.store._run = runner                     # from now on, the worker queues
    hub = world.hub
    delivered = [i for i in range(5000)
                 if hub.deliver("bob", service_module.frames.chat("eve", f"id{i}", f"{i}"))]
    # the mailbox (1,000) filled, then 2,000 chats left it unread (spilled:
    # one per chat, and one per msg refresh) and the session was released,
    # its 1,000 unread spilled too
    assert 2990 <= len(delivered) < 3000
    assert hub.session(bob.session) is None
    assert world.store.queued == 1                # ~3,000 rows, one write on the worker
    login = defer.ensureDeferred(world.service.login("nobody", "whatever", "10.0.0.1"))
    assert world.store.queued == 2                # a login waits for that one write only
    runner.run_one()                              # the first spill
    runner.run_one()                              # the login's read
    assert login.called
    batches = 0
    while runner.calls:
        runner.run_one()
        batches += 1
    assert batches == 6                           # the other ~2,999 rows, 500 a write
    world.store._run = run_now
    assert result_of(world.store.unread("bob")) == len(delivered)   # nothing dropped


def test_a_never_reading_heartbeat_is_ended_with_bye_overflow(logged_errors):
    world = make_world(logged_errors, mailbox=10,
                       limits=Limits(chat_session=(10**9, 1), chat_address=(10**9, 1)))
    bob = world.user("bob")
    hb = bob.heartbeat()
    eve = world.user("eve")
    statuses = chats(eve, "bob", 40)
    assert hb.finished
    assert hb.heads()[-1] == "msg bye overflow"
    assert world.hub.session(bob.session) is None
    # it was released after 20 chats left it unread; the later ones are offline
    assert statuses == [202] * 40
    box = result_of(world.store.messages("bob"))
    assert sorted(m["text"] for m in box) == sorted(f"m{i}" for i in range(40))
    assert eve.post("/chat", to="bob", msg="x").json["delivered"] == "stored"
    # bob logs in again and reads everything
    again = world.login("bob")
    assert again.get("/api/messages").json["unread"] == 41


# -- 4. guests -------------------------------------------------------------------

def test_one_address_holds_only_its_share_of_guests(w):
    held = [guest_from(w, "10.3.3.3") for _ in range(3)]
    assert [s for s, _ in held] == [200, 200, 200]
    status, body = guest_from(w, "10.3.3.3")
    assert status == 429 and "as many guest sessions" in body["error"]
    # another address gets its guest
    assert guest_from(w, "10.4.4.4")[0] == 200
    # one guest leaves: one more may come
    first = held[0][1]
    assert send(w, "10.3.3.3", "/api/logout", me=first["username"],
                id=first["session"])[0] == 204
    assert guest_from(w, "10.3.3.3")[0] == 200


def test_the_global_guest_cap_is_not_filled_from_one_address(logged_errors):
    world = make_world(logged_errors, limits=Limits(guests_per_address=100))
    world.service.max_guests = 300
    statuses = [guest_from(world, "10.5.5.5")[0] for _ in range(200)]
    assert statuses.count(200) <= 100
    assert guest_from(world, "10.6.6.6")[0] == 200


def test_an_idle_guest_expires_after_five_minutes_a_user_does_not(w):
    guest = w.guest()
    user = w.user("alice")
    w.advance(299)
    w.sweep()
    assert w.hub.session(guest.session) is not None
    w.advance(1)
    w.sweep()
    assert w.hub.session(guest.session) is None
    assert guest.get("/api/session").status == 403
    assert user.get("/api/session").status == 200


def test_a_guest_that_holds_its_heartbeat_does_not_expire(w):
    guest = w.guest()
    guest.heartbeat()
    w.advance(3600)
    w.sweep()
    assert guest.get("/api/session").status == 200


# -- 5. failures counted per (address, group), per account; registrations ------------

def test_group_password_failures_count_per_address_and_group(w):
    alice = w.user("alice")
    for name in ("club", "other"):
        assert alice.post("/api/groups", name=name, password="club-secret").status == 201
    guesser = login_from(w, "10.7.7.7", w.user("eve").name)
    statuses = [send(w, "10.7.7.7", "/api/groups/club/join", password=f"g{i}",
                     **guesser)[0] for i in range(11)]
    assert statuses == [403] * 10 + [429]
    # the same address guessing another group, another address the same group
    assert send(w, "10.7.7.7", "/api/groups/other/join", password="x", **guesser)[0] == 403
    mallory = login_from(w, "10.8.8.8", w.user("mallory").name)
    assert send(w, "10.8.8.8", "/api/groups/club/join", password="x", **mallory)[0] == 403
    # the rightful member joins with the password from anywhere else
    carol = w.user("carol")
    assert carol.post("/api/groups/club/join", password="club-secret").status == 204
    # and group guesses never made the guesser's logins fail
    login_from(w, "10.7.7.7", "eve")


def test_group_page_password_failures_are_not_one_shared_bucket(w):
    alice = w.user("alice")
    assert alice.post("/api/groups", name="club", password="club-secret").status == 201
    admit = w.service.admit
    for i in range(10):
        with pytest.raises(service_module.Forbidden):
            result_of(admit("club", f"guess{i}", "10.0.0.1"))
    with pytest.raises(service_module.TooMany):
        result_of(admit("club", "club-secret", "10.0.0.1"))
    # another visitor is not locked out by the first one's guesses
    assert result_of(admit("club", "club-secret", "10.0.0.2")) == "club"


def test_login_failures_count_per_account_but_never_lock_out_the_owner(logged_errors):
    world = make_world(logged_errors, limits=Limits(account_failures=(5, 1 / 60)))
    world.register("alice")
    login_from(world, "10.0.0.1", "alice")         # alice's usual address
    for i in range(5):                             # a guesser hops addresses
        status, _, _ = send(world, f"10.66.0.{i}", "/api/login", username="alice",
                            password=f"guess{i}")
        assert status == 401
    status, headers, body = send(world, "10.66.0.9", "/api/login", username="alice",
                                 password=PASSWORD)
    assert status == 429 and "this account" in body["error"]
    assert PASSWORD not in body["error"]
    assert int(headers["retry-after"]) > 0
    # the owner, from where she logged in before, still gets in
    login_from(world, "10.0.0.1", "alice")
    # other accounts are not affected
    world.register("bob")
    login_from(world, "10.66.0.10", "bob")
    # a minute later the account allows one more try from a new address
    world.advance(60)
    login_from(world, "10.66.0.11", "alice")


def test_registrations_per_address_per_hour(logged_errors):
    w = make_world(logged_errors, limits=Limits(registrations=3))
    statuses = [send(w, "10.11.0.1", "/api/register", username=f"r{i}",
                     password=PASSWORD)[0] for i in range(4)]
    assert statuses == [201, 201, 201, 429]
    assert result_of(w.store.get_user("r3")) is None
    # another address registers
    assert send(w, "10.11.0.2", "/api/register", username="other",
                password=PASSWORD)[0] == 201
    # a bad request does not spend the allowance of an address
    assert send(w, "10.11.0.3", "/api/register", username="Bad Name",
                password=PASSWORD)[0] == 400
    assert [send(w, "10.11.0.3", "/api/register", username=f"q{i}",
                 password=PASSWORD)[0] for i in range(3)] == [201] * 3
    w.advance(1200)                                 # a third of an hour: one more
    assert send(w, "10.11.0.1", "/api/register", username="later",
                password=PASSWORD)[0] == 201


# -- 6. unknown user and wrong password cost the same ------------------------------

def test_an_unknown_user_costs_one_hash_like_a_wrong_password(logged_errors):
    world = make_world(logged_errors)
    world.register("alice")
    calls: List[Tuple[Any, tuple]] = []

    def counting(fn, *args):
        calls.append((fn, args))
        return defer.maybeDeferred(fn, *args)

    world.service.hasher = counting
    browser = world.browser()
    for name, password in (("alice", "wrong password"), ("nobody", "wrong password"),
                           ("Not A Name", "wrong password")):
        del calls[:]
        reply = browser.post("/api/login", username=name, password=password)
        assert reply.status == 401
        assert reply.error == "wrong username or password"
        assert [fn for fn, _ in calls] == [passwords.check_password], name
        cost = int(calls[0][1][1].split("$")[1])
        assert cost == world.service.hash_cost     # the same work factor


# -- details: IPv6 neighbours, retries, memory ---------------------------------------

def test_one_ipv6_64_counts_as_one_address(w):
    for i in range(3):
        w.service.guest(f"2001:db8:0:1::{i + 1}", 4000)
    with pytest.raises(service_module.TooMany):
        w.service.guest("2001:db8:0:1:ffff::9", 4000)     # the same /64
    w.service.guest("2001:db8:0:2::1", 4000)               # the next /64


def test_a_retry_of_an_accepted_chat_is_answered_even_when_limited(w):
    bob = w.user("bob")
    bob.heartbeat()
    eve = w.user("eve")
    first = eve.post("/chat", to="bob", msg="hello", seq="1")
    assert first.status == 202
    assert chats(eve, "bob", 5)[-1] == 429                  # the bucket is empty now
    again = eve.post("/chat", to="bob", msg="hello", seq="1")
    assert again.status == 202 and again.json["msgid"] == first.json["msgid"]
    assert eve.post("/chat", to="bob", msg="new", seq="2").status == 429


def test_a_stranger_cannot_grow_the_per_account_memory_with_made_up_names(w):
    for i in range(20):
        reply = w.browser().post("/api/login", username=f"No Such Name {i}" * 100,
                                 password="x")
        assert reply.status in (401, 429)
    assert len(w.service.account_failures._buckets) == 0


def test_initchat_counts_as_chat(w):
    w.user("bob").heartbeat()
    eve = w.user("eve")
    statuses = [eve.get("/initchat", to="bob").status for _ in range(6)]
    assert statuses == [204] * 5 + [429]
    assert w.user("alice").get("/initchat", to="bob").status == 204


def test_changes_to_groups_and_contacts_are_limited_per_user(logged_errors):
    world = make_world(logged_errors, limits=Limits(changes=(4, 0.5)))
    world.user("bob")
    eve = world.user("eve")
    statuses = [eve.post("/api/contacts", contact="bob").status,
                eve.post("/api/contacts/remove", contact="bob").status,
                eve.post("/api/groups", name="g1").status,
                eve.post("/api/groups/g1/leave").status,
                eve.post("/api/groups/g1/join").status]
    assert statuses == [204, 204, 201, 204, 429]
    limited = eve.post("/api/aliases", alias="evil")
    assert limited.status == 429 and "too fast" in limited.error
    assert limited.header("retry-after") == "2"
    # another user changes their own as usual
    alice = world.user("alice")
    assert alice.post("/api/contacts", contact="bob").status == 204
    world.advance(2)
    assert eve.post("/api/groups/g1/join").status == 204
