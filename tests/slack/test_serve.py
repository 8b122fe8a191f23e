"""`opsbot serve` and `opsbot manifest` as a user runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from click.testing import CliRunner

from bot.cli import main
from bot.slack.fake_api import FakeSlackAPI
from bot.store import Store
from tests.slack.conftest import BOT_TOKEN, SIGNING_SECRET, SlackDriver, copy_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_without_credentials_explains_what_is_missing() -> None:
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 1
    assert "SLACK_BOT_TOKEN" in result.output and "SLACK_SIGNING_SECRET" in result.output
    assert "opsbot shell" in result.output and "Traceback" not in result.output


def test_serve_process_acknowledges_at_once_and_answers_once_loaded(
    tmp_path: Path, slack_api: FakeSlackAPI, sample_index: Store
) -> None:
    copy_database(sample_index, tmp_path / "served.db").close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env |= {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_api.url,
        "OPSBOT_DB": str(tmp_path / "served.db"),
        "OPSBOT_LOG_LEVEL": "INFO",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        health = None
        while time.perf_counter() - started < 30 and health is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    health = json.loads(response.read())
            except OSError:
                time.sleep(0.05)
        assert health is not None and health["ok"] is True
        slack = SlackDriver(f"http://127.0.0.1:{port}", slack_api)
        response, ts = slack.mention("redis is evicting session keys")
        assert response.status == 200
        (call,) = slack_api.wait_for("chat.postMessage", timeout=60)
        assert call.body["thread_ts"] == ts
        assert "Redis memory full and key evictions" in json.dumps(call.body["blocks"])
        assert call.used_token(BOT_TOKEN)
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert BOT_TOKEN not in output and SIGNING_SECRET not in output
    assert "listening host=127.0.0.1" in output


def test_manifest_lists_commands_scopes_events_and_socket_mode() -> None:
    http = yaml.safe_load(CliRunner().invoke(main, ["manifest", "--url", "https://ops.example.org"]).output)
    assert http["settings"]["socket_mode_enabled"] is False
    assert http["settings"]["event_subscriptions"]["request_url"] == "https://ops.example.org/slack/events"
    assert http["settings"]["interactivity"]["request_url"] == "https://ops.example.org/slack/events"
    assert {c["command"] for c in http["features"]["slash_commands"]} >= {"/ask"}
    assert {"app_mentions:read", "chat:write", "commands", "im:history"} <= set(http["oauth_config"]["scopes"]["bot"])
    assert {"app_mention", "message.im"} <= set(http["settings"]["event_subscriptions"]["bot_events"])
    socket_mode = yaml.safe_load(CliRunner().invoke(main, ["manifest", "--socket-mode"]).output)
    assert socket_mode["settings"]["socket_mode_enabled"] is True
    assert "request_url" not in socket_mode["settings"]["event_subscriptions"]
    assert all("url" not in c for c in socket_mode["features"]["slash_commands"])
