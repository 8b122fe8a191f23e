"""/healthz says ready only when the model is loaded and the database takes writes; a full database still
answers questions, without the buttons that need the answer saved."""

from __future__ import annotations

import json
import logging
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.app import create_app
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.serve import HttpServer
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.slack.conftest import Response, SlackDriver, make_settings, send

FULL = "database or disk is full"
READ_ONLY = "attempt to write a readonly database"


def health(base_url: str) -> Response:
    import urllib.request

    return send(urllib.request.Request(base_url + "/healthz"))


def fill_up(store: Store) -> None:
    """Let the database grow no more (SQLite then fails writes that need a page with "database or disk is full")."""
    store.db.execute("VACUUM")  # no free pages left for a write to reuse
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def make_room(store: Store) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


def refused_while_full(store: Store, request: urllib.request.Request) -> urllib.error.HTTPError:
    """What the server answers ``request`` while the database can grow no more: an error status, as a hook's
    caller sees it (the test checks it is the 503 it should be)."""
    fill_up(store)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
    finally:
        make_room(store)
    return refused.value


@pytest.fixture
def bot(tmp_path: Path, slack_api: FakeSlackAPI) -> Iterator[tuple[Runtime, str]]:
    """A served runtime with the fake encoder, whose model has not been asked to load yet."""
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    runtime.store.probe_every_s = 0  # every /healthz probes: the test changes the database between them
    server = HttpServer(create_app(runtime), runtime, host="127.0.0.1", port=0).start()
    yield runtime, f"http://127.0.0.1:{server.port}"
    server.stop()
    runtime.close()


def test_healthz_is_ready_once_the_model_is_loaded_and_only_while_the_database_takes_writes(
    bot: tuple[Runtime, str],
) -> None:
    runtime, url = bot
    loading = health(url)
    assert (loading.status, loading.json()) == (
        503,
        {"ok": True, "ready": False, "model": False, "db": "writable", "index": "ok"},
    )

    runtime.index(timeout=30)
    assert (health(url).status, health(url).json()["ready"]) == (200, True)

    fill_up(runtime.store)
    full = health(url)
    assert full.status == 503
    assert full.json() == {"ok": True, "ready": False, "model": True, "db": f"not writable: {FULL}", "index": "ok"}

    make_room(runtime.store)
    assert (health(url).status, health(url).json()["db"]) == (200, "writable")

    runtime.store.db.execute("PRAGMA query_only = ON")  # read-only as far as this connection is concerned
    read_only = health(url)
    assert (read_only.status, read_only.json()["db"]) == (503, f"not writable: {READ_ONLY}")
    runtime.store.db.execute("PRAGMA query_only = OFF")
    assert health(url).status == 200


def test_healthz_says_when_the_index_was_rebuilt_with_another_model(bot: tuple[Runtime, str]) -> None:
    runtime, url = bot
    runtime.index(timeout=30)
    runtime.store.set_meta("model", "another-model")  # what `opsbot index` with another OPSBOT_MODEL leaves
    runtime.store.set_meta("index_version", "after-another-model")
    runtime.index(timeout=30)

    mismatch = health(url)

    assert mismatch.status == 503 and mismatch.json()["ready"] is False
    assert "rebuilt with the model another-model" in mismatch.json()["index"]


def test_a_failed_write_shows_in_healthz_before_the_next_probe_and_a_commit_clears_it(
    bot: tuple[Runtime, str], caplog: pytest.LogCaptureFixture
) -> None:
    runtime, url = bot
    runtime.index(timeout=30)
    assert health(url).status == 200
    runtime.store.probe_every_s = 3600  # from now on, only real writes tell
    fill_up(runtime.store)
    with pytest.raises(sqlite3.OperationalError, match=FULL):
        runtime.store.set_meta("notes", "x" * 20000)  # needs new pages
    assert (health(url).status, health(url).json()["db"]) == (503, f"not writable: {FULL}")
    assert [r.getMessage() for r in caplog.records if "refuses writes" in r.getMessage()] == [
        f"database refuses writes path={runtime.store.path} reason={FULL}"
    ]

    make_room(runtime.store)
    runtime.store.set_meta("notes", "x" * 20000)
    assert health(url).status == 200


def test_the_write_probe_leaves_nothing_behind_but_its_time(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    try:
        store.probe_every_s = 0
        assert store.writable() and store.writable()
        keys = [row[0] for row in store.db.execute("SELECT key FROM meta WHERE key LIKE 'write_probe%'")]
        assert keys == ["write_probe_at"]
    finally:
        store.close()


def long_question() -> str:
    """A question longer than a database page: saving it needs new pages, which a full database has not."""
    return " ".join(["redis is evicting session keys"] * 160)


def test_a_mention_on_a_full_database_is_answered_without_vote_buttons(
    slack: SlackDriver, runtime: Runtime, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    runtime.index(timeout=60)
    fill_up(runtime.store)
    caplog.set_level(logging.WARNING)

    response, ts = slack.mention(long_question())

    assert response.status == 200
    (call,) = slack_api.wait_for("chat.postMessage", timeout=60)
    assert call.body["thread_ts"] == ts
    blocks = call.body["blocks"]
    assert "Redis memory full and key evictions" in json.dumps(blocks)
    assert [b for b in blocks if b["type"] == "actions"] == []  # no 👍/👎: they would find no saved answer
    assert ids.FEEDBACK_UP not in json.dumps(blocks)
    assert f"opsbot could not save this answer ({FULL}), so feedback is off for it." in json.dumps(blocks)
    assert "Vote below" not in json.dumps(blocks)
    warnings = [r.getMessage() for r in caplog.records if r.name == "bot.answers.replies"]
    assert any(m.startswith("answer not saved answer_id=") and FULL in m for m in warnings), warnings
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_an_ask_on_a_full_database_is_answered_without_share_or_vote_buttons(
    slack: SlackDriver, runtime: Runtime, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    runtime.index(timeout=60)
    fill_up(runtime.store)

    assert slack.command("/ask", long_question()).status == 200

    (answer,) = slack_api.wait_for("response_url", timeout=60)
    shown = json.dumps(answer.body)
    assert "Redis memory full and key evictions" in shown
    assert ids.SHARE_ANSWER not in shown and ids.FEEDBACK_UP not in shown and ids.FEEDBACK_DOWN not in shown
    assert "feedback is off for it" in shown and "error id" not in shown
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
