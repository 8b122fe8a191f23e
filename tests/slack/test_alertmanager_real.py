"""A real Alertmanager (Debian's prometheus-alertmanager 0.25) sends to opsbot's /hooks/alertmanager.

Alerts are fired through Alertmanager's own API; what reaches the fake Slack Web API is asserted: one briefing per
group, an edit and a thread note when a group changes, nothing new on a plain repeat, the resolution once an alert
ends, and a silence created from the Silence 1h button that Alertmanager itself then lists; an alert that resolves
while silenced (Alertmanager sends no resolve for it) is found resolved at the silence's end.
Skipped, with the reason printed by `make test` (pytest -ra), when no Alertmanager binary is on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import Secret
from bot.ops.alertmanager import count_firing
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.alerts import AlertDesk
from bot.slack.local.fake_api import FakeSlackAPI
from tests.slack.conftest import SlackDriver, shown, start_bot
from tests.slack.test_alert_flow import ALERTS, SAM, buttons, thread_notes

BINARY = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
pytestmark = pytest.mark.skipif(
    BINARY is None,
    reason="no Alertmanager on PATH: the end-to-end test with a real Alertmanager did not run "
    "(apt-get install prometheus-alertmanager, as .ci/run does)",
)
TOKEN = "am-real-token-0123456789abcdef"
WAIT_S = 60.0  # Alertmanager flushes every group_interval (1 s here); a loaded machine gets plenty more
CONFIG = """\
route:
  receiver: opsbot
  group_by: [alertname, service]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 3s
receivers:
  - name: opsbot
    webhook_configs:
      - url: {url}/hooks/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials: {token}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if body is None else "POST"
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip().startswith(("{", "[")) else text


