"""Deploy events from CI/CD: signed POSTs to /hooks/deploy on the real HTTP server, the fake Slack Web API."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.config import Secret
from bot.ops.deploys import DeployService
from bot.ops.metrics import dora
from bot.ops.requests import new_row, recent_requests
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.app import create_app, create_client
from bot.slack.jobs import sweep_expired
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.serve import HttpServer
from bot.store import Store
from tests.fakes import eventually
from tests.slack.conftest import HOOK_SECRET, HookDriver, SlackDriver
from tests.slack.test_deploy_flow import MARCUS, OPS, PRIYA, Posted, click, request, shown, summary_in, update_showing

DEPLOYS = "C04DEPLOYS1"
PIPELINE = "https://ci.example.com/larder/checkout-api/-/pipelines/4711"
_counter = iter(range(1, 10_000))


def at(**ago: float) -> str:
    return (datetime.now(UTC) - timedelta(**ago)).isoformat(timespec="seconds")


def event(status: str = "succeeded", version: str = "1.4.2", env: str = "prod", **fields: object) -> dict:
    base = {
        "event_id": f"gh-run-{next(_counter)}",
        "service": "checkout-api",
        "env": env,
        "version": version,
        "status": status,
        "actor": "octocat",
        "pipeline_url": PIPELINE,
    }
    return base | fields


def ci_rows(runtime: Runtime) -> list[dict]:
    return [r for r in runtime.store.all_deploys() if r["source"] == "ci"]


def test_signed_event_is_recorded_audited_and_summarised(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    sent = event(started_at=at(minutes=9), finished_at=at(minutes=5), commit_sha="3f9c2e1a", changes=["Retry auth"])
    response = hooks.post(sent)
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["ok"] is True and answer["duplicate"] is False and answer["action"] == "recorded"
    [row] = ci_rows(runtime)
    expected = (answer["id"], "deploy", "succeeded", "ci:octocat")
    assert (row["id"], row["kind"], row["status"], row["requester"]) == expected
    assert row["commit_sha"] == "3f9c2e1a" and json.loads(row["changes"]) == ["Retry auth"]
    audit = [r for r in runtime.store.audit_rows() if r["request_id"] == row["id"]]
    assert [(r["actor"], r["action"]) for r in audit] == [("ci:octocat", "deploy.finished")]
    [summary] = slack_api.calls("chat.postMessage")
    assert summary.body["channel"] == DEPLOYS
    assert "Deploy checkout-api 1.4.2 to prod" in shown(summary.body)


def test_a_run_reported_only_at_its_finish_shows_no_invented_start_or_duration(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    # Before, the row's start (the finish, kept for ordering) was shown as when it started, and it "succeeded in
    # under 1 s".
    response = hooks.post(event(finished_at=at(minutes=2)))
    assert response.status == 200, response.body
    [summary] = slack_api.calls("chat.postMessage")
    text = shown(summary.body)
    assert "*Started*\nnot reported by CI" in text and "*Duration*\nunknown" in text and "under 1 s" not in text
    [request] = [r for r in recent_requests(runtime.store) if r.source == "ci"]
    assert request.duration_s is None

    slack_api.clear()
    hooks.post(event(version="1.4.3", started_at=at(minutes=1, seconds=30), finished_at=at(minutes=1)))
    [summary] = slack_api.calls("chat.postMessage")
    assert "30 s" in shown(summary.body) and "not reported" not in shown(summary.body)

    slack_api.clear()  # a run within one second, both times reported: its start is known (it was taken for unknown)
    when = at(seconds=10)
    hooks.post(event(version="1.4.4", started_at=when, finished_at=when))
    [summary] = slack_api.calls("chat.postMessage")
    assert "under 1 s" in shown(summary.body) and "not reported" not in shown(summary.body)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ({"signed": False}, "unsigned"),
        ({"secret": "not-the-hook-secret-at-all"}, "bad signature"),
        ({"signature": "v1=" + "0" * 64}, "bad signature"),
        ({"timestamp": int(time.time()) - 301}, "stale"),
        ({"timestamp": 10**400}, "Unix seconds"),  # int() reads it; the skew check overflowed into a 500
        ({"timestamp": f"+{int(time.time())}"}, "Unix seconds"),
    ],
)
def test_unsigned_bad_or_stale_events_are_refused(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, how: dict, expected: str
) -> None:
    response = hooks.post(event(), **how)
    assert response.status == 401
    assert expected in response.json()["error"]
    assert ci_rows(runtime) == [] and runtime.store.audit_rows() == [] and slack_api.calls() == []


def test_a_replayed_event_is_recorded_once(hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    sent = event()
    assert hooks.post(sent).json()["duplicate"] is False
    replay = hooks.post(sent)
    assert replay.status == 200 and replay.json() == {"ok": True, "duplicate": True}
    assert len(ci_rows(runtime)) == 1
    assert len(runtime.store.audit_rows()) == 1 and len(slack_api.calls("chat.postMessage")) == 1


def test_an_event_id_used_again_for_another_event_is_refused_not_taken_for_a_repeat(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    # Before, the finish sent under the start's id (`gl-$CI_PIPELINE_ID` for both, or a retried job) was answered
    # {"ok": true, "duplicate": true} and dropped: the deploy stayed running, holding the lock, for hours.
    started = hooks.post(event("started", event_id="gl-4711"))
    assert started.status == 200 and started.json()["action"] == "started"

    finished = hooks.post(event("succeeded", event_id="gl-4711"))

    assert finished.status == 400 and finished.json()["field"] == "event_id", finished.body
    assert finished.json()["error"] == (
        "event_id gl-4711 was already used for another event (checkout-api 1.4.2 to prod started), so this one "
        "(checkout-api 1.4.2 to prod succeeded) was not recorded: give each event an id of its own, such as the "
        "run's id and attempt with started or finished (gh-8842113-1-finished), and send it again."
    )
    assert [r["status"] for r in ci_rows(runtime)] == ["running"]
    assert hooks.post(event("started", event_id="gl-4711")).json() == {"ok": True, "duplicate": True}  # a retry
    common = ["--url", hooks.url, "--service", "checkout-api", "--env", "prod", "--version", "1.4.2"]
    said = invoke(*common, "--status", "failed", "--event-id", "gl-4711")
    assert said.exit_code == 1 and "HTTP 400" in said.output and "already used for another event" in said.output
    assert "(--event-id)" in said.output
    local = invoke("--db", str(runtime.settings.db_path), *common[2:], "--status", "failed", "--event-id", "gl-4711")
    assert local.exit_code == 1 and "already used for another event" in local.output and "Traceback" not in local.output

    done = hooks.post(event("succeeded", event_id="gl-4711-finished"))

    assert done.status == 200 and done.json()["action"] == "finished"
    assert [r["status"] for r in ci_rows(runtime)] == ["succeeded"]
    assert runtime.store.lock_holder("checkout-api", "prod") is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": None}, "version"),
        ({"version": "1.2.3;rm"}, "version"),
        ({"status": "done"}, "status"),
        ({"started_at": "yesterday"}, "started_at"),
        ({"commit_time": "2026-13-01T00:00:00Z"}, "commit_time"),
        ({"service": "no-such-service"}, "service"),
        ({"env": "prod env"}, "env"),
        ({"env": "production"}, "env"),  # checkout-api has staging and prod in services.yaml
        ({"event_id": None}, "event_id"),
        ({"changes": "one string"}, "changes"),
        ({"pipeline_url": "javascript:alert(1)"}, "pipeline_url"),
        ({"request_id": "dep-1; drop table"}, "request_id"),
    ],
)
def test_malformed_events_are_refused_naming_the_field(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, change: dict, field: str
) -> None:
    sent = {k: v for k, v in (event() | change).items() if v is not None}
    response = hooks.post(sent)
    assert response.status == 400, response.body
    assert response.json()["field"] == field and response.json()["error"]
    assert ci_rows(runtime) == [] and runtime.store.audit_rows() == [] and slack_api.calls() == []


def test_a_finish_before_the_start_of_the_run_it_closes_is_refused_naming_finished_at(
    hooks: HookDriver, runtime: Runtime
) -> None:
    assert hooks.post(event("started", started_at=at(minutes=10))).status == 200
    response = hooks.post(event("succeeded", finished_at=at(minutes=40)))
    assert response.status == 400 and response.json()["field"] == "finished_at"
    assert "send the time the deploy ended" in response.json()["error"]
    assert [r["status"] for r in ci_rows(runtime)] == ["running"]


def test_not_json_is_refused(hooks: HookDriver, runtime: Runtime) -> None:
    response = hooks.post("{not json")
    assert response.status == 400 and response.json()["field"] == "body"


def test_started_then_succeeded_updates_the_row_and_message_and_posts_the_summary(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    assert hooks.post(event(version="1.4.1", started_at=at(days=2, minutes=5), finished_at=at(days=2))).status == 200
    now = datetime.now(UTC).replace(microsecond=0)
    started = hooks.post(
        event("started", started_at=str(now - timedelta(minutes=6)), commit_time=str(now - timedelta(hours=3)))
    )
    assert started.status == 200 and started.json()["action"] == "started"
    request_id = started.json()["id"]
    running = slack_api.calls("chat.postMessage")[-1]
    assert running.body["channel"] == DEPLOYS
    assert "Running" in shown(running.body) and "1.4.1 → 1.4.2" in shown(running.body)
    assert runtime.store.deploy_row(request_id)["message_ts"] == running.answer["ts"]

    finished = hooks.post(
        event(
            finished_at=str(now - timedelta(minutes=1)),
            changes=["Retry card auth once", "Bump <grpc> to 1.62"],
            commit_sha="3f9c2e1",
        )
    )
    assert finished.status == 200 and finished.json()["action"] == "finished"
    assert finished.json()["id"] == request_id
    [row] = [r for r in ci_rows(runtime) if r["version"] == "1.4.2"]
    assert (row["id"], row["status"], row["from_version"]) == (request_id, "succeeded", "1.4.1")

    [update] = slack_api.calls("chat.update")
    assert (update.body["channel"], update.body["ts"]) == (DEPLOYS, running.answer["ts"])
    assert "Succeeded" in shown(update.body) and "5 min 0 s" in shown(update.body)
    summary = slack_api.calls("chat.postMessage")[-1]
    assert summary.body["thread_ts"] == running.answer["ts"] and summary.body["reply_broadcast"] in (True, "true", "1")
    text = shown(summary.body)
    for expected in (
        "1.4.1 → 1.4.2",
        "octocat (CI)",
        f"<{PIPELINE}|pipeline>",
        "Retry card auth once",
        "Bump &lt;grpc&gt; to 1.62",
        "5 min 0 s",
        "3f9c2e1",
        "*DORA* checkout-api in prod",
        "Deploys: 2 in 7 days",
        "lead time 3.0 h",  # commit 3 h ago, finished 1 min ago
    ):
        assert expected in text, (expected, text)
    actions = [(r["actor"], r["action"]) for r in runtime.store.audit_rows() if r["request_id"] == request_id]
    assert actions == [("ci:octocat", "deploy.started"), ("ci:octocat", "deploy.finished")]


def test_a_token_in_an_event_reaches_neither_the_database_nor_slack_nor_the_log(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    leaky = f"{PIPELINE}?access_token={token}"
    caplog.set_level(logging.DEBUG)
    started = hooks.post(event("started", pipeline_url=leaky, actor=f"octocat token={token}"))
    assert started.status == 200, started.body
    finished = hooks.post(
        event(pipeline_url=leaky, actor="octocat", changes=["Bump grpc", f"Revert: accidentally committed {token}"])
    )
    refused = hooks.post(event(service=token))

    assert finished.json()["action"] == "finished"  # the scrubbed URL still matches the run it started
    assert finished.json()["id"] == started.json()["id"]
    [row] = ci_rows(runtime)
    assert row["pipeline_url"] == f"{PIPELINE}?access_token=***"
    assert json.loads(row["changes"]) == ["Bump grpc", "Revert: accidentally committed ***"]
    assert refused.status == 400 and token not in refused.body
    with sqlite3.connect(runtime.settings.db_path) as db:  # every table: rows, audit, outbox, claims
        assert token not in "\n".join(db.iterdump())
    posted = slack_api.calls("chat.postMessage") + slack_api.calls("chat.update")
    assert len(posted) >= 3 and all(token not in json.dumps(call.body) for call in posted)
    assert "accidentally committed ***" in shown(posted[1].body)
    assert caplog.records and token not in caplog.text


def test_a_failed_then_rolled_back_pipeline(hooks: HookDriver, runtime: Runtime) -> None:
    hooks.post(event(version="1.4.1", finished_at=at(hours=2)))
    hooks.post(event("failed", finished_at=at(hours=1)))
    response = hooks.post(event("rolled_back", version="1.4.1", finished_at=at(minutes=30)))
    assert response.json()["kind"] == "rollback" and response.json()["status"] == "succeeded"
    assert response.json()["from_version"] == "1.4.2"  # what was rolled back is the failed version
    assert DeployService.from_store(runtime.store).current_version("checkout-api", "prod") == "1.4.1"


def test_a_rollback_that_failed_in_the_pipeline_is_shown_as_one(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    hooks.post(event(version="1.4.1", finished_at=at(hours=2)))
    hooks.post(event(finished_at=at(hours=1)))  # 1.4.2
    response = hooks.post(event("rollback_failed", version="1.4.1", finished_at=at(minutes=30)))
    assert response.status == 200, response.body
    assert (response.json()["kind"], response.json()["status"]) == ("rollback", "failed")
    assert DeployService.from_store(runtime.store).current_version("checkout-api", "prod") == "1.4.2"
    assert dora(runtime.store, "checkout-api", "prod").failed_changes == 0  # no deploy of 1.4.1 failed
    summary = slack_api.wait_for("chat.postMessage", count=3)[-1].body
    assert "Rollback" in shown(summary) and "failed" in shown(summary).lower(), shown(summary)


def test_dora_counts_slack_and_ci_deploys_with_lead_time_from_the_commit(hooks: HookDriver, runtime: Runtime) -> None:
    finished = datetime.now(UTC) - timedelta(days=3)
    with runtime.store.transaction():  # a deploy that went through /deploy three days ago
        runtime.store.insert_deploy(
            {
                **{k: "" for k in runtime.store.DEPLOY_COLUMNS.split(", ")},
                "id": "dep-slack-1",
                "kind": "deploy",
                "service": "checkout-api",
                "env": "prod",
                "version": "1.4.0",
                "requester": "U03F8K2LQ1",
                "status": "succeeded",
                "approvals_needed": 2,
                "created_at": (finished - timedelta(minutes=5)).isoformat(timespec="seconds"),
                "started_at": (finished - timedelta(minutes=5)).isoformat(timespec="seconds"),
                "finished_at": finished.isoformat(timespec="seconds"),
                "exit_code": 0,
                "source": "slack",
                "changes": "[]",
            }
        )
    hooks.post(event(version="1.4.1", commit_time=at(hours=26), finished_at=at(hours=24)))
    hooks.post(event(version="1.4.2", commit_time=at(hours=5), finished_at=at(hours=1)))
    figures = dora(runtime.store, "checkout-api", "prod")
    assert figures.deploys_7d == 3 and figures.changes == 3
    assert figures.lead_time_h == pytest.approx(3.0, abs=0.01)  # median of 2 h and 4 h; the Slack one has no commit
    listed = recent_requests(runtime.store, "checkout-api", "prod")
    assert [(r.version, r.source) for r in listed] == [("1.4.2", "ci"), ("1.4.1", "ci"), ("1.4.0", "slack")]


def test_a_ci_deploy_can_be_rolled_back_from_slack(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    hooks.post(event(version="1.4.1", env="staging", finished_at=at(hours=2)))
    hooks.post(event(version="1.4.2", env="staging", finished_at=at(hours=1)))
    before = len(slack_api.calls("chat.postMessage"))
    assert slack.command("/rollback", "checkout-api staging", user="U03F8K2LQ1").status == 200
    posted = slack_api.wait_for("chat.postMessage", count=before + 1, timeout=10)[before]
    assert "Rollback checkout-api 1.4.2 → 1.4.1 to staging" in shown(posted.body)


def test_a_ci_start_while_a_deploy_request_waits_is_shown_as_overlapping_and_blocks_its_approval(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    slack.command("/deploy", "checkout-api 1.4.3 staging", user="U03F8K2LQ1")
    (requested,) = slack_api.wait_for("chat.postMessage", timeout=15)
    request_id = runtime.store.recent_deploys("checkout-api", "staging", limit=1)[0]["id"]

    response = hooks.post(event("started", version="1.4.4", env="staging"))

    assert response.status == 200 and response.json()["status"] == "overlapping" and response.json()["flags"]
    message = shown(slack_api.calls("chat.postMessage")[-1].body)
    assert "Outside the rules" in message and f"{request_id} (pending) held the checkout-api staging lock" in message
    assert "overlapping* another deploy of checkout-api in staging" in message
    slack.click("deploy-approve", request_id, user="U03H1M9TZ4", message_ts=requested.answer["ts"])
    told = slack_api.wait_for("chat.postEphemeral", predicate=lambda c: c.body["user"] == "U03H1M9TZ4", timeout=15)
    assert "is being deployed right now" in told[0].body["text"]
    assert runtime.store.deploy_row(request_id)["status"] == "pending"


# -- a pipeline that a /deploy request triggered (its webhook's {request_id}, sent back) ----------------


def webhook_service(runtime: Runtime, trigger: ThreadingHTTPServer, await_report: bool = False) -> None:
    """hook-api: its staging deploy triggers a pipeline, passing it the request's id (and, with ``await_report``,
    holding the lock until the pipeline reports)."""
    configs = runtime.store.service_configs()
    url = f"http://127.0.0.1:{trigger.server_port}/api/deploy"
    hook = {"url": url, "body": {"opsbot_request": "{request_id}"}}
    configs["hook-api"] = {
        "owners": [PRIYA],
        "environments": {"staging": {"approvals": 1, "approvers": ["payments"]}},
        "deploy": {"webhook": hook | ({"await_report": True} if await_report else {})},
    }
    runtime.store.replace_services(configs)


def triggered(slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, version: str) -> str:
    """Request hook-api ``version`` in staging, approve it, and wait until its trigger was accepted (HTTP 202)."""
    posted = request(slack, slack_api, runtime, f"hook-api {version} staging")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    summary_in(slack_api, DEPLOYS)
    assert slack.web.wait_idle(15), "the summary's posts were not all delivered"
    assert runtime.store.deploy_row(posted.request_id)["status"] == "succeeded"
    return posted.request_id


def hook_event(status: str, request_id: str, **fields: object) -> dict:
    """An event of the pipeline hook-api's webhook triggers, naming the request that triggered it."""
    fixed = {"version": "2.0.0", "env": "staging", "service": "hook-api", "request_id": request_id}
    return event(status, **(fixed | fields))


