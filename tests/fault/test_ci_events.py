"""i. Deploy events from CI against a real `opsbot serve`: locks, freezes, time zones and the audit's actor.

"Flagged" is read from what opsbot records or answers: the hook's JSON answer carries a truthy ``flagged``,
``flags``, ``conflict``, ``warning`` or ``warnings``, or an audit row of the event names the conflict
(``flag``, ``conflict``, ``lock``, ``frozen`` or ``freeze`` in its action or details).
"""

from __future__ import annotations

import json
import uuid

import pytest

from bot.ops.ci_events import build_event
from tests.fault.harness import ALICE, BOB, Cluster
from tests.fault.report import COLLECTOR, Scenario
from tests.slack.conftest import Response

pytestmark = pytest.mark.fault
FLAG_KEYS = ("flagged", "flags", "conflict", "warning", "warnings")
FLAG_WORDS = ("flag", "conflict", "lock", "frozen", "freeze")


def flagged(cluster: Cluster, response: Response) -> bool:
    try:
        answer = response.json()
    except ValueError:
        return False
    if any(answer.get(key) for key in FLAG_KEYS):
        return True
    request_id = answer.get("id")
    rows = [a for a in cluster.audit() if request_id and a["request_id"] == request_id]
    return any(word in (a["action"] + (a["details"] or "")).lower() for a in rows for word in FLAG_WORDS)


def send(s: Scenario, cluster: Cluster, hooks: object, event: dict) -> Response:
    response = hooks.post(event)  # type: ignore[attr-defined]
    s.tried += 1
    s.check(
        "every event is answered below 500",
        0 < response.status < 500,
        f"{event['event_id']}: {response.status} {response.body[:200]}",
    )
    return response


def test_ci_events_respect_locks_freezes_time_zones_and_name_their_actor(cluster: Cluster) -> None:
    serve = cluster.start()
    slack, hooks = serve.slack(cluster.proxy), serve.hooks()
    with COLLECTOR.scenario("i. CI deploy events") as s:
        s.note("flagged: a key " + "/".join(FLAG_KEYS) + " in the hook's answer, or an audit row naming it")
        # A /deploy holds the quick/staging lock and runs for 5 s; CI says it started deploying the same.
        known = {r["id"] for r in cluster.requests("quick")}
        slack.command_named("/deploy", "quick 5.0.0-ms5000 staging", user=ALICE)
        row = cluster.wait_for_request("quick", known)
        assert row is not None, serve.log()[-2000:]
        slack.approve(row["id"], BOB, message_ts=cluster.wait_for_posted(row["id"]).get("message_ts", ""))
        assert cluster.wait_for_run(row["id"], timeout=30), serve.log()[-2000:]
        started = build_event(
            "quick", "staging", "6.0.0", "started", event_id=f"ci-{uuid.uuid4().hex}", actor="octocat"
        )
        response = send(s, cluster, hooks, started)
        s.check("a CI start while /deploy holds the lock is recorded", response.status == 200, response.body[:300])
        s.check("a CI start while the lock is held is flagged", flagged(cluster, response), response.body[:300])
        running = [r["id"] for r in cluster.requests("quick") if r["status"] == "running"]
        s.check("never a second running deploy", len(running) <= 1, f"running quick/staging: {running}")
        cluster.wait_for_status(row["id"], ("succeeded", "failed", "interrupted", "timed_out"), timeout=60)
        finished = build_event(
            "quick", "staging", "6.0.0", "succeeded", event_id=f"ci-{uuid.uuid4().hex}", actor="octocat"
        )
        send(s, cluster, hooks, finished)

        # A frozen environment: CI deploys anyway (it does not ask opsbot), and opsbot must say so.
        for status in ("started", "succeeded"):
            event = build_event(
                "holiday", "staging", "7.0.0", status, event_id=f"ci-{uuid.uuid4().hex}", actor="octocat"
            )
            response = send(s, cluster, hooks, event)
            s.check("an event into a frozen environment is recorded", response.status == 200, response.body[:300])
            s.check("an event into a frozen environment is flagged", flagged(cluster, response), response.body[:300])

        # Times without a UTC offset are ambiguous: refused, naming the field.
        naive = build_event(
            "quick",
            "staging",
            "6.0.1",
            "succeeded",
            event_id=f"ci-{uuid.uuid4().hex}",
            actor="octocat",
            started_at="2026-12-05T10:00:00Z",
            finished_at="2026-12-05T10:05:00",
        )
        response = send(s, cluster, hooks, naive)
        s.check("finished_at without a UTC offset is refused with 400", response.status == 400, response.body[:300])
        s.check("the refusal names finished_at", "finished_at" in response.body, response.body[:300])
        ids = [r["id"] for r in cluster.requests("quick") if r["version"] == "6.0.1"]
        s.check("the refused event is not recorded", not ids, f"recorded as {ids}")

        # Whoever the pipeline names, the audit says it came from CI.
        ci_rows = [a for a in cluster.audit() if '"source": "ci"' in (a["details"] or "")]
        actors = sorted({a["actor"] for a in ci_rows})
        s.check(
            "the audit actor of a CI event is ci:<actor>",
            bool(ci_rows) and actors == ["ci:octocat"],
            f"actors {actors}",
        )
        s.check("no traceback in the process log", not cluster.tracebacks(), "\n".join(cluster.tracebacks())[:1500])
        s.note("audit of the CI events: " + json.dumps([(a["actor"], a["action"]) for a in ci_rows])[:300])
    assert s.ok, s.failure()
