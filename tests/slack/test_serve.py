"""`opsbot serve` and `opsbot manifest` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from slack_sdk import WebClient

from bot.cli import main
from bot.errors import OpsbotError
from bot.slack.app import verify_bot_token
from bot.slack.local.fake_api import FakeSlackAPI
from bot.store import Store
from tests.conftest import copy_database
from tests.slack.conftest import (
    BOT_TOKEN,
    HOOK_SECRET,
    SIGNING_SECRET,
    HookDriver,
    Response,
    SlackDriver,
    send,
)
from tests.slack.test_socket_mode import LocalSocketModeServer

APP_TOKEN = "xapp-1-A1-local-token"
ALERTMANAGER_TOKEN = "am-token-for-the-hooks-port-0123"


def alertmanager_post(port: int, token: str) -> Response:
    """A notification captured from Alertmanager 0.25, sent as Alertmanager sends it."""
    body = (Path(__file__).parent.parent / "fixtures" / "alertmanager" / "pgbouncer-firing.json").read_bytes()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    return send(urllib.request.Request(f"http://127.0.0.1:{port}/hooks/alertmanager", body, headers, method="POST"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_environment(tmp_path: Path, slack_api: FakeSlackAPI, **settings: str) -> dict[str, str]:
    """The machine's environment without Slack or opsbot settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env |= {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack_api.url,
        "OPSBOT_DB": str(tmp_path / "served.db"),
        "OPSBOT_LOG_LEVEL": "INFO",
    }
    return env | settings


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 30) -> dict:
    """The /healthz answer on ``port`` once the process serves it; fails early if the process died."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503 while the model loads: serving all the same
            return json.loads(error.read())
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing healthy on port {port} (process exit code {process.poll()})")


def start_serve(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`opsbot serve ARGS` in its own process, listening on loopback only."""
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


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
    env = served_environment(tmp_path, slack_api, SLACK_SIGNING_SECRET=SIGNING_SECRET)
    process = start_serve(tmp_path, env, "--port", str(port))
    try:
        assert wait_healthy(port, process)["ok"] is True
        assert len(slack_api.calls("auth.test")) == 1  # the token checked before serving, not in the first request
        slack = SlackDriver(f"http://127.0.0.1:{port}", slack_api)
        response, ts = slack.mention("redis is evicting session keys")
        assert response.status == 200
        (call,) = slack_api.wait_for("chat.postMessage", timeout=60)
        assert len(slack_api.calls("auth.test")) == 1
        assert call.body["thread_ts"] == ts
        assert "Redis memory full and key evictions" in json.dumps(call.body["blocks"])
        assert call.used_token(BOT_TOKEN)
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert BOT_TOKEN not in output and SIGNING_SECRET not in output
    assert "listening host=127.0.0.1" in output


def test_serve_with_a_token_slack_refuses_says_so_and_serves_nothing(tmp_path: Path, slack_api: FakeSlackAPI) -> None:
    slack_api.fail_next("auth.test", status=200, error="invalid_auth")
    port = free_port()
    env = served_environment(tmp_path, slack_api, SLACK_SIGNING_SECRET=SIGNING_SECRET)
    process = start_serve(tmp_path, env, "--port", str(port))
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1 and "Traceback" not in output, output
    assert "Slack refused SLACK_BOT_TOKEN (invalid_auth)" in output and BOT_TOKEN not in output


def test_socket_mode_with_an_app_token_slack_refuses_says_so_without_a_traceback(
    tmp_path: Path, slack_api: FakeSlackAPI
) -> None:
    slack_api.fail_next("apps.connections.open", status=200, error="invalid_auth")
    env = served_environment(tmp_path, slack_api, SLACK_APP_TOKEN=APP_TOKEN)
    process = start_serve(tmp_path, env, "--hooks-port", str(free_port()))
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1 and "Traceback" not in output, output
    assert "Socket Mode could not connect to Slack (invalid_auth): check SLACK_APP_TOKEN" in output
    assert APP_TOKEN not in output and BOT_TOKEN not in output


