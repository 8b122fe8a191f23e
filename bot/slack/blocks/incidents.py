"""Pure functions that build the Block Kit of incidents: the declaration briefing, status, list and summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.models import SearchHit
from bot.slack import ids
from bot.slack.blocks.mrkdwn import MAX_TEXT, confirm, context, escape, link, section

if TYPE_CHECKING:  # types only: building blocks needs neither the store nor a service
    from bot.ops.incidents import Cause, LiveIncident
    from bot.ops.requests import DeployRequest

MAX_DEPLOYS = 10
TIMELINE_LINES = 25
ENTRY_CHARS = 300  # one timeline entry in a summary (a pinned message can be 40,000); the full text stays stored
TIMELINE_CHARS = MAX_TEXT - 100  # room in its section for the heading and the "earlier entries" line
LIST_TITLE = 200
INPUT_CHARS = 3000  # Block Kit's limit for a text input: its initial value and what can be typed into it
LIST_MORE = "… and {count} more: `opsbot incidents list` on the opsbot server lists them all."
LIST_PRIVATE = "{count} more open in private channel{s}: `/incident list` in each shows its own."
# Slack references that must survive escaping: mentions, channels, special mentions and links.
USAGE = (
    "*Usage:*\n"
    "• `/incident declare TITLE [sev1-4] [--service NAME] [--env NAME]`: record an incident and brief the "
    "channel; the severity may also be written `SEV-2` or `--sev 2`, the environment defaults to production\n"
    "• `/incident status` · `/incident list`\n"
    "• `/incident note TEXT` · `/incident update TEXT` (a status update) · `/incident rootcause TEXT`\n"
    "• `/incident assign @user lead|comms` (or `/incident role comms @user`) · `/incident severity 1-4` "
    "(or `/incident sev2`)\n"
    "• `/incident service NAME [NAME ...]`: services found to be involved later; shows their recent deploys "
    "with Rollback buttons (`--remove NAME`: one named by mistake)\n"
    "• `/incident resolve RESOLUTION [--root-cause TEXT]`: close it, post the summary and make it searchable; "
    "without text it opens a dialog\n"
    "• `/incident cancel [REASON]`: declared by mistake; never searchable or counted, the timeline is kept\n"
    "In the incident's channel the id is not needed; elsewhere put it after the subcommand, for example "
    "`/incident note INC-2026-0042 checkout pods restarted`."
)


def clock_time(at: str | datetime, now: datetime | None = None) -> str:
    """`14:05 UTC`: short, and the same for everyone reading a timeline; `Sat 05 Dec 14:05 UTC` for a time not of
    the day the message is written (an alert firing since the day before), whose date a reader would otherwise
    take for the message's own."""
    when = datetime.fromisoformat(at) if isinstance(at, str) else at
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return when.strftime("%H:%M UTC" if when.date() == today else "%a %d %b %H:%M UTC")


def minutes_text(minutes: int | None) -> str:
    if minutes is None:
        return "n/a"
    if minutes < 90:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min"


def title_line(incident: LiveIncident) -> str:
    return f"*{incident.id}* · SEV{incident.severity} · {escape(incident.title)}"


def roles_text(incident: LiveIncident) -> str:
    roles = [f"{role} <@{user}>" for role, user in sorted(incident.roles.items()) if user]
    return ", ".join(roles) or "nobody assigned"


def build_declared_blocks(incident: LiveIncident, cause: Cause | None = None) -> list[dict]:
    """The first message of an incident: what, how bad, who leads, and how to work it from here."""
    services = ", ".join(incident.services) or "none named"
    lines = [
        f":rotating_light: {title_line(incident)}",
        f"*Declared by* <@{incident.declared_by}> at {clock_time(incident.declared_at)} · *Roles:* "
        f"{roles_text(incident)} · *Services:* {escape(services)} · *Environment:* {escape(incident.env or 'none')}",
    ]
    blocks = [section("\n".join(lines))]
    if cause is not None:
        blocks.append(section(cause_text(cause)))
    blocks.append(
        context(
            "Work it from here: `/incident note TEXT`, `/incident update TEXT`, `/incident assign @user lead|comms`, "
            "`/incident severity N`, `/incident service NAME`, `/incident rootcause TEXT`, `/incident status`, "
            "`/incident resolve RESOLUTION` "
            "(or `/incident cancel` if it was declared by mistake). React with the pin emoji to add a message "
            "to the timeline."
        )
    )
    return blocks


