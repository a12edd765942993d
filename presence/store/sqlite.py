"""The embedded directory: SQLite in one file under ``--data``.

All SQL runs on one worker thread (a ``ThreadPool`` of one), so the reactor
never waits for the disk and writes are serialised.  Users, groups and
aliases share one namespace, which the database itself keeps: the ``names``
table (``NAMES``), whose primary key refuses a name twice whoever writes.  The database is in WAL mode with
``synchronous=FULL``: a write is on disk before its Deferred fires, and so
before the API answers success.

Tests pass ``runner=run_now`` to run the same SQL synchronously without
threads or a reactor.

Two kinds of write that strangers can cause at any rate do not take one
transaction each: chat that leaves a mailbox unread
(:meth:`SQLiteDirectory.spill`) and page hits while a user is offline
(:meth:`SQLiteDirectory.add_hit`).  Each waits in a :class:`_Batch` while one
transaction of its kind (at most ``BATCH`` items) is on the worker, so a
flood of them puts at most one write ahead of everyone's logins.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from presence.store.interface import (RESUME_PER_USER, BoxFull, IDirectory, NameTaken,
                                      resume_login_in_steps)
from presence.sqlitefile import open_database, start_worker
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
CREATE TABLE IF NOT EXISTS resume (
    token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, device TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS resume_by_user ON resume (user, created);
CREATE TABLE IF NOT EXISTS extras (
    user TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (user, key));
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS on_demand (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS sip_ha1 (
    user TEXT NOT NULL, algorithm TEXT NOT NULL, realm TEXT NOT NULL, ha1 TEXT NOT NULL,
    PRIMARY KEY (user, algorithm));
"""

#: per recipient, the unread messages and their size in UTF-8 bytes, kept up
#: to date by every write so that the quota check reads one row
BOXES = """
CREATE TABLE boxes (
    recipient TEXT PRIMARY KEY, unread INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO boxes (recipient, unread, bytes)
    SELECT recipient, COUNT(*), SUM(LENGTH(CAST(text AS BLOB))) FROM messages
    WHERE read=0 GROUP BY recipient;
"""

#: one namespace for users, groups and aliases, enforced by the database: every
#: create inserts its name here in its own transaction, and the primary key
#: refuses a second holder (``NameTaken``), whatever connection or process
#: writes.  Filled once from the three tables when an older directory is opened.
NAMES = (
    "CREATE TABLE names (name TEXT PRIMARY KEY, kind TEXT NOT NULL)",
    "INSERT OR IGNORE INTO names (name, kind) SELECT name, 'user' FROM users",
    "INSERT OR IGNORE INTO names (name, kind) SELECT name, 'group' FROM groups",
    "INSERT OR IGNORE INTO names (name, kind) SELECT alias, 'alias' FROM aliases",
)

Runner = Callable[..., defer.Deferred]
Row = Tuple[str, str, str, float, Optional[str]]
#: spilled chat rows (or page hits) written in one transaction at most
BATCH = 500
SPILL_BATCH = BATCH


