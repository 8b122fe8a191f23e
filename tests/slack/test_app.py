"""The Bolt app's wiring: acknowledgements never wait for the slow work."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
from slack_bolt import Ack, App, BoltRequest, BoltResponse

from bot.runtime import Runtime
from bot.slack.app import SLOW_WORKERS, create_app
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.payloads import MalformedPayload
from tests.conftest import FakeEncoder
from tests.slack.conftest import GatedEncoder, SlackDriver, make_settings, sign, start_bot


def test_commands_are_acknowledged_while_every_slow_worker_is_busy(tmp_path: Path, slack_api: FakeSlackAPI) -> None:
    encoder = GatedEncoder(FakeEncoder())  # every answer waits for the model until the gate opens
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=encoder)
    runtime.start_loading()
    server, slack = start_bot(runtime, slack_api)
    try:
        acks = [slack.command("/ask", f"disk full on node {n}") for n in range(SLOW_WORKERS + 3)]
        assert [a.status for a in acks] == [200] * len(acks)
        assert [json.loads(a.body)["text"] for a in acks][-1] == f"Looking for: disk full on node {SLOW_WORKERS + 2}"
        assert slack_api.calls("response_url") == []  # the slow work has not got past waiting for the model
        encoder.gate.set()
        assert len(slack_api.wait_for("response_url", count=len(acks), timeout=30)) == len(acks)
    finally:
        encoder.gate.set()
        server.stop()
        runtime.close()


def test_an_event_is_acknowledged_at_once_while_another_process_holds_the_write_lock(
    tmp_path: Path, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """Recording the event id (to skip Slack's retries) waited out the lock: 30 s, then a 500 with a traceback."""
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    server, slack = start_bot(runtime, slack_api)
    holder = sqlite3.connect(tmp_path / "opsbot.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 session, a VACUUM
        started = time.monotonic()
        ack, _ = slack.mention("disk full on the database host")
        waited = time.monotonic() - started
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        server.stop()
        runtime.close()
    assert ack.status == 200 and waited < 2
    (warning,) = [r for r in caplog.records if r.name == "bot.slack.app"]
    assert warning.getMessage().startswith("event not recorded") and "database is locked" in warning.getMessage()
    assert warning.exc_info is None


def held_by_another_thread(runtime: Runtime, timeout: float = 5) -> bool:
    """Whether a thread other than this one holds the store (its transaction waiting for the write lock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not runtime.store.lock.acquire(blocking=False):
            return True
        runtime.store.lock.release()
        time.sleep(0.02)
    return False


@contextmanager
def store_held_by_a_reply(tmp_path: Path, slack_api: FakeSlackAPI) -> Iterator[SlackDriver]:
    """A bot whose store a reply holds, its outbox write waiting for another process's write lock (an operator's
    sqlite3 session, a VACUUM); that process lets go when the block ends, and the replies are delivered."""
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    server, slack = start_bot(runtime, slack_api)
    holder = sqlite3.connect(tmp_path / "opsbot.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        first, _ = slack.mention("help")  # its reply (the help text) is written to the outbox, which waits
        assert first.status == 200 and held_by_another_thread(runtime)
        yield slack
        holder.execute("ROLLBACK")
        assert slack.web is not None and slack.web.wait_idle(15)
    finally:
        holder.close()
        server.stop()
        if slack.web is not None:
            slack.web.stop()
        runtime.close()


def test_an_event_is_acknowledged_at_once_while_a_reply_waits_for_another_process_to_let_go_of_the_database(
    tmp_path: Path, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """The first reply's outbox write waited out the lock (30 s) holding the store, and every event after it waited
    behind that write: Slack saw 30 s for the acknowledgement, gave up and sent the event again."""
    with store_held_by_a_reply(tmp_path, slack_api) as slack:
        started = time.monotonic()
        second, _ = slack.mention("help", channel="C0OPS0002")
        waited = time.monotonic() - started
    assert second.status == 200 and waited < 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "bot.slack.app"]
    assert len(warnings) == 2 and all(w.startswith("event not recorded") for w in warnings)
    assert {m.body["channel"] for m in slack_api.calls("chat.postMessage")} == {"C0OPS0001", "C0OPS0002"}


def test_usage_is_acknowledged_at_once_while_a_reply_waits_for_another_process_to_let_go_of_the_database(
    tmp_path: Path, slack_api: FakeSlackAPI
) -> None:
    """A usage line's examples are read from the store, which the waiting reply held: `/ask` alone took a minute."""
    with store_held_by_a_reply(tmp_path, slack_api) as slack:
        started = time.monotonic()
        acks = [slack.command(name, "") for name in ("/ask", "/experts", "/deploy", "/rollback")]
        waited = time.monotonic() - started
    assert [a.status for a in acks] == [200] * 4 and waited < 4
    texts = [json.loads(a.body)["text"] for a in acks]
    assert texts[0] == "Usage: /ask QUESTION" and texts[1].startswith("Usage: /experts TEXT")
    assert "Usage: /deploy SERVICE VERSION ENV" in texts[2] and "Usage: /rollback SERVICE ENV" in texts[3]


def dispatch(app: App, body: str, content_type: str) -> BoltResponse:
    """A signed request handed to the app directly, as Socket Mode and the shell do (no HTTP server in front)."""
    ts = int(time.time())
    headers = {
        "content-type": [content_type],
        "x-slack-request-timestamp": [str(ts)],
        "x-slack-signature": [sign(body, ts)],
    }
    return app.dispatch(BoltRequest(body=body, headers=headers))


def command(name: str) -> str:
    fields = {"command": name, "text": "", "user_id": "U1", "channel_id": "C1", "response_url": "http://127.0.0.1:9/r"}
    return urlencode(fields)


def test_the_app_refuses_a_malformed_body_that_reaches_it_without_the_server(
    tmp_path: Path, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    app = create_app(runtime)
    try:
        mention = json.dumps({"type": "event_callback", "event": {"type": "app_mention", "text": "hi", "ts": "1.2"}})
        response = dispatch(app, mention, "application/json")
    finally:
        runtime.close()
    assert response.status == 400 and "event has no channel string" in response.body
    assert [c.method for c in slack_api.calls() if c.method != "auth.test"] == []  # no handler ran
    assert [r.getMessage() for r in caplog.records if r.name == "bot.slack.app"] == [
        "slack request malformed reason=event has no channel string"
    ]


def test_a_listener_failure_is_400_for_bad_input_and_500_with_its_traceback_for_a_bug(
    tmp_path: Path, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    app = create_app(runtime)

    def refuse(ack: Ack) -> None:
        raise MalformedPayload("the text is not what this command takes")

    def crash(ack: Ack) -> None:
        raise ZeroDivisionError("a bug")

    app.command("/refuse")(refuse)
    app.command("/crash")(crash)
    try:
        refused = dispatch(app, command("/refuse"), "application/x-www-form-urlencoded")
        crashed = dispatch(app, command("/crash"), "application/x-www-form-urlencoded")
    finally:
        runtime.close()
    assert (refused.status, json.loads(refused.body)) == (
        400,
        {"error": "malformed request: the text is not what this command takes"},
    )
    assert crashed.status == 500
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "bot.slack.app"]
    assert warning.exc_info is None
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info is not None and error.exc_info[0] is ZeroDivisionError  # a bug keeps its traceback