def cause_text(cause: Cause) -> str:
    """An incident's possible cause, counted from when its failure began (as the DORA figures count it)."""
    began = "the alert started firing" if cause.since_alert else "the declaration"
    return possible_cause_text(cause.deploy, cause.minutes, began)


def possible_cause_text(deploy: DeployRequest, minutes: int, before: str = "the declaration") -> str:
    return (
        f":mag: *Possible cause:* deploy {escape(deploy.version)} of {deploy.service} to {deploy.env} "
        f"(`{deploy.id}`) finished {minutes_text(minutes)} before {before}."
    )


def _hit_line(hit: SearchHit) -> str:
    title = link(hit.url, escape(hit.title)) if hit.url else f"*{escape(hit.title)}*"
    where = f"_{escape(hit.section)}_" if hit.section else ""
    if where and hit.section_url != hit.url:  # link the section itself
        where = link(hit.section_url, where)
    where = f" · {where}" if where else ""
    return f"{title}{where}\n>{escape(hit.snippet)[:600]}\n`{escape(hit.path)}`"


def build_knowledge_blocks(runbooks: list[SearchHit], similar: list[tuple[SearchHit, str]]) -> list[dict]:
    """Related runbook sections, then similar past incidents with how each was resolved."""
    blocks = [section("*Related runbook sections*")]
    if runbooks:
        blocks += [section(_hit_line(h)) for h in runbooks]
    else:
        blocks.append(context("No runbook section matches this title closely; `/ask` with the alert may find more."))
    blocks.append(section("*Similar past incidents*"))
    if similar:
        for hit, resolution in similar:
            text = f"*{hit.incident_id}* · {escape(hit.title)}"
            if resolution:
                text += f"\n*Resolved by:* {escape(resolution)[:900]}"
            text += f"\n`{hit.path}`"
            blocks.append(section(text))
    else:
        blocks.append(context("No similar past incident."))
    return blocks


def rollback_value(incident_id: str, deploy: DeployRequest) -> str:
    """What a Rollback button carries: enough to request the rollback and note it in the timeline."""
    return deploy_button_value({"incident": incident_id}, deploy)


def deploy_button_value(origin: dict[str, str], deploy: DeployRequest) -> str:
    """A Rollback button's value: where it was pressed from (``{"incident": id}`` or ``{"alert": id}``) and the
    deploy it undoes."""
    return json.dumps({**origin, "service": deploy.service, "env": deploy.env, "deploy": deploy.id})


NO_SERVICE_TEXT = "No service named, so no recent deploys to show: name one with `/incident service NAME`."


def build_recent_deploys_blocks(incident: LiveIncident, deploys: list[DeployRequest]) -> list[dict]:
    """The affected services' deploys of the last 24 hours; a Rollback button on each that succeeded."""
    if not incident.services:
        return [context(NO_SERVICE_TEXT)]
    return build_deploys_blocks(incident.services, deploys, {"incident": incident.id}, ids.INCIDENT_ROLLBACK)


def build_deploys_blocks(
    services: tuple[str, ...], deploys: list[DeployRequest], origin: dict[str, str], action_id: str
) -> list[dict]:
    """Deploys of ``services`` in the last 24 hours, newest first; a Rollback button (``action_id``, carrying
    ``origin``) on each that succeeded."""
    names = ", ".join(services)
    if not deploys:
        return [section(f"*Deploys of {names} in the last 24 h:* none.")]
    blocks = [section(f"*Deploys of {names} in the last 24 h*")]
    for deploy in deploys[:MAX_DEPLOYS]:
        arrow = f"{escape(deploy.from_version)} → " if deploy.from_version else ""
        text = (
            f"{'Rollback' if deploy.kind == 'rollback' else 'Deploy'} *{deploy.service}* {arrow}"
            f"*{escape(deploy.version)}* to {deploy.env} · {deploy.status.replace('_', ' ')} "
            f"{'at' if deploy.completed else 'requested at'} {clock_time(deploy.latest_at)} · `{deploy.id}`"
        )
        block = section(text)
        if deploy.kind == "deploy" and deploy.status == "succeeded":
            block["accessory"] = {
                "type": "button",
                "action_id": action_id,
                "text": {"type": "plain_text", "text": "Rollback"},
                "value": deploy_button_value(origin, deploy),
                "confirm": confirm(
                    "Request a rollback?",
                    f"This requests a rollback of *{deploy.service}* in {deploy.env} to the version "
                    "before the current one; it runs only once approved.",
                    "Request",
                ),
            }
        blocks.append(block)
    if len(deploys) > MAX_DEPLOYS:
        blocks.append(context(f"{len(deploys) - MAX_DEPLOYS} more; `opsbot deploys` lists them all."))
    return blocks