def test_a_pipeline_reports_on_the_request_that_triggered_it_and_the_change_counts_once(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, trigger: ThreadingHTTPServer
) -> None:
    webhook_service(runtime, trigger)
    rid = triggered(slack, slack_api, runtime, "2.0.0")
    in_deploys = len([c for c in slack_api.calls("chat.postMessage") if c.body["channel"] == DEPLOYS])

    started = hooks.post(hook_event("started", rid))
    failed = hooks.post(hook_event("failed", rid, commit_sha="3f9c2e1a", commit_time=at(hours=3)))

    assert started.status == 200 and failed.status == 200, failed.body
    assert (started.json()["action"], started.json()["id"], started.json()["status"]) == ("reported", rid, "succeeded")
    assert (failed.json()["action"], failed.json()["id"], failed.json()["status"]) == ("reported", rid, "failed")
    assert ci_rows(runtime) == []  # no second deploy: the pipeline's events are the request's
    row = runtime.store.deploy_row(rid)
    assert (row["status"], row["exit_code"], row["commit_sha"], row["pipeline_url"]) == (
        "failed",
        None,
        "3f9c2e1a",
        PIPELINE,
    )
    audit = [(r["actor"], r["action"]) for r in runtime.store.audit_rows() if r["request_id"] == rid]
    assert audit[-2:] == [("ci:octocat", "deploy.ci_started"), ("ci:octocat", "deploy.reported")]
    # the new outcome is shown: the request's message, and a summary in the deploys channel
    new = slack_api.wait_for("chat.postMessage", count=in_deploys + 1, predicate=lambda c: c.body["channel"] == DEPLOYS)
    assert "reported *failed*" in shown(new[-1].body) and "Failed" in shown(new[-1].body)
    assert any(c.body.get("ts") and "failed" in shown(c.body).lower() for c in slack_api.calls("chat.update"))
    figures = dora(runtime.store, "hook-api", "staging")
    assert (figures.changes, figures.failed_changes, figures.deploys_7d) == (1, 1, 0)


