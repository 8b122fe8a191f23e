"""The connection: one SQLite database shared between threads, its lock, transactions and meta."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database

from bot.store.schema import TOKENIZER, migrations

BUSY_WAIT_S = 30.0  # how long a write waits for another writer, in this process or another


class StoreBase:
    """The database connection and the transaction helpers every part of the store uses."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db = Database(conn)
        self.lock = threading.RLock()
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.lock:
            migrations.apply(self.db)
            self.db.execute(f"CREATE VIRTUAL TABLE temp.query_terms USING fts5(body, tokenize={TOKENIZER!r})")
            self.db.execute("CREATE VIRTUAL TABLE temp.query_terms_vocab USING fts5vocab(temp, query_terms, instance)")
            # A few sections at a time, copied here to count the query's words in each (see term_counts_in).
            self.db.execute(f"CREATE VIRTUAL TABLE temp.cite_terms USING fts5(heading, body, tokenize={TOKENIZER!r})")
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
        with self.lock:
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            self._begin_immediate()
            try:
                yield
            except BaseException:
                # SQLite ends the transaction itself on some errors (SQLITE_FULL): a ROLLBACK then would fail
                # and hide the error that matters ("database or disk is full").
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                raise
            self.db.conn.execute("COMMIT")

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE, waiting while SQLite says the database is locked.

        SQLite's own busy timeout covers another process holding the write lock. It does not cover a
        read still in progress on this shared connection (another thread's statement) whose snapshot
        is older than the last commit: then BEGIN IMMEDIATE fails at once. That read ends within
        milliseconds, so trying again shortly is enough.
        """
        deadline = time.monotonic() + BUSY_WAIT_S
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
