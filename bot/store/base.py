"""The connection: one SQLite database shared between threads, its lock, transactions and meta.

Every statement on the shared connection runs under the store's lock and has its rows read to the end before
the lock is let go (``LockedConnection``), and ``transaction()`` checks that its transaction is still the one it
began when it commits.

The store also knows whether the database takes writes: SQLite's reason when the last write failed (a full disk,
a read-only file or folder), cleared by the next commit that succeeds, and ``writable()``, a small write that
/healthz can ask for as often as it likes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from bot.errors import OpsbotError
from bot.store.schema import TOKENIZER, migrations, unknown_migrations

log = logging.getLogger(__name__)
BUSY_WAIT_S = 30.0  # how long a write waits for another writer, in this process or another
# SQLite's messages when the file, its folder or its disk refuses a write (as opposed to a busy lock or a bug).
WRITE_FAILURES = ("database or disk is full", "readonly database", "disk i/o error", "unable to open database file")
PROBE_EVERY_S = 5.0  # writable() writes at most this often; in between it answers from the last write's outcome
PROBE_WAIT_S = 2.0  # a probe that would wait longer for another writer is skipped: the writer shows it is writable
PROBE_PAGES = 4  # the probe's rolled-back row needs new pages, as a growing table does, not space in a page
WRITE_SAVEPOINT = "opsbot_write"  # inside each outer transaction: gone if anything ended the transaction early


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite refusing a write: disk full, a read-only file or folder, an I/O error."""
    return isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in WRITE_FAILURES)


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite giving up on a lock another writer held for longer than it would wait (SQLITE_BUSY:
    "database is locked"), not a table locked within this process (SQLITE_LOCKED, a bug to report as one)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY  # extended codes (SQLITE_BUSY_SNAPSHOT ...) keep it in the low byte
    return any(w in str(exc).lower() for w in ("database is locked", "busy"))


class DatabaseUnavailable(OpsbotError):
    """The database file cannot be used: it cannot be written, or it is not an opsbot database."""

    def __init__(
        self, path: str, reason: str, unwritable: bool, source: str = "OPSBOT_DB", newer: bool = False
    ) -> None:
        self.path, self.reason, self.unwritable, self.newer = path, reason, unwritable, newer
        if newer:
            message = (
                f"the database {path} was written by a newer opsbot ({reason}); it was left unchanged: upgrade "
                f"opsbot to use it, or set {source} to another file."
            )
        elif unwritable and Path(path).parent.is_file():
            message = (
                f"cannot write the database {path}: {str(Path(path).parent)!r} is a file, not a folder; "
                f"set {source} to a path inside a folder, such as ./opsbot.db."
            )
        elif unwritable and ("full" in reason.lower() or _no_space_left(path)):
            message = (
                f"the disk holding the database {path} is full ({reason}): free space on it, "
                f"or set {source} to a path on another disk."
            )
        elif unwritable:
            message = (
                f"cannot write the database {path} ({reason}): check the folder's permissions "
                f"or set {source} to a writable path."
            )
        else:
            message = (
                f"{path!r} is not an opsbot database ({reason}); point {source} at the file `opsbot index` writes."
            )
        super().__init__(message)

    def naming(self, source: str) -> DatabaseUnavailable:
        """The same error, naming where the path came from (an option such as --db rather than OPSBOT_DB)."""
        return DatabaseUnavailable(self.path, self.reason, self.unwritable, source, self.newer)


def _no_space_left(path: str) -> bool:
    """Whether the disk holding ``path``'s folder has no free space left: SQLite says "disk I/O error" when it
    cannot even make the -wal and -shm files beside a database, not "full"."""
    try:
        return shutil.disk_usage(Path(path).resolve().parent).free == 0
    except OSError:
        return False


class TransactionLost(sqlite3.OperationalError):
    """A write transaction was rolled back before its end by something else on the connection: not stored."""