def test_a_pipeline_reporting_the_outcome_opsbot_showed_changes_no_message_and_gives_the_lead_time(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, trigger: ThreadingHTTPServer
) -> None:
    webhook_service(runtime, trigger)
    rid = triggered(slack, slack_api, runtime, "2.0.0")
    posts = len(slack_api.calls("chat.postMessage"))

    answer = hooks.post(hook_event("succeeded", rid, commit_time=at(hours=2)))

    assert answer.status == 200 and answer.json()["status"] == "succeeded", answer.body
    assert ci_rows(runtime) == [] and len(slack_api.calls("chat.postMessage")) == posts
    figures = dora(runtime.store, "hook-api", "staging")
    assert (figures.changes, figures.failed_changes, figures.deploys_7d) == (1, 0, 1)
    assert figures.lead_time_h == pytest.approx(2.0, abs=0.05)


def test_a_report_naming_a_request_it_does_not_fit_is_refused_and_changes_nothing(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, trigger: ThreadingHTTPServer
) -> None:
    webhook_service(runtime, trigger)
    rid = triggered(slack, slack_api, runtime, "2.0.0")
    pending = request(slack, slack_api, runtime, "hook-api 2.0.1 staging").request_id
    ci_id = hooks.post(event()).json()["id"]
    audited = len(runtime.store.audit_rows())
    refused = {
        "names no deploy requested through opsbot": hook_event("failed", "dep-20261120-abcdef"),
        "is hook-api 2.0.0 to staging, not hook-api 2.0.9": hook_event("failed", rid, version="2.0.9"),
        "is a deploy, not a rollback": hook_event("rolled_back", rid),
        "never ran in opsbot": hook_event("failed", pending, version="2.0.1"),
        "names no deploy requested": event("failed", request_id=ci_id),  # a pipeline's own deploy
    }
    for words, sent in refused.items():
        response = hooks.post(sent)
        assert response.status == 400 and words in response.json()["error"], (words, response.body)
        assert response.json()["field"] in ("request_id", "status")
    assert runtime.store.deploy_row(rid)["status"] == "succeeded"
    assert runtime.store.deploy_row(pending)["status"] == "pending"
    assert len(runtime.store.audit_rows()) == audited and len(ci_rows(runtime)) == 1


