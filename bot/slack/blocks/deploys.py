"""Pure functions that build the Block Kit of deploy and rollback requests, progress and summaries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from bot.slack import ids
from bot.slack.blocks.mrkdwn import MAX_TEXT, confirm, context, escape, link, section

if TYPE_CHECKING:  # types only: building blocks needs neither the store nor a service
    from bot.ops.requests import Decision, DeployRequest

PROGRESS_LINES = 12
ICONS = {
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "timed_out": ":alarm_clock:",
    "interrupted": ":warning:",
    "cancelled": ":no_entry:",
    "abandoned": ":grey_question:",
    "awaiting_ci": ":arrows_counterclockwise:",
}
INTERRUPTED_TEXT = (
    ":warning: Interrupted: the opsbot process holding this stopped before it finished (it may have been waiting "
    "for a free worker); its command, if it had started, was stopped too, and it was not re-run. Check the service "
    "before requesting again."
)


@dataclass(frozen=True)
class RequestView:
    """What a request message shows besides the request itself, worked out by the handlers."""

    command: str  # what will run, e.g. `python -m bot.demo_deploy checkout-api 1.4.2 staging dep-...`
    may_approve: str  # who may still approve, in words (not the requester, nor who already approved)
    names: Mapping[str, str] = field(default_factory=dict)  # user id -> name on the roster
    note: str = ""  # e.g. which version opsbot chose for a rollback
    emergency: str = ""  # the emergency rule it goes under, in words
    rollback_to: str = ""  # after a failed deploy: the last good version, offered by a Rollback button
    approvals: tuple[int, int] | None = None  # (approvals that count, approvals needed) under services.yaml now
    over_failed: str = ""  # a pending deploy: the newest run failed after From, and may be half rolled out

    def name(self, user: str) -> str:
        return self.names.get(user) or f"<@{user}>"


def slack_time(iso: str | None) -> str:
    """A time every reader sees in their own time zone, with the UTC time as fallback."""
    if not iso:
        return "n/a"
    when = datetime.fromisoformat(iso)
    fallback = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(when.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def took(request: DeployRequest) -> str:
    """` in 42 s`, or nothing for a CI run reported only at its finish: how long it ran is not known."""
    return f" in {format_duration(request.duration_s)}" if request.duration_s is not None else ""


def ttl_minutes(request: DeployRequest) -> int:
    """How long the request could wait for approvals."""
    if not (request.created_at and request.expires_at):
        return 0
    delta = datetime.fromisoformat(request.expires_at) - datetime.fromisoformat(request.created_at)
    return round(delta.total_seconds() / 60)


def code_block(text: str, limit: int = MAX_TEXT - 200) -> str:
    """A log in a code block: the last lines that fit, never breaking out of the block."""
    text = escape(text.replace("```", "'''")).rstrip()
    if len(text) > limit:
        text = "…" + text[-limit:].split("\n", 1)[-1]
    return f"```{text or '(no output)'}```"


def outcome_text(request: DeployRequest) -> str:
    """`Succeeded`, `Failed (exit code 1)`, `Timed out` ..."""
    if request.status == "awaiting_ci":
        return "Handed to CI"
    word = request.status.replace("_", " ").capitalize()
    return word + (f" (exit code {request.exit_code})" if request.exit_code not in (None, 0) else "")


def names_of(view: RequestView, users: tuple[str, ...]) -> str:
    return ", ".join(view.name(u) for u in users) or "nobody yet"


def request_title(request: DeployRequest) -> str:
    icon = ":rewind:" if request.kind == "rollback" else ":rocket:"
    return f"{icon} *{escape(request.title)}*"


def status_text(request: DeployRequest, view: RequestView) -> str:
    """One paragraph on where the request stands: approvals, running, or how it ended."""
    approved = names_of(view, request.approvers)
    if request.status == "pending":
        counted, needed = view.approvals or (len(request.approvers), request.approvals_needed)
        return (
            f"*Approvals:* {counted} of {needed} "
            f"(approved by {approved}) · needs {max(needed - counted, 0)} more from {view.may_approve}; "
            "not the requester.\n"
            f"*Expires* {slack_time(request.expires_at)} if not approved within {ttl_minutes(request)} minutes."
        )
    if request.status == "running":
        return f":hourglass_flowing_sand: *Running* since {slack_time(request.started_at)} · approved by {approved}."
    if request.status == "awaiting_ci":
        taken = f"{escape(request.note)};" if request.note else "the pipeline took the trigger and is deploying;"
        return (
            f"{ICONS['awaiting_ci']} *Handed to CI*: {taken} this {request.kind} holds {escape(request.service)} "
            f"{escape(request.env)} until the pipeline reports how it went · approved by {approved}."
        )
    if request.status == "abandoned":
        return (
            f"{ICONS['abandoned']} *No report from the pipeline*: {escape(request.note)}. The outcome is unknown: "
            f"check the pipeline · approved by {approved}."
        )
    if request.status == "rejected" and request.rejected_by.startswith("cli:"):  # the reason is the view's note
        return f":no_entry: *Withdrawn from the command line by {escape(request.rejected_by[4:])}*; nothing ran."
    if request.status == "rejected":
        return f":no_entry: *Rejected by {view.name(request.rejected_by)}*; nothing ran."
    if request.status == "expired":
        if request.approvers:
            why = f"only {len(request.approvers)} of {request.approvals_needed} approvals ({approved})"
        else:
            why = "nobody approved"
        return f":hourglass: *Expired: {why} within {ttl_minutes(request)} minutes*; nothing ran."
    if request.status == "interrupted":
        return INTERRUPTED_TEXT
    if request.status == "cancelled":
        why = escape(request.note.removeprefix("not started: "))
        return f":no_entry: *Approved but not started*: {why} Nothing ran."
    return (
        f"{ICONS.get(request.status, '')} *{outcome_text(request)}* in {format_duration(request.duration_s)} · "
        f"approved by {approved}. "
        "Summary and log in the thread."
    )


def build_deploy_request_blocks(request: DeployRequest, view: RequestView) -> list[dict]:
    """The request message: what will run, from/to, approvals, expiry; Approve/Reject while pending."""
    facts = (
        f"*Service:* {request.service} · *Environment:* {request.env} · "
        f"*From:* {request.from_version or 'nothing deployed by opsbot yet'} · *To:* {request.version}\n"
        f"*Requested by:* {view.name(request.requester)} · *Request:* `{request.id}`\n"
        f"*Will run:* `{escape(view.command)}`"
    )
    blocks = [section(request_title(request)), section(facts)]
    if view.note:
        blocks.append(context(view.note, ids.DEPLOY_NOTE_BLOCK))
    if view.over_failed and request.status == "pending":
        blocks.append(context(view.over_failed))
    if view.emergency:
        blocks.append(context(view.emergency, ids.DEPLOY_EMERGENCY_BLOCK))
    blocks.append(section(status_text(request, view)))
    if request.status == "pending":
        blocks.append(build_decision_buttons(request, view))
    return blocks


def build_decision_buttons(request: DeployRequest, view: RequestView) -> dict:
    what = "rollback" if request.kind == "rollback" else "deploy"
    approve = {
        "type": "button",
        "action_id": ids.DEPLOY_APPROVE,
        "style": "primary",
        "text": {"type": "plain_text", "text": "Approve"},
        "value": request.id,
        "confirm": confirm(
            f"Approve this {what}?", f"{escape(request.title)}\nRuns `{escape(view.command)}`.", "Approve"
        ),
    }
    reject = {
        "type": "button",
        "action_id": ids.DEPLOY_REJECT,
        "style": "danger",
        "text": {"type": "plain_text", "text": "Reject"},
        "value": request.id,
    }
    return {"type": "actions", "block_id": ids.DEPLOY_ACTIONS_BLOCK, "elements": [approve, reject]}


def request_fallback_text(request: DeployRequest) -> str:
    """Plain text for notifications."""
    if request.status == "pending":
        return f"{request.title}: needs {request.still_needed} approval(s)"
    return f"{request.title}: {request.status.replace('_', ' ')}"


def build_progress_text(request: DeployRequest, command: str, output: str, final: bool = False) -> str:
    """The one thread message that follows the output while it runs."""
    tail = "\n".join(output.splitlines()[-PROGRESS_LINES:])
    if final:
        head = f"{ICONS.get(request.status, '')} *{outcome_text(request)}*: `{escape(command)}`"
    else:
        head = f":hourglass_flowing_sand: Running `{escape(command)}`…"
    return f"{head}\n{code_block(tail, 2000)}"


def build_refusal_text(decision: Decision) -> str:
    """What someone who clicked but may not (or can no longer) decide is told, only them."""
    request = decision.request
    if decision.outcome == "closed" and request.status == "expired":
        again = f"/{request.kind} {request.service} " + (
            f"{request.env} {request.version}" if request.kind == "rollback" else f"{request.version} {request.env}"
        )
        return (
            f"This request expired: nobody approved enough within {ttl_minutes(request)} minutes, so nothing ran. "
            f"Ask the requester to request it again (`{again}`)."
        )
    if decision.outcome == "closed":
        return f"Nothing to decide: {request.id} is already {request.status.replace('_', ' ')}."
    return f"Your click did not count: {decision.message}"


def build_deploy_summary_blocks(
    request: DeployRequest, view: RequestView, dora_line: str, reported: str = ""
) -> list[dict]:
    """After every deploy or rollback: what ran, who asked and approved, how it went, the log tail, DORA.

    ``reported``: ``settled`` when the pipeline the run triggered reported the outcome it was waited for,
    ``changed`` when it has since reported an outcome other than the one shown last.
    """
    outcome = outcome_text(request)
    ci = request.source == "ci"
    fields = [
        ("Service", request.service),
        ("Kind", request.kind),
        ("Version", f"{request.from_version or 'none recorded'} → {request.version}"),
        ("Environment", request.env),
        ("Deployed by" if ci else "Requested by", ci_actor(request, view) if ci else view.name(request.requester)),
        ("Pipeline" if ci else "Approved by", pipeline_link(request) if ci else names_of(view, request.approvers)),
        ("Started", slack_time(request.started_at) if request.start_known else "not reported by CI"),
        ("Duration", format_duration(request.duration_s) if request.start_known else "unknown"),
        ("Outcome", outcome),
    ]
    if ci and request.commit_sha:
        fields.append(("Commit", f"`{request.commit_sha[:12]}`"))
    elif reported:
        fields.append(("Reported by", f"its {pipeline_link(request) if request.pipeline_url else 'pipeline'}"))
    blocks = [
        section(f"{ICONS.get(request.status, '')} *{escape(request.title)}*: {outcome.lower()}"),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields[:10]]},
    ]
    flagged = flags_block(request)
    if flagged:
        blocks.append(flagged)
    if ci:
        blocks.append(section(f"*Changes*\n{changes_text(request)}"))
    else:
        if reported == "settled":
            blocks.append(context(f"opsbot's run triggered the pipeline; *{outcome.lower()}* is what it reported."))
        elif reported:
            blocks.append(
                context(
                    f"The pipeline this {request.kind} triggered reported *{outcome.lower()}* after opsbot's "
                    "run of it ended: the pipeline's word counts."
                )
            )
        blocks.append(section(f"*Log tail* (secrets scrubbed)\n{code_block(request.log_tail)}"))
    if view.emergency:
        blocks.append(context(view.emergency, ids.DEPLOY_EMERGENCY_BLOCK))
    blocks.append(context(f"*DORA* {request.service} in {request.env}, 30 days: {escape(dora_line)}"))
    if view.rollback_to:
        blocks.append(build_rollback_button(request, view.rollback_to))
    return blocks


def rollback_button_value(request: DeployRequest, version: str) -> str:
    """What the Rollback button of a failed deploy's summary carries: the rollback to request, and why."""
    return json.dumps({"service": request.service, "env": request.env, "version": version, "deploy": request.id})


