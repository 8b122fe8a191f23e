"""Alert commands: what Alertmanager sent to /hooks/alertmanager, as recorded."""

from __future__ import annotations

import json
from typing import Any

import click

from bot.cli.base import _open_store, handle_errors, main
from bot.text import terminal_text


@main.command(name="alerts")
@click.option("--firing", is_flag=True, help="Only the groups firing now.")
@click.option("-n", "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups, with their alerts and events, as JSON.")
@click.pass_context
@handle_errors
def alerts(ctx: click.Context, firing: bool, limit: int, as_json: bool) -> None:
    """List the alert groups Alertmanager sent, the latest change first.

    Each group (one groupKey) shows its state, how many alerts fire, the service and channel it was routed to,
    since when, and any incident declared or silence created from Slack.

    \b
    Example:
      opsbot alerts
      opsbot alerts --firing --json
    """
    from bot.ops.alerts import AlertService
    from bot.ops.deploys import DeployService

    store = _open_store(ctx)
    try:
        found = AlertService.from_store(store, DeployService.from_store(store), set()).recent(
            limit, "firing" if firing else None
        )
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([_group_dict(g) for g in found], indent=2))
        return
    if not found:
        click.echo("No alert groups firing." if firing else "No alerts received yet (see `/hooks/alertmanager`).")
    for g in found:
        state = f"FIRING {len(g.firing)}/{len(g.alerts)}" if g.status == "firing" else f"resolved after {g.minutes} min"
        extra = [f"incident {g.incident_id}"] if g.incident_id else []
        if g.silence_id:
            extra.append(f"silenced until {g.silenced_until} by {g.silenced_by}")
        tail = f"  ({', '.join(extra)})" if extra else ""
        line = f"{g.id}  {state}  {g.alertname}  {g.service or '-'}  #{g.channel}  since {g.started_at}{tail}"
        click.echo(terminal_text(line))  # an alert's name comes from Alertmanager


def _group_dict(g: Any) -> dict:
    return {
        "id": g.id,
        "group_key": g.group_key,
        "status": g.status,
        "alertname": g.alertname,
        "severity": g.severity or None,
        "service": g.service or None,
        "channel": g.channel,
        "summary": g.summary,
        "runbook_url": g.runbook_url or None,
        "external_url": g.external_url or None,
        "episode": g.episode,
        "started_at": g.started_at,
        "resolved_at": g.resolved_at or None,
        "minutes": g.minutes,
        "received_at": g.received_at,
        "updated_at": g.updated_at,
        "message": {"channel": g.message_channel, "ts": g.message_ts} if g.message_ts else None,
        "briefed": bool(g.briefing),
        "incident_id": g.incident_id or None,
        "silence": {"id": g.silence_id, "by": g.silenced_by, "until": g.silenced_until} if g.silence_id else None,
        "group_labels": g.group_labels,
        "common_labels": g.common_labels,
        "alerts": [
            {
                "fingerprint": a.fingerprint,
                "status": a.status,
                "labels": a.labels,
                "annotations": a.annotations,
                "starts_at": a.starts_at,
                "ends_at": a.ends_at or None,
                "generator_url": a.generator_url or None,
            }
            for a in g.alerts
        ],
        "events": [dict(e) for e in g.events],
    }