def test_a_rollback_its_pipeline_reports_as_failed_is_shown_failed_not_succeeded(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, trigger: ThreadingHTTPServer
) -> None:
    # Before, every report but `failed` settled a request as succeeded: `rollback_failed`, the status a pipeline
    # sends for a rollback that failed, left the rollback shown as succeeded and the service as restored.
    webhook_service(runtime, trigger)
    with runtime.store.transaction():  # hook-api ran 2.0.0, then 2.0.1
        for n, version in enumerate(("2.0.0", "2.0.1")):
            when = datetime(2026, 11, 1 + n, 9, 0, tzinfo=UTC).isoformat(timespec="seconds")
            runtime.store.insert_deploy(
                new_row(
                    f"dep-seed-hook-{n}",
                    service="hook-api",
                    env="staging",
                    version=version,
                    requester=PRIYA,
                    status="succeeded",
                    created_at=when,
                    expires_at=when,
                    started_at=when,
                    finished_at=when,
                    exit_code=0,
                )
            )
    posted = request(slack, slack_api, runtime, "hook-api staging", command="/rollback")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    taken = eventually(lambda: runtime.store.deploy_row(posted.request_id), lambda r: r["status"] == "succeeded")
    assert (taken["kind"], taken["version"]) == ("rollback", "2.0.0")
    assert slack.web.wait_idle(15)

    answer = hooks.post(hook_event("rollback_failed", posted.request_id))

    assert answer.status == 200 and answer.json()["status"] == "failed", answer.body
    assert runtime.store.deploy_row(posted.request_id)["status"] == "failed"
    said = slack_api.wait_for("chat.postMessage", predicate=lambda c: "reported *failed*" in shown(c.body))
    assert "Rollback hook-api" in shown(said[0].body)
    audit = [r for r in runtime.store.audit_rows() if r["request_id"] == posted.request_id]
    assert (audit[-1]["action"], audit[-1]["details"]["status"]) == ("rollback.reported", "failed")


