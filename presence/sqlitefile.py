"""A SQLite file run on one worker thread of its own: what the embedded
directory (``presence.store.sqlite``) and the invitations' store
(``presence.invite.store``) share, so that neither reaches into the other."""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable, Tuple

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from presence.threads import Pool

Runner = Callable[..., defer.Deferred]


def open_database(path: str, schema: str) -> sqlite3.Connection:
    """Open (creating it and its directory if missing) the SQLite file
    ``path`` for one worker thread: autocommit, rows by name, WAL and full
    fsync for a file, ``schema`` applied."""
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    if path != ":memory:":
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


def start_worker(reactor: Any, name: str) -> Tuple[Pool, Runner]:
    """One started worker thread of its own, and a runner that hands it a
    call (run in order, its result a Deferred in ``reactor``)."""
    pool = Pool(1, 1, name=name)
    pool.start()
    return pool, lambda fn, *a: deferToThreadPool(reactor, pool, fn, *a)