def timeline_lines(incident: LiveIncident, limit: int = TIMELINE_LINES, budget: int = TIMELINE_CHARS) -> str:
    """The newest entries that fit in one section, each cut to ENTRY_CHARS; the older ones are counted first.

    Cut from the oldest end: the section's own cut at its size limit would drop the newest (the resolution).
    """
    kept: list[str] = []
    used = 0
    for e in reversed(incident.events):
        text = e["text"] if len(e["text"]) <= ENTRY_CHARS else e["text"][: ENTRY_CHARS - 1] + "…"
        line = f"`{clock_time(e['at'])}` <@{e['actor']}> {escape(text)}"
        if len(kept) == limit or used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    earlier = len(incident.events) - len(kept)
    lines = ([f"… {earlier} earlier entries"] if earlier else []) + kept[::-1]
    return "\n".join(lines) or "(empty)"


def build_status_blocks(incident: LiveIncident) -> list[dict]:
    """Where an incident stands, for whoever asked."""
    state = f"resolved at {clock_time(incident.resolved_at)}" if incident.resolved_at else incident.status
    facts = (
        f"{title_line(incident)}\n*Status:* {state} · *Roles:* {roles_text(incident)} · "
        f"*Services:* {escape(', '.join(incident.services) or 'none named')} · "
        f"*Environment:* {escape(incident.env or 'none')} "
        f"· *Channel:* <#{incident.channel}>\n"
        f"*Declared by* <@{incident.declared_by}> at {clock_time(incident.declared_at)}"
    )
    cause = [section(f"*Root cause*\n{escape(incident.root_cause)}")] if incident.root_cause else []
    return [section(facts), *cause, section(f"*Timeline*\n{timeline_lines(incident)}")]


def list_line(incident: LiveIncident) -> str:
    """One incident of `/incident list`; a long title is cut, so that one incident never fills the message."""
    title = incident.title if len(incident.title) <= LIST_TITLE else incident.title[: LIST_TITLE - 1] + "…"
    lead = incident.roles.get("lead", incident.declared_by)
    return (
        f"• *{incident.id}* · SEV{incident.severity} · {escape(title)} · <#{incident.channel}> · lead <@{lead}> · "
        f"declared {clock_time(incident.declared_at)}"
    )


def build_list_text(incidents: list[LiveIncident], private: int = 0) -> str:
    """The open incidents, one line each; those that do not fit in one message are counted, never cut mid-line.
    ``private``: how many more are open in private channels, counted and not named."""
    tail = [LIST_PRIVATE.format(count=private, s="" if private == 1 else "s")] if private else []
    if not incidents:
        none = "No open incidents. Declare one with `/incident declare TITLE [sev1-4] [--service NAME]`."
        return f"No open incidents to show here; {tail[0]}" if tail else none
    lines = [f"*Open incidents ({len(incidents)})*"]
    rows = [list_line(i) for i in incidents]
    room = MAX_TEXT - len(lines[0]) - len(LIST_MORE.format(count=len(rows))) - sum(len(t) + 1 for t in tail) - 2
    for shown, row in enumerate(rows):
        if len(row) + 1 > room:
            return "\n".join([*lines, LIST_MORE.format(count=len(rows) - shown), *tail])
        lines.append(row)
        room -= len(row) + 1
    return "\n".join([*lines, *tail])