def handed_to_ci(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, trigger: ThreadingHTTPServer
) -> tuple[Posted, dict]:
    """hook-api, whose pipeline reports back: 2.0.0 requested and approved in Slack; its message, and its row once
    the run is over (its trigger answered)."""
    webhook_service(runtime, trigger, await_report=True)
    posted = request(slack, slack_api, runtime, "hook-api 2.0.0 staging")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    row = eventually(
        lambda: runtime.store.deploy_row(posted.request_id),
        lambda r: r["status"] not in ("pending", "running"),
        timeout=15,
    )
    return posted, row


def test_a_pipeline_that_reports_back_holds_the_lock_until_its_report_settles_the_request(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, trigger: ThreadingHTTPServer
) -> None:
    posted, handed = handed_to_ci(slack, slack_api, runtime, trigger)
    rid = posted.request_id
    assert (handed["status"], handed["finished_at"], trigger.paths) == ("awaiting_ci", None, ["/api/deploy"])
    update_showing(slack_api, posted.ts, "Handed to CI")
    assert runtime.store.lock_holder("hook-api", "staging") == rid

    # the service is still being deployed: nobody may start another deploy of it meanwhile
    slack.command("/deploy", "hook-api 2.0.1 staging", user=PRIYA, channel=OPS)
    (said,) = slack_api.wait_for("response_url", timeout=10)
    assert f"locked by Priya Raman's deploy {rid}, whose pipeline is deploying it" in said.body["text"]
    assert "opsbot withdraw" in said.body["text"] and said.body["response_type"] == "ephemeral"
    assert not any("*Log tail*" in shown(c.body) for c in slack_api.calls("chat.postMessage"))  # no outcome yet
    assert dora(runtime.store, "hook-api", "staging").changes == 0

    failed = hooks.post(hook_event("failed", rid, commit_time=at(hours=1)))

    assert failed.status == 200 and (failed.json()["action"], failed.json()["status"]) == ("reported", "failed")
    row = runtime.store.deploy_row(rid)
    assert row["status"] == "failed" and row["finished_at"] and ci_rows(runtime) == []
    assert runtime.store.lock_holder("hook-api", "staging") is None
    summary = summary_in(slack_api, DEPLOYS)
    assert "is what it reported" in shown(summary) and "Failed" in shown(summary)
    update_showing(slack_api, posted.ts, "Failed")
    audit = [r["action"] for r in runtime.store.audit_rows() if r["request_id"] == rid]
    assert audit[-3:] == ["deploy.started", "deploy.handed_off", "deploy.reported"]
    figures = dora(runtime.store, "hook-api", "staging")
    assert (figures.changes, figures.failed_changes) == (1, 1)
    request(slack, slack_api, runtime, "hook-api 2.0.1 staging")  # the lock is free again