def until(what: str, check: Callable[[], object], timeout: float = WAIT_S) -> object:
    """Poll ``check`` until it returns something true; fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Alertmanager:
    url: str
    process: subprocess.Popen
    command: list[str]
    log: Path

    def restart(self) -> None:
        """Stop it and start it again on the same port and storage: it keeps silences, not alerts."""
        stop(self.process)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        until("Alertmanager to answer again", lambda: _ready(self.url), timeout=30)

    def fire(self, alertname: str, service: str, ends_at: datetime | None = None, **labels: str) -> None:
        alert: dict = {
            "labels": {"alertname": alertname, "service": service, "severity": "critical", **labels},
            "annotations": {"summary": f"{alertname} on {service}"},
            "generatorURL": "http://prometheus.larder.internal:9090/graph?g0.expr=up",
        }
        if alertname == "PgBouncerPoolExhausted":
            alert["annotations"]["runbook_url"] = "https://wiki.larder.io/runbooks/postgres/connection-pool-exhausted"
        if ends_at is not None:
            alert["endsAt"] = ends_at.isoformat().replace("+00:00", "Z")
        call(f"{self.url}/api/v2/alerts", [alert])

    def webhook_sends(self) -> int:
        metrics = str(call(f"{self.url}/metrics"))
        found = re.search(r'^alertmanager_notifications_total\{integration="webhook"\} (\d+)', metrics, re.M)
        return int(found.group(1)) if found else 0


@pytest.fixture
def bot(runtime: Runtime, slack_api: FakeSlackAPI) -> Iterator[SlackDriver]:
    runtime.settings = replace(runtime.settings, alertmanager_token=Secret(TOKEN))
    runtime.index()
    server, driver = start_bot(runtime, slack_api)
    yield driver
    server.stop()
    if driver.web is not None:
        driver.web.stop()


@pytest.fixture
def alertmanager(bot: SlackDriver, runtime: Runtime, tmp_path: Path) -> Iterator[Alertmanager]:
    """Alertmanager on a loopback port, its receiver opsbot's endpoint; listed in settings.alertmanager_urls."""
    assert BINARY is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG.format(url=bot.base_url, token=TOKEN), encoding="utf-8")
    settings = json.loads(runtime.store.get_meta("deploy_settings"))
    runtime.store.set_meta("deploy_settings", json.dumps(settings | {"alertmanager_urls": [url]}))
    command = [
        BINARY,
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",  # one instance: no gossip port
    ]
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as out:
        running = Alertmanager(url, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), command, log)
    try:
        until("Alertmanager to answer", lambda: _ready(url), timeout=30)
        yield running
    finally:
        stop(running.process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _ready(url: str) -> bool:
    try:
        return call(f"{url}/-/ready") is not None
    except OSError:
        return False


def test_a_real_alertmanager_gets_one_briefing_per_group_updates_resolution_and_a_silence(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI, alertmanager: Alertmanager
) -> None:
    def posts() -> list[dict]:
        return [c.body for c in slack_api.calls("chat.postMessage") if c.ok and not c.body.get("thread_ts")]

    def briefed() -> list[dict]:
        return [g for g in runtime.store.alert_groups() if g["briefing"] and g["message_ts"]]

    alertmanager.fire("PgBouncerPoolExhausted", "checkout-api", instance="pgbouncer-0")
    alertmanager.fire("PgBouncerPoolExhausted", "checkout-api", instance="pgbouncer-1")
    alertmanager.fire("KubePodCrashLooping", "order-pipeline", pod="order-pipeline-7d9f8c6b5-x2kqp")
    until("two alert groups briefed", lambda: len(briefed()) == 2)
    first = {p["text"].split(" (")[0] for p in posts()}
    assert len(posts()) == 2 and {t.split("] ")[1] for t in first} == {"PgBouncerPoolExhausted", "KubePodCrashLooping"}
    pgbouncer = next(p for p in posts() if "PgBouncer" in p["text"])
    assert pgbouncer["channel"] == ALERTS and pgbouncer["text"].startswith("[FIRING:")
    edit = slack_api.wait_for(
        "chat.update",
        timeout=WAIT_S,
        predicate=lambda c: "Related runbook" in shown(c.body) and "PgBouncer" in c.body["text"],
    )[-1]
    assert "runbooks/postgres/connection-pool-exhausted.md" in shown(edit.body)
    assert f"{alertmanager.url}/#/alerts?filter=" in shown(edit.body)  # the payload's externalURL, linked

    # A change to the group (a third instance): the same message edited, the change noted in its thread.
    alertmanager.fire("PgBouncerPoolExhausted", "checkout-api", instance="pgbouncer-2")
    until(
        "the edit showing 3 firing",
        lambda: [c for c in slack_api.calls("chat.update") if "[FIRING:3]" in c.body["text"]],
    )
    until("the thread note", lambda: any("started firing: instance=pgbouncer-2" in t for t in thread_notes(slack_api)))

    # Plain repeats (repeat_interval 3 s) change nothing: no new message, no edit, no note.
    calls = len(slack_api.calls())
    sent = alertmanager.webhook_sends()
    until("two more deliveries from Alertmanager", lambda: alertmanager.webhook_sends() >= sent + 2)
    assert bot.web is not None and bot.web.wait_idle(20)
    assert len(slack_api.calls()) == calls and len(posts()) == 2

    # Silence 1h as an SRE: the silence is Alertmanager's, in the clicker's name.
    group = next(g for g in runtime.store.alert_groups() if g["service"] == "checkout-api")
    bot.click(ids.ALERT_SILENCE, buttons(edit.body)[ids.ALERT_SILENCE]["value"], user=SAM, channel=ALERTS)
    silences = until("the silence in Alertmanager", lambda: call(f"{alertmanager.url}/api/v2/silences"))
    [silence] = silences  # type: ignore[misc]
    assert silence["status"]["state"] == "active" and silence["createdBy"].endswith(f"({SAM})")
    assert {(m["name"], m["value"]) for m in silence["matchers"]} == {
        ("alertname", "PgBouncerPoolExhausted"),
        ("service", "checkout-api"),
    }
    until("the silence recorded", lambda: _silence_id(runtime, group["id"]))
    assert _silence_id(runtime, group["id"]) == silence["id"]

    # The crash loop ends: Alertmanager sends it resolved, and the message says so with the duration.
    alertmanager.fire(
        "KubePodCrashLooping",
        "order-pipeline",
        ends_at=datetime.now(UTC) - timedelta(seconds=1),
        pod="order-pipeline-7d9f8c6b5-x2kqp",
    )
    resolved = until(
        "the resolved edit",
        lambda: [
            c for c in slack_api.calls("chat.update") if c.body["text"].startswith("[RESOLVED] KubePodCrashLooping")
        ],
    )
    assert "Resolved at" in shown(resolved[-1].body)  # type: ignore[index]
    until(
        "the resolution note",
        lambda: any(t.startswith(":white_check_mark: Resolved after") for t in thread_notes(slack_api)),
    )
    assert len(posts()) == 2  # one message per group, whatever Alertmanager sent


def _silence_id(runtime: Runtime, group_id: str) -> str:
    row = next((g for g in runtime.store.alert_groups() if g["id"] == group_id), None)
    return row["silence_id"] if row else ""


def test_an_alert_that_resolves_while_silenced_is_shown_resolved_once_the_silence_ends(
    runtime: Runtime,
    bot: SlackDriver,
    slack_api: FakeSlackAPI,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Alertmanager mutes the resolve of a silenced alert and then drops it: opsbot asks it at the silence's end."""
    alertmanager.fire("PgBouncerPoolExhausted", "checkout-api", instance="pgbouncer-0")
    edit = slack_api.wait_for("chat.update", timeout=WAIT_S, predicate=lambda c: "Related runbook" in shown(c.body))[-1]
    bot.click(ids.ALERT_SILENCE, buttons(edit.body)[ids.ALERT_SILENCE]["value"], user=SAM, channel=ALERTS)
    [silence] = until("the silence in Alertmanager", lambda: call(f"{alertmanager.url}/api/v2/silences"))  # type: ignore[misc]
    [group] = runtime.store.alert_groups()
    until("the silence recorded", lambda: _silence_id(runtime, group["id"]))
    matchers = (("alertname", "PgBouncerPoolExhausted"), ("service", "checkout-api"))
    until("the alert silenced", lambda: count_firing(alertmanager.url, matchers) == 1)  # silenced alerts count

    alertmanager.fire(
        "PgBouncerPoolExhausted",
        "checkout-api",
        ends_at=datetime.now(UTC) - timedelta(seconds=1),
        instance="pgbouncer-0",
    )
    until("the alert resolved in Alertmanager", lambda: count_firing(alertmanager.url, matchers) == 0)
    time.sleep(6)  # a few group_intervals: Alertmanager mutes the resolve, then drops the alert from the group
    expire = urllib.request.Request(f"{alertmanager.url}/api/v2/silence/{silence['id']}", method="DELETE")
    urllib.request.urlopen(expire, timeout=10).read()  # the silence ends (early here; after its hour in life)
    time.sleep(3)  # and sends nothing for it once the silence is gone
    assert bot.web is not None and bot.web.wait_idle(20)
    assert runtime.store.alert_groups()[0]["status"] == "firing"

    desk = AlertDesk(runtime, bot.web)
    assert desk.check_silences() == {}  # its hour has not passed
    later = datetime.now(UTC) + timedelta(hours=1, minutes=1)
    monkeypatch.setattr(runtime.alerts(), "clock", lambda: later)
    assert desk.check_silences() == {group["id"]: "resolved"}
    assert bot.web.wait_idle(20)
    [resolved] = runtime.store.alert_groups()
    assert (resolved["status"], resolved["silence_id"]) == ("resolved", "")
    assert slack_api.calls("chat.update")[-1].body["text"].startswith("[RESOLVED] PgBouncerPoolExhausted")
    assert any("resolved during the silence" in t for t in thread_notes(slack_api))
    assert desk.check_silences() == {}  # once


def test_a_resolve_lost_to_an_alertmanager_restart_is_found_once_the_group_has_been_quiet_for_half_an_hour(
    runtime: Runtime,
    bot: SlackDriver,
    slack_api: FakeSlackAPI,
    alertmanager: Alertmanager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Alertmanager keeps no alerts across a restart: one that resolved meanwhile is never sent resolved. opsbot asks
    about a firing group it has heard nothing of for half an hour, and again five minutes after finding none of its
    alerts; one still firing (Prometheus sends it again to the new Alertmanager) stays as it is."""
    alertmanager.fire("PgBouncerPoolExhausted", "checkout-api", instance="pgbouncer-0")
    alertmanager.fire("KubePodCrashLooping", "order-pipeline", pod="order-pipeline-7d9f8c6b5-x2kqp")
    until("two alert groups shown", lambda: len([g for g in runtime.store.alert_groups() if g["message_ts"]]) == 2)
    groups = {g["alertname"]: g["id"] for g in runtime.store.alert_groups()}
    alertmanager.restart()  # the crash loop ended while it was down: the new one never hears of it
    alertmanager.fire("PgBouncerPoolExhausted", "checkout-api", instance="pgbouncer-0")
    matchers = (("alertname", "PgBouncerPoolExhausted"), ("service", "checkout-api"))
    until("the pool alert listed again", lambda: count_firing(alertmanager.url, matchers) == 1)
    assert bot.web is not None and bot.web.wait_idle(20)

    desk = AlertDesk(runtime, bot.web)
    assert desk.check_quiet() == {}  # heard of within the half hour
    later = datetime.now(UTC) + timedelta(minutes=31)
    monkeypatch.setattr(runtime.alerts(), "clock", lambda: later)
    assert desk.check_quiet() == {groups["KubePodCrashLooping"]: "missing", groups["PgBouncerPoolExhausted"]: "firing"}
    assert bot.web.wait_idle(20) and runtime.store.alert_groups()[0]["status"] == "firing"  # one look is not enough
    later += timedelta(minutes=5)
    assert desk.check_quiet() == {groups["KubePodCrashLooping"]: "resolved"}
    assert bot.web.wait_idle(20)
    status = {g["alertname"]: g["status"] for g in runtime.store.alert_groups()}
    assert status == {"KubePodCrashLooping": "resolved", "PgBouncerPoolExhausted": "firing"}
    assert slack_api.calls("chat.update")[-1].body["text"].startswith("[RESOLVED] KubePodCrashLooping")
    assert any("the resolve never reached opsbot" in t for t in thread_notes(slack_api))
    assert desk.check_quiet() == {}  # once