def build_resolved_blocks(incident: LiveIncident) -> list[dict]:
    """The summary after resolve: time to restore, responders, resolution and the whole timeline.

    It is stored with the resolve, before the incident is indexed, so it says what happens next, not what did.
    """
    responders = ", ".join(f"<@{r}>" for r in incident.responders) or "nobody recorded"
    facts = [
        ("Severity", f"SEV{incident.severity}"),
        ("Time to restore", minutes_text(incident.minutes_to_restore)),
        ("Responders", responders),
        ("Services", escape(", ".join(incident.services) or "none named")),
    ]
    learned = (
        "opsbot is indexing it now; then it is searchable with `/ask` and counts for `/experts` (a note follows "
        "here if that fails). `opsbot incidents export` writes it to the knowledge directory."
    )
    if incident.private:
        learned = (
            "It was worked in a private channel, so it is not indexed: `/ask` and `/experts` answer every channel. "
            f"`opsbot incidents export {incident.id}` on the opsbot server writes it to the knowledge directory, "
            "where the next `opsbot index` makes it searchable, if your team wants it found."
        )
    return [
        section(f":white_check_mark: *Resolved:* {title_line(incident)}"),
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:1900]} for k, v in facts]},
        section(f"*Resolution*\n{escape(incident.resolution)}"),
        *([section(f"*Root cause*\n{escape(incident.root_cause)}")] if incident.root_cause else []),
        section(f"*Timeline*\n{timeline_lines(incident)}"),
        context(learned),
    ]


def not_indexed_text(incident: LiveIncident) -> str:
    """The note after a summary when indexing the resolved incident failed: what that means and how to fix it."""
    return (
        f":warning: {incident.id} could not be indexed, so it is not searchable with `/ask` yet and does not count "
        "for `/experts`. opsbot tries again at its next start (or, if it is still starting, once it has); "
        "`opsbot index` on the opsbot server does it now."
    )


def resolved_fallback_text(incident: LiveIncident) -> str:
    return (
        f"{incident.id} resolved after {minutes_text(incident.minutes_to_restore)}: {escape(incident.title)}. "
        f"Resolution: {escape(incident.resolution)}"
    )[:MAX_TEXT]


def _text_input(block_id: str, label: str, hint: str, optional: bool, initial: str = "") -> dict:
    element = {"type": "plain_text_input", "action_id": ids.INCIDENT_TEXT_INPUT, "multiline": True}
    if initial:
        element["initial_value"] = initial[:INPUT_CHARS]
    return {
        "type": "input",
        "block_id": block_id,
        "optional": optional,
        "label": {"type": "plain_text", "text": label},
        "hint": {"type": "plain_text", "text": hint},
        "element": element,
    }


def build_resolve_view(incident: LiveIncident, channel: str, root_cause: str = "") -> dict:
    """The resolve dialog: how it was resolved (required) and what caused it (optional, for the write-up),
    the root cause filled in with what was typed after `--root-cause` or was recorded already.

    A recorded root cause too long for the field is not filled in, cut: submitted, the cut one would replace it.
    The field is left empty, which keeps it, and its hint says so."""
    known = root_cause or incident.root_cause
    hint = "What caused it, if known; `/incident rootcause TEXT` can record it later."
    if len(known) > INPUT_CHARS:
        hint = (
            f"The root cause recorded with `/incident rootcause` ({len(known):,} characters, too long to show here) "
            "is kept unless you type another."
        )
        known = ""
    return {
        "type": "modal",
        "callback_id": ids.INCIDENT_RESOLVE_VIEW,
        "private_metadata": json.dumps({"incident": incident.id, "channel": channel}),
        "title": {"type": "plain_text", "text": f"Resolve {incident.id}"[:24]},
        "submit": {"type": "plain_text", "text": "Resolve"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            section(title_line(incident)),
            _text_input(ids.INCIDENT_RESOLUTION_BLOCK, "Resolution", "What ended the customer impact.", False),
            _text_input(ids.INCIDENT_ROOT_CAUSE_BLOCK, "Root cause", hint, True, known),
        ],
    }


def read_resolve_view(view: dict) -> tuple[str, str, str, str]:
    """(incident id, channel, resolution, root cause) of a submitted resolve dialog; blanks where missing."""
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    values = (view.get("state") or {}).get("values") or {}

    def typed(block_id: str) -> str:
        value = ((values.get(block_id) or {}).get(ids.INCIDENT_TEXT_INPUT) or {}).get("value")
        return value.strip() if isinstance(value, str) else ""

    meta = meta if isinstance(meta, dict) else {}
    return (
        str(meta.get("incident") or ""),
        str(meta.get("channel") or ""),
        typed(ids.INCIDENT_RESOLUTION_BLOCK),
        typed(ids.INCIDENT_ROOT_CAUSE_BLOCK),
    )
