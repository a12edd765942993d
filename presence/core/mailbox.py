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
    __slots__ = ("next_id", "bound", "_frames")

    def __init__(self, bound: int = 1000) -> None:
        if bound < 1:
            raise ValueError("mailbox bound must be at least 1")
        self.next_id = 1
        self.bound = bound
        self._frames: Deque[Entry] | None = None

    def __len__(self) -> int:
        return len(self._frames) if self._frames else 0

    @property
    def last_id(self) -> int:
        """The id of the newest frame ever pushed (0 before the first)."""
        return self.next_id - 1

    def push(self, frame: Frame) -> Tuple[int, List[Frame]]:
        """Add ``frame``; return its id and the frames evicted by the bound."""
        ident = self.next_id
        self.next_id = ident + 1
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        frames.append((ident, frame))
        evicted: List[Frame] = []
        while len(frames) > self.bound:
            evicted.append(frames.popleft()[1])
        return ident, evicted

    def ack(self, upto: int) -> int:
        """Forget every frame with an id up to ``upto``; return how many."""
        frames = self._frames
        if not frames:
            return 0
        count = 0
        while frames and frames[0][0] <= upto:
            frames.popleft()
            count += 1
        if not frames:
            self._frames = None
        return count

    def pending(self, limit: int | None = None) -> List[Entry]:
        """The unacknowledged frames, oldest first (at most ``limit``)."""
        frames = self._frames
        if not frames:
            return []
        if limit is None or limit >= len(frames):
            return list(frames)
        return [frames[i] for i in range(limit)]

    def has(self, ident: int) -> bool:
        """Whether the frame ``ident`` is still unacknowledged."""
        frames = self._frames
        return bool(frames) and frames[0][0] <= ident <= frames[-1][0]

    def drain(self) -> List[Frame]:
        """Empty the mailbox and return what was in it (session end)."""
        frames = self._frames
        self._frames = None
        return [f for _, f in frames] if frames else []
