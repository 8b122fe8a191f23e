"""The store's transactions when threads share its connection and another process writes too."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.store import Store
from bot.store.base import DatabaseUnavailable, TransactionLost, is_busy

WAIT_S = 30.0  # generous: only a broken lock makes a wait this long


def test_a_read_on_the_shared_connection_is_read_to_its_end_so_a_write_never_meets_a_stale_snapshot(
    tmp_path: Path,
) -> None:
    shared = Store(tmp_path / "opsbot.db")  # one connection, shared by the bot's threads
    other = Store(tmp_path / "opsbot.db")  # another process
    for n in range(3):
        shared.set_meta(f"key{n}", "before")
    reading = shared.db.conn.execute("SELECT key FROM meta WHERE key LIKE 'key%' ORDER BY key")
    assert reading.fetchone() == ("key0",)
    other.set_meta("key1", "changed elsewhere")  # a commit newer than the read's snapshot

    # A half-read cursor would still hold that snapshot, and BEGIN IMMEDIATE would fail until it ended.
    shared.set_meta("key2", "after")

    assert reading.fetchall() == [("key1",), ("key2",)]
    assert shared.get_meta("key1") == "changed elsewhere" and shared.get_meta("key2") == "after"
    other.close()
    shared.close()


def test_a_read_from_another_thread_waits_for_the_transaction_instead_of_running_inside_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    store.set_meta("state", "old")
    inside, leave = threading.Event(), threading.Event()
    events: list[str] = []

    def write() -> None:
        with store.transaction():
            store.db.execute("UPDATE meta SET value = 'new' WHERE key = 'state'")
            inside.set()
            leave.wait(WAIT_S)
            events.append("committed")

    def read() -> None:
        events.append(f"read {store.get_meta('state')}")

    writer = threading.Thread(target=write)
    writer.start()
    assert inside.wait(WAIT_S)
    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.5)  # unlocked, the read runs now, inside the other thread's transaction
    leave.set()
    writer.join(WAIT_S)
    reader.join(WAIT_S)

    assert events == ["committed", "read new"]
    store.close()


class LosesTheFirstBegin:
    """The shared connection as one thread saw it when another thread's read overwrote SQLite's answer to its
    BEGIN IMMEDIATE (busy): the BEGIN came back as a success, and no transaction had begun."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.lost = conn, 0

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "BEGIN IMMEDIATE" and not self.lost:
            self.lost += 1
            return None
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_a_begin_that_began_no_transaction_is_tried_again_so_the_write_stays_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "opsbot.db")
    real = store.db.conn
    store.db.conn = LosesTheFirstBegin(real)  # type: ignore[assignment]

    with caplog.at_level(logging.ERROR, logger="bot.store.base"), pytest.raises(RuntimeError, match="block fails"):
        with store.transaction():
            store.db.execute("INSERT INTO meta (key, value) VALUES ('half', 'written')")
            raise RuntimeError("the block fails")

    assert store.get_meta("half") == ""  # rolled back with its transaction, not stored on its own
    assert "began no transaction" in caplog.text
    store.set_meta("after", "ok")
    assert store.get_meta("after") == "ok"
    store.db.conn = real
    store.close()


def test_a_transaction_committed_before_its_end_is_reported_and_the_rest_of_it_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "opsbot.db")

    with caplog.at_level(logging.ERROR, logger="bot.store.base"):
        with store.transaction():
            store.db.execute("INSERT INTO meta (key, value) VALUES ('first', '1')")
            store.db.conn.execute("COMMIT")  # what sqlite-utils' `with db.conn:` does to an open transaction
            store.db.conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [("second", "2")])

    assert (store.get_meta("first"), store.get_meta("second")) == ("1", "2")
    assert not store.db.conn.in_transaction
    assert "committed early" in caplog.text and "test_store.py" in caplog.text  # the log names the write
    store.close()


