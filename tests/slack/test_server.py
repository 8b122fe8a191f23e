"""The HTTP server: connections handled by threads started once, and one more when none is free."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bot.runtime import Runtime
from bot.slack.app import create_app
from bot.slack.fake_api import FakeSlackAPI
from bot.slack.server import HttpServer
from tests.conftest import FakeEncoder
from tests.slack.conftest import SlackDriver, make_settings


def pooled_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("opsbot-http-")]


@pytest.fixture
def bare_runtime(tmp_path: Path, slack_api: FakeSlackAPI) -> Iterator[Runtime]:
    """A runtime whose model is never loaded: enough for acknowledgements, usage texts and /healthz."""
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    yield runtime
    runtime.store.close()


def start(runtime: Runtime, api: FakeSlackAPI, threads: int) -> tuple[HttpServer, SlackDriver]:
    server = HttpServer(create_app(runtime), runtime, host="127.0.0.1", port=0, threads=threads).start()
    return server, SlackDriver(f"http://127.0.0.1:{server.port}", api)


def test_fifty_concurrent_slash_commands_are_each_acknowledged(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    server, slack = start(bare_runtime, slack_api, threads=8)  # fewer threads than requests: the rest get their own
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            responses = list(pool.map(lambda _: slack.command("/ask", ""), range(50)))
    finally:
        server.stop()
    assert [r.status for r in responses] == [200] * 50
    assert all(json.loads(r.body)["text"] == "Usage: /ask QUESTION" for r in responses)


def test_a_request_is_answered_while_every_pooled_thread_waits_on_an_idle_connection(
    bare_runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    server, slack = start(bare_runtime, slack_api, threads=2)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]  # connected, sending nothing
    try:
        response = slack.command("/ask", "")
    finally:
        for connection in idle:
            connection.close()
        server.stop()
    assert response.status == 200
    assert json.loads(response.body)["text"] == "Usage: /ask QUESTION"


def test_a_bad_signature_is_refused_by_a_pooled_thread(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    server, slack = start(bare_runtime, slack_api, threads=2)
    try:
        response = slack.post("command=%2Fask&text=hello", "application/x-www-form-urlencoded", secret="not-the-secret")
    finally:
        server.stop()
    assert response.status == 401
    assert slack_api.calls() == []


def test_stop_ends_the_pooled_threads(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    before = len(pooled_threads())
    server, _ = start(bare_runtime, slack_api, threads=4)
    assert len(pooled_threads()) == before + 4
    server.stop()
    deadline = time.monotonic() + 10
    while len(pooled_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pooled_threads()) == before


def test_a_taken_port_fails_with_the_address_error(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = len(pooled_threads())
        with pytest.raises(OSError, match="in use"):
            HttpServer(create_app(bare_runtime), bare_runtime, host="127.0.0.1", port=port, threads=4)
        assert len(pooled_threads()) == before
