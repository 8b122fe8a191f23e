"""Rollbacks through signed Slack requests against the fake Slack Web API: refused to a version that never
succeeded, offered under a failed deploy's summary, and run on fewer approvals under an emergency rule.

The sample's checkout-api prod needs 2 approvals, and 1 for a rollback while a SEV1 or SEV2 on it is open.
"""

from __future__ import annotations

import json

from bot.ops.requests import new_row
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.local.fake_api import FakeSlackAPI
from tests.slack.conftest import SlackDriver, shown
from tests.slack.test_deploy_flow import (  # noqa: F401 - clock: the autouse fixture that fixes the date
    DEPLOYS,
    MARCUS,
    OPS,
    PRIYA,
    Posted,
    click,
    clock,
    deploy_buttons,
    request,
    seed_history,
    summary_in,
    update_showing,
)


def seed(runtime: Runtime, env: str, *versions: str) -> None:
    seed_history(runtime, *versions, env=env)


def test_a_rollback_to_a_version_that_never_succeeded_is_refused_privately_naming_those_that_did(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "prod", "1.4.0", "1.4.1", "1.4.2")

    slack.command("/rollback", "checkout-api prod 9.9.9", user=PRIYA, channel=OPS)

    (said,) = slack_api.wait_for("response_url", timeout=10)
    assert said.body["response_type"] == "ephemeral"
    assert said.body["text"] == (
        "Sorry: 9.9.9 never succeeded for checkout-api in prod, so opsbot will not roll back to it. Versions that "
        "did, newest first: 1.4.2, 1.4.1, 1.4.0. For example: `/rollback checkout-api prod 1.4.2`."
    )
    assert not slack_api.messages()
    assert len(runtime.store.all_deploys()) == 3


def rollback_button(body: dict) -> dict:
    (button,) = [
        e for b in body.get("blocks") or [] for e in b.get("elements", []) if e.get("action_id") == ids.DEPLOY_ROLLBACK
    ]
    return button


def test_a_failed_deploy_summary_has_a_rollback_button_that_requests_the_last_good_version(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "staging", "1.4.1", "1.4.2")
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.3-bad staging")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    summary = summary_in(slack_api, DEPLOYS)
    assert ":x: *Deploy checkout-api 1.4.2 → 1.4.3-bad to staging*: failed" in shown(summary)
    button = rollback_button(summary)
    assert button["text"]["text"] == "Roll back to 1.4.2" and "confirm" in button
    summary_ts = next(c.answer["ts"] for c in slack_api.calls("chat.postMessage") if c.body == summary)

    clicked = slack.click(ids.DEPLOY_ROLLBACK, button["value"], user=PRIYA, channel=DEPLOYS, message_ts=summary_ts)
    assert clicked.status == 200
    # The request is posted in the deploys channel (other posts of the failed deploy may still be arriving).
    (asked,) = slack_api.wait_for(
        "chat.postMessage",
        timeout=10,
        predicate=lambda c: c.body["channel"] == DEPLOYS and "Rollback checkout-api" in shown(c.body),
    )
    assert "Rollback checkout-api 1.4.3-bad → 1.4.2 to staging" in shown(asked.body)
    approve = deploy_buttons(asked.body)[ids.DEPLOY_APPROVE]
    rollback = Posted(approve, asked.answer["channel"], asked.answer["ts"], asked.body)

    click(slack, ids.DEPLOY_APPROVE, rollback, MARCUS)
    update_showing(slack_api, rollback.ts, "*Succeeded*", timeout=20)
    assert runtime.deploys().current_version("checkout-api", "staging") == "1.4.2"


