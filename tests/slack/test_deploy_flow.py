"""/deploy, /rollback, Approve and Reject through signed requests against the fake Slack Web API."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest

from bot.ops.deploys import DeployService
from bot.ops.requests import Decision, new_row
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.jobs import report_interrupted, sweep_expired
from bot.slack.local.fake_api import Call, FakeSlackAPI
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock, eventually
from tests.slack.conftest import SlackDriver, make_settings, shown, start_bot

PRIYA = "U03F8K2LQ1"  # payments, requests checkout-api deploys
MARCUS = "U03H1M9TZ4"  # payments: may approve staging and prod
DANIEL = "U04C2RN8VD"  # platform, named for prod: may approve staging and prod
ROSA = "U08P1CK3XQ"  # sre: may approve prod
OLIVER = "U07L2ZG4UM"  # frontend: may not approve checkout-api
OPS = "C0OPS0001"
DEPLOYS = "C04DEPLOYS1"
T = TypeVar("T")


def use_clock(runtime: Runtime, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        runtime, "deploys", lambda: DeployService.from_store(runtime.store, clock=clock, announcer=runtime.announcer)
    )


@pytest.fixture(autouse=True)
def clock(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Every test runs on 2026-11-20, well outside the checkout-api prod freeze."""
    clock = Clock(datetime(2026, 11, 20, 10, 0, tzinfo=UTC), step=timedelta(seconds=1))
    use_clock(runtime, clock, monkeypatch)
    return clock


@dataclass(frozen=True)
class Posted:
    """A request message as the channel shows it."""

    request_id: str
    channel: str
    ts: str
    body: dict

    @property
    def text(self) -> str:
        return shown(self.body)


def deploy_buttons(body: dict) -> dict[str, str]:
    return {
        e["action_id"]: e["value"]
        for b in body.get("blocks") or []
        if b.get("block_id") == ids.DEPLOY_ACTIONS_BLOCK
        for e in b["elements"]
    }


def request(
    slack: SlackDriver, api: FakeSlackAPI, runtime: Runtime, text: str, user: str = PRIYA, command: str = "/deploy"
) -> Posted:
    """Type the command and wait for the request message with its buttons, and for its ts to be stored."""
    before = len(api.calls("chat.postMessage"))
    ack = slack.command(command, text, user=user, channel=OPS)
    assert ack.status == 200 and ack.json()["response_type"] == "ephemeral"
    assert "Requesting" in ack.json()["text"]
    calls = api.wait_for("chat.postMessage", count=before + 1, timeout=10)
    call = calls[before]
    buttons = deploy_buttons(call.body)
    assert set(buttons) == {ids.DEPLOY_APPROVE, ids.DEPLOY_REJECT}, shown(call.body)
    stored = eventually(lambda: runtime.store.deploy_row(buttons[ids.DEPLOY_APPROVE]), lambda r: r["message_ts"])
    assert stored["message_ts"] == call.answer["ts"]
    return Posted(buttons[ids.DEPLOY_APPROVE], call.answer["channel"], call.answer["ts"], call.body)


def click(slack: SlackDriver, action: str, posted: Posted, user: str) -> None:
    assert slack.click(action, posted.request_id, user=user, channel=posted.channel, message_ts=posted.ts).status == 200


def update_showing(api: FakeSlackAPI, ts: str, words: str, timeout: float = 15) -> Call:
    """The first chat.update of the message ``ts`` that shows ``words``."""
    return api.wait_for(
        "chat.update", predicate=lambda c: c.body["ts"] == ts and words in shown(c.body), timeout=timeout
    )[0]


def ephemeral_to(api: FakeSlackAPI, user: str, count: int = 1) -> str:
    calls = api.wait_for("chat.postEphemeral", count=count, predicate=lambda c: c.body["user"] == user)
    return calls[count - 1].body["text"]


def summary_in(api: FakeSlackAPI, channel: str, timeout: float = 20) -> dict:
    calls = api.wait_for(
        "chat.postMessage",
        predicate=lambda c: c.body["channel"] == channel and "*Log tail*" in shown(c.body),
        timeout=timeout,
    )
    return calls[0].body


def status(runtime: Runtime, request_id: str) -> str:
    return runtime.store.deploy_row(request_id)["status"]


