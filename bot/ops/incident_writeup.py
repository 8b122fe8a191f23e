"""A resolved incident as a past one: the write-up opsbot searches and learns from, and its YAML for knowledge/."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import yaml

from bot.models import Incident, TimelineEntry
from bot.store import SLACK_PREFIX

if TYPE_CHECKING:
    from bot.ops.incidents import LiveIncident

NO_ROOT_CAUSE = "Not recorded in Slack; see the timeline."


def to_incident(live: LiveIncident) -> Incident:
    """The resolved incident as a past incident: searchable, and training data for experts."""
    notes = [e["text"] for e in live.events if e["kind"] in ("note", "update", "pinned")]
    title, *notes = (_sentence(t) for t in (live.title, *notes))  # one sentence each, not run together
    return Incident(
        id=live.id,
        title=live.title,
        date=datetime.fromisoformat(live.declared_at),
        severity=live.severity,
        services=live.services,
        responders=live.responders,
        summary=f"{title} {' '.join(notes[:3])}".strip(),
        root_cause=live.root_cause or NO_ROOT_CAUSE,  # notes stay in the timeline, not passed off as the cause
        resolution=live.resolution,
        path=SLACK_PREFIX + live.id,
        duration_minutes=live.minutes_to_restore,
        timeline=tuple(TimelineEntry(e["at"], e["text"]) for e in live.events),
        env=live.env,
    )


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?", "…")) else text + "."


def export_yaml(incident: Incident) -> str:
    """An incident in the knowledge/incidents YAML format."""
    data = {
        "id": incident.id,
        "title": incident.title,
        "date": incident.date.isoformat(timespec="seconds"),
        "severity": incident.severity,
        "services": list(incident.services),
        **({"env": incident.env} if incident.env else {}),
        "responders": list(incident.responders),
        "duration_minutes": incident.duration_minutes,
        "summary": incident.summary,
        "root_cause": incident.root_cause,
        "resolution": incident.resolution,
        "timeline": [{"at": t.at, "event": t.event} for t in incident.timeline],
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