def test_a_pipeline_given_up_on_from_the_command_line_is_said_in_slack_and_frees_the_service(
    slack: SlackDriver, hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI, trigger: ThreadingHTTPServer
) -> None:
    posted, handed = handed_to_ci(slack, slack_api, runtime, trigger)
    rid = posted.request_id
    assert handed["status"] == "awaiting_ci"
    DeployService.from_store(runtime.store).withdraw(rid, "cli:alice", "pipeline hung")  # `opsbot withdraw`

    sweep_expired(runtime)

    said = slack_api.wait_for(
        "chat.postMessage", count=2, predicate=lambda c: "no report from its pipeline" in shown(c.body), timeout=15
    )
    assert {c.body["channel"] for c in said} == {OPS, DEPLOYS} and "pipeline hung" in shown(said[0].body)
    update_showing(slack_api, posted.ts, "No report from the pipeline")
    assert runtime.store.lock_holder("hook-api", "staging") is None
    late = hooks.post(hook_event("succeeded", rid))  # its report, when it comes, still settles it
    assert late.status == 200 and late.json()["status"] == "succeeded"


def test_notify_deploy_reports_on_a_request_by_its_id(runtime: Runtime) -> None:
    path = str(runtime.settings.db_path)
    with runtime.store.transaction():  # a /deploy whose command ran the pipeline, and exited 0
        runtime.store.insert_deploy(
            {
                **{k: "" for k in runtime.store.DEPLOY_COLUMNS.split(", ")},
                "id": "dep-20261120-0a1b2c",
                "kind": "deploy",
                "service": "checkout-api",
                "env": "prod",
                "version": "1.4.2",
                "requester": "U03F8K2LQ1",
                "status": "succeeded",
                "approvals_needed": 2,
                "created_at": at(minutes=20),
                "started_at": at(minutes=15),
                "finished_at": at(minutes=14),
                "exit_code": 0,
                "source": "slack",
                "changes": "[]",
            }
        )
    common = ["--db", path, "--service", "checkout-api", "--env", "prod", "--version", "1.4.2", "--status", "failed"]

    result = invoke(*common, "--request-id", "dep-20261120-0a1b2c")
    wrong = invoke(*common, "--request-id", "INC-42")

    assert result.exit_code == 0, result.output
    assert "reported on as dep-20261120-0a1b2c" in result.output and "failed" in result.output
    assert wrong.exit_code == 1 and "not an opsbot request id" in wrong.output and "(--request-id)" in wrong.output
    reader = Store(path)
    try:
        assert reader.deploy_row("dep-20261120-0a1b2c")["status"] == "failed"
        assert [r for r in reader.all_deploys() if r["source"] == "ci"] == []
    finally:
        reader.close()