def build_rollback_button(request: DeployRequest, version: str) -> dict:
    """Under a failed deploy's summary: request a rollback to the last good version (it still needs approvals)."""
    button = {
        "type": "button",
        "action_id": ids.DEPLOY_ROLLBACK,
        "text": {"type": "plain_text", "text": f"Roll back to {version}"[:75]},
        "value": rollback_button_value(request, version),
        "confirm": confirm(
            "Request a rollback?",
            f"This requests a rollback of *{request.service}* in {request.env} to {escape(version)}, "
            "the last version that succeeded there; it runs only once approved.",
            "Request",
        ),
    }
    return {"type": "actions", "block_id": ids.DEPLOY_ACTIONS_BLOCK, "elements": [button]}


def emergency_text(
    service: str, incident: str, severity: int, approvals: int, usual: int, private: bool = False
) -> str:
    """The line that announces a rollback under its environment's emergency rule (``private``: the incident is worked
    in a private channel, and the request is posted where that channel's members may not be: it is not named)."""
    sev = f"SEV{severity}, " if severity else ""
    if private:
        what = f"an open {f'SEV{severity} ' if severity else ''}incident worked in a private channel"
    else:
        what = f"{incident} ({sev}open)"
    return (
        f":rotating_light: *Emergency rule:* {what} is on {service}, so this rollback needs "
        f"{approvals} approval(s) instead of {usual} (services.yaml `emergency`)."
    )