def test_a_transaction_rolled_back_before_its_end_is_never_reported_as_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "opsbot.db")

    with caplog.at_level(logging.ERROR, logger="bot.store.base"), pytest.raises(TransactionLost):
        with store.transaction():
            store.db.execute("INSERT INTO meta (key, value) VALUES ('first', '1')")
            store.db.conn.execute("ROLLBACK")
            store.db.conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [("second", "2")])

    assert (store.get_meta("first"), store.get_meta("second")) == ("", "")  # neither half is kept
    assert not store.db.conn.in_transaction
    assert "rolled back early" in caplog.text
    store.set_meta("after", "ok")  # the connection is usable again
    assert store.get_meta("after") == "ok"
    store.close()


def test_a_database_path_inside_a_file_names_the_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n", encoding="utf-8")
    with pytest.raises(DatabaseUnavailable) as caught:
        Store(notes / "opsbot.db")
    assert f"{str(notes)!r} is a file, not a folder" in str(caught.value)
    assert "permissions" not in str(caught.value) and notes.read_text(encoding="utf-8") == "mine\n"


def before_privacy(path: Path, *incidents: tuple[str, str, str, str]) -> None:
    """A database of the opsbot before privacy was asked (migration m025), with live incidents given as (id, title,
    channel, status)."""
    from sqlite_utils import Database

    from bot.store.schema import migrations

    db = Database(path)
    migrations.apply(db, stop_before="m025_private_incidents")
    for incident_id, title, channel, status in incidents:
        resolved = status == "resolved"
        db["live_incidents"].insert(
            {
                "id": incident_id,
                "title": title,
                "severity": 1,
                "services": "[]",
                "status": status,
                "declared_by": "U1",
                "declared_at": "2026-12-01T10:00:00+00:00",
                "channel": channel,
                "origin_channel": channel,
                "roles": "{}",
                "resolved_at": "2026-12-01T11:00:00+00:00" if resolved else "",
                "resolution": "Rotated it." if resolved else "",
            }
        )
    db.close()


def test_incidents_from_before_privacy_was_asked_are_private_until_slack_answers(tmp_path: Path) -> None:
    from bot.ops.incidents import IncidentService

    path = tmp_path / "old.db"
    before_privacy(path, ("INC-2026-0001", "Signing key leaked", "C0SECURE1", "open"))

    store = Store(path)
    try:
        incidents = IncidentService(store, set())
        assert incidents.get("INC-2026-0001").private  # not known yet: private, the safe side
        assert incidents.unsettled_channels() == ["C0SECURE1"]
        incidents.settle_privacy("C0SECURE1", False)
        assert not incidents.get("INC-2026-0001").private and incidents.unsettled_channels() == []
    finally:
        store.close()


def test_incidents_indexed_before_privacy_was_asked_leave_the_index_when_their_channel_is_private(
    tmp_path: Path,
) -> None:
    # An opsbot from before the privacy check indexed every resolved incident; the check then marked them private
    # until Slack answers, but one whose channel Slack called private stayed findable by /ask in every channel.
    from datetime import UTC, datetime

    from bot.answers.indexer import index_incident
    from bot.models import Incident
    from bot.ops.incidents import IncidentService
    from bot.store import SLACK_PREFIX
    from tests.conftest import FakeEncoder

    path = tmp_path / "old.db"
    rows = {"INC-2026-0001": ("Signing key leaked", "C0SECURE1"), "INC-2026-0002": ("Cache cold", "C0OPS0001")}
    before_privacy(path, *((i, title, channel, "resolved") for i, (title, channel) in rows.items()))
    store = Store(path)
    try:
        for incident_id, (title, _) in rows.items():  # as the opsbot before indexed them when they were resolved
            incident = Incident(
                id=incident_id,
                title=title,
                date=datetime(2026, 12, 1, 10, tzinfo=UTC),
                severity=1,
                services=(),
                responders=("U1",),
                summary=title,
                root_cause="",
                resolution="Rotated it.",
                path=SLACK_PREFIX + incident_id,
            )
            index_incident(store, FakeEncoder(), incident)
        incidents = IncidentService(store, set())
        version = store.get_meta("index_version")

        assert incidents.settle_privacy("C0OPS0001", False) == []
        assert incidents.settle_privacy("C0SECURE1", True) == ["INC-2026-0001"]

        assert [i.id for i in store.load_incidents()] == ["INC-2026-0002"]  # gone from /experts' history
        paths = {r[0] for r in store.db.execute("SELECT path FROM documents")}
        assert paths == {SLACK_PREFIX + "INC-2026-0002"}  # and from search
        assert store.db.execute("SELECT count(*) FROM chunks WHERE doc_path LIKE '%0001'").fetchone()[0] == 0
        assert store.get_meta("index_version") != version  # a running bot reloads its index
        assert incidents.unlearned() == []  # and never indexes it again
        assert incidents.get("INC-2026-0001").private and not incidents.get("INC-2026-0002").private
    finally:
        store.close()


