"""Tier-1 unit tests of L{presence.core.mailbox.Mailbox}: per-session frame
ids from 1 that only grow, range acknowledgements, the pending frames in
order, the bound and its evictions, and draining at session end (spec
section 3, "Reliable delivery" and "The mailbox bound")."""

from __future__ import annotations

from typing import List

import pytest

from presence.core import frames
from presence.core.frames import Frame
from presence.core.mailbox import Mailbox


def chats(n: int) -> List[Frame]:
    return [frames.chat("alice", f"m{i}", f"text {i}") for i in range(1, n + 1)]


def ids(box: Mailbox) -> List[int]:
    return [ident for ident, _ in box.pending()]


def test_ids_start_at_one_and_grow_by_one() -> None:
    box = Mailbox()
    assert box.last_id == 0
    assert len(box) == 0 and box.pending() == []
    got = [box.push(f)[0] for f in chats(5)]
    assert got == [1, 2, 3, 4, 5]
    assert box.last_id == 5
    assert len(box) == 5


def test_pending_is_in_order_with_the_same_frames() -> None:
    box = Mailbox()
    fs = chats(4)
    for f in fs:
        box.push(f)
    assert box.pending() == [(1, fs[0]), (2, fs[1]), (3, fs[2]), (4, fs[3])]
    assert all(p[1] is f for p, f in zip(box.pending(), fs))


def test_pending_limit() -> None:
    box = Mailbox()
    fs = chats(5)
    for f in fs:
        box.push(f)
    assert box.pending(2) == [(1, fs[0]), (2, fs[1])]
    assert box.pending(0) == []
    assert box.pending(5) == box.pending(50) == box.pending()
    assert len(box) == 5  # pending() does not consume


def test_ack_is_a_range() -> None:
    box = Mailbox()
    for f in chats(5):
        box.push(f)
    assert box.ack(3) == 3
    assert ids(box) == [4, 5]
    assert box.ack(3) == 0  # again: nothing more
    assert box.ack(1) == 0  # older than the oldest pending
    assert box.ack(0) == 0
    assert ids(box) == [4, 5]
    assert box.ack(4) == 1
    assert ids(box) == [5]


def test_ack_beyond_last_empties_and_ids_keep_growing() -> None:
    box = Mailbox()
    for f in chats(3):
        box.push(f)
    assert box.ack(1000) == 3
    assert len(box) == 0 and box.pending() == []
    assert box.ack(1000) == 0
    assert box.push(frames.bye("x"))[0] == 4
    assert box.last_id == 4


def test_has() -> None:
    box = Mailbox()
    assert not box.has(1)
    for f in chats(4):
        box.push(f)
    box.ack(2)
    assert [box.has(i) for i in range(0, 6)] == [False, False, False, True, True, False]


def test_bound_evicts_oldest_and_returns_them() -> None:
    box = Mailbox(bound=3)
    fs = chats(6)
    assert [box.push(f) for f in fs[:3]] == [(1, []), (2, []), (3, [])]
    assert box.push(fs[3]) == (4, [fs[0]])
    assert ids(box) == [2, 3, 4]
    assert box.push(fs[4]) == (5, [fs[1]])
    assert box.pending() == [(3, fs[2]), (4, fs[3]), (5, fs[4])]
    assert len(box) == 3
    assert not box.has(2) and box.has(3)


def test_ids_stay_right_after_evictions_and_acks_mixed() -> None:
    # the mailbox keeps frames only and counts their ids from the newest
    box = Mailbox(bound=3)
    fs = chats(8)
    for f in fs[:5]:
        box.push(f)  # 1 and 2 evicted
    assert box.ack(3) == 1
    assert box.pending() == [(4, fs[3]), (5, fs[4])]
    assert box.pending(1) == [(4, fs[3])]
    for f in fs[5:]:
        box.push(f)  # 6, 7, 8: 4 and 5 evicted
    assert box.pending() == [(6, fs[5]), (7, fs[6]), (8, fs[7])]
    assert box.ack(2) == 0 and box.ack(7) == 2
    assert box.pending() == [(8, fs[7])] and box.has(8) and not box.has(7)
    assert box.drain() == [fs[7]] and box.push(fs[0])[0] == 9


def test_acks_make_room_so_nothing_is_evicted() -> None:
    box = Mailbox(bound=2)
    fs = chats(4)
    box.push(fs[0])
    box.push(fs[1])
    box.ack(2)
    assert box.push(fs[2]) == (3, [])
    assert box.push(fs[3]) == (4, [])
    assert ids(box) == [3, 4]


def test_bound_of_one() -> None:
    box = Mailbox(bound=1)
    a, b = chats(2)
    assert box.push(a) == (1, [])
    assert box.push(b) == (2, [a])
    assert box.pending() == [(2, b)]


@pytest.mark.parametrize("bound", [0, -1])
def test_bound_must_be_positive(bound: int) -> None:
    with pytest.raises(ValueError):
        Mailbox(bound=bound)


def test_default_bound_is_1000() -> None:
    box = Mailbox()
    assert box.bound == 1000
    evicted = [box.push(f)[1] for f in chats(1001)]
    assert all(e == [] for e in evicted[:1000])
    assert evicted[1000] == [frames.chat("alice", "m1", "text 1")]


def test_drain_returns_unacked_frames_and_empties() -> None:
    box = Mailbox()
    fs = chats(4)
    for f in fs:
        box.push(f)
    box.ack(1)
    assert box.drain() == fs[1:]
    assert len(box) == 0 and box.pending() == [] and box.drain() == []
    assert not box.has(2)
    # ids never restart, even after a drain
    assert box.push(frames.bye("x"))[0] == 5


def test_drain_of_an_empty_mailbox() -> None:
    assert Mailbox().drain() == []