class Rows:
    """A statement's result rows, all read: what a cursor offers, without an unfinished statement behind it."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.description = cursor.description
        self.lastrowid = cursor.lastrowid
        self._rows = iter(cursor.fetchall())
        self.rowcount = cursor.rowcount  # after the fetch: a write's RETURNING rows count once all are read

    def fetchone(self) -> Any:
        return next(self._rows, None)

    def fetchmany(self, size: int = 1) -> list[Any]:
        return [row for _, row in zip(range(size), self._rows, strict=False)]

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def close(self) -> None:
        self._rows = iter(())

    def __iter__(self) -> Rows:
        return self

    def __next__(self) -> Any:
        return next(self._rows)


class LockedConnection(sqlite3.Connection):
    """The store's connection: each statement runs under ``lock`` and is read to its end before it is let go.

    SQLite keeps the outcome of the last call in the connection, not in the statement. When two threads use
    one connection at once, a read stepping in one thread can overwrite a failure in the other before Python
    reads it: a BEGIN IMMEDIATE refused as busy then comes back as a success, and the writes meant for that
    transaction are stored one by one outside it ("cannot commit - no transaction is active" at its end).
    A cursor left half-read also keeps a read transaction open, which makes BEGIN IMMEDIATE fail at once
    instead of waiting for another process, and Python's statement cache can hand one prepared statement to two
    threads. Running one statement at a time, each read to its end, rules all of these out.
    """

    lock: threading.RLock

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = (), /) -> Any:
        with self.lock:
            cursor = super().execute(sql, parameters)
            # No columns: the statement ran to its end inside execute() and the cursor holds nothing.
            return cursor if cursor.description is None else Rows(cursor)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        with self.lock:
            return super().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        with self.lock:
            return super().executescript(sql_script)

    def commit(self) -> None:
        with self.lock:
            super().commit()

    def rollback(self) -> None:
        with self.lock:
            super().rollback()


class LockedDatabase(Database):
    """sqlite-utils on a ``LockedConnection``; its look-then-act steps hold the lock from the look to the act
    (its other methods, ``query`` among them, run each statement through the connection, locked there).

    ``execute`` checks whether a transaction is open, runs the statement, then commits or rolls back what
    the statement began; ``atomic`` checks, then BEGINs or takes a savepoint. Another thread's BEGIN
    in between would be committed or rolled back by them.
    """

    conn: LockedConnection

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        with self.conn.lock:
            return super().execute(sql, parameters)

    def executescript(self, sql: str) -> sqlite3.Cursor:
        with self.conn.lock:
            return super().executescript(sql)

    @contextmanager
    def atomic(self) -> Iterator[Database]:
        with self.conn.lock, super().atomic() as db:
            yield db


def database_purpose(path: Path, key: str) -> str | None:
    """The ``meta`` value ``key`` of the database at ``path``, read without writing anything (no migration): None
    for an empty or missing file, or one that is not a database (opening it says what is wrong), "" for a database
    with tables but no such value."""
    try:
        if path.stat().st_size == 0:
            return None
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return None
            found = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone() if "meta" in tables else None
    except (OSError, sqlite3.Error):
        return None
    return str(found[0]) if found else ""


def foreign_tables(db: Database) -> list[str]:
    """The tables of a database that opsbot never migrated (no opsbot migration recorded), if it has any: a file
    another program wrote, which opsbot must leave alone."""
    if migrations.applied(db):
        return []
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return [n for n in names if not n.startswith("sqlite_") and n != migrations.migrations_table]


@contextmanager
def _migrating(path: str) -> Iterator[None]:
    """Hold the database's migration lock (a file beside it) while migrating: two processes opening a database that
    needs migrations at once (a first start, an upgrade) otherwise raced, and one failed with "database is locked".
    Where the lock file cannot be made (a read-only folder), the migration's own write says what is wrong."""
    if path == ":memory:":
        yield
        return
    try:
        handle = open(f"{os.path.realpath(path)}.migrate-lock", "a")  # noqa: SIM115 - held for the block
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StoreBase:
    """The database connection and the transaction helpers every part of the store uses."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.lock = threading.RLock()
        self._here = threading.local()  # how deep this thread is in transaction()
        self.write_error = ""  # SQLite's reason the last write failed; "" once a commit succeeds
        self.probe_every_s = PROBE_EVERY_S
        self._probed_at = -PROBE_EVERY_S
        self._writes_begun = 0  # numbers each outer transaction, for temp.write_mark
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not is_write_failure(exc):
                raise  # busy or a bug: not something the user can fix by pointing elsewhere
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self.db.close()
            raise DatabaseUnavailable(self.path, str(exc), unwritable=is_write_failure(exc)) from None

    def _open(self) -> None:
        """Connect, migrate, and make sure the file takes writes: a read-only folder fails here, not at a question."""
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30, factory=LockedConnection)
        conn.lock = self.lock
        self.db = LockedDatabase(conn)
        if unknown := unknown_migrations(self.db):  # an older opsbot would write what the newer one cannot read
            self.db.close()
            reason = f"schema changes unknown here: {', '.join(unknown)}"
            raise DatabaseUnavailable(self.path, reason, unwritable=False, newer=True)
        if others := foreign_tables(self.db):  # another program's database: never migrated, never switched to WAL
            self.db.close()
            shown = ", ".join(others[:5]) + (", …" if len(others) > 5 else "")
            raise DatabaseUnavailable(self.path, f"it holds another program's tables: {shown}", unwritable=False)
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.lock:
            if migrations.pending(self.db):
                with _migrating(self.path):  # one process at a time; the next finds nothing left to do
                    migrations.apply(self.db)
            self._try_a_write_unless_busy()
            # sqlite-utils learns whether upserts may use ON CONFLICT by creating and dropping a table on the
            # first upsert: a write, which would wait for another process's write lock, and a DROP beside another
            # thread's open read fails with "database table is locked". SQLite has it from 3.24 on: say so.
            self.db._supports_on_conflict = sqlite3.sqlite_version_info >= (3, 24, 0)
            # Contentless: only their vocabularies are read, and 'delete-all' empties one in a third of a DELETE's time.
            self.db.execute(
                f"CREATE VIRTUAL TABLE temp.query_terms USING fts5(body, content='', tokenize={TOKENIZER!r})"
            )
            self.db.execute("CREATE VIRTUAL TABLE temp.query_terms_vocab USING fts5vocab(temp, query_terms, instance)")
            # A few sections at a time, copied here to count the query's words in each (see term_counts_in).
            self.db.execute(
                f"CREATE VIRTUAL TABLE temp.cite_terms USING fts5(heading, body, content='', tokenize={TOKENIZER!r})"
            )
            self.db.execute("CREATE VIRTUAL TABLE temp.cite_terms_vocab USING fts5vocab(temp, cite_terms, instance)")
            # The number of the last outer transaction, written inside it: if something ends a transaction
            # early, this tells whether its work so far was committed or rolled back (see _ended_early).
            self.db.execute("CREATE TABLE temp.write_mark (n INTEGER NOT NULL)")
            self.db.execute("INSERT INTO temp.write_mark (n) VALUES (0)")

    def close(self) -> None:
        with self.lock:  # not under a transaction of another thread
            self.db.close()

    @contextmanager
    def transaction(self, wait: float = BUSY_WAIT_S) -> Iterator[None]:
        """A write transaction holding SQLite's write lock from its start (BEGIN IMMEDIATE).

        Nested, it is a savepoint of the outer one. Every write goes through here,
        so writers in several threads and several processes are serialised, not interleaved.
        ``wait`` is how long it waits for another writer before "database is locked" (see ``is_busy``): another
        process, or a thread of this one whose transaction holds the store (itself perhaps waiting for a process).
        """
        deadline = time.monotonic() + wait
        with self.held(wait), self._entered():
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            try:
                mark = self._begin_write(wait if wait >= BUSY_WAIT_S else max(deadline - time.monotonic(), 0.001))
                try:
                    yield
                    self._commit(mark)
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.OperationalError as exc:
                if is_write_failure(exc):
                    self._note_write(str(exc))
                raise
            self._note_write("")

    @contextmanager
    def held(self, wait: float = BUSY_WAIT_S) -> Iterator[None]:
        """The store's lock, for a block. Waited for at most ``wait`` seconds when that is shorter than BUSY_WAIT_S,
        then "database is locked": a thread whose transaction waits out another process's write lock holds the
        store that long, and an event's acknowledgement must not wait behind it."""
        if wait >= BUSY_WAIT_S:
            with self.lock:
                yield
            return
        if not self.lock.acquire(timeout=wait):
            raise sqlite3.OperationalError("database is locked: another of opsbot's writes holds the store")
        try:
            yield
        finally:
            self.lock.release()

    def _begin_write(self, wait: float = BUSY_WAIT_S) -> int:
        """BEGIN IMMEDIATE, then mark the transaction: a savepoint that only it holds, and its number in
        temp.write_mark. Returns the number."""
        with self._busy_timeout(wait):
            self._begin_immediate(wait)
        self._writes_begun += 1
        self.db.conn.execute(f"SAVEPOINT {WRITE_SAVEPOINT}")
        self.db.conn.execute("UPDATE temp.write_mark SET n = ?", [self._writes_begun])
        return self._writes_begun

    def _commit(self, mark: int) -> None:
        """Commit the transaction numbered ``mark``, or, when something ended it before, say how it ended."""
        try:
            self.db.conn.execute(f"RELEASE {WRITE_SAVEPOINT}")
        except sqlite3.OperationalError as exc:
            if "no such savepoint" not in str(exc):
                raise
            self._ended_early(mark)
            return
        self.db.conn.execute("COMMIT")

    def _ended_early(self, mark: int) -> None:
        """The transaction numbered ``mark`` was committed or rolled back before its end, by a statement
        that should never run inside one (a COMMIT, a ROLLBACK, an error SQLite answers with a rollback).

        Statements of the block after that point ran outside it: each stored on its own, or in a transaction
        Python began for them (still open now). Committed: the write is stored, in parts, and that open rest is
        committed too. Rolled back: that rest is rolled back as well, and TransactionLost is raised, since the
        write is not stored as a whole.
        """
        committed = self.db.execute("SELECT n FROM temp.write_mark").fetchone()[0] == mark
        rest_open = self.db.conn.in_transaction
        outcome = "committed" if committed else "rolled back"
        log.error(
            "write transaction %s early, before its block ended, by a statement that must never run inside one; "
            "the block's later statements ran outside it path=%s thread=%s",
            outcome,
            self.path,
            threading.current_thread().name,
            stack_info=True,  # which write it was: the caller's stack names it
        )
        if committed:
            if rest_open:
                self.db.conn.execute("COMMIT")
            return
        if rest_open:
            self.db.conn.execute("ROLLBACK")
        raise TransactionLost("the write transaction was rolled back before its end; it was not stored as a whole")

    @contextmanager
    def _entered(self) -> Iterator[None]:
        self._here.depth = getattr(self._here, "depth", 0) + 1
        try:
            yield
        finally:
            self._here.depth -= 1

    def in_transaction_here(self) -> bool:
        """Whether this thread is inside ``transaction()`` (a write added now is stored with it, or not at all)."""
        return getattr(self._here, "depth", 0) > 0

    def _note_write(self, error: str) -> None:
        """Remember the last write's outcome; a change is logged once, not at every write."""
        if error and error != self.write_error:
            log.warning("database refuses writes path=%s reason=%s", self.path, error)
        elif not error and self.write_error:
            log.info("database takes writes again path=%s", self.path)
        self.write_error = error

    def _rollback(self) -> None:
        """End a failed transaction; SQLite may have rolled it back already (a full disk does), and says so."""
        if self.db.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the error being raised says more than this one
                self.db.conn.execute("ROLLBACK")

    @contextmanager
    def _busy_timeout(self, wait: float) -> Iterator[None]:
        """SQLite's own wait for another process's write lock cut to ``wait`` for the block (under the store's lock,
        so no other thread's statement runs with it), then set back."""
        if wait >= BUSY_WAIT_S:
            yield
            return
        with self.lock:
            self.db.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            try:
                yield
            finally:
                self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_WAIT_S * 1000)}")

    def _begin_immediate(self, wait: float = BUSY_WAIT_S) -> None:
        """BEGIN IMMEDIATE, waiting while SQLite says the database is locked.

        SQLite's own busy timeout covers another process holding the write lock. It does not cover a read
        still open on this connection whose snapshot is older than the last commit: then BEGIN IMMEDIATE fails
        at once. LockedConnection reads every result to its end, so only a cursor opened some other way can
        leave one; trying again shortly is enough. A BEGIN that reports success without a transaction (SQLite's
        busy answer lost to another thread's call on the connection) is tried again too, and logged.
        """
        deadline = time.monotonic() + wait
        pause = 0.002
        while True:
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")
                if self.db.conn.in_transaction:
                    return
                log.error("BEGIN IMMEDIATE reported success but began no transaction; trying again path=%s", self.path)
                if time.monotonic() >= deadline:
                    raise sqlite3.OperationalError("could not begin a write transaction: database is locked")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- can it be written? ------------------------------------------------

    def writable(self) -> bool:
        """Whether writes succeed: a small write at most every ``probe_every_s``, else the last write's outcome."""
        now = time.monotonic()
        if now - self._probed_at >= self.probe_every_s:
            self._probed_at = now
            self._probe()
        return not self.write_error

    def _probe(self) -> None:
        """Try a write, then commit a tiny one; the outcome becomes ``write_error``.

        Skipped when another writer holds the database longer than PROBE_WAIT_S: /healthz must not hang on it.
        """
        if not self.lock.acquire(timeout=PROBE_WAIT_S):
            return
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(PROBE_WAIT_S * 1000)}")
            self._try_a_write(wait=PROBE_WAIT_S)
            with self.transaction():
                self.db["meta"].upsert({"key": "write_probe_at", "value": _now()}, pk="key")
        except sqlite3.OperationalError as exc:
            if is_write_failure(exc):
                self._note_write(str(exc))
            elif "locked" not in str(exc) and "busy" not in str(exc):
                raise
        finally:
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_WAIT_S * 1000)}")
            self.lock.release()

    def _try_a_write_unless_busy(self) -> None:
        """``_try_a_write`` when opening, skipped when another process holds the write lock past PROBE_WAIT_S:
        a command that only reads must not wait for it (a writer's own write says what is wrong, if anything)."""
        try:
            with self._busy_timeout(PROBE_WAIT_S):
                self._try_a_write(wait=PROBE_WAIT_S)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            log.debug("database write lock held by another process; write check skipped path=%s", self.path)

    def _try_a_write(self, wait: float = BUSY_WAIT_S) -> None:
        """Insert a row a few pages long and roll it back, leaving nothing behind: it fails as a real write would
        on a read-only file or folder. Not on a full disk: in WAL mode a rolled-back row never leaves memory, so
        only a commit finds there is no room (``writable`` commits one; writers meet it at their own commit)."""
        with self.lock:
            self._begin_immediate(wait)
            try:
                page = self.db.execute("PRAGMA page_size").fetchone()[0]
                value = "x" * (page * PROBE_PAGES)
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe_space', ?)", [value])
            finally:
                self._rollback()

    # -- meta -------------------------------------------------------------

    def get_meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    # -- write transactions ----------------------------------------------

    def _require_transaction(self) -> None:
        if not self.db.conn.in_transaction:
            raise RuntimeError("this write must run inside store.transaction()")


def _now() -> str:
    """The time now in UTC, to the second, as every ``at`` column stores it."""
    return datetime.now(UTC).isoformat(timespec="seconds")
