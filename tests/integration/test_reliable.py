"""Reliable delivery over the heartbeat (spec section 3): a dropped heartbeat
reconnects with ``ack`` (or ``Last-Event-ID``) and gets exactly what it missed,
with the original ids; ids only grow.

--linger 10 keeps the receiver online while it is disconnected, so the chats
sent meanwhile are delivered "online" into its session's mailbox.
"""
from __future__ import annotations

import pytest

from presence_harness import Frame, chat_ok, expect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_options():
    return {"keepalive": 5, "poll": 1, "linger": 10}


def is_chat(f: Frame) -> bool:
    return f.kind == "chat"


def payload_is(text: str):
    return lambda f: f.kind == "chat" and f.payload == text


def send(api, alice, bob, texts):
    out = []
    for t in texts:
        body = chat_ok(api, alice, bob, t)
        assert body["delivered"] == "online", (t, body)
        out.append(str(body["msgid"]))
    return out


def receive_then_drop(api, heartbeats, alice, bob, n=3, **kw):
    hb = heartbeats(bob, **kw)
    msgids = send(api, alice, bob, [f"before {i}" for i in range(1, n + 1)])
    got = hb.read_frames(n, timeout=3, pred=is_chat)
    assert [f.payload for f in got] == [f"before {i}" for i in range(1, n + 1)]
    assert [f.words[3] for f in got] == msgids
    ids = [f.id for f in got]
    assert all(i is not None for i in ids) and ids == sorted(ids) and len(set(ids)) == n, ids
    hb.close()
    return got


@pytest.mark.parametrize("how", ["ack-param", "last-event-id", "post-ack", "ack-on-chat"])
def test_reconnect_gets_exactly_the_missed_frames(api, make_user, heartbeats, how):
    alice, bob = make_user("alice"), make_user("bob")
    got = receive_then_drop(api, heartbeats, alice, bob)
    k = got[-1].id

    missed_ids = send(api, alice, bob, [f"missed {i}" for i in range(1, 5)])

    kw = {}
    if how == "ack-param":
        kw["ack"] = k
    elif how == "last-event-id":
        kw["last_event_id"] = k
    elif how == "post-ack":
        r = api.post("/ack", query={**bob.auth, "ack": k})
        expect(r, 204, "POST /ack")
    elif how == "ack-on-chat":
        r = api.post("/chat", form={**bob.auth, "to": alice.name, "msg": "ack carrier", "ack": k})
        expect(r, 202, "POST /chat with ack")
    hb2 = heartbeats(bob, **kw)
    assert hb2.status == 200

    chat_ok(api, alice, bob, "marker")
    frames = hb2.frames_until(payload_is("marker"), timeout=3)
    assert [f.data for f in frames[:-1]] == [
        f"msg chat {alice.name} {mid}\nmissed {i}" for i, mid in enumerate(missed_ids, 1)
    ], frames
    ids = [f.id for f in frames]
    assert all(i > k for i in ids), (k, ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids


def test_unacknowledged_frames_are_resent_with_their_original_ids(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    got = receive_then_drop(api, heartbeats, alice, bob, n=5)
    acked = got[2].id  # acknowledge only the first three
    later = send(api, alice, bob, ["later 1", "later 2"])

    hb2 = heartbeats(bob, ack=acked)
    chat_ok(api, alice, bob, "marker")
    frames = hb2.frames_until(payload_is("marker"), timeout=3)
    # frames 4 and 5 again, same ids and data; then the new ones; no 1..3.
    assert [(f.id, f.data) for f in frames[:2]] == [(f.id, f.data) for f in got[3:]], frames
    assert [f.payload for f in frames[2:]] == ["later 1", "later 2", "marker"], frames
    assert [f.words[3] for f in frames[2:4]] == later
    ids = [f.id for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[2] > got[-1].id, ids


def test_reconnect_without_ack_resends_everything_unacknowledged(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    got = receive_then_drop(api, heartbeats, alice, bob, n=3)
    hb2 = heartbeats(bob)
    again = hb2.read_frames(3, timeout=3)
    assert [(f.id, f.data) for f in again] == [(f.id, f.data) for f in got]
    # Acknowledge on the next request: now nothing is re-sent.
    hb2.close()
    hb3 = heartbeats(bob, ack=got[-1].id)
    chat_ok(api, alice, bob, "marker")
    frames = hb3.frames_until(payload_is("marker"), timeout=3)
    assert len(frames) == 1 and frames[0].id > got[-1].id, frames


def test_rst_drop_loses_nothing_and_ids_only_grow(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    all_ids: list[int] = []
    delivered: list[str] = []
    ack = None
    for rnd in range(4):
        hb = heartbeats(bob, ack=ack)
        texts = [f"round {rnd} msg {i}" for i in range(3)]
        send(api, alice, bob, texts)
        frames = hb.read_frames(3, timeout=3, pred=is_chat)
        assert [f.payload for f in frames] == texts, (rnd, frames)
        all_ids += [f.id for f in frames]
        delivered += [f.payload for f in frames]
        ack = frames[-1].id
        # the client vanishes without a FIN; a chat races the server noticing it
        hb.reset()
        racing = f"racing {rnd}"
        send(api, alice, bob, [racing])
        hb_r = heartbeats(bob, ack=ack)
        f = hb_r.wait_for(payload_is(racing), timeout=3)
        assert hb_r.skipped == [], hb_r.skipped
        all_ids.append(f.id)
        ack = f.id
        hb_r.close()
    assert all_ids == sorted(all_ids) and len(set(all_ids)) == len(all_ids), all_ids


def test_poll_mode_ack_cycle(api, make_user, heartbeats):
    alice, bob = make_user("alice"), make_user("bob")
    stream = heartbeats(bob)
    send(api, alice, bob, ["p1", "p2", "p3"])
    seen = stream.read_frames(3, timeout=3)
    # A poll releases the stream and re-sends the unacknowledged frames at once.
    first = heartbeats(bob, mode="poll", wait=5)
    assert first.wait_end(3), "poll with pending frames did not return at once"
    assert stream.wait_end(3), "the stream was not released by the poll"
    frames = first.drain()
    assert [(f.id, f.data) for f in frames] == [(f.id, f.data) for f in seen]
    # Asking again without ack: the same frames, same ids (at least once).
    again = heartbeats(bob, mode="poll", wait=5)
    assert again.wait_end(3)
    assert [(f.id, f.data) for f in again.drain()] == [(f.id, f.data) for f in frames]
    # With ack: nothing pending, the poll ends after `wait` with no frame.
    empty = heartbeats(bob, mode="poll", wait=1, ack=frames[-1].id)
    assert empty.wait_end(4)
    assert empty.frames == [], empty.frames
    # And a new frame gets a larger id.
    send(api, alice, bob, ["p4"])
    nxt = heartbeats(bob, mode="poll", wait=5)
    assert nxt.wait_end(3)
    assert [f.payload for f in nxt.frames] == ["p4"] and nxt.frames[0].id > frames[-1].id