# -- deploys reported by CI/CD -----------------------------------------------------------------------------


def ci_actor(request: DeployRequest, view: RequestView) -> str:
    """The actor a pipeline named, as plain text marked CI: a pipeline's word is never taken for a person's."""
    return f"{escape(request.requester.removeprefix('ci:'))} (CI)"


def flags_block(request: DeployRequest) -> dict | None:
    """What a CI deploy broke (a freeze, someone else's lock), in a warning line; None when nothing."""
    if not request.flags:
        return None
    return context(":warning: *Outside the rules:* " + "; ".join(escape(f) for f in request.flags))


def pipeline_link(request: DeployRequest) -> str:
    return link(request.pipeline_url, "pipeline") if request.pipeline_url else "not given"


def changes_text(request: DeployRequest, limit: int = 15, room: int = MAX_TEXT - len("*Changes*\n")) -> str:
    """The changes a pipeline listed, whole lines within ``room`` characters (escaped, as Slack counts them), and
    how many more: a cut at the section's limit would lose the count and end mid-line or mid-entity."""
    if not request.changes:
        return "none listed"
    more = len("…and 9999 more") + 1
    lines: list[str] = []
    used = 0
    for change in request.changes[:limit]:
        line = f"• {escape(change)}"
        if used + len(line) + 1 > room - more:
            if lines:
                break
            line = f"• {escape(change[: (room - more) // 6])}…"  # an escaped character is at most 5 long
        lines.append(line)
        used += len(line) + 1
    shown = len(lines)
    if len(request.changes) > shown:
        lines.append(f"…and {len(request.changes) - shown} more")
    return "\n".join(lines)


