"""The deploy Block Kit builders and argument parsing, without Slack."""

from __future__ import annotations

import dataclasses
import json

from bot.ops.requests import Decision, DeployRequest
from bot.slack import ids
from bot.slack.blocks.deploys import (
    RequestView,
    build_deploy_request_blocks,
    build_deploy_summary_blocks,
    build_progress_text,
    build_refusal_text,
    changes_text,
    code_block,
    format_duration,
)
from bot.slack.deploy_posts import note_of
from bot.slack.deploys import parse_deploy_args, parse_rollback_args
from bot.slack.manifest import build_manifest

REQUEST = DeployRequest(
    id="dep-20261120-abc123",
    kind="deploy",
    service="checkout-api",
    env="prod",
    version="1.4.2",
    from_version="1.4.1",
    requester="U03F8K2LQ1",
    status="pending",
    approvals_needed=2,
    created_at="2026-11-20T10:00:00+00:00",
    expires_at="2026-11-20T10:30:00+00:00",
    started_at=None,
    finished_at=None,
    channel="C0OPS0001",
    message_ts="1700000000.000100",
    exit_code=None,
    log_tail="",
    source="slack",
    commit_sha="",
    commit_time="",
    pipeline_url="",
    changes=(),
    approvers=("U03H1M9TZ4",),
)
VIEW = RequestView(
    "python -m bot.demo_deploy checkout-api 1.4.2 prod dep-20261120-abc123",
    "payments team or sre team or Daniel Okafor",
    {"U03F8K2LQ1": "Priya Raman", "U03H1M9TZ4": "Marcus Oyelaran"},
)


def text(blocks: list[dict]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_a_pending_request_shows_approvals_so_far_what_is_needed_and_the_buttons() -> None:
    blocks = build_deploy_request_blocks(REQUEST, VIEW)
    shown = text(blocks)
    assert "Deploy checkout-api 1.4.1 → 1.4.2 to prod" in shown
    assert "*Approvals:* 1 of 2 (approved by Marcus Oyelaran) · needs 1 more" in shown
    assert "<!date^1795170600^{date_short_pretty} {time}|2026-11-20 10:30 UTC>" in shown
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        (ids.DEPLOY_APPROVE, REQUEST.id),
        (ids.DEPLOY_REJECT, REQUEST.id),
    ]


def test_a_decided_request_has_no_buttons_and_says_how_it_ended() -> None:
    rejected = dataclasses.replace(REQUEST, status="rejected", rejected_by="U03H1M9TZ4")
    blocks = build_deploy_request_blocks(rejected, VIEW)
    assert "*Rejected by Marcus Oyelaran*; nothing ran." in text(blocks)
    assert not [b for b in blocks if b["type"] == "actions"]
    expired = dataclasses.replace(REQUEST, status="expired", approvers=())
    assert "Expired: nobody approved within 30 minutes" in text(build_deploy_request_blocks(expired, VIEW))


def test_the_summary_has_every_fact_the_log_tail_in_a_code_block_and_the_dora_line() -> None:
    done = dataclasses.replace(
        REQUEST,
        status="failed",
        exit_code=1,
        started_at="2026-11-20T10:05:00+00:00",
        finished_at="2026-11-20T10:07:05+00:00",
        approvers=("U03H1M9TZ4", "U04C2RN8VD"),
        log_tail="pulling <image>\n```\nhealth check failed",
    )
    blocks = build_deploy_summary_blocks(done, VIEW, "Deploys: 3 in 7 days")
    shown = text(blocks)
    assert ":x: *Deploy checkout-api 1.4.1 → 1.4.2 to prod*: failed (exit code 1)" in shown
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert "*Approved by*\nMarcus Oyelaran, <@U04C2RN8VD>" in fields and "*Duration*\n2 min 5 s" in fields
    assert "```pulling &lt;image&gt;\n'''\nhealth check failed```" in blocks[2]["text"]["text"]
    assert "Deploys: 3 in 7 days" in shown


def test_progress_and_refusals_read_well() -> None:
    running = dataclasses.replace(REQUEST, status="running")
    progress = build_progress_text(running, VIEW.command, "step 1\nstep 2\n")
    assert progress.startswith(":hourglass_flowing_sand: Running `python -m bot.demo_deploy") and "step 2" in progress
    refused = Decision(REQUEST, "refused", "you requested this; someone else has to approve it.")
    assert (
        build_refusal_text(refused) == "Your click did not count: you requested this; someone else has to approve it."
    )
    expired = Decision(dataclasses.replace(REQUEST, status="expired"), "closed", "this request is already expired.")
    assert "`/deploy checkout-api 1.4.2 prod`" in build_refusal_text(expired)


def test_long_logs_keep_their_end_and_durations_are_readable() -> None:
    block = code_block("\n".join(f"line {n}" for n in range(2000)), limit=200)
    assert block.startswith("```…") and block.endswith("line 1999```") and len(block) < 220
    assert code_block("") == "```(no output)```"
    assert [format_duration(s) for s in (None, 0.2, 42, 125)] == ["n/a", "under 1 s", "42 s", "2 min 5 s"]