def test_hooks_without_a_secret_are_disabled(slack: SlackDriver, runtime: Runtime) -> None:
    runtime.settings = replace(runtime.settings, hook_secret=Secret(""))
    response = HookDriver(slack.base_url).post(event())
    assert response.status == 503 and "OPSBOT_HOOK_SECRET" in response.json()["error"]
    assert ci_rows(runtime) == []


def test_the_hooks_only_server_serves_hooks_and_health_but_not_slack(runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    app = create_app(runtime, client=create_client(runtime))
    server = HttpServer(app, runtime, host="127.0.0.1", port=0, slack_events=False).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert HookDriver(base).post(event()).status == 200
        assert SlackDriver(base, slack_api).command("/rollback", "checkout-api prod").status == 404
    finally:
        server.stop()
    assert len(ci_rows(runtime)) == 1


def invoke(*args: str, secret: str = HOOK_SECRET) -> object:
    return CliRunner().invoke(main, ["notify-deploy", *args], env={"OPSBOT_HOOK_SECRET": secret})


def test_notify_deploy_sends_a_signed_event_to_the_endpoint(
    hooks: HookDriver, runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    common = ["--url", hooks.url, "--service", "checkout-api", "--env", "prod", "--version", "1.4.2"]
    result = invoke(*common, "--status", "started", "--actor", "octocat", "--pipeline-url", PIPELINE)
    assert result.exit_code == 0, result.output
    assert "running as dep-" in result.output
    result = invoke(
        *common,
        "--event-id",
        "gl-99",
        "--commit-time",
        at(hours=2),
        "--change",
        "Retry card auth once",
        "--pipeline-url",
        PIPELINE,
    )
    assert result.exit_code == 0, result.output
    assert "finished as dep-" in result.output and "succeeded" in result.output
    [row] = ci_rows(runtime)
    assert row["status"] == "succeeded" and json.loads(row["changes"]) == ["Retry card auth once"]
    assert hooks.web is not None and hooks.web.wait_idle(15)
    assert "Retry card auth once" in shown(slack_api.calls("chat.postMessage")[-1].body)
    again = invoke(*common, "--event-id", "gl-99")
    assert again.exit_code == 0 and "already recorded" in again.output


def test_notify_deploy_reports_the_servers_refusal(hooks: HookDriver, runtime: Runtime) -> None:
    common = ["--url", hooks.url, "--service", "checkout-api", "--env", "prod"]
    hostile = invoke(*common, "--version", "1.2.3;rm")
    assert hostile.exit_code == 1 and "HTTP 400" in hostile.output and "(--version)" in hostile.output
    wrong = invoke(*common, "--version", "1.4.2", secret="a-different-secret-value")
    assert wrong.exit_code == 1 and "HTTP 401" in wrong.output and "bad signature" in wrong.output
    assert ci_rows(runtime) == []


def test_notify_deploy_writes_to_the_database_without_slack(runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    path = str(runtime.settings.db_path)
    result = invoke("--db", path, "--service", "checkout-api", "--env", "prod", "--version", "1.4.2", "--actor", "bob")
    assert result.exit_code == 0, result.output
    assert "recorded as dep-" in result.output
    reader = Store(path)  # as another process sees it (the bot's own connection may be mid-read while loading)
    try:
        [row] = [r for r in reader.all_deploys() if r["source"] == "ci"]
    finally:
        reader.close()
    assert (row["status"], row["requester"], row["source"]) == ("succeeded", "ci:bob", "ci")
    assert slack_api.calls() == []
    bad = invoke("--db", path, "--service", "nope", "--env", "prod", "--version", "1.4.2")
    assert bad.exit_code == 1 and "unknown service 'nope'" in bad.output and "(--service)" in bad.output


def test_notify_deploy_help_has_an_example() -> None:
    result = CliRunner().invoke(main, ["notify-deploy", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--status started" in result.output


def test_hook_settings_are_read_masked_and_checked(tmp_path: object) -> None:
    from bot.config import Settings
    from bot.errors import ConfigError

    env = {"OPSBOT_HOOK_SECRET": HOOK_SECRET, "OPSBOT_HOOK_URL": "http://opsbot:3000/hooks/deploy"}
    settings = Settings.from_env(env, dotenv=None, require_model=False)
    assert str(settings.hook_secret) == HOOK_SECRET and HOOK_SECRET not in repr(settings)
    assert settings.hook_url == "http://opsbot:3000/hooks/deploy"
    with pytest.raises(ConfigError) as problems:
        Settings.from_env({"OPSBOT_HOOK_SECRET": "short", "OPSBOT_HOOK_URL": "opsbot:3000"}, dotenv=None)
    assert "OPSBOT_HOOK_SECRET" in str(problems.value) and "OPSBOT_HOOK_URL" in str(problems.value)


def test_an_event_the_full_database_refuses_is_503_with_retry_after_and_one_log_line(
    hooks: HookDriver, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: 500, "see its log", and a traceback in the log for what is an outage, not a bug.
    import urllib.error
    import urllib.request

    from bot.ops.ci_events import sign as sign_event
    from tests.slack.test_health import FULL, refused_while_full

    changes = [f"change {n} " + "x" * 280 for n in range(40)]  # more than the pages have room for
    body = json.dumps(event(changes=changes)).encode()
    ts = int(time.time())
    headers = {"X-Opsbot-Timestamp": str(ts), "X-Opsbot-Signature": sign_event(HOOK_SECRET, ts, body)}
    refused = refused_while_full(runtime.store, urllib.request.Request(hooks.url, body, headers, method="POST"))

    assert refused.code == 503 and refused.headers["Retry-After"] == "30"
    assert json.loads(refused.read())["error"] == (
        f"opsbot's database refuses writes ({FULL}); the event was not recorded: send it again later."
    )
    assert ci_rows(runtime) == []
    (line,) = [r for r in caplog.records if r.name == "bot.slack.serve"]
    assert line.levelno == logging.ERROR and line.exc_info is None and FULL in line.getMessage()
