"""The store's transactions when threads share its connection and another process writes too."""

from __future__ import annotations

import threading
from pathlib import Path

from bot.store import Store


def test_a_write_waits_for_another_threads_unfinished_read_instead_of_failing(tmp_path: Path) -> None:
    shared = Store(tmp_path / "opsbot.db")  # one connection, shared by the bot's threads
    other = Store(tmp_path / "opsbot.db")  # another process
    for n in range(3):
        shared.set_meta(f"key{n}", "before")
    # Another thread's read on the shared connection, not finished yet: it holds its snapshot.
    reading = shared.db.conn.execute("SELECT key FROM meta ORDER BY key")
    assert reading.fetchone() == ("key0",)
    other.set_meta("key1", "changed elsewhere")  # a commit newer than that snapshot
    # SQLite refuses BEGIN IMMEDIATE at once (no busy wait) while that stale read is open;
    # the read ends a moment later, as reads do.
    finisher = threading.Timer(0.2, reading.fetchall)
    finisher.start()

    shared.set_meta("key2", "after")

    finisher.join()
    assert shared.get_meta("key1") == "changed elsewhere" and shared.get_meta("key2") == "after"
    other.close()
    shared.close()
