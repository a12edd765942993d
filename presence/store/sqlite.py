"""The embedded directory: SQLite in one file under ``--data``.

All SQL runs on one worker thread (a ``ThreadPool`` of one), so the reactor
never waits for the disk and writes are serialised, which also makes the
"is this name free?" checks race-free.  The database is in WAL mode with
``synchronous=FULL``: a write is on disk before its Deferred fires, and so
before the API answers success.

Tests pass ``runner=run_now`` to run the same SQL synchronously without
threads or a reactor.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable, List, Optional

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from presence.store.interface import IDirectory, NameTaken
from presence.threads import Pool

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, email TEXT, phone TEXT,
    wireless TEXT, created REAL NOT NULL, last_login REAL, last_seen REAL,
    hits_offline INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, password_hash TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (grp, user));
CREATE INDEX IF NOT EXISTS members_by_user ON members (user);
CREATE TABLE IF NOT EXISTS contacts (
    owner TEXT NOT NULL, contact TEXT NOT NULL, PRIMARY KEY (owner, contact));
CREATE INDEX IF NOT EXISTS contacts_by_contact ON contacts (contact);
CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, user TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS aliases_by_user ON aliases (user);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, msgid TEXT UNIQUE, recipient TEXT NOT NULL,
    sender TEXT NOT NULL, text TEXT NOT NULL, time REAL NOT NULL,
    read INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient, id);
"""

Runner = Callable[..., defer.Deferred]