def test_one_person_s_votes_on_one_document_for_one_question_count_once_their_latest(tmp_path: Path) -> None:
    # Each asking gets an answer of its own to vote on: before, asking the same question ten times and pressing
    # 👍 each time moved the document ten places for everyone, and weighed ten times in the ranker's fit.
    import numpy as np

    store = Store(tmp_path / "votes.db")
    try:
        vector = np.ones(4, dtype=np.float32)
        for n in range(5):
            store.record_feedback(f"a{n}", "U1", "pgbouncer too many clients", "runbooks/pool.md", 1, vector, "m")
        store.record_feedback("a5", "U1", " PgBouncer too many clients", "runbooks/pool.md", -1, vector, "m")
        store.record_feedback("a6", "U2", "pgbouncer too many clients", "runbooks/pool.md", 1, vector, "m")
        store.record_feedback("a7", "U1", "pgbouncer too many clients", "runbooks/other.md", 1, vector, "m")

        _, paths, votes = store.feedback_vectors("m")
        assert sorted(zip(paths, votes.tolist(), strict=True)) == [
            ("runbooks/other.md", 1.0),
            ("runbooks/pool.md", -1.0),  # U1's latest: changed their mind
            ("runbooks/pool.md", 1.0),  # U2's
        ]
        assert sorted((p, v) for _, p, v, _ in store.votes_for_training("m")) == [
            ("runbooks/other.md", 1),
            ("runbooks/pool.md", -1),
            ("runbooks/pool.md", 1),
        ]
        assert len(store.feedback_rows()) == 8  # every vote is kept; only the counting changed
    finally:
        store.close()


def test_a_disk_io_error_on_a_disk_with_no_space_left_says_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a restart on a full disk SQLite cannot make the -wal beside the database and says "disk I/O error",
    # which read as a permissions problem: "check the folder's permissions".
    db = str(tmp_path / "opsbot.db")
    assert "check the folder's permissions" in str(DatabaseUnavailable(db, "disk I/O error", unwritable=True))
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(total=100, used=100, free=0))
    assert str(DatabaseUnavailable(db, "disk I/O error", unwritable=True)) == (
        f"the disk holding the database {db} is full (disk I/O error): free space on it, "
        "or set OPSBOT_DB to a path on another disk."
    )


def test_busy_is_another_writer_holding_the_lock_not_a_table_locked_in_this_process(tmp_path: Path) -> None:
    # Both say "locked"; only the first is a wait that ran out (the second, a bug, was reported as "try again").
    holder = sqlite3.connect(tmp_path / "busy.db", timeout=0.05)
    holder.execute("CREATE TABLE t (x)")
    holder.commit()
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(tmp_path / "busy.db", timeout=0.05)
    with pytest.raises(sqlite3.OperationalError) as busy:
        other.execute("BEGIN IMMEDIATE")
    holder.rollback()

    assert is_busy(busy.value)
    assert not is_busy(sqlite3.OperationalError("database table is locked"))
    assert not is_busy(sqlite3.OperationalError("database or disk is full"))
