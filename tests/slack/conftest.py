"""A running opsbot HTTP endpoint against a fake Slack Web API, driven by signed requests."""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from slack_sdk import WebClient

from bot.config import Secret, Settings
from bot.runtime import Runtime
from bot.slack.app import create_app, create_client
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.local.shell_dispatch import sign as slack_signature
from bot.slack.serve import HttpServer
from bot.slack.web import SlackWeb
from bot.store import Store
from tests.conftest import copy_database

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
HOOK_SECRET = "ci-hook-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-1234-5678-testtoken"
TEAM = "T0000001"
_ids = itertools.count(1)


def sign(body: str, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    """The X-Slack-Signature Slack sends (opsbot's one signer), with the tests' signing secret by default."""
    return slack_signature(body, timestamp, secret)


@dataclass
class Response:
    status: int
    body: str
    seconds: float

    def json(self) -> dict:
        return json.loads(self.body)


def send(request: urllib.request.Request) -> Response:
    """Send a request to the bot on loopback; an HTTP error status is a Response too, not an exception."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Response(response.status, response.read().decode(), time.perf_counter() - started)
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read().decode(), time.perf_counter() - started)


@dataclass
class SlackDriver:
    """Sends requests to opsbot exactly as Slack does, and reads what opsbot sent back to Slack."""

    base_url: str
    api: FakeSlackAPI
    web: SlackWeb | None = None  # the app's outbox: web.wait_idle() waits until every post was delivered
    secret: str = SIGNING_SECRET
    sent: list[str] = field(default_factory=list)

    def post(
        self,
        body: str,
        content_type: str,
        *,
        timestamp: int | str | None = None,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        ts = int(time.time()) if timestamp is None else timestamp
        request = urllib.request.Request(
            self.base_url + "/slack/events",
            data=body.encode(),
            method="POST",
            headers={
                "Content-Type": content_type,
                "X-Slack-Request-Timestamp": str(ts),
                "X-Slack-Signature": sign(body, ts, secret or self.secret),
                **(headers or {}),
            },
        )
        return send(request)

    def event(self, event: dict, *, event_id: str | None = None, retry: int | None = None, **kw: object) -> Response:
        body = json.dumps(
            {
                "token": "legacy",
                "team_id": TEAM,
                "api_app_id": "A0000001",
                "type": "event_callback",
                "event_id": event_id or f"Ev{next(_ids):08d}",
                "event_time": int(time.time()),
                "authorizations": [{"team_id": TEAM, "user_id": "UBOT0001", "is_bot": True}],
                "event": event,
            }
        )
        headers = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"} if retry else None
        return self.post(body, "application/json", headers=headers, **kw)  # type: ignore[arg-type]

    def mention(
        self,
        text: str,
        user: str = "U04C2RN8VD",
        channel: str = "C0OPS0001",
        thread_ts: str | None = None,
        more: dict | None = None,
        **kw: object,
    ) -> tuple[Response, str]:
        """``more``: fields of the event besides the usual ones (a subtype, files)."""
        ts = f"{time.time():.6f}"
        event = {"type": "app_mention", "user": user, "text": f"<@UBOT0001> {text}", "channel": channel, "ts": ts}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return self.event(event | (more or {}), **kw), ts

    def message(
        self,
        text: str,
        user: str = "U04C2RN8VD",
        channel: str = "D0DM00001",
        channel_type: str = "im",
        thread_ts: str | None = None,
        more: dict | None = None,
    ) -> tuple[Response, str]:
        ts = f"{time.time():.6f}"
        event = {
            "type": "message",
            "user": user,
            "text": text,
            "channel": channel,
            "ts": ts,
            "channel_type": channel_type,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return self.event(event | (more or {})), ts

    def command(
        self, command: str, text: str, user: str = "U04C2RN8VD", channel: str = "C0OPS0001", name: str | None = None
    ) -> Response:
        """A slash command, as Slack sends it; its response_url is named ``name`` (or a fresh name)."""
        name = name or f"cmd{next(_ids)}"
        body = urllib.parse.urlencode(
            {
                "token": "legacy",
                "team_id": TEAM,
                "team_domain": "larder",
                "channel_id": channel,
                "channel_name": "ops",
                "user_id": user,
                "user_name": user.lower(),
                "command": command,
                "text": text,
                "api_app_id": "A0000001",
                "response_url": self.api.response_url(name),
                "trigger_id": f"trig.{name}",
            }
        )
        self.sent.append(name)
        return self.post(body, "application/x-www-form-urlencoded")

    def click(
        self,
        action_id: str,
        value: str,
        user: str = "U03F8K2LQ1",
        channel: str = "C0OPS0001",
        message_ts: str = "1700000000.000100",
    ) -> Response:
        name = f"act{next(_ids)}"
        payload = {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "larder"},
            "user": {"id": user, "username": user.lower(), "team_id": TEAM},
            "api_app_id": "A0000001",
            "token": "legacy",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "trigger_id": f"trig.{name}",
            "channel": {"id": channel, "name": "ops"},
            "message": {"type": "message", "ts": message_ts, "text": "answer"},
            "response_url": self.api.response_url(name),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "answer-actions",
                    "type": "button",
                    "value": value,
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        return self.post(body, "application/x-www-form-urlencoded")


def shown(body: dict) -> str:
    """Everything a person reads in a message: text, sections, fields, context, buttons."""
    parts = [body.get("text") or ""]
    for block in body.get("blocks") or []:
        parts.append((block.get("text") or {}).get("text", ""))
        parts += [f["text"] for f in block.get("fields", [])]
        for element in block.get("elements", []):
            text = element.get("text", "")
            parts.append(text["text"] if isinstance(text, dict) else text)
    return "\n".join(parts)


@pytest.fixture
def slack_api() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


def make_settings(tmp_path: Path, api: FakeSlackAPI) -> Settings:
    return Settings(
        knowledge_dir=Path("knowledge"),
        db_path=tmp_path / "opsbot.db",
        model="unused",
        slack_bot_token=Secret(BOT_TOKEN),
        slack_signing_secret=Secret(SIGNING_SECRET),
        slack_api_url=api.url,
        hook_secret=Secret(HOOK_SECRET),
    )


@pytest.fixture
def runtime(tmp_path: Path, slack_api: FakeSlackAPI, sample_index: Store, minilm) -> Iterator[Runtime]:  # noqa: ANN001
    store = copy_database(sample_index, tmp_path / "opsbot.db")
    rt = Runtime(make_settings(tmp_path, slack_api), encoder=minilm, store=store)
    rt.start_loading()
    yield rt
    rt.close()  # waits for the loading thread: closing the store under it would crash the process


def start_bot(
    runtime: Runtime, api: FakeSlackAPI, client: WebClient | None = None, web: SlackWeb | None = None
) -> tuple[HttpServer, SlackDriver]:
    app = create_app(runtime, client=client or create_client(runtime), web=web)
    server = HttpServer(app, runtime, host="127.0.0.1", port=0).start()
    return server, SlackDriver(f"http://127.0.0.1:{server.port}", api, app.web)


@pytest.fixture
def slack(runtime: Runtime, slack_api: FakeSlackAPI) -> Iterator[SlackDriver]:
    server, driver = start_bot(runtime, slack_api)
    yield driver
    slack_api.release()  # a hang the test left queued or waiting must not hold up the stop
    server.stop()
    if driver.web is not None:
        driver.web.stop()


class GatedEncoder:
    """Wraps the real model but holds its loading until the test opens the gate."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.model_id = inner.model_id
        self.gate = threading.Event()

    def load(self) -> None:
        assert self.gate.wait(30), "the test never opened the gate"

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.inner.encode(texts, batch_size)


@dataclass
class HookDriver:
    """Sends deploy events to opsbot's /hooks/deploy exactly as a pipeline does, signed with the hook secret."""

    base_url: str
    secret: str = HOOK_SECRET
    web: SlackWeb | None = None  # when given, each post waits until what opsbot posts in answer is delivered

    @property
    def url(self) -> str:
        return self.base_url + "/hooks/deploy"

    def post(
        self,
        event: dict | str,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        signed: bool = True,
        signature: str | None = None,
    ) -> Response:
        from bot.ops.ci_events import sign as sign_event

        body = (event if isinstance(event, str) else json.dumps(event)).encode()
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-Opsbot-Timestamp"] = str(ts)
            headers["X-Opsbot-Signature"] = signature or sign_event(secret or self.secret, ts, body)
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        response = send(request)
        if self.web is not None:
            assert self.web.wait_idle(15), "opsbot's posts about the event were not delivered within 15 s"
        return response


@pytest.fixture
def hooks(slack: SlackDriver) -> HookDriver:
    """The deploy hook of the running bot (same server as `slack`)."""
    return HookDriver(slack.base_url, web=slack.web)


class Trigger(BaseHTTPRequestHandler):
    """A CI system's trigger endpoint that takes any POST and echoes the URL it was called with."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(202)
        self.end_headers()
        self.wfile.write(f"queued {self.path}".encode())

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def trigger() -> Iterator[ThreadingHTTPServer]:
    """A CI trigger endpoint on loopback, answering 202 and keeping the paths it was called with."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trigger)
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