def test_the_token_check_waits_out_a_rate_limit_and_a_5xx_then_serves(slack_api: FakeSlackAPI) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=slack_api.url, retry_handlers=[])
    slack_api.fail_next("auth.test", status=429, retry_after=1)
    slack_api.fail_next("auth.test", status=500)
    waited: list[float] = []
    assert verify_bot_token(client, sleep=waited.append)["ok"] is True
    assert len(waited) == 2 and len(slack_api.calls("auth.test")) == 3
    slack_api.fail_next("auth.test", status=503, times=3)
    with pytest.raises(OpsbotError, match=r"could not check SLACK_BOT_TOKEN with Slack \(http 503"):
        verify_bot_token(client, sleep=waited.append)
    slack_api.fail_next("auth.test", status=503, times=3)  # over HTTP: the hooks and the outbox work on without Slack
    assert verify_bot_token(client, sleep=waited.append, unreachable_ok=True) is None
    slack_api.fail_next("auth.test", status=200, error="token_revoked")  # but a refused token still stops it
    with pytest.raises(OpsbotError, match=r"Slack refused SLACK_BOT_TOKEN \(token_revoked\)"):
        verify_bot_token(client, sleep=waited.append, unreachable_ok=True)


def test_sigterm_lets_the_answer_in_flight_finish_then_exits_0(
    tmp_path: Path, slack_api: FakeSlackAPI, sample_index: Store
) -> None:
    """SIGTERM while an answer waits for the model (a question asked just after the start): the process stops
    taking requests, the answer is finished and posted (or kept in the outbox), and it exits 0 without a traceback."""
    copy_database(sample_index, tmp_path / "served.db").close()
    port = free_port()
    # A grace period far above the model's load time on a loaded machine: the test is about the drain, not the clock.
    env = served_environment(tmp_path, slack_api, SLACK_SIGNING_SECRET=SIGNING_SECRET, OPSBOT_STOP_GRACE_S="300")
    process = start_serve(tmp_path, env, "--port", str(port))
    try:
        wait_healthy(port, process)
        response, ts = SlackDriver(f"http://127.0.0.1:{port}", slack_api).mention("redis is evicting session keys")
        assert response.status == 200
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=300)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)

    assert process.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # The answer was still waiting for the model when the signal came, and was finished, not dropped.
    assert "stop begins signal=SIGTERM grace_s=300 work=1" in output, output[-3000:]
    assert "drained=1 abandoned=0" in output and "store_closed=True" in output, output[-3000:]
    posted = [c.body for c in slack_api.calls("chat.postMessage") if c.ok and c.body.get("thread_ts") == ts]
    with sqlite3.connect(tmp_path / "served.db") as db:  # undelivered: kept for the next start
        kept = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE status = 'pending'")]
    answers = posted + [p for p in kept if p.get("thread_ts") == ts]
    assert len(answers) == 1, (posted, kept)
    assert "Redis memory full and key evictions" in json.dumps(answers[0]["blocks"])


def test_a_second_sigterm_during_the_stop_exits_at_once(
    tmp_path: Path, slack_api: FakeSlackAPI, sample_index: Store
) -> None:
    """The platform (or an impatient operator) signals again while an answer is drained: no more waiting."""
    copy_database(sample_index, tmp_path / "served.db").close()
    port = free_port()
    env = served_environment(tmp_path, slack_api, SLACK_SIGNING_SECRET=SIGNING_SECRET, OPSBOT_STOP_GRACE_S="300")
    process = start_serve(tmp_path, env, "--port", str(port))
    lines: list[str] = []
    try:
        wait_healthy(port, process)
        response, _ = SlackDriver(f"http://127.0.0.1:{port}", slack_api).mention("redis is evicting session keys")
        assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        for line in process.stdout:  # the stop has begun, and waits for the answer (which waits for the model)
            lines.append(line)
            if "stop begins" in line:
                break
        assert "work=1" in lines[-1], "".join(lines[-20:])
        process.send_signal(signal.SIGTERM)
        output = "".join(lines) + process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)

    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "second stop signal: exiting now signal=SIGTERM" in output
    assert "stopped signal=" not in output and "Traceback" not in output, output[-3000:]


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


