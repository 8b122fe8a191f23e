"""Benchmark of alert intake: a storm from Alertmanager through /hooks/alertmanager to the (fake) Slack Web API.

The knowledge directory is indexed into a temporary database (your index is untouched) and the real Slack app
serves on a loopback port. Groups are delivered in parallel, as Alertmanager flushes them; for each group the
time from sending its first delivery to its message, and to the edit that adds its briefing, reaching Slack is
measured. Then every group is delivered again (redeliveries must post nothing), changed (edits and thread notes,
never new messages), and a second storm meets Slack's rate limit (429 with Retry-After) to show nothing is lost.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.answers.encoder import Encoder
from bot.answers.indexer import index_knowledge
from bot.config import Secret, Settings
from bot.runtime import Runtime
from bot.slack.app import create_app, create_client
from bot.slack.blocks.alerts import PREPARING
from bot.slack.local.fake_api import Call, FakeSlackAPI
from bot.slack.serve import HttpServer
from bot.store import Store
from bot.tools.bench import Timing

CHANNEL = "C0BENCHALRT"  # where alerts go when the knowledge's services.yaml names no alerts channel
ALERTS = (  # realistic alert names and summaries: what the briefing searches for
    ("PgBouncerPoolExhausted", "clients are queueing for server connections on pg-main"),
    ("KubePodCrashLooping", "pod is restarting repeatedly after an OOM kill"),
    ("HighErrorRate", "5xx responses above 5% for 10 minutes"),
    ("KafkaConsumerLagHigh", "consumer group lag is growing on the orders topic"),
    ("RedisMemoryHigh", "redis used memory above 90% of maxmemory, evictions started"),
    ("CertificateExpiringSoon", "TLS certificate expires in less than 7 days"),
    ("DiskWillFillIn4Hours", "filesystem on the node is predicted to fill within 4 hours"),
    ("LatencyP99High", "p99 latency above 2 s on the API"),
    ("CDNOriginErrors", "the CDN sees errors from the origin"),
    ("ReplicationLagHigh", "postgres replica is more than 60 s behind the primary"),
)


def bench_alerts(encoder: Encoder, knowledge: Path, groups: int = 20, per_group: int = 10, parallel: int = 8) -> dict:
    """Firing to message and to briefing posted (p50/p95 ms), duplicates and lost groups over a storm of
    ``groups`` x ``per_group`` alerts, redeliveries and changes; then a storm through Slack's 429s."""
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-alerts-") as tmp, FakeSlackAPI() as api:
        db = Path(tmp) / "bench.db"
        store = Store(db)
        index_knowledge(store, encoder, knowledge)
        raw = json.loads(store.get_meta("deploy_settings") or "null") or {}
        if not raw.get("alerts_channel"):
            store.set_meta("deploy_settings", json.dumps(raw | {"alerts_channel": CHANNEL}))
        services = sorted(store.service_configs()) or ["bench-service"]
        settings = Settings(
            knowledge_dir=knowledge,
            db_path=db,
            model=getattr(encoder, "model", encoder.model_id),
            slack_bot_token=Secret("xoxb-bench"),
            slack_signing_secret=Secret(secrets.token_hex(16)),
            slack_api_url=api.url,
            alertmanager_token=Secret(token),
        )
        runtime = Runtime(settings, encoder=encoder, store=store)
        runtime.start_loading()
        runtime.index()  # loaded before the storm: the bench measures alerts, not the model's start
        app = create_app(runtime, client=create_client(runtime))
        server = HttpServer(app, runtime, host="127.0.0.1", port=0).start()
        url = f"http://127.0.0.1:{server.port}/hooks/alertmanager"
        try:
            storm = [_payload(g, per_group, services) for g in range(groups)]
            sent: dict[str, float] = {}
            with ThreadPoolExecutor(parallel) as pool:
                statuses = list(pool.map(lambda body: _deliver(url, token, body, sent), storm))
            deadline = time.monotonic() + 300
            posted, briefed = _latencies(api, sent)
            while len(briefed) < groups and time.monotonic() < deadline:
                time.sleep(0.05)
                posted, briefed = _latencies(api, sent)
            # Redeliveries, then a change to every group: edits and notes only.
            with ThreadPoolExecutor(parallel) as pool:
                statuses += list(pool.map(lambda body: _deliver(url, token, body), storm))
                statuses += list(pool.map(lambda body: _deliver(url, token, _one_resolved(body)), storm))
            api.wait_for("chat.postMessage", groups, timeout=120, predicate=lambda c: bool(c.body.get("thread_ts")))
            app.web.wait_idle(120)
            first_posts = len(_top_level(api))
            # A second storm meets Slack's rate limit: the outbox backs off as told and loses nothing.
            api.fail_next("chat.postMessage", status=429, times=3, retry_after=1)
            limited = [_payload(g, per_group, services, prefix="Limited") for g in range(groups)]
            started = time.perf_counter()
            with ThreadPoolExecutor(parallel) as pool:
                statuses += list(pool.map(lambda body: _deliver(url, token, body), limited))
            api.wait_for("chat.postMessage", 2 * groups, timeout=300, predicate=lambda c: _top(c) and c.ok)
            limited_s = time.perf_counter() - started
            app.web.wait_idle(120)
            runtime.briefings.wait_idle(120)
            tops = _top_level(api)
            recorded = len(runtime.alerts().recent(limit=10 * groups))
        finally:
            server.stop()
            app.web.stop()
            runtime.close()
    names = [c.body["text"].split(" (")[0].split("] ", 1)[-1] for c in tops]
    return {
        "groups": groups,
        "alerts": groups * per_group,
        "parallel": parallel,
        "firing_to_message_ms": Timing.of(posted).__dict__,
        "firing_to_briefing_ms": Timing.of(briefed).__dict__,
        "briefed_groups": len(briefed),
        "duplicate_posts": len(names) - len(set(names)) + max(0, first_posts - groups),
        "lost_groups": 2 * groups - len(set(names)),
        "recorded_groups": recorded,
        "http_statuses": sorted(set(statuses)),
        "rate_limited_storm_s": round(limited_s, 2),
        "slack_429s": sum(1 for c in api.calls("chat.postMessage") if c.status == 429),
    }


