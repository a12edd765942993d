"""Invitations kept durably: SQLite in ``<--data>/invites.sqlite3``.

Tokens are never stored: an invitation is found by the SHA-256 of its
token (as resume tokens are), so a copy of the database opens no page.
Addresses that asked not to be invited again are kept only as the SHA-256
of the lower-cased address.

All SQL runs on one worker thread of its own (``start``), in order; tests
pass ``runner=run_now`` (``presence.store.sqlite``) to run it synchronously.

An invitation's ``status`` is where its mail is:

``queued``   in ``<--data>/outbox/``, not yet accepted by the smarthost
             (``attempts`` and ``next_try`` say when it is tried again)
``sent``     accepted by the smarthost (its file moved to ``outbox/sent/``)
``written``  no ``--smtp``: the ``.eml`` file in the outbox is the delivery
``failed``   given up (the invitation expired before any smarthost took it)
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer

from presence.sqlitefile import open_database, start_worker
from presence.threads import Pool

SCHEMA = """
CREATE TABLE IF NOT EXISTS invitations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, token_hash TEXT UNIQUE NOT NULL,
    unsub_hash TEXT UNIQUE NOT NULL, inviter TEXT NOT NULL, email TEXT NOT NULL,
    note TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL,
    error TEXT, opens INTEGER NOT NULL DEFAULT 0, first_open REAL, clicked REAL,
    accepted REAL, accepted_by TEXT);
CREATE INDEX IF NOT EXISTS invitations_by_inviter ON invitations (inviter, id);
CREATE INDEX IF NOT EXISTS invitations_by_status ON invitations (status);
CREATE TABLE IF NOT EXISTS unsubscribed (address_hash TEXT PRIMARY KEY, time REAL NOT NULL);
"""

Runner = Callable[..., defer.Deferred]
FIELDS = ("id", "inviter", "email", "note", "created", "expires", "status", "attempts",
          "next_try", "error", "opens", "first_open", "clicked", "accepted", "accepted_by")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def address_digest(address: str) -> str:
    return hashlib.sha256(address.lower().encode("utf-8")).hexdigest()


class InviteStore:
    def __init__(self, path: str, runner: Optional[Runner] = None) -> None:
        self.path = path
        self._run = runner
        self._pool: Optional[Pool] = None
        self._db: Optional[sqlite3.Connection] = None
        if runner is not None:
            self.connect()

    def connect(self) -> None:
        if self._db is not None:
            return
        self._db = open_database(self.path, SCHEMA)

    def start(self, reactor: Any) -> None:
        self.connect()
        if self._run is None:
            self._pool, self._run = start_worker(reactor, "presence-invites")

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
            self._run = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._run is None or self._db is None:
            return defer.fail(RuntimeError("the invitation store is not started"))
        return self._run(fn, self._db, *args)

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(*args)`` on the store's worker, in order with its SQL
        (the outbox's file writes: the reactor never waits for an fsync)."""
        if self._run is None:
            return defer.fail(RuntimeError("the invitation store is not started"))
        return self._run(fn, *args)

    # -- SQL, on the worker ----------------------------------------------------

    @staticmethod
    def _row(row: Optional[sqlite3.Row]) -> Optional[Dict[str, Any]]:
        return None if row is None else {k: row[k] for k in FIELDS}

    def add(self, token: str, unsub: str, inviter: str, email: str, note: str, now: float,
            expires: float, status: str) -> defer.Deferred:
        def run(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO invitations (token_hash, unsub_hash, inviter, email, note,"
                " created, expires, status, next_try) VALUES (?,?,?,?,?,?,?,?,?)",
                (digest(token), digest(unsub), inviter, email, note, now, expires, status,
                 now))
            return int(cur.lastrowid)
        return self._call(run)

    def by_token(self, token: str) -> defer.Deferred:
        return self._call(lambda db: self._row(db.execute(
            "SELECT * FROM invitations WHERE token_hash=?", (digest(token),)).fetchone()))

    def by_unsubscribe(self, token: str) -> defer.Deferred:
        return self._call(lambda db: self._row(db.execute(
            "SELECT * FROM invitations WHERE unsub_hash=?", (digest(token),)).fetchone()))

    def get(self, ident: int) -> defer.Deferred:
        return self._call(lambda db: self._row(db.execute(
            "SELECT * FROM invitations WHERE id=?", (ident,)).fetchone()))

    def of_inviter(self, inviter: str, limit: int = 100) -> defer.Deferred:
        return self._call(lambda db: [self._row(r) for r in db.execute(
            "SELECT * FROM invitations WHERE inviter=? ORDER BY id DESC LIMIT ?",
            (inviter, limit))])

    def queued(self) -> defer.Deferred:
        """Every invitation whose mail waits for the smarthost, oldest first."""
        return self._call(lambda db: [self._row(r) for r in db.execute(
            "SELECT * FROM invitations WHERE status='queued' ORDER BY id")])

    def set_status(self, ident: int, status: str, attempts: Optional[int] = None,
                   next_try: Optional[float] = None, error: Optional[str] = None
                   ) -> defer.Deferred:
        def run(db: sqlite3.Connection) -> None:
            db.execute("UPDATE invitations SET status=?, attempts=COALESCE(?, attempts),"
                       " next_try=?, error=? WHERE id=?",
                       (status, attempts, next_try, error, ident))
        return self._call(run)

    def opened(self, ident: int, now: float) -> defer.Deferred:
        return self._call(lambda db: db.execute(
            "UPDATE invitations SET opens=opens+1, first_open=COALESCE(first_open, ?)"
            " WHERE id=?", (now, ident)) and None)

    def clicked(self, ident: int, now: float) -> defer.Deferred:
        return self._call(lambda db: db.execute(
            "UPDATE invitations SET clicked=COALESCE(clicked, ?),"
            " first_open=COALESCE(first_open, ?) WHERE id=?", (now, now, ident)) and None)

    def accept(self, ident: int, user: str, now: float) -> defer.Deferred:
        """Mark the invitation accepted by the new user ``user``; False if it
        had been accepted already (one registration per invitation)."""
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute("UPDATE invitations SET accepted=?, accepted_by=? WHERE id=?"
                             " AND accepted IS NULL", (now, user, ident))
            return cur.rowcount == 1
        return self._call(run)

    def unsubscribe(self, address: str, now: float) -> defer.Deferred:
        return self._call(lambda db: db.execute(
            "INSERT OR IGNORE INTO unsubscribed (address_hash, time) VALUES (?,?)",
            (address_digest(address), now)) and None)

    def is_unsubscribed(self, address: str) -> defer.Deferred:
        return self._call(lambda db: db.execute(
            "SELECT 1 FROM unsubscribed WHERE address_hash=?",
            (address_digest(address),)).fetchone() is not None)
