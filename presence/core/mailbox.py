"""Per-session numbered frames: the reliable-delivery half of the heartbeat.

Every frame that enters a session's mailbox gets the next id (from 1, only
growing).  It stays until the client acknowledges it: ``ack(n)`` removes every
frame with an id up to ``n``.  A reconnecting client is sent ``pending()``
again, in order, with the original ids, so nothing is lost while the session
lives; a client discards duplicates by id.

The mailbox is bounded: past ``bound`` unacknowledged frames the oldest leave
it and are returned by :meth:`push` so that the caller can move chat text into
the user's message box (presence frames are dropped; the session is sent
``msg refresh`` so that it re-reads presence).

Pure: no I/O, no clock.  Memory: an idle mailbox holds no container at all.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Tuple

from presence.core.frames import Frame

Entry = Tuple[int, Frame]


class Mailbox:
    """The ids of the frames held are consecutive (frames leave from the
    oldest end only), so only the frames are kept: the newest has id
    ``next_id - 1``.  An (id, frame) pair per held frame would be one more
    object for the garbage collector to track and scan for every frame that
    waits for its acknowledgement."""

    __slots__ = ("next_id", "bound", "_frames")

    def __init__(self, bound: int = 1000) -> None:
        if bound < 1:
            raise ValueError("mailbox bound must be at least 1")
        self.next_id = 1
        self.bound = bound
        self._frames: Deque[Frame] | None = None

    def __len__(self) -> int:
        return len(self._frames) if self._frames else 0

    @property
    def last_id(self) -> int:
        """The id of the newest frame ever pushed (0 before the first)."""
        return self.next_id - 1

    def _first_id(self, frames: Deque[Frame]) -> int:
        return self.next_id - len(frames)

    def push(self, frame: Frame) -> Tuple[int, List[Frame]]:
        """Add ``frame``; return its id and the frames evicted by the bound."""
        ident = self.next_id
        self.next_id = ident + 1
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        frames.append(frame)
        evicted: List[Frame] = []
        while len(frames) > self.bound:
            evicted.append(frames.popleft())
        return ident, evicted

    def ack(self, upto: int) -> int:
        """Forget every frame with an id up to ``upto``; return how many."""
        frames = self._frames
        if not frames:
            return 0
        count = min(len(frames), max(0, upto - self._first_id(frames) + 1))
        if count == len(frames):
            self._frames = None
        else:
            for _ in range(count):
                frames.popleft()
        return count

    def pending(self, limit: int | None = None) -> List[Entry]:
        """The unacknowledged frames with their ids, oldest first (at most
        ``limit``)."""
        frames = self._frames
        if not frames:
            return []
        first = self._first_id(frames)
        if limit is not None and limit < len(frames):
            return [(first + i, frames[i]) for i in range(limit)]
        return list(enumerate(frames, first))

    def oldest(self, n: int = 1) -> List[Frame]:
        """The ``n`` oldest unacknowledged frames (the next to leave)."""
        frames = self._frames
        if not frames:
            return []
        return [frames[i] for i in range(min(n, len(frames)))]

    def has(self, ident: int) -> bool:
        """Whether the frame ``ident`` is still unacknowledged."""
        frames = self._frames
        return bool(frames) and self._first_id(frames) <= ident < self.next_id

    def drain(self) -> List[Frame]:
        """Empty the mailbox and return what was in it (session end)."""
        frames = self._frames
        self._frames = None
        return list(frames) if frames else []