def test_the_rollback_button_of_a_failed_deploy_is_refused_once_a_newer_deploy_succeeded(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "staging", "1.4.1", "1.4.2")
    failed = request(slack, slack_api, runtime, "checkout-api 1.4.3-bad staging")
    click(slack, ids.DEPLOY_APPROVE, failed, MARCUS)
    button = rollback_button(summary_in(slack_api, DEPLOYS))
    assert slack.web is not None and slack.web.wait_idle(15)  # the failed deploy's posts, before the next request's
    fixed = request(slack, slack_api, runtime, "checkout-api 1.4.4 staging")
    click(slack, ids.DEPLOY_APPROVE, fixed, MARCUS)
    update_showing(slack_api, fixed.ts, "*Succeeded*", timeout=20)
    before = len(runtime.store.all_deploys())

    slack.click(ids.DEPLOY_ROLLBACK, button["value"], user=PRIYA, channel=DEPLOYS)

    # It requested a rollback of the healthy 1.4.4 to 1.4.2, "the last version that succeeded there".
    (said,) = slack_api.wait_for("response_url", timeout=10)
    assert said.body["text"] == (
        f"Sorry: this button was for the failed deploy {failed.request_id}, and checkout-api staging has run the "
        f"deploy {fixed.request_id} of 1.4.4 (succeeded) since, so 1.4.2 may no longer be the last good version; "
        "nothing was requested. To roll back to it all the same: `/rollback checkout-api staging 1.4.2`."
    )
    assert len(runtime.store.all_deploys()) == before
    assert runtime.deploys().current_version("checkout-api", "staging") == "1.4.4"