def _payload(g: int, per_group: int, services: list[str], prefix: str = "") -> dict:
    """One group of Alertmanager's webhook payload (version 4), ``per_group`` alerts firing."""
    name, summary = ALERTS[g % len(ALERTS)]
    alertname = f"{prefix}{name}{g}"
    service = services[g % len(services)]
    started = (datetime.now(UTC) - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
    labels = {"alertname": alertname, "service": service, "severity": "critical"}
    alerts = [
        {
            "status": "firing",
            "labels": labels | {"instance": f"{service}-{n}"},
            "annotations": {"summary": summary, "description": f"{summary} ({service})"},
            "startsAt": started,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.bench.internal:9090/graph?g0.expr=up",
            "fingerprint": f"{g:04x}{n:04x}{len(prefix):08x}",
        }
        for n in range(per_group)
    ]
    return {
        "version": "4",
        "receiver": "opsbot",
        "status": "firing",
        "groupKey": f'{{}}:{{alertname="{alertname}", service="{service}"}}',
        "groupLabels": {"alertname": alertname, "service": service},
        "commonLabels": labels,
        "commonAnnotations": {"summary": summary},
        "externalURL": "http://alertmanager.bench.internal:9093",
        "alerts": alerts,
        "truncatedAlerts": 0,
    }


def _one_resolved(body: dict) -> dict:
    alerts = [dict(a) for a in body["alerts"]]
    alerts[0] |= {"status": "resolved", "endsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    return body | {"alerts": alerts}


def _deliver(url: str, token: str, body: dict, sent: dict[str, float] | None = None) -> int:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    if sent is not None:
        sent[body["groupLabels"]["alertname"]] = time.time()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method="POST"), timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _top(call: Call) -> bool:
    return not call.body.get("thread_ts") and str(call.body.get("text", "")).startswith("[")


def _top_level(api: FakeSlackAPI) -> list[Call]:
    return [c for c in api.calls("chat.postMessage") if c.ok and _top(c)]


def _briefing(call: Call) -> bool:
    """An edit that shows a briefing (not the placeholder saying it is being prepared)."""
    blocks = json.dumps(call.body.get("blocks") or [])
    return '"divider"' in blocks and PREPARING not in blocks


def _latencies(api: FakeSlackAPI, sent: dict[str, float]) -> tuple[list[float], list[float]]:
    """Per group: ms from sending its first delivery to its message, and to its briefing, reaching Slack."""
    by_ts = {c.answer.get("ts"): c for c in _top_level(api)}
    updates = api.calls("chat.update")
    posted, briefed = [], []
    for call in by_ts.values():
        name = call.body["text"].split(" (")[0].split("] ", 1)[-1]
        if name in sent:
            posted.append((call.at - sent[name]) * 1000)
    for ts, call in by_ts.items():
        name = call.body["text"].split(" (")[0].split("] ", 1)[-1]
        # The briefing is in the message itself when it was ready before the message left the outbox.
        shown = [call] if _briefing(call) else []
        shown += [u for u in updates if u.body.get("ts") == ts and _briefing(u)]
        if name in sent and shown:
            briefed.append((shown[0].at - sent[name]) * 1000)
    return posted, briefed