def add_service(runtime: Runtime, name: str, code: str, timeout: int) -> None:
    """A test-only service in services.yaml whose deploy runs ``python -c code``."""
    configs = runtime.store.service_configs()
    configs[name] = {
        "owners": [PRIYA],
        "environments": {"staging": {"approvals": 1, "approvers": ["payments"]}},
        "deploy": {"command": ["{python}", "-c", code], "timeout": timeout},
    }
    runtime.store.replace_services(configs)


# -- requesting -------------------------------------------------------------------------------------


def test_a_deploy_request_is_posted_naming_what_will_run_with_approve_and_reject(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    assert posted.channel == OPS
    text = posted.text
    assert "Deploy checkout-api 1.4.2 to staging" in text
    assert f"`python -m bot.demo_deploy checkout-api 1.4.2 staging {posted.request_id}`" in text
    assert "*From:* nothing deployed by opsbot yet · *To:* 1.4.2" in text
    assert "*Requested by:* Priya Raman" in text
    assert "*Approvals:* 0 of 1" in text
    assert "needs 1 more from Marcus Oyelaran (payments) or the platform team;" in text
    assert "*Expires* <!date^" in text and "2026-11-20 10:30 UTC>" in text and "30 minutes" in text
    approve = next(b for b in posted.body["blocks"] if b.get("block_id") == ids.DEPLOY_ACTIONS_BLOCK)["elements"][0]
    assert approve["confirm"]["confirm"]["text"] == "Approve"  # Slack asks before the click counts
    row = runtime.store.deploy_row(posted.request_id)
    assert (row["status"], row["channel"], row["message_ts"]) == ("pending", OPS, posted.ts)
    assert (row["service"], row["version"], row["env"], row["requester"]) == ("checkout-api", "1.4.2", "staging", PRIYA)


def test_missing_arguments_show_the_usage_at_once_and_record_nothing(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    assert "Usage: /deploy SERVICE VERSION ENV" in slack.command("/deploy", "checkout-api 1.4.2").json()["text"]
    assert "Usage: /rollback SERVICE ENV [VERSION]" in slack.command("/rollback", "checkout-api").json()["text"]
    # What is missing comes first; an empty command gets the usage alone.
    assert slack.command("/deploy", "checkout-api 1.4.2").json()["text"].startswith("Missing ENV.\nUsage:")
    # the service alone asks where it stands (what runs where): looked up, nothing recorded
    assert slack.command("/deploy", "checkout-api").json()["text"] == "Looking at checkout-api…"
    assert slack.command("/rollback", "checkout-api").json()["text"].startswith("Missing ENV.\nUsage:")
    assert slack.command("/deploy", "").json()["text"].startswith("Usage:")
    assert slack.command("/deploy", "help").json()["text"].startswith("Usage:")
    assert slack.command("/rollback", "help").json()["text"].startswith("Usage:")
    time.sleep(0.3)
    assert not slack_api.messages() and len(slack_api.calls("response_url")) <= 1  # the standing, privately
    assert runtime.store.all_deploys() == []


def test_hostile_or_malformed_arguments_are_refused_and_nothing_is_recorded_or_run(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    cases = [
        ("/deploy", "checkout-api 1.2.3; rm -rf / staging", "version '1.2.3; rm -rf /' is not allowed"),
        ("/deploy", "checkout-api $(id) staging", "version '$(id)' is not allowed"),
        ("/deploy", "checkout-api `id` staging", "version '`id`' is not allowed"),
        ("/deploy", "checkout-api 1.2.3\n--force staging", "version '1.2.3\\\\n--force' is not allowed"),
        ("/deploy", "checkout-api 1.2.3 staging;reboot", "environment 'staging;reboot' is not allowed"),
        ("/deploy", "checkout-api 1.2 staging", "does not match checkout-api's version_pattern"),
        ("/deploy", "chekout-api 1.2.3 staging", "no deployable service 'chekout-api'"),
        ("/deploy", "checkout-api 1.2.3 qa", "checkout-api has no environment 'qa'; use one of staging, prod"),
        ("/rollback", "checkout-api prod $(reboot)", "version '$(reboot)' is not allowed"),
        ("/rollback", "checkout-api prod", "no successful deploy in prod yet"),
    ]
    for n, (command, text, expected) in enumerate(cases, start=1):
        slack.command(command, text, user=PRIYA, channel=OPS)
        said = slack_api.wait_for("response_url", count=n, timeout=10)[n - 1].body
        assert said["response_type"] == "ephemeral" and said["text"].startswith("Sorry: "), said
        assert expected in said["text"], (text, said["text"])
    assert not slack_api.messages()
    assert runtime.store.all_deploys() == []
    assert not [a for a in runtime.store.audit_rows() if a["action"].endswith(".requested")]


def test_a_second_request_while_one_is_pending_is_refused_naming_who_holds_the_lock(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    first = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    slack.command("/deploy", "checkout-api 1.4.3 staging", user=MARCUS, channel=OPS)
    (said,) = slack_api.wait_for("response_url", timeout=10)
    assert f"checkout-api staging is locked by Priya Raman's deploy {first.request_id} (pending)" in said.body["text"]
    assert said.body["response_type"] == "ephemeral"
    assert len(runtime.store.all_deploys()) == 1 and len(slack_api.messages()) == 1


def test_a_request_typed_in_a_direct_message_goes_to_the_deploys_channel_and_the_requester_is_told(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    slack.command("/deploy", "checkout-api 1.4.2 staging", user=PRIYA, channel="D0DM00001")

    # It was posted in the DM, where only Priya saw it: nobody could approve it, and it held the lock until it expired.
    (posted,) = slack_api.wait_for("chat.postMessage", timeout=10)
    assert posted.body["channel"] == DEPLOYS and set(deploy_buttons(posted.body)) == {
        ids.DEPLOY_APPROVE,
        ids.DEPLOY_REJECT,
    }
    (said,) = slack_api.wait_for("response_url", timeout=10)
    request_id = deploy_buttons(posted.body)[ids.DEPLOY_APPROVE]
    assert said.body["text"] == (
        f"Your deploy request `{request_id}` is in <#{DEPLOYS}>: in a direct message nobody who may approve it "
        "would see it."
    )
    assert said.body["response_type"] == "ephemeral"
    assert runtime.store.deploy_row(request_id)["channel"] == DEPLOYS


def test_a_frozen_environment_refuses_the_request(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, clock: Clock
) -> None:
    clock.set(datetime(2026, 12, 24, 12, 0, tzinfo=UTC))
    slack.command("/deploy", "checkout-api 1.4.2 prod", user=PRIYA, channel=OPS)
    (said,) = slack_api.wait_for("response_url", timeout=10)
    assert "checkout-api prod is frozen until 2026-12-27T08:00+00:00 (Christmas peak)" in said.body["text"]
    assert runtime.store.all_deploys() == [] and not slack_api.messages()
    clock.set(datetime(2026, 12, 27, 8, 0, tzinfo=UTC))  # the window is over
    assert request(slack, slack_api, runtime, "checkout-api 1.4.2 prod").request_id


# -- deciding ---------------------------------------------------------------------------------------


def test_the_requester_cannot_approve_their_own_request(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    click(slack, ids.DEPLOY_APPROVE, posted, PRIYA)
    told = ephemeral_to(slack_api, PRIYA)
    assert told == "Your click did not count: you requested this; someone else has to approve it."
    assert slack_api.ephemerals(user=PRIYA)[0]["channel"] == OPS
    time.sleep(0.3)
    assert not slack_api.calls("chat.update") and status(runtime, posted.request_id) == "pending"


def test_someone_who_is_not_an_approver_is_told_why_only_them(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    click(slack, ids.DEPLOY_APPROVE, posted, OLIVER)
    told = ephemeral_to(slack_api, OLIVER)
    assert "only the payments team or the platform team may approve checkout-api deploys to staging." in told
    click(slack, ids.DEPLOY_REJECT, posted, OLIVER)  # nor reject
    assert "only the payments team or the platform team may approve" in ephemeral_to(slack_api, OLIVER, count=2)
    time.sleep(0.3)
    assert not slack_api.calls("chat.update") and status(runtime, posted.request_id) == "pending"
    assert runtime.store.decisions(posted.request_id) == []


def test_one_approval_in_staging_runs_the_deploy_with_progress_and_a_summary(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    running = update_showing(slack_api, posted.ts, "*Running* since")
    assert "approved by Marcus Oyelaran" in shown(running.body) and not deploy_buttons(running.body)
    thread = summary_in(slack_api, OPS)
    assert thread["thread_ts"] == posted.ts
    in_channel = summary_in(slack_api, DEPLOYS)
    assert "thread_ts" not in in_channel and in_channel["blocks"] == thread["blocks"]
    summary = shown(in_channel)
    for expected in (
        ":white_check_mark: *Deploy checkout-api 1.4.2 to staging*: succeeded",
        "*Service*\ncheckout-api",
        "*Kind*\ndeploy",
        "*Version*\nnone recorded → 1.4.2",
        "*Environment*\nstaging",
        "*Requested by*\nPriya Raman",
        "*Approved by*\nMarcus Oyelaran",
        "*Started*\n<!date^",
        "*Outcome*\nSucceeded",
        "pulling image registry.larder.example/checkout-api:1.4.2",
        "authenticating with token=***",
        "health checks passed",
        "*DORA* checkout-api in staging, 30 days: Deploys: 1 in 7 days, 1 in 30",
        "change failure rate 0% (0/1)",
    ):
        assert expected in summary, expected
    assert "demo-not-a-real-token" not in str(slack_api.calls())

    # One progress message in the thread, updated in place with the output (not one message per line).
    (progress,) = [
        c
        for c in slack_api.calls("chat.postMessage")
        if c.body.get("thread_ts") == posted.ts and "Running `" in c.body["text"]
    ]
    progress_ts = progress.answer["ts"]
    final_progress = update_showing(slack_api, progress_ts, "*Succeeded*")
    assert (
        "rolling out: 3/3 pods on 1.4.2" in final_progress.body["text"] and "token=***" in final_progress.body["text"]
    )

    final = update_showing(slack_api, posted.ts, "*Succeeded*")
    assert "Summary and log in the thread" in shown(final.body) and not deploy_buttons(final.body)
    row = runtime.store.deploy_row(posted.request_id)
    assert row["status"] == "succeeded" and row["exit_code"] == 0
    assert [a["action"] for a in runtime.store.audit_rows() if a["request_id"] == posted.request_id] == [
        "deploy.requested",
        "deploy.approved",
        "deploy.started",
        "deploy.finished",
    ]


def test_prod_needs_two_distinct_approvers_and_each_approval_updates_the_message(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 prod")
    assert "*Approvals:* 0 of 2" in posted.text
    # Priya requested it, so of the payments team only Marcus may approve: named, not "the payments team".
    assert "needs 2 more from Marcus Oyelaran (payments), the sre team or Daniel Okafor;" in posted.text

    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    first = update_showing(slack_api, posted.ts, "*Approvals:* 1 of 2")
    assert "(approved by Marcus Oyelaran) · needs 1 more from the sre team or Daniel Okafor;" in shown(first.body)
    assert set(deploy_buttons(first.body)) == {ids.DEPLOY_APPROVE, ids.DEPLOY_REJECT}
    assert ephemeral_to(slack_api, MARCUS) == "Noted: approved; 1 more approval(s) needed."

    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)  # the same approver twice counts once
    assert "you already decided; 1 more approval(s) needed" in ephemeral_to(slack_api, MARCUS, count=2)
    assert status(runtime, posted.request_id) == "pending"

    click(slack, ids.DEPLOY_APPROVE, posted, DANIEL)
    summary = shown(summary_in(slack_api, DEPLOYS))
    assert "*Approved by*\nMarcus Oyelaran, Daniel Okafor" in summary and "*Environment*\nprod" in summary
    assert status(runtime, posted.request_id) == "succeeded"
    assert len([a for a in runtime.store.audit_rows() if a["action"] == "deploy.started"]) == 1


def test_one_rejection_ends_the_request_and_removes_the_buttons(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 prod")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    update_showing(slack_api, posted.ts, "*Approvals:* 1 of 2")
    click(slack, ids.DEPLOY_REJECT, posted, ROSA)
    rejected = update_showing(slack_api, posted.ts, "*Rejected by Rosa Delgado*; nothing ran.")
    assert not deploy_buttons(rejected.body)
    assert status(runtime, posted.request_id) == "rejected"

    click(slack, ids.DEPLOY_APPROVE, posted, DANIEL)  # too late
    assert ephemeral_to(slack_api, DANIEL) == f"Nothing to decide: {posted.request_id} is already rejected."
    assert status(runtime, posted.request_id) == "rejected"
    assert request(slack, slack_api, runtime, "checkout-api 1.4.3 prod").request_id  # the lock was released


def test_a_click_on_a_request_withdrawn_from_the_command_line_shows_it_and_runs_nothing(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, clock: Clock
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    # `opsbot withdraw` writes to the database alone: the message keeps its buttons until someone clicks
    DeployService.from_store(runtime.store, clock=clock).withdraw(posted.request_id, "cli:alice", "wrong version")
    assert status(runtime, posted.request_id) == "rejected"

    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    shown_now = update_showing(slack_api, posted.ts, "*Withdrawn from the command line by alice*; nothing ran.")
    assert not deploy_buttons(shown_now.body) and "Why: wrong version" in shown(shown_now.body)
    assert ephemeral_to(slack_api, MARCUS) == f"Nothing to decide: {posted.request_id} is already rejected."
    assert status(runtime, posted.request_id) == "rejected"


def test_the_sweep_shows_a_withdrawal_made_from_the_command_line_once_without_a_click(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, clock: Clock
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    DeployService.from_store(runtime.store, clock=clock).withdraw(posted.request_id, "cli:alice", "wrong version")

    assert sweep_expired(runtime) == []  # nothing expired: the withdrawal is shown all the same

    shown_now = update_showing(slack_api, posted.ts, "*Withdrawn from the command line by alice*; nothing ran.")
    assert not deploy_buttons(shown_now.body) and "Why: wrong version" in shown(shown_now.body)
    assert slack.web.wait_idle(10)
    updates = len(slack_api.calls("chat.update"))
    sweep_expired(runtime)
    assert slack.web.wait_idle(10) and len(slack_api.calls("chat.update")) == updates  # once
    shown_rows = [r for r in runtime.store.audit_rows() if r["action"] == "deploy.shown"]
    assert [r["request_id"] for r in shown_rows] == [posted.request_id]


def test_an_unapproved_request_expires_its_message_says_so_and_approving_it_later_is_explained(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, clock: Clock
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    assert sweep_expired(runtime) == []  # not yet
    clock.advance(minutes=31)
    (expired,) = sweep_expired(runtime)
    assert expired.id == posted.request_id and expired.status == "expired"
    update = update_showing(slack_api, posted.ts, "Expired: nobody approved within 30 minutes")
    assert not deploy_buttons(update.body)

    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    told = ephemeral_to(slack_api, MARCUS)
    assert told.startswith("This request expired") and "`/deploy checkout-api 1.4.2 staging`" in told
    assert status(runtime, posted.request_id) == "expired" and runtime.store.decisions(posted.request_id) == []
    assert sweep_expired(runtime) == []  # once


def test_a_click_after_the_expiry_time_expires_it_even_before_the_sweeper_runs(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, clock: Clock
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 prod")
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    update_showing(slack_api, posted.ts, "*Approvals:* 1 of 2")
    clock.advance(minutes=45)
    click(slack, ids.DEPLOY_APPROVE, posted, DANIEL)
    assert ephemeral_to(slack_api, DANIEL).startswith("This request expired")
    update = update_showing(slack_api, posted.ts, "Expired: only 1 of 2 approvals (Marcus Oyelaran) within 30 minutes")
    assert not deploy_buttons(update.body) and status(runtime, posted.request_id) == "expired"


# -- rollbacks, timeouts, restarts -----------------------------------------------------------------


def seed_history(runtime: Runtime, *versions: str, env: str = "staging") -> None:
    """Earlier successful deploys of checkout-api to ``env``, oldest first, as CI would have recorded them."""
    with runtime.store.transaction():
        for n, version in enumerate(versions):
            at = datetime(2026, 11, 1 + n, 9, 0, tzinfo=UTC).isoformat(timespec="seconds")
            runtime.store.insert_deploy(
                new_row(
                    f"dep-seed-{env}-{n}",
                    service="checkout-api",
                    env=env,
                    version=version,
                    from_version=versions[n - 1] if n else "",
                    requester=PRIYA,
                    status="succeeded",
                    approvals_needed=1,
                    created_at=at,
                    expires_at=at,
                    started_at=at,
                    finished_at=at,
                    exit_code=0,
                    source="ci",
                )
            )


def test_a_rollback_picks_the_previous_good_version_says_so_and_runs_the_rollback_runner(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    seed_history(runtime, "1.4.0", "1.4.1", "1.4.2")
    posted = request(slack, slack_api, runtime, "checkout-api staging", command="/rollback")
    text = posted.text
    assert "Rollback checkout-api 1.4.2 → 1.4.1 to staging" in text
    assert "opsbot chose *1.4.1*: the last version of checkout-api that succeeded in staging before 1.4.2" in text
    assert f"`python -m bot.demo_deploy checkout-api 1.4.1 staging {posted.request_id} rollback`" in text

    click(slack, ids.DEPLOY_APPROVE, posted, DANIEL)
    summary = shown(summary_in(slack_api, DEPLOYS))
    assert "*Kind*\nrollback" in summary and "*Version*\n1.4.2 → 1.4.1" in summary
    assert f"rollback checkout-api 1.4.1 to staging (request {posted.request_id})" in summary
    assert runtime.deploys().current_version("checkout-api", "staging") == "1.4.1"


def test_a_deploy_that_runs_past_its_timeout_is_stopped_and_reported(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    code = "import time; print('warming up with token=hunter2-very-secret', flush=True); time.sleep(30)"
    add_service(runtime, "slow-api", code, timeout=3)
    posted = request(slack, slack_api, runtime, "slow-api 2.0.0 staging")
    started = time.perf_counter()
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    # While it runs, the one progress message follows the output.
    progress = slack_api.wait_for(
        "chat.update", predicate=lambda c: "warming up" in c.body.get("text", "") and "Running" in c.body["text"]
    )[0]
    assert "token=***" in progress.body["text"] and progress.body["ts"] != posted.ts
    summary = shown(summary_in(slack_api, DEPLOYS))
    assert time.perf_counter() - started < 15
    assert ":alarm_clock: *Deploy slow-api 2.0.0 to staging*: timed out" in summary
    assert "*Outcome*\nTimed out" in summary and "opsbot: stopped after the 3 s timeout" in summary
    assert "hunter2" not in str(slack_api.calls())
    update_showing(slack_api, posted.ts, "*Timed out*")
    assert status(runtime, posted.request_id) == "timed_out"


def test_a_webhook_urls_credentials_are_neither_shown_in_the_channel_nor_stored(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, trigger: ThreadingHTTPServer
) -> None:
    code = "xK9-functions-key-0a1b2c3d4e5f6a7b8c9d"
    base = f"http://127.0.0.1:{trigger.server_port}/api/deploy"
    configs = runtime.store.service_configs()
    configs["hook-api"] = {
        "owners": [PRIYA],
        "environments": {"staging": {"approvals": 1, "approvers": ["payments"]}},
        "deploy": {
            "webhook": {"url": f"http://ci:Pa55-w0rd-9xq@127.0.0.1:{trigger.server_port}/api/deploy?code={code}"}
        },
    }
    runtime.store.replace_services(configs)

    posted = request(slack, slack_api, runtime, "hook-api 2.0.0 staging")
    assert f"`POST {base}`" in posted.text
    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)
    summary = shown(summary_in(slack_api, DEPLOYS))

    assert "*Outcome*\nSucceeded" in summary and f"triggered {base}: HTTP 202" in summary
    assert trigger.paths == [f"/api/deploy?code={code}"]  # type: ignore[attr-defined]
    row = runtime.store.deploy_row(posted.request_id)
    for seen in (str(slack_api.calls()), str(row), str(runtime.store.audit_rows())):
        assert code not in seen and "Pa55-w0rd" not in seen


def test_an_approved_deploy_runs_while_slack_refuses_every_post_and_its_summary_arrives_later(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    slack_api.fail_next("chat.postMessage", status=429, times=3, retry_after="soon")  # not a number of seconds
    slack_api.fail_next("chat.update", status=500, times=4)
    slack_api.fail_next("chat.postMessage", status=502, times=2, html=True)

    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    assert eventually(lambda: status(runtime, posted.request_id), lambda s: s == "succeeded", timeout=30) == "succeeded"
    summary = shown(summary_in(slack_api, DEPLOYS, timeout=60))
    assert "*Outcome*\nSucceeded" in summary
    update_showing(slack_api, posted.ts, "*Succeeded*", timeout=60)
    assert [a["action"] for a in runtime.store.audit_rows()].count("deploy.finished") == 1


def test_a_deploy_timeout_holds_while_slack_hangs_on_every_edit(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    add_service(runtime, "slow-api", "import time\nwhile True: print('step', flush=True); time.sleep(0.2)", timeout=3)
    posted = request(slack, slack_api, runtime, "slow-api 2.0.0 staging")
    slack_api.fail_next("chat.update", status=200, times=3, hang=25)
    started = time.perf_counter()

    click(slack, ids.DEPLOY_APPROVE, posted, MARCUS)

    eventually(lambda: status(runtime, posted.request_id), lambda s: s == "timed_out", timeout=20)
    took = time.perf_counter() - started
    assert status(runtime, posted.request_id) == "timed_out" and took < 10, f"stopped after {took:.1f} s"


def test_a_deploy_left_running_by_a_crash_is_reported_as_interrupted_and_never_rerun(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    with runtime.store.transaction():  # what a crash mid-deploy leaves behind
        assert runtime.store.transition(posted.request_id, "pending", "running", started_at="2026-11-20T10:00:05+00:00")

    (interrupted,) = report_interrupted(runtime)
    assert interrupted.id == posted.request_id and interrupted.status == "interrupted"
    assert slack.web is not None and slack.web.wait_idle(15)
    (note,) = [m for m in slack_api.messages(OPS) if m.get("thread_ts") == posted.ts]
    assert note["text"].startswith(":warning: Interrupted: the opsbot process holding this stopped before it finished")
    assert "it was not re-run" in note["text"]
    assert "Check the service before requesting again." in note["text"]
    update = update_showing(
        slack_api, posted.ts, "Interrupted: the opsbot process holding this stopped before it finished"
    )
    assert not deploy_buttons(update.body)
    assert report_interrupted(runtime) == []  # reported once
    assert not [a for a in runtime.store.audit_rows() if a["action"] == "deploy.finished"]  # never run
    assert request(slack, slack_api, runtime, "checkout-api 1.4.2 staging").request_id  # the lock was released


def test_a_pending_request_survives_a_restart_and_can_be_approved_after_it(
    slack: SlackDriver,
    slack_api: FakeSlackAPI,
    runtime: Runtime,
    clock: Clock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    posted = request(slack, slack_api, runtime, "checkout-api 1.4.2 staging")
    # A new process: its own connection to the same database file, its own app and server.
    store = Store(runtime.store.path)
    restarted = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder(), store=store)
    use_clock(restarted, clock, monkeypatch)
    server, slack_after = start_bot(restarted, slack_api)
    try:
        assert report_interrupted(restarted) == []
        click(slack_after, ids.DEPLOY_APPROVE, posted, MARCUS)
        summary = shown(summary_in(slack_api, DEPLOYS))
        assert "*Outcome*\nSucceeded" in summary and "*Approved by*\nMarcus Oyelaran" in summary
        update_showing(slack_api, posted.ts, "*Succeeded*")
    finally:
        server.stop()
        store.close()
    assert status(runtime, posted.request_id) == "succeeded"


# -- concurrency ----------------------------------------------------------------------------------------


def test_fifty_concurrent_approvals_from_two_processes_start_the_deploy_exactly_once(
    runtime: Runtime, clock: Clock
) -> None:
    pending = runtime.deploys().request("deploy", "checkout-api", "prod", "1.5.0", PRIYA, channel=OPS)
    other = Store(runtime.store.path)  # another process's connection to the same file
    users = [MARCUS, DANIEL, ROSA, OLIVER, PRIYA]
    barrier = threading.Barrier(50)
    decisions: list[tuple[str, Decision]] = []
    errors: list[BaseException] = []
    record = threading.Lock()

    def approve(n: int) -> None:
        store = other if n % 2 else runtime.store
        service = DeployService.from_store(store, clock=clock)
        barrier.wait()
        user = users[n % len(users)]
        try:
            decision = service.approve(pending.id, user)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)
            return
        with record:
            decisions.append((user, decision))

    threads = [threading.Thread(target=approve, args=(n,)) for n in range(50)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        other.close()
    assert not errors and len(decisions) == 50
    started = [d for _, d in decisions if d.start]
    assert len(started) == 1 and started[0].request.status == "running"
    assert {d.outcome for _, d in decisions} <= {"recorded", "approved", "refused", "closed"}
    # Oliver (not an approver) and Priya (the requester) never counted: refused, or closed once it started.
    assert {d.outcome for u, d in decisions if u in (OLIVER, PRIYA)} <= {"refused", "closed"}
    audit = [a for a in runtime.store.audit_rows() if a["request_id"] == pending.id]
    assert [a["action"] for a in audit].count("deploy.started") == 1
    approved = {u for u, d, _ in runtime.store.decisions(pending.id) if d == "approve"}
    assert len(approved) == 2 and approved <= {MARCUS, DANIEL, ROSA}

    finished = runtime.deploys().execute(pending.id)
    assert finished.status == "succeeded"
    assert [a["action"] for a in runtime.store.audit_rows() if a["request_id"] == pending.id].count(
        "deploy.finished"
    ) == 1