def test_a_deploy_that_failed_before_anything_ran_offers_no_rollback_and_an_older_button_is_refused(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    configs = runtime.store.service_configs()
    configs["ghost-api"] = {
        "owners": [PRIYA],
        "environments": {"staging": {"approvals": 1, "approvers": ["payments"]}},
        "deploy": {"command": ["./no-such-deploy-script", "{version}"]},
    }
    runtime.store.replace_services(configs)
    with runtime.store.transaction():
        for n, version in enumerate(("1.0.0", "1.1.0")):
            at = f"2026-11-0{n + 1}T09:00:00+00:00"
            row = new_row(f"dep-ghost-{n}", service="ghost-api", env="staging", version=version, requester=PRIYA)
            row |= {"status": "succeeded", "created_at": at, "started_at": at, "finished_at": at, "source": "ci"}
            runtime.store.insert_deploy(row)
    posted = request(slack, slack_api, runtime, "ghost-api 1.2.0 staging")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    summary = summary_in(slack_api, DEPLOYS)

    # It offered "Roll back to 1.0.0": a rollback of the 1.1.0 that still ran, since 1.2.0 never started.
    assert "could not start ./no-such-deploy-script" in shown(summary)
    assert ids.DEPLOY_ROLLBACK not in json.dumps(summary)
    assert runtime.deploys().current_version("ghost-api", "staging") == "1.1.0"
    offered = json.dumps({"service": "ghost-api", "env": "staging", "version": "1.0.0", "deploy": posted.request_id})
    slack.click(ids.DEPLOY_ROLLBACK, offered, user=PRIYA, channel=DEPLOYS)  # a button posted before this fix
    (said,) = slack_api.wait_for("response_url", timeout=10)
    assert said.body["text"] == (
        f"Sorry: the deploy {posted.request_id} failed before anything ran, so ghost-api staging still runs what it "
        "ran before; nothing was requested."
    )
    assert runtime.store.lock_holder("ghost-api", "staging") is None


def test_a_succeeded_deploy_summary_has_no_rollback_button(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "staging", "1.4.1")
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    summary = summary_in(slack_api, DEPLOYS)

    assert ":white_check_mark:" in shown(summary)
    assert ids.DEPLOY_ROLLBACK not in json.dumps(summary)


def test_a_rollback_button_opsbot_did_not_post_is_refused(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    slack.click(ids.DEPLOY_ROLLBACK, '{"service": "checkout-api"}', user=PRIYA, channel=OPS)

    (said,) = slack_api.wait_for("response_url", timeout=10)
    assert "that Rollback button is not one opsbot posted" in said.body["text"]
    assert not slack_api.messages()


def test_during_a_sev1_a_prod_rollback_runs_on_one_approval_announced_in_the_channel_and_audited(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "prod", "1.4.1", "1.4.2")
    incident = runtime.incidents().declare("Checkout 503s", PRIYA, 1, ["checkout-api"], origin_channel=OPS)

    posted = request(slack, slack_api, runtime, "checkout-api prod", command="/rollback")

    announced = (
        f":rotating_light: *Emergency rule:* {incident.id} (SEV1, open) is on checkout-api, so this rollback needs "
        "1 approval(s) instead of 2 (services.yaml `emergency`)."
    )
    assert posted.channel == OPS
    assert announced in posted.text and "*Approvals:* 0 of 1" in posted.text
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    summary = shown(summary_in(slack_api, DEPLOYS))
    assert "*Kind*\nrollback" in summary and announced in summary
    assert runtime.deploys().current_version("checkout-api", "prod") == "1.4.1"
    audit = {a["action"]: a["details"] for a in runtime.store.audit_rows() if a["request_id"] == posted.request_id}
    assert audit["rollback.emergency"] == {"incident": incident.id, "severity": 1, "approvals": 1, "usual": 2}
    assert audit["rollback.started"] == {"approvers": [MARCUS], "emergency": incident.id}


def test_an_approval_given_before_a_sev1_was_declared_starts_the_rollback_when_clicked_again(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "prod", "1.4.1", "1.4.2")
    posted = request(slack, slack_api, runtime, "checkout-api prod", command="/rollback")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    update_showing(slack_api, posted.ts, "*Approvals:* 1 of 2")
    runtime.incidents().declare("Checkout 503s", PRIYA, 1, ["checkout-api"], origin_channel=OPS)

    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)  # his approval is now all the emergency rule needs

    # It said "you already decided; 0 more approval(s) needed." and waited, approved, until it expired.
    summary = shown(summary_in(slack_api, DEPLOYS))
    assert "*Kind*\nrollback" in summary and "*Approved by*\nMarcus Oyelaran" in summary
    assert runtime.deploys().current_version("checkout-api", "prod") == "1.4.1"
    audit = [a for a in runtime.store.audit_rows() if a["request_id"] == posted.request_id]
    assert [a["action"] for a in audit].count("rollback.approved") == 1  # one approval, counted once
    assert next(a for a in audit if a["action"] == "rollback.started")["details"]["approvers"] == [MARCUS]


def test_an_incident_worked_in_a_private_channel_lowers_the_approvals_without_being_named(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "prod", "1.4.1", "1.4.2")
    incident = runtime.incidents().declare(
        "Signing key leaked", PRIYA, 1, ["checkout-api"], origin_channel="C0SECURE1", private=True
    )

    posted = request(slack, slack_api, runtime, "checkout-api prod", command="/rollback")

    announced = (
        ":rotating_light: *Emergency rule:* an open SEV1 incident worked in a private channel is on checkout-api, "
        "so this rollback needs 1 approval(s) instead of 2 (services.yaml `emergency`)."
    )
    assert announced in posted.text and incident.id not in posted.text
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    summary = shown(summary_in(slack_api, DEPLOYS))
    assert announced in summary and incident.id not in summary and "Signing key" not in summary
    audit = {a["action"]: a["details"] for a in runtime.store.audit_rows() if a["request_id"] == posted.request_id}
    assert audit["rollback.emergency"]["incident"] == incident.id  # the audit log, read by admins, names it


def test_without_an_open_incident_a_prod_rollback_still_needs_two_approvals(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed(runtime, "prod", "1.4.1", "1.4.2")
    incidents = runtime.incidents()
    resolved = incidents.declare("Checkout 503s", PRIYA, 1, ["checkout-api"], origin_channel=OPS)
    incidents.resolve(resolved, PRIYA, "Restarted the pods")

    posted = request(slack, slack_api, runtime, "checkout-api prod", command="/rollback")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    update_showing(slack_api, posted.ts, "*Approvals:* 1 of 2")
    assert "Emergency rule" not in posted.text
    assert runtime.store.deploy_row(posted.request_id)["status"] == "pending"