class _Batch:
    """Items written ``write(db, items)`` in one transaction, one such
    transaction on the worker at a time; items added meanwhile wait for the
    next.  :meth:`add` returns a Deferred that fires once its item is on
    disk.  At stop, :meth:`finish` writes what still waits on the calling
    thread (the worker is gone, and the callbacks of a write that was on it
    will never run)."""

    log = Logger()

    def __init__(self, store: "SQLiteDirectory", write: Callable[..., Any], what: str) -> None:
        self.store = store
        self.write = write
        self.what = what
        self.items: List[Any] = []
        self.waiters: List[defer.Deferred] = []
        self.busy = False
        #: the Deferred of the newest item, until it is written
        self._last: Optional[defer.Deferred] = None

    def add(self, item: Any) -> defer.Deferred:
        self.items.append(item)
        d = defer.Deferred()
        self.waiters.append(d)
        self._last = d
        if not self.busy:
            self._next()
        return d

    def settled(self) -> defer.Deferred:
        """Fires (with None) once every item added so far is written (or its
        write failed): a read of what the items change waits for it, so that
        it sees them, as it would if each had been a write of its own."""
        last = self._last
        if last is None or last.called:
            self._last = None
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()

        def fire(result: Any) -> Any:
            done.callback(None)
            return result

        last.addBoth(fire)
        return done

    def _next(self, _: Any = None) -> None:
        if not self.items or self.store._run is None:
            self.busy = False
            return
        self.busy = True
        items, self.items = self.items[:BATCH], self.items[BATCH:]
        waiters, self.waiters = self.waiters[:BATCH], self.waiters[BATCH:]
        d = self.store._tx(self.write, items)
        d.addCallbacks(self._written, self._failed, callbackArgs=(waiters,),
                       errbackArgs=(waiters, len(items)))
        d.addCallback(self._next)

    @staticmethod
    def _written(result: Any, waiters: List[defer.Deferred]) -> None:
        for d in waiters:
            d.callback(result)

    def _failed(self, failure: Any, waiters: List[defer.Deferred], count: int) -> None:
        self.log.failure("writing {count} {what} failed", failure, count=count, what=self.what)
        for d in waiters:
            d.errback(failure)

    def finish(self) -> None:
        if self.items:
            items, self.items, self.waiters = self.items, [], []
            self.store._transaction(self.write, items)()


def run_now(fn: Callable[..., Any], *args: Any) -> defer.Deferred:
    """A runner that calls ``fn`` at once on this thread (tests, tools)."""
    return defer.maybeDeferred(fn, *args)


