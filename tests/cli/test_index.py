"""`opsbot index` makes way for a bot serving on the same machine: it runs at lower CPU priority."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bot.cli.knowledge as knowledge_cli
from bot.errors import OpsbotError
from bot.store import Store
from tests.conftest import SAMPLE_KNOWLEDGE, FakeEncoder, invoke


@pytest.fixture
def nice_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(os, "nice", lambda increment: calls.append(increment) or increment)
    return calls


@pytest.mark.parametrize(("args", "expected"), [((), [10]), (("--nice", "5"), [5]), (("--nice", "0"), [])])
def test_index_runs_nicer_by_default_and_as_asked(
    nice_calls: list[int], args: tuple[str, ...], expected: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runbooks").mkdir()
    opened: list[int] = []

    def stop_before_work(settings: object) -> None:  # lowered before any work: no model is loaded to see it
        opened.append(len(nice_calls))
        raise OpsbotError("stopped before any work")

    monkeypatch.setattr(knowledge_cli, "_open", stop_before_work)
    result = invoke("index", *args, str(tmp_path))
    assert result.exit_code == 1 and "stopped before any work" in result.stderr
    assert nice_calls == expected and opened == [len(expected)]


def test_a_wrong_folder_is_refused_before_anything_runs(nice_calls: list[int]) -> None:
    result = invoke("index", "no-such-dir")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert nice_calls == []


def test_nice_outside_the_unix_range_is_refused(nice_calls: list[int]) -> None:
    result = invoke("index", "--nice", "20", str(SAMPLE_KNOWLEDGE))
    assert result.exit_code == 2
    assert "--nice" in result.stderr
    assert nice_calls == []


def test_index_help_explains_the_priority() -> None:
    result = invoke("index", "--help")
    assert "--nice" in result.stdout and "opsbot index --nice 0" in result.stdout


def test_a_full_disk_is_a_clear_error_and_the_index_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's "database or disk is full" in the middle of a run: a message saying what to do, status 1, and
    a database whose documents and sections still agree."""
    db = tmp_path / "opsbot.db"

    def open_on_a_small_disk(settings: object) -> tuple[Store, FakeEncoder]:
        store = Store(db)
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages + 40}")  # room for a few documents, not the sample
        return store, FakeEncoder()

    monkeypatch.setattr(knowledge_cli, "_open", open_on_a_small_disk)
    result = invoke("index", str(SAMPLE_KNOWLEDGE))

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    error = result.stderr[result.stderr.index("Error: ") :]
    assert all(f in error for f in ("is full", str(db), "free space", "run `opsbot index` again")), error
    store = Store(db)
    try:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        orphans = "SELECT count(*) FROM chunks WHERE doc_path NOT IN (SELECT path FROM documents)"
        assert store.db.execute(orphans).fetchone()[0] == 0
        assert (
            store.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
            == store.db.execute("SELECT count(*) FROM chunks_fts").fetchone()[0]
        )
    finally:
        store.close()
