"""Pure functions that build the Block Kit of an alert group's message and the notes in its thread."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from bot.slack import ids
from bot.slack.blocks.incidents import clock_time, minutes_text
from bot.slack.blocks.mrkdwn import MAX_TEXT, confirm, context, escape_text, section

if TYPE_CHECKING:  # types only: building blocks needs neither the store nor a service
    from bot.ops.alert_groups import AlertGroup, AlertRecord, Change

MAX_BLOCKS = 50  # Slack's limit per message
SHOWN_ALERTS = 10
DESCRIPTION_LENGTH = 600
PREPARING = "Preparing the briefing: runbooks, similar incidents, who to pull in, recent deploys…"


@dataclass(frozen=True)
class AlertView:
    """What the message shows besides the group: its briefing (blocks), whether Silence can work, names."""

    briefing: list[dict] = field(default_factory=list)
    can_silence: bool = False
    now: datetime | None = None
    names: dict[str, str] = field(default_factory=dict)
    silence_labels: dict[str, str] = field(default_factory=dict)  # what Silence 1h matches, as it will be created


def link(url: str, label: str) -> str:
    """A mrkdwn link to an http(s) URL; anything else is not linked."""
    if not url.startswith(("http://", "https://")):
        return ""
    target = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{target}|{escape_text(label)}>"


def headline(group: AlertGroup) -> str:
    """`[FIRING:2] PgBouncerPoolExhausted`: the state and the alert's name, as Alertmanager's own titles read."""
    if group.status == "firing":
        return f"[FIRING:{len(group.firing)}] {group.alertname}"
    return f"[RESOLVED] {group.alertname}"


def fallback_text(group: AlertGroup) -> str:
    """The message's text (notifications, screen readers)."""
    service = f" ({group.service})" if group.service else ""
    summary = f": {group.summary}" if group.summary else ""
    return escape_text(f"{headline(group)}{service}{summary}")[:MAX_TEXT]  # an alert's <!channel> stays text


def status_line(group: AlertGroup, view: AlertView) -> str:
    parts = []
    if group.status == "firing":
        parts.append(f"Firing since {clock_time(group.started_at)}" if group.started_at else "Firing")
    else:
        took = minutes_text(group.minutes)
        at = clock_time(group.resolved_at) if group.resolved_at else "?"
        parts.append(f":white_check_mark: Resolved at {at} after {took}")
    if group.silenced_until and (view.now is None or datetime.fromisoformat(group.silenced_until) > view.now):
        parts.append(f":no_bell: silenced until {clock_time(group.silenced_until)} by <@{group.silenced_by}>")
    if group.incident_id:
        parts.append(f":rotating_light: incident *{group.incident_id}*")
    if group.truncated:
        parts.append(f"{group.truncated} more alert(s) not sent (max_alerts)")
    return " · ".join(parts)


def alert_line(group: AlertGroup, alert: AlertRecord) -> str:
    state = f"since {clock_time(alert.starts_at)}" if alert.firing else "resolved"
    if not alert.firing and alert.ends_at:
        state = f"resolved at {clock_time(alert.ends_at)}"
    name = escape_text(group.describe(alert))
    source = link(alert.generator_url, "source")
    return f"• `{name}` {state}" + (f" · {source}" if source else "")


def links_line(group: AlertGroup) -> str:
    found = [
        link(group.runbook_url, "Runbook"),
        link(group.generator_url, "Source"),
        link(alertmanager_link(group), "Alertmanager"),
    ]
    return " · ".join(f for f in found if f)


def alertmanager_link(group: AlertGroup) -> str:
    """The group's alerts in Alertmanager's UI (filtered by its labels)."""
    if not group.external_url:
        return ""
    labels = group.group_labels or group.common_labels
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{group.external_url.rstrip('/')}/#/alerts?filter={quote('{' + matchers + '}')}"


