"""The connection: one SQLite database shared between threads, its lock, transactions and meta.

The store also knows whether the database takes writes: SQLite's reason when the last write failed (a full disk,
a read-only file or folder), cleared by the next commit that succeeds, and ``writable()``, a small write that
/healthz can ask for as often as it likes.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database

from bot.errors import OpsbotError
from bot.store.schema import TOKENIZER, migrations

log = logging.getLogger(__name__)
BUSY_WAIT_S = 30.0  # how long a write waits for another writer, in this process or another
# SQLite's messages when the file, its folder or its disk refuses a write (as opposed to a busy lock or a bug).
WRITE_FAILURES = ("database or disk is full", "readonly database", "disk i/o error", "unable to open database file")
PROBE_EVERY_S = 5.0  # writable() writes at most this often; in between it answers from the last write's outcome
PROBE_WAIT_S = 2.0  # a probe that would wait longer for another writer is skipped: the writer shows it is writable
PROBE_PAGES = 4  # the probe's rolled-back row needs new pages, as a growing table does, not space in a page


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite refusing a write: disk full, a read-only file or folder, an I/O error."""
    return isinstance(exc, sqlite3.OperationalError) and any(w in str(exc).lower() for w in WRITE_FAILURES)


class DatabaseUnavailable(OpsbotError):
    """The database file cannot be used: it cannot be written, or it is not an opsbot database."""

    def __init__(self, path: str, reason: str, unwritable: bool, source: str = "OPSBOT_DB") -> None:
        self.path, self.reason, self.unwritable = path, reason, unwritable
        if unwritable:
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
        return DatabaseUnavailable(self.path, self.reason, self.unwritable, source)


class StoreBase:
    """The database connection and the transaction helpers every part of the store uses."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.lock = threading.RLock()
        self._here = threading.local()  # how deep this thread is in transaction()
        self.write_error = ""  # SQLite's reason the last write failed; "" once a commit succeeds
        self.probe_every_s = PROBE_EVERY_S
        self._probed_at = -PROBE_EVERY_S
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
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db = Database(conn)
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.lock:
            migrations.apply(self.db)
            self._try_a_write()
            # sqlite-utils learns whether upserts may use ON CONFLICT by creating and dropping a table on the
            # first upsert; a DROP beside another thread's open read fails with "database table is locked".
            # Learn it now, while the connection is still ours alone.
            _ = self.db.supports_on_conflict
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

    def close(self) -> None:
        with self.lock:  # not under a transaction of another thread
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction holding SQLite's write lock from its start (BEGIN IMMEDIATE).

        Nested, it is a savepoint of the outer one. Every write goes through here,
        so writers in several threads and several processes are serialised, not interleaved.
        """
        with self.lock, self._entered():
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            try:
                self._begin_immediate()
                try:
                    yield
                    self.db.conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            except sqlite3.OperationalError as exc:
                if is_write_failure(exc):
                    self._note_write(str(exc))
                raise
            self._note_write("")

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

    def _begin_immediate(self, wait: float = BUSY_WAIT_S) -> None:
        """BEGIN IMMEDIATE, waiting while SQLite says the database is locked.

        SQLite's own busy timeout covers another process holding the write lock. It does not cover a
        read still in progress on this shared connection (another thread's statement) whose snapshot
        is older than the last commit: then BEGIN IMMEDIATE fails at once. That read ends within
        milliseconds, so trying again shortly is enough.
        """
        deadline = time.monotonic() + wait
        pause = 0.002
        while True:
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")
                return
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

    def _try_a_write(self, wait: float = BUSY_WAIT_S) -> None:
        """Insert a row a few pages long and roll it back: it fails as a real write would (a read-only file or
        folder, no room to grow), and leaves nothing behind."""
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