def run_now(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """A runner that calls ``fn`` at once on this thread (tests, tools)."""
    return defer.maybeDeferred(fn, *args)


@implementer(IDirectory)
class SQLiteDirectory:
    def __init__(self, path: str, runner: Optional[Runner] = None,
                 connect: bool = True) -> None:
        self.path = path
        self._db: Any = None
        self._pool: Optional[Pool] = None
        self._run = runner
        if connect:
            self.connect()

    def connect(self) -> None:
        """Open the database, creating it and its directory if missing (at
        construction, or at :meth:`start` with ``connect=False``: under
        ``twistd -u`` the files are then the user's the server runs as)."""
        if self._db is not None:
            return
        path = self.path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    # -- lifecycle ----------------------------------------------------------

    def start(self, reactor) -> None:
        """Run SQL on a worker thread of our own from now on."""
        self.connect()
        if self._run is not None:
            return
        pool = self._pool = Pool(1, 1, name="presence-sqlite")
        pool.start()
        self._run = lambda fn, *a: deferToThreadPool(reactor, pool, fn, *a)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
            self._run = None
        if self._db is not None:
            self._db.close()

    def _call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._run is None:
            raise RuntimeError("the directory is not started")
        return self._run(fn, *args)

    def _tx(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(db, *args)`` in one transaction on the worker."""
        def work() -> Any:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db, *args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        return self._call(work)

    def _query(self, sql: str, *params: Any) -> defer.Deferred:
        return self._call(lambda: [dict(r) for r in self._db.execute(sql, params)])

    # -- names ----------------------------------------------------------------

    @staticmethod
    def _taken(db: sqlite3.Connection, name: str) -> bool:
        for sql in ("SELECT 1 FROM users WHERE name=?", "SELECT 1 FROM groups WHERE name=?",
                    "SELECT 1 FROM aliases WHERE alias=?"):
            if db.execute(sql, (name,)).fetchone():
                return True
        return False

    def resolve(self, name: str) -> defer.Deferred:
        def work() -> Optional[tuple]:
            db = self._db
            if db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                return ("user", name)
            if db.execute("SELECT 1 FROM groups WHERE name=?", (name,)).fetchone():
                return ("group", name)
            row = db.execute("SELECT user FROM aliases WHERE alias=?", (name,)).fetchone()
            return ("user", row[0]) if row else None
        return self._call(work)

    # -- users ----------------------------------------------------------------

    def create_user(self, name: str, password_hash: str, email: Optional[str] = None,
                    phone: Optional[str] = None, wireless: Optional[str] = None,
                    now: float = 0.0) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> str:
            if self._taken(db, name):
                raise NameTaken(name)
            db.execute(
                "INSERT INTO users (name, password_hash, email, phone, wireless, created)"
                " VALUES (?, ?, ?, ?, ?, ?)", (name, password_hash, email, phone, wireless, now))
            return name
        return self._tx(work)

    def get_user(self, name: str) -> defer.Deferred:
        d = self._query("SELECT * FROM users WHERE name=?", name)
        return d.addCallback(lambda rows: rows[0] if rows else None)

    def user_by_wireless(self, number: str) -> defer.Deferred:
        d = self._query("SELECT name FROM users WHERE wireless=? ORDER BY created, name"
                        " LIMIT 1", number)
        return d.addCallback(lambda rows: rows[0]["name"] if rows else None)

    def add_alias(self, user: str, alias: str) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> str:
            if self._taken(db, alias):
                raise NameTaken(alias)
            db.execute("INSERT INTO aliases (alias, user) VALUES (?, ?)", (alias, user))
            return alias
        return self._tx(work)

    def aliases(self, user: str) -> defer.Deferred:
        d = self._query("SELECT alias FROM aliases WHERE user=? ORDER BY alias", user)
        return d.addCallback(lambda rows: [r["alias"] for r in rows])

    def record_login(self, user: str, now: float) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> dict:
            row = db.execute("SELECT last_login, last_seen, hits_offline FROM users"
                             " WHERE name=?", (user,)).fetchone()
            db.execute("UPDATE users SET last_login=?, hits_offline=0 WHERE name=?", (now, user))
            return dict(row) if row else {"last_login": None, "last_seen": None,
                                          "hits_offline": 0}
        return self._tx(work)

    def record_offline(self, user: str, now: float) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "UPDATE users SET last_seen=? WHERE name=?", (now, user)).rowcount)

    def add_hit(self, user: str) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "UPDATE users SET hits_offline=hits_offline+1 WHERE name=?", (user,)).rowcount)

    def update_profile(self, user: str, email: Optional[str] = None,
                       phone: Optional[str] = None,
                       wireless: Optional[str] = None) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "UPDATE users SET email=?, phone=?, wireless=? WHERE name=?",
            (email, phone, wireless, user)).rowcount == 1)

    # -- groups ----------------------------------------------------------------

    def create_group(self, name: str, owner: str, password_hash: Optional[str] = None,
                     now: float = 0.0) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> str:
            if self._taken(db, name):
                raise NameTaken(name)
            db.execute("INSERT INTO groups (name, owner, password_hash, created)"
                       " VALUES (?, ?, ?, ?)", (name, owner, password_hash, now))
            db.execute("INSERT INTO members (grp, user) VALUES (?, ?)", (name, owner))
            return name
        return self._tx(work)

    def get_group(self, name: str) -> defer.Deferred:
        d = self._query("SELECT * FROM groups WHERE name=?", name)
        return d.addCallback(lambda rows: rows[0] if rows else None)

    def join(self, group: str, user: str) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "INSERT OR IGNORE INTO members (grp, user) VALUES (?, ?)", (group, user)
        ).rowcount == 1)

    def leave(self, group: str, user: str) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "DELETE FROM members WHERE grp=? AND user=?", (group, user)).rowcount == 1)

    def members(self, group: str) -> defer.Deferred:
        d = self._query("SELECT user FROM members WHERE grp=? ORDER BY user", group)
        return d.addCallback(lambda rows: [r["user"] for r in rows])

    def memberships(self, user: str) -> defer.Deferred:
        def work() -> tuple:
            db = self._db
            groups = [r[0] for r in db.execute("SELECT grp FROM members WHERE user=?", (user,))]
            owners = [r[0] for r in db.execute("SELECT owner FROM contacts WHERE contact=?",
                                               (user,))]
            return groups, owners
        return self._call(work)

    def add_contact(self, owner: str, contact: str) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "INSERT OR IGNORE INTO contacts (owner, contact) VALUES (?, ?)", (owner, contact)
        ).rowcount == 1)

    def remove_contact(self, owner: str, contact: str) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "DELETE FROM contacts WHERE owner=? AND contact=?", (owner, contact)).rowcount == 1)

    def contacts(self, owner: str) -> defer.Deferred:
        d = self._query("SELECT contact FROM contacts WHERE owner=? ORDER BY contact", owner)
        return d.addCallback(lambda rows: [r["contact"] for r in rows])

    # -- message boxes -------------------------------------------------------

    def store_message(self, recipient: str, sender: str, text: str, now: float,
                      msgid: Optional[str] = None) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> int:
            if msgid is not None:
                row = db.execute("SELECT id FROM messages WHERE msgid=?", (msgid,)).fetchone()
                if row:
                    return row[0]
            cur = db.execute("INSERT INTO messages (msgid, recipient, sender, text, time)"
                             " VALUES (?, ?, ?, ?, ?)", (msgid, recipient, sender, text, now))
            return cur.lastrowid
        return self._tx(work)

    def messages(self, recipient: str, limit: int = 100) -> defer.Deferred:
        d = self._query("SELECT id, sender, text, time, read FROM messages WHERE recipient=?"
                        " ORDER BY id DESC LIMIT ?", recipient, limit)
        return d.addCallback(lambda rows: [
            {"id": r["id"], "from": r["sender"], "text": r["text"], "time": r["time"],
             "read": bool(r["read"])} for r in rows])

    def mark_read(self, recipient: str, ident: int) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "UPDATE messages SET read=1 WHERE id=? AND recipient=?", (ident, recipient)
        ).rowcount == 1)

    def unread(self, recipient: str) -> defer.Deferred:
        d = self._query("SELECT COUNT(*) AS n FROM messages WHERE recipient=? AND read=0",
                        recipient)
        return d.addCallback(lambda rows: rows[0]["n"])


def open_directory(data_dir: str, runner: Optional[Runner] = None,
                   connect: bool = True) -> SQLiteDirectory:
    return SQLiteDirectory(os.path.join(data_dir, "presence.sqlite3"), runner, connect)


__all__: List[str] = ["SQLiteDirectory", "open_directory", "run_now", "NameTaken"]
