"""Presence states (spec section 12): available, away, busy, and status text.

A *session* sets its own state (``POST /api/status``; the pages' idle
detection; ``presence-client --idle``).  A *user's* state is that of their
most available live session, offline when none is live; the order is
``available`` > ``away`` > ``busy``: someone who is away may come back and
reads their chat later, someone busy asked not to be disturbed (the SIP proxy
answers their calls ``486 Busy Here``).  Between sessions of the same state
the one set last gives the status text.

On the wire (``msg update <state> <user>``) ``available`` is called
``online``, so that clients written for the online/offline frames keep
working; the status text, when set, is the frame's second line.

The text is bounded (:data:`MAX_TEXT` characters) and is one line of text:
no control characters, no line or paragraph separators (a line break would
end the frame's payload line), no lone surrogates.

Pure functions: no I/O, no clock (times are given).
"""

from __future__ import annotations

import unicodedata
from typing import Iterable, Optional, Tuple

AVAILABLE = "available"
AWAY = "away"
BUSY = "busy"
OFFLINE = "offline"
#: the states a session may set, most available first
STATES = (AVAILABLE, AWAY, BUSY)
RANK = {state: rank for rank, state in enumerate(STATES)}
#: the most status text a session may set, in characters
MAX_TEXT = 140

#: a user's combined state: (state, text); shared constants so that the many
#: users without text share one tuple
State = Tuple[str, str]
OFFLINE_STATE: State = (OFFLINE, "")
AVAILABLE_STATE: State = (AVAILABLE, "")

#: one entry of :func:`combine`: (state, text, when it was set)
Entry = Tuple[str, str, float]


def wire(state: str) -> str:
    """The word a state has in ``msg update``: ``online`` for available."""
    return "online" if state == AVAILABLE else state


def from_wire(word: str) -> Optional[str]:
    """The state named by the word of a ``msg update`` frame (None for a
    word that names none, such as ``address``)."""
    if word == "online":
        return AVAILABLE
    if word in (AWAY, BUSY, OFFLINE):
        return word
    return None


def state_error(value: object) -> Optional[str]:
    """Why ``value`` is not a state a session may set, or None."""
    if value not in STATES:
        return "state must be one of available, away, busy"
    return None


def text_error(value: object) -> Optional[str]:
    """Why ``value`` is not a status text a session may set, or None."""
    if not isinstance(value, str):
        return "text must be text"
    if len(value) > MAX_TEXT:
        return f"text must be at most {MAX_TEXT} characters"
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            return ("text must be one line of text (no line breaks, no control"
                    " characters)")
    return None


def state_value(state: str, text: str) -> State:
    """``(state, text)``, the shared constant when it is available without
    text."""
    if state == AVAILABLE and not text:
        return AVAILABLE_STATE
    return (state, text)


def better(a: Entry, b: Entry) -> bool:
    """Whether entry ``a`` wins over ``b``: more available, or as available
    and set later; at the same time, the greater text (an order that does
    not depend on which entry comes first, so that every box of a cluster
    picks the same one)."""
    ra, rb = RANK.get(a[0], 0), RANK.get(b[0], 0)
    if ra != rb:
        return ra < rb
    if a[2] != b[2]:
        return a[2] > b[2]
    return a[1] > b[1]


def combine(entries: Iterable[Entry]) -> Optional[Entry]:
    """The winning entry among ``entries`` (one per live session, or one per
    host box in a cluster: the rule gives the same answer either way), None
    when there is none (the user is offline)."""
    best: Optional[Entry] = None
    for entry in entries:
        if best is None or better(entry, best):
            best = entry
    return best