def build_alert_blocks(group: AlertGroup, view: AlertView) -> list[dict]:
    """The group's one message: what fires, where to look, the buttons, then the briefing."""
    icon = ":rotating_light:" if group.status == "firing" else ":white_check_mark:"
    about = " · ".join(escape_text(p) for p in (group.service, group.severity) if p)
    lines = [f"{icon} *{escape_text(headline(group))}*" + (f" · {about}" if about else "")]
    if group.summary:
        lines.append(escape_text(group.summary))
    if group.description:
        text = group.description
        lines.append(f"_{escape_text(text[:DESCRIPTION_LENGTH])}{'…' if len(text) > DESCRIPTION_LENGTH else ''}_")
    blocks = [section("\n".join(lines)), context(status_line(group, view))]
    shown = group.shown_alerts
    if len(shown) > 1 or (shown and group.describe(shown[0]) != group.alertname):
        rows = [alert_line(group, a) for a in shown[:SHOWN_ALERTS]]
        if len(shown) > SHOWN_ALERTS:
            rows.append(f"… and {len(shown) - SHOWN_ALERTS} more (`opsbot alerts --json` lists them)")
        blocks.append(section("\n".join(rows)))
    labels = {k: v for k, v in group.common_labels.items() if k != "alertname"}
    facts = [" ".join(f"`{escape_text(k)}={escape_text(v)}`" for k, v in sorted(labels.items()))]
    facts.append(links_line(group))
    blocks.append(context(" · ".join(f for f in facts if f) or "no labels"))
    actions = action_buttons(group, view)
    if actions:
        blocks.append({"type": "actions", "block_id": ids.ALERT_ACTIONS_BLOCK, "elements": actions})
    if group.status == "firing" or group.briefing:
        blocks.append({"type": "divider"})
        blocks += view.briefing or [context(PREPARING)]
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], context("The briefing is longer than a Slack message; `/ask` shows more.")]
    return blocks


def action_buttons(group: AlertGroup, view: AlertView) -> list[dict]:
    """Declare incident (until one is declared) and Silence 1h (while it fires, when its Alertmanager is allowed)."""
    buttons = []
    if not group.incident_id:
        severity = group.incident_severity
        service = f" for *{escape_text(group.service)}*" if group.service else ""
        buttons.append(
            button(
                ids.ALERT_DECLARE,
                "Declare incident",
                group_value(group),
                ("Declare an incident?", f"SEV{severity}: *{escape_text(group.title)}*{service}", "Declare"),
                style="danger",
            )
        )
    if group.status == "firing" and view.can_silence:
        # what the silence will match: the group's labels and the one that routes it to its service (service=...)
        labels = view.silence_labels or group.group_labels or group.common_labels
        matchers = ", ".join(f"`{escape_text(k)}={escape_text(v)}`" for k, v in sorted(labels.items()))
        buttons.append(
            button(
                ids.ALERT_SILENCE,
                "Silence 1h",
                group_value(group),
                ("Silence for an hour?", f"Alertmanager will mute {matchers} for 1 hour, in your name.", "Silence"),
            )
        )
    return buttons


def group_value(group: AlertGroup) -> str:
    """What Declare incident and Silence 1h carry: the group and its firing (`ag-1f2e3d4c5b6a:2`), so that a click on
    an earlier firing's message is not taken for one on the current firing's."""
    return f"{group.id}:{group.episode}"


def button(action_id: str, label: str, value: str, asks: tuple[str, str, str], style: str = "") -> dict:
    title, text, yes = asks
    element: dict = {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label},
        "value": value,
        "confirm": confirm(title, text, yes),
    }
    if style:
        element["style"] = style
    return element


def build_briefing_blocks(parts: list[tuple[str, list[dict]]], cause: str = "") -> list[dict]:
    """The briefing under the alert: the possible cause, runbooks and similar incidents, people, deploys."""
    blocks: list[dict] = [section(cause)] if cause else []
    for _, part in parts:
        blocks += part
    return blocks


def encode_briefing(blocks: list[dict]) -> str:
    return json.dumps(blocks, separators=(",", ":"))


def decode_briefing(text: str) -> list[dict]:
    try:
        blocks = json.loads(text) if text else []
    except ValueError:
        return []
    return blocks if isinstance(blocks, list) else []


NOTE_ICONS = {
    "changed": ":arrows_counterclockwise:",
    "refired": ":rotating_light:",
    "resolved": ":white_check_mark:",
    "silenced": ":no_bell:",
    "incident": ":rotating_light:",
    "action": ":leftwards_arrow_with_hook:",
}


def build_note_text(change: Change) -> str:
    """The thread note of a change: what changed, in words, with who did it."""
    group = change.group
    text = escape_text(change.note)
    if change.kind == "resolved":
        text = f"Resolved after {minutes_text(group.minutes)}. {text}"
    elif change.kind in ("silenced", "incident", "action"):
        text = f"<@{change.actor}>: {text}"
    return f"{NOTE_ICONS.get(change.kind, ':information_source:')} {text}"[:MAX_TEXT]
