"""Socket Mode: the app connects to the websocket URL that apps.connections.open hands out."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.sync.server import ServerConnection, serve

from bot.runtime import Runtime
from bot.slack.app import create_app
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.serve import close_socket_mode, socket_mode_handler


class LocalSocketModeServer:
    """A websocket server playing Slack's Socket Mode side: says hello, sends envelopes, collects acks."""

    def __init__(self) -> None:
        self.acks: queue.Queue[dict] = queue.Queue()
        self.outbox: queue.Queue[dict] = queue.Queue()
        self.server = serve(self._session, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"ws://{host}:{port}/link/?ticket=local"

    def _session(self, connection: ServerConnection) -> None:
        connection.send(json.dumps({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"}}))
        while True:
            try:
                envelope = self.outbox.get(timeout=0.1)
                connection.send(json.dumps(envelope))
            except queue.Empty:
                pass
            try:
                message = connection.recv(timeout=0.05)
            except TimeoutError:
                continue
            except Exception:
                return
            self.acks.put(json.loads(message))

    def __enter__(self) -> LocalSocketModeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.fixture
def socket_server() -> Iterator[LocalSocketModeServer]:
    with LocalSocketModeServer() as server:
        yield server


def test_a_mention_over_socket_mode_is_acknowledged_and_answered(
    runtime: Runtime, slack_api: FakeSlackAPI, socket_server: LocalSocketModeServer
) -> None:
    slack_api.socket_url = socket_server.url
    settings = runtime.settings.with_overrides(slack_app_token="xapp-1-A1-local-token")
    runtime.settings = settings
    handler = socket_mode_handler(create_app(runtime), runtime)
    handler.connect()
    try:
        (opened,) = slack_api.wait_for("apps.connections.open")
        assert opened.used_token("xapp-1-A1-local-token")
        event = {
            "type": "app_mention",
            "user": "U04C2RN8VD",
            "text": "<@UBOT0001> redis is evicting keys",
            "channel": "C0OPS0001",
            "ts": "1700000200.000300",
        }
        socket_server.outbox.put(
            {
                "envelope_id": "env-1",
                "type": "events_api",
                "accepts_response_payload": False,
                "retry_attempt": 0,
                "payload": {"type": "event_callback", "event_id": "EvSOCKET1", "team_id": "T0000001", "event": event},
            }
        )
        ack = socket_server.acks.get(timeout=10)
        assert ack["envelope_id"] == "env-1"
        (call,) = slack_api.wait_for("chat.postMessage", timeout=10)
        assert call.body["thread_ts"] == "1700000200.000300"
        assert "Redis memory full and key evictions" in json.dumps(call.body["blocks"])
    finally:
        handler.close()
        time.sleep(0.1)


def test_a_stop_lets_an_acknowledgement_under_way_reach_slack_before_disconnecting(
    runtime: Runtime, slack_api: FakeSlackAPI, socket_server: LocalSocketModeServer
) -> None:
    slack_api.socket_url = socket_server.url
    runtime.settings = runtime.settings.with_overrides(slack_app_token="xapp-1-A1-local-token")
    app = create_app(runtime)
    handling, finish = threading.Event(), threading.Event()

    @app.command("/held")
    def held(ack) -> None:  # noqa: ANN001 - Bolt's argument
        handling.set()  # the envelope is being handled and its acknowledgement not yet sent
        finish.wait(10)
        ack("done")

    handler = socket_mode_handler(app, runtime)
    handler.connect()
    slack_api.wait_for("apps.connections.open")
    command = {"command": "/held", "text": "", "user_id": "U04C2RN8VD", "channel_id": "C0OPS0001"}
    command |= {"team_id": "T0000001", "trigger_id": "1.2.3", "response_url": slack_api.response_url("held")}
    socket_server.outbox.put(
        {"envelope_id": "env-held", "type": "slash_commands", "accepts_response_payload": True, "payload": command}
    )
    assert handling.wait(10)
    threading.Timer(0.3, finish.set).start()  # the stop begins while the listener still runs

    assert close_socket_mode(handler, timeout=5)

    ack = socket_server.acks.get(timeout=5)
    assert ack["envelope_id"] == "env-held" and ack["payload"]["text"] == "done"