def test_arguments_keep_a_hostile_version_whole_so_it_is_refused_by_name() -> None:
    assert parse_deploy_args("checkout-api 1.2.3; rm -rf / staging") == ("checkout-api", "1.2.3; rm -rf /", "staging")
    assert parse_deploy_args("checkout-api 1.4.2 prod") == ("checkout-api", "1.4.2", "prod")
    assert parse_deploy_args("checkout-api prod") is None
    assert parse_rollback_args("checkout-api prod") == ("checkout-api", "prod", None)
    assert parse_rollback_args("checkout-api prod 1.4.1") == ("checkout-api", "prod", "1.4.1")
    assert parse_rollback_args("checkout-api") is None


def test_the_manifest_registers_deploy_and_rollback() -> None:
    commands = {c["command"]: c for c in build_manifest()["features"]["slash_commands"]}
    assert commands["/deploy"]["usage_hint"] == "SERVICE [VERSION ENV]"
    assert commands["/rollback"]["usage_hint"] == "SERVICE ENV [VERSION]"


def test_a_request_withdrawn_from_the_command_line_says_by_whom_and_why_and_has_no_buttons() -> None:
    withdrawn = dataclasses.replace(REQUEST, status="rejected", rejected_by="cli:alice", note="typed in a closed shell")
    rejected = dataclasses.replace(REQUEST, status="rejected", rejected_by="U03H1M9TZ4")

    shown = text(build_deploy_request_blocks(withdrawn, VIEW))

    assert "Withdrawn from the command line by alice*; nothing ran" in shown
    assert note_of(withdrawn) == "Why: typed in a closed shell"  # shown under the message, as the view's note
    assert "Why:" not in note_of(dataclasses.replace(withdrawn, note="opsbot chose the version"))  # no reason given
    assert ids.DEPLOY_APPROVE not in shown and ids.DEPLOY_REJECT not in shown
    assert "Rejected by Marcus Oyelaran" in text(build_deploy_request_blocks(rejected, VIEW))


def test_a_request_handed_to_ci_says_it_holds_the_service_and_one_never_reported_says_the_outcome_is_unknown() -> None:
    handed = dataclasses.replace(REQUEST, status="awaiting_ci", started_at="2026-11-20T10:05:00+00:00", exit_code=0)
    silent = dataclasses.replace(handed, status="abandoned", note="its pipeline took the trigger and sent no report")

    waiting, unknown = text(build_deploy_request_blocks(handed, VIEW)), text(build_deploy_request_blocks(silent, VIEW))

    assert "*Handed to CI*" in waiting and "holds checkout-api prod until the pipeline reports" in waiting
    assert "*Handed to CI*" in build_progress_text(handed, "POST https://ci.example.com/x", "HTTP 202", final=True)
    assert "*No report from the pipeline*: its pipeline took the trigger and sent no report." in unknown
    assert "The outcome is unknown" in unknown
    assert ids.DEPLOY_APPROVE not in waiting + unknown


def test_a_long_list_of_changes_shows_whole_lines_and_counts_the_rest() -> None:
    # Before, 15 escaped lines were cut at the section's limit: mid-line, mid-entity, and the count lost.
    changes = tuple(f"#{n} fix <Pool> & retry when a > b " + "x" * 250 for n in range(40))
    shown = changes_text(dataclasses.replace(REQUEST, source="ci", changes=changes))
    *lines, more = shown.splitlines()
    assert len("*Changes*\n" + shown) <= 2900 and 0 < len(lines) < 15
    assert all(line.startswith("• #") and line.endswith("x" * 250) for line in lines)
    assert more == f"…and {40 - len(lines)} more"
    assert changes_text(dataclasses.replace(REQUEST, changes=changes[:2])).count("•") == 2  # short lists stay whole
    alone = changes_text(dataclasses.replace(REQUEST, changes=("&" * 3000,)))  # longer than a section by itself
    assert len(alone) <= 2890 and alone.endswith("…") and "&amp" in alone and not alone.endswith("&amp…")


def test_where_a_service_stands_names_a_pipeline_as_ci_and_an_unknown_requester_by_mention() -> None:
    from bot.ops.deploy_rules import EnvState
    from bot.ops.requests import new_row
    from bot.slack.blocks.deploys import build_standing_blocks

    def request(request_id: str, **fields: object) -> DeployRequest:
        return DeployRequest.from_row(new_row(request_id, service="web", version="2.0.0", **fields), [])

    states = [
        EnvState("staging", None, None, request("dep-1", env="staging", status="awaiting_ci", requester="ci:gha")),
        EnvState("prod", None, None, request("dep-2", env="prod", requester="U0STRANGER")),
    ]
    shown = json.dumps(build_standing_blocks("web", states, {}, "usage"))

    assert "deploy of 2.0.0 handed to CI, waiting for its report, `dep-1`, requested by CI (gha)" in shown
    assert "deploy of 2.0.0 waiting for approval, `dep-2`, requested by <@U0STRANGER>" in shown