def build_ci_deploy_blocks(request: DeployRequest, view: RequestView) -> list[dict]:
    """The message of a deploy a pipeline reported: running, then how it ended."""
    facts = (
        f"*Service:* {request.service} · *Environment:* {request.env} · "
        f"*From:* {request.from_version or 'none recorded'} · *To:* {request.version}\n"
        f"*Deployed by:* {ci_actor(request, view)} · *Pipeline:* {pipeline_link(request)} · *Request:* `{request.id}`"
    )
    if request.status == "running":
        state = f":hourglass_flowing_sand: *Running* in CI since {slack_time(request.started_at)}."
    elif request.status == "overlapping":
        state = (
            f":warning: *Running* in CI since {slack_time(request.started_at)}, *overlapping* another deploy of "
            f"{request.service} in {request.env}: no request can be approved until it ends."
        )
    elif request.status == "abandoned":
        state = f":grey_question: *No end reported*: {escape(request.note)}; the outcome is unknown."
    else:
        state = f"{ICONS.get(request.status, '')} *{outcome_text(request)}*{took(request)}. Summary in the thread."
    blocks = [section(f"{request_title(request)} (CI)"), section(facts)]
    flagged = flags_block(request)
    if flagged:
        blocks.append(flagged)
    if request.changes:
        blocks.append(context(f"*Changes:* {escape('; '.join(request.changes))}"))
    blocks.append(section(state))
    return blocks


def summary_fallback_text(request: DeployRequest) -> str:
    return f"{request.title}: {request.status.replace('_', ' ')}"


ACTIVE_WORDS = {
    "pending": "waiting for approval",
    "running": "running now",
    "awaiting_ci": "handed to CI, waiting for its report",
    "overlapping": "running in CI, overlapping another deploy",
}


def _requester(user: str, names: dict[str, str]) -> str:
    """Who asked, in mrkdwn: their roster name, a pipeline as "CI (name)", else a mention of the Slack id."""
    if user in names:
        return escape(names[user])
    if user.startswith("ci:"):
        return escape(f"CI ({user[3:]})")
    return f"<@{user}>"


def build_standing_blocks(service: str, states: list, names: dict[str, str], usage: str) -> list[dict]:
    """`/deploy SERVICE`: per environment, what runs there, a failed run after it, and the request holding its lock
    (``states``: ``DeployRules.where_things_stand``)."""
    lines = [f":rocket: *{escape(service)}*, by opsbot's record"]
    for state in states:
        current = state.current
        if current is None:
            line = f"*{escape(state.env)}*: nothing deployed by opsbot yet"
        else:
            how = "rolled back to" if current.kind == "rollback" else "runs"
            line = (
                f"*{escape(state.env)}*: {how} *{escape(current.version)}*, `{current.id}`, "
                f"finished {slack_time(current.finished_at)}"
            )
        if state.failed is not None:
            ended = outcome_text(state.failed).lower()
            line += (
                f"\n    :warning: then {escape(state.failed.version)} {ended}, `{state.failed.id}`, "
                f"{slack_time(state.failed.finished_at)}: it may be partly rolled out"
            )
        if state.active is not None:
            active = state.active
            word = ACTIVE_WORDS.get(active.status, active.status.replace("_", " "))
            line += (
                f"\n    {'rollback' if active.kind == 'rollback' else 'deploy'} of {escape(active.version)} "
                f"{word}, `{active.id}`, requested by {_requester(active.requester, names)}"
            )
        lines.append(line)
    return [section("\n".join(lines)[:MAX_TEXT]), context(usage)]