def test_serve_in_socket_mode_with_hooks_port_accepts_signed_deploy_events_and_refuses_others(
    tmp_path: Path, slack_api: FakeSlackAPI, sample_index: Store
) -> None:
    """`opsbot serve --hooks-port` as a user runs it: Socket Mode for Slack, deploy events on the hooks port."""
    copy_database(sample_index, tmp_path / "served.db").close()
    port = free_port()
    env = served_environment(
        tmp_path,
        slack_api,
        SLACK_APP_TOKEN=APP_TOKEN,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,  # needed today: see the xfail test below
        OPSBOT_HOOK_SECRET=HOOK_SECRET,
        OPSBOT_ALERTMANAGER_TOKEN=ALERTMANAGER_TOKEN,
    )
    event = {
        "event_id": "gh-run-serve-1",
        "service": "checkout-api",
        "env": "prod",
        "version": "1.4.2",
        "status": "succeeded",
        "actor": "octocat",
    }
    with LocalSocketModeServer() as socket_server:
        slack_api.socket_url = socket_server.url
        process = start_serve(tmp_path, env, "--hooks-port", str(port))
        try:
            assert wait_healthy(port, process)["ok"] is True
            hooks = HookDriver(f"http://127.0.0.1:{port}")
            refused = [
                hooks.post(event | {"event_id": "gh-run-forged"}, secret="not-the-hook-secret-at-all"),
                hooks.post(event | {"event_id": "gh-run-unsigned"}, signed=False),
            ]
            accepted = hooks.post(event)
            (summary,) = slack_api.wait_for("chat.postMessage", timeout=30)
            alert = alertmanager_post(port, ALERTMANAGER_TOKEN)
            refused_alert = alertmanager_post(port, "not-the-alertmanager-token")
            (alert_message,) = slack_api.wait_for(
                "chat.postMessage", timeout=30, predicate=lambda c: c.body["channel"] == "C04ALERTS1"
            )
            (opened,) = slack_api.wait_for("apps.connections.open", timeout=30)
            slack_events = SlackDriver(f"http://127.0.0.1:{port}", slack_api).command("/ask", "anything")
        finally:
            process.terminate()
            output = process.communicate(timeout=60)[0]

    assert process.returncode == 0 and "Traceback" not in output, output[-3000:]  # SIGTERM: an orderly stop
    assert "stop begins signal=SIGTERM" in output and "abandoned=0" in output

    assert [r.status for r in refused] == [401, 401]
    assert refused[0].json()["error"].startswith("bad signature") and "unsigned" in refused[1].json()["error"]
    assert accepted.status == 200, accepted.body
    answer = accepted.json()
    assert answer["ok"] is True and answer["duplicate"] is False and answer["action"] == "recorded"
    reader = Store(tmp_path / "served.db")
    try:
        rows = [r for r in reader.all_deploys() if r["source"] == "ci"]
    finally:
        reader.close()
    assert [(r["id"], r["status"], r["requester"]) for r in rows] == [(answer["id"], "succeeded", "ci:octocat")]
    assert summary.body["channel"] == "C04DEPLOYS1" and summary.used_token(BOT_TOKEN)
    assert opened.used_token(APP_TOKEN)  # Slack itself goes over Socket Mode, not this port
    assert slack_events.status == 404
    assert (alert.status, refused_alert.status) == (200, 401) and alert.json()["change"] == "opened"
    assert alert_message.body["text"].startswith("[FIRING:2] PgBouncerPoolExhausted")
    assert f"hooks listening host=127.0.0.1 port={port} paths=/hooks/deploy,/hooks/alertmanager" in output
    assert ALERTMANAGER_TOKEN not in output
    assert "starting in Socket Mode" in output
    assert HOOK_SECRET not in output and BOT_TOKEN not in output and APP_TOKEN not in output


def test_serve_in_socket_mode_without_a_signing_secret_serves_the_hooks_port(
    tmp_path: Path, slack_api: FakeSlackAPI, sample_index: Store
) -> None:
    copy_database(sample_index, tmp_path / "served.db").close()
    port = free_port()
    env = served_environment(tmp_path, slack_api, SLACK_APP_TOKEN=APP_TOKEN, OPSBOT_HOOK_SECRET=HOOK_SECRET)
    process = start_serve(tmp_path, env, "--hooks-port", str(port))
    try:
        assert wait_healthy(port, process)["ok"] is True
    finally:
        process.terminate()
        process.communicate(timeout=10)