@implementer(IDirectory)
class SQLiteDirectory:
    log = Logger()

    def __init__(self, path: str, runner: Optional[Runner] = None,
                 connect: bool = True) -> None:
        self.path = path
        self._db: Any = None
        self._pool: Optional[Pool] = None
        self._run = runner
        #: operations handed to the worker and not finished yet
        self.queued = 0
        self._spills = _Batch(self, self._write_spills,
                              "chat messages that left a mailbox unread")
        self._hits = _Batch(self, self._write_hits, "page hits")
        if connect:
            self.connect()

    def connect(self) -> None:
        """Open the database, creating it and its directory if missing (at
        construction, or at :meth:`start` with ``connect=False``: under
        ``twistd -u`` the files are then the user's the server runs as)."""
        if self._db is not None:
            return
        self._db = open_database(self.path, SCHEMA)
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name='boxes'").fetchone():
            # a directory from before the quota: count its boxes once
            self._db.executescript("BEGIN;" + BOXES + "COMMIT;")
        self._transaction(self._add_names)()

    @staticmethod
    def _add_names(db: sqlite3.Connection) -> None:
        """Create and fill the ``names`` table of a directory that has none
        (a new one, or one from before it), under the write lock so that two
        processes opening the same file do it once."""
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='names'").fetchone():
            for sql in NAMES:
                db.execute(sql)

    # -- lifecycle ----------------------------------------------------------

    def start(self, reactor) -> None:
        """Run SQL on a worker thread of our own from now on."""
        self.connect()
        if self._run is not None:
            return
        self._pool, self._run = start_worker(reactor, "presence-sqlite")

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
            self._run = None
        if self._db is not None:
            # the worker is gone: what still waited is written here, now
            self._spills.finish()
            self._hits.finish()
            self._db.close()

    def _call(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._run is None:
            raise RuntimeError("the directory is not started")
        self.queued += 1
        d = self._run(fn, *args)
        d.addBoth(self._done)
        return d

    def _done(self, result: Any) -> Any:
        self.queued -= 1
        return result

    def _tx(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run ``fn(db, *args)`` in one transaction on the worker."""
        return self._call(self._transaction(fn, *args))

    def _transaction(self, fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
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
        return work

    def _query(self, sql: str, *params: Any) -> defer.Deferred:
        return self._call(lambda: [dict(r) for r in self._db.execute(sql, params)])

    # -- names ----------------------------------------------------------------

    @staticmethod
    def _claim(db: sqlite3.Connection, name: str, kind: str) -> None:
        """Take ``name`` in the shared namespace, in the caller's transaction
        (rolled back with it), or raise :class:`NameTaken`."""
        try:
            db.execute("INSERT INTO names (name, kind) VALUES (?, ?)", (name, kind))
        except sqlite3.IntegrityError:
            raise NameTaken(name) from None

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
            self._claim(db, name, "user")
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
            self._claim(db, alias, "alias")
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
        return self._hits.add(user)

    @staticmethod
    def _write_hits(db: sqlite3.Connection, names: Sequence[str]) -> None:
        counts: dict = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        db.executemany("UPDATE users SET hits_offline=hits_offline+? WHERE name=?",
                       [(n, name) for name, n in counts.items()])

    def update_profile(self, user: str, email: Optional[str] = None,
                       phone: Optional[str] = None,
                       wireless: Optional[str] = None) -> defer.Deferred:
        return self._tx(lambda db: db.execute(
            "UPDATE users SET email=?, phone=?, wireless=? WHERE name=?",
            (email, phone, wireless, user)).rowcount == 1)

    def set_password(self, user: str, password_hash: str) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM sip_ha1 WHERE user=?", (user,))
            return db.execute("UPDATE users SET password_hash=? WHERE name=?",
                              (password_hash, user)).rowcount == 1
        return self._tx(work)

    # -- SIP digest secrets -------------------------------------------------------

    def set_sip_ha1(self, user: str, realm: str, ha1s: dict) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM users WHERE name=?", (user,)).fetchone() is None:
                return False
            db.execute("DELETE FROM sip_ha1 WHERE user=?", (user,))
            db.executemany("INSERT INTO sip_ha1 (user, algorithm, realm, ha1) VALUES (?, ?, ?, ?)",
                           [(user, a, realm, h) for a, h in sorted(ha1s.items())])
            return True
        return self._tx(work)

    def sip_ha1(self, user: str, realm: str, algorithm: str) -> defer.Deferred:
        d = self._query("SELECT ha1 FROM sip_ha1 WHERE user=? AND algorithm=? AND realm=?",
                        user, algorithm, realm)
        return d.addCallback(lambda rows: rows[0]["ha1"] if rows else None)

    # -- per-user settings ------------------------------------------------------

    def set_extra(self, user: str, key: str, value: Optional[str]) -> defer.Deferred:
        if value is None:
            return self._tx(lambda db: db.execute(
                "DELETE FROM extras WHERE user=? AND key=?", (user, key)) and None)
        return self._tx(lambda db: db.execute(
            "INSERT OR REPLACE INTO extras (user, key, value) VALUES (?, ?, ?)",
            (user, key, value)) and None)

    def extras(self, user: str) -> defer.Deferred:
        d = self._query("SELECT key, value FROM extras WHERE user=?", user)
        return d.addCallback(lambda rows: {r["key"]: r["value"] for r in rows})

    # -- resume tokens ----------------------------------------------------------

    def store_resume(self, token_hash: str, user: str, device: str,
                     now: float) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO resume (token_hash, user, device, created)"
                       " VALUES (?, ?, ?, ?)", (token_hash, user, device, now))
            # the newest RESUME_PER_USER stay (ties: the later written)
            db.execute("DELETE FROM resume WHERE user=? AND rowid NOT IN (SELECT rowid"
                       " FROM resume WHERE user=? ORDER BY created DESC, rowid DESC"
                       " LIMIT ?)", (user, user, RESUME_PER_USER))
        return self._tx(work)

    def resume_user(self, token_hash: str,
                    not_before: Optional[float] = None) -> defer.Deferred:
        if not_before is None:
            d = self._query("SELECT user FROM resume WHERE token_hash=?", token_hash)
            return d.addCallback(lambda rows: rows[0]["user"] if rows else None)

        def work(db: sqlite3.Connection) -> Optional[str]:
            row = db.execute("SELECT user, created FROM resume WHERE token_hash=?",
                             (token_hash,)).fetchone()
            if row is None:
                return None
            if row[1] < not_before:     # expired: forgotten
                db.execute("DELETE FROM resume WHERE token_hash=?", (token_hash,))
                return None
            return row[0]
        return self._tx(work)

    def resume_login(self, token_hash: str, not_before: Optional[float],
                     now: float) -> defer.Deferred:
        # (a call here costs a thread hop, not a round trip: in steps)
        return resume_login_in_steps(self, token_hash, not_before, now)

    def revoke_resume(self, user: str, token_hash: Optional[str] = None) -> defer.Deferred:
        if token_hash is None:
            return self._tx(lambda db: db.execute(
                "DELETE FROM resume WHERE user=?", (user,)).rowcount)
        return self._tx(lambda db: db.execute(
            "DELETE FROM resume WHERE user=? AND token_hash=?", (user, token_hash)).rowcount)

    # -- groups ----------------------------------------------------------------

    def create_group(self, name: str, owner: str, password_hash: Optional[str] = None,
                     now: float = 0.0) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> str:
            self._claim(db, name, "group")
            db.execute("INSERT INTO groups (name, owner, password_hash, created)"
                       " VALUES (?, ?, ?, ?)", (name, owner, password_hash, now))
            db.execute("INSERT INTO members (grp, user) VALUES (?, ?)", (name, owner))
            return name
        return self._tx(work)

    def get_group(self, name: str) -> defer.Deferred:
        d = self._query("SELECT *, name IN (SELECT name FROM on_demand) AS on_demand"
                        " FROM groups WHERE name=?", name)

        def group(rows: List[dict]) -> Optional[dict]:
            if not rows:
                return None
            rows[0]["on_demand"] = bool(rows[0]["on_demand"])
            return rows[0]
        return d.addCallback(group)

    def set_on_demand(self, group: str, on_demand: bool) -> defer.Deferred:
        sql = ("INSERT OR IGNORE INTO on_demand (name) VALUES (?)" if on_demand
               else "DELETE FROM on_demand WHERE name=?")
        return self._tx(lambda db: db.execute(sql, (group,)) and None)

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

    def is_member(self, group: str, user: str) -> defer.Deferred:
        # the primary key (grp, user): one index look-up
        d = self._query("SELECT 1 FROM members WHERE grp=? AND user=?", group, user)
        return d.addCallback(bool)

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

    def has_contact(self, owner: str, contact: str) -> defer.Deferred:
        d = self._query("SELECT 1 FROM contacts WHERE owner=? AND contact=?", owner, contact)
        return d.addCallback(bool)

    def contacts(self, owner: str) -> defer.Deferred:
        d = self._query("SELECT contact FROM contacts WHERE owner=? ORDER BY contact", owner)
        return d.addCallback(lambda rows: [r["contact"] for r in rows])

    # -- message boxes -------------------------------------------------------

    @staticmethod
    def _usage(db: sqlite3.Connection, recipient: str) -> Tuple[int, int]:
        row = db.execute("SELECT unread, bytes FROM boxes WHERE recipient=?",
                         (recipient,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    @staticmethod
    def _insert(db: sqlite3.Connection, recipient: str, sender: str, text: str,
                now: float, msgid: Optional[str], quota: Optional[Tuple[int, int]]) -> int:
        if msgid is not None:
            row = db.execute("SELECT id FROM messages WHERE msgid=?", (msgid,)).fetchone()
            if row:
                return row[0]
        size = len(text.encode("utf-8", "surrogatepass"))
        if quota is not None:
            unread, used = SQLiteDirectory._usage(db, recipient)
            if unread >= quota[0] or used + size > quota[1]:
                raise BoxFull(recipient)
        cur = db.execute("INSERT INTO messages (msgid, recipient, sender, text, time)"
                         " VALUES (?, ?, ?, ?, ?)", (msgid, recipient, sender, text, now))
        db.execute("INSERT INTO boxes (recipient, unread, bytes) VALUES (?, 1, ?)"
                   " ON CONFLICT (recipient) DO UPDATE SET unread=unread+1,"
                   " bytes=bytes+excluded.bytes", (recipient, size))
        return cur.lastrowid

    def store_message(self, recipient: str, sender: str, text: str, now: float,
                      msgid: Optional[str] = None,
                      quota: Optional[Tuple[int, int]] = None) -> defer.Deferred:
        return self._tx(self._insert, recipient, sender, text, now, msgid, quota)

    def spill(self, recipient: str, sender: str, text: str, now: float,
              msgid: Optional[str] = None) -> None:
        # the failure is logged by the batch; nobody waits for a spill
        self._spills.add((recipient, sender, text, now, msgid)).addErrback(lambda _: None)

    @classmethod
    def _write_spills(cls, db: sqlite3.Connection, rows: Sequence[Row]) -> int:
        for recipient, sender, text, now, msgid in rows:
            cls._insert(db, recipient, sender, text, now, msgid, None)
        return len(rows)

    def box_usage(self, recipient: str) -> defer.Deferred:
        d = self._spills.settled()
        return d.addCallback(lambda _: self._call(lambda: self._usage(self._db, recipient)))

    def messages(self, recipient: str, limit: int = 100) -> defer.Deferred:
        d = self._spills.settled()
        d.addCallback(lambda _: self._query(
            "SELECT id, sender, text, time, read FROM messages WHERE recipient=?"
            " ORDER BY id DESC LIMIT ?", recipient, limit))
        return d.addCallback(lambda rows: [
            {"id": r["id"], "from": r["sender"], "text": r["text"], "time": r["time"],
             "read": bool(r["read"])} for r in rows])

    def mark_read(self, recipient: str, ident: int) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT read, LENGTH(CAST(text AS BLOB)) FROM messages"
                             " WHERE id=? AND recipient=?", (ident, recipient)).fetchone()
            if row is None:
                return False
            if not row[0]:
                db.execute("UPDATE messages SET read=1 WHERE id=?", (ident,))
                db.execute("UPDATE boxes SET unread=unread-1, bytes=bytes-? WHERE recipient=?",
                           (row[1], recipient))
            return True
        return self._tx(work)

    def purge_messages(self, recipient: str, sender: Optional[str] = None) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> int:
            where = "recipient=? AND read=0" + ("" if sender is None else " AND sender=?")
            args = (recipient,) if sender is None else (recipient, sender)
            n, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0)"
                                 " FROM messages WHERE " + where, args).fetchone()
            if n:
                db.execute("DELETE FROM messages WHERE " + where, args)
                db.execute("UPDATE boxes SET unread=unread-?, bytes=bytes-? WHERE recipient=?",
                           (n, size, recipient))
            return n
        d = self._spills.settled()
        return d.addCallback(lambda _: self._tx(work))

    def set_locked(self, user: str, locked: bool) -> defer.Deferred:
        def work(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM users WHERE name=?", (user,)).fetchone() is None:
                return False
            if locked:
                db.execute("INSERT OR IGNORE INTO locks (name) VALUES (?)", (user,))
            else:
                db.execute("DELETE FROM locks WHERE name=?", (user,))
            return True
        return self._tx(work)

    def is_locked(self, user: str) -> defer.Deferred:
        d = self._query("SELECT 1 FROM locks WHERE name=?", user)
        return d.addCallback(bool)

    def unread(self, recipient: str) -> defer.Deferred:
        d = self._spills.settled()
        d.addCallback(lambda _: self._query(
            "SELECT COUNT(*) AS n FROM messages WHERE recipient=? AND read=0", recipient))
        return d.addCallback(lambda rows: rows[0]["n"])


def open_directory(data_dir: str, runner: Optional[Runner] = None,
                   connect: bool = True) -> SQLiteDirectory:
    return SQLiteDirectory(os.path.join(data_dir, "presence.sqlite3"), runner, connect)


__all__: List[str] = ["SQLiteDirectory", "open_directory", "run_now", "NameTaken"]
