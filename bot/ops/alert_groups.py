"""Alert groups as opsbot knows them: what is stored per group (one Alertmanager groupKey) and its alerts, read
back as models, and the words that describe a group and what changed in it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from bot.ops.alert_payload import DETAIL_KEYS, SUMMARY_KEYS, Alert, Notification, first_annotation

TITLE_LENGTH = 150
SEVERITIES = {  # the `severity` label's usual values, to incident severities (1 is the worst)
    1: ("critical", "page", "p1", "sev1", "1", "emergency", "fatal"),
    2: ("error", "high", "major", "p2", "sev2", "2"),
    3: ("warning", "warn", "medium", "minor", "p3", "sev3", "3"),
    4: ("info", "low", "none", "p4", "sev4", "4", "informational"),
}


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AlertRecord:
    """One alert of a group, as last sent (or as last known: one Alertmanager stopped sending ended)."""

    fingerprint: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    generator_url: str

    @property
    def firing(self) -> bool:
        return self.status == "firing"


@dataclass(frozen=True)
class AlertGroup:
    """An alert group (one groupKey) as opsbot knows it now."""

    id: str
    group_key: str
    status: str
    service: str
    channel: str
    alertname: str
    severity: str
    group_labels: dict[str, str]
    common_labels: dict[str, str]
    common_annotations: dict[str, str]
    external_url: str
    episode: int
    started_at: str
    resolved_at: str
    received_at: str
    updated_at: str
    truncated: int = 0
    message_channel: str = ""
    message_ts: str = ""
    briefing: str = ""
    incident_id: str = ""
    silence_id: str = ""
    silenced_by: str = ""
    silenced_until: str = ""
    resolve_received_at: str = ""  # when opsbot received the resolve ("" while it fires); resolved_at is endsAt
    alerts: tuple[AlertRecord, ...] = ()
    events: tuple[dict, ...] = field(default=(), compare=False)

    @property
    def firing(self) -> tuple[AlertRecord, ...]:
        return tuple(a for a in self.alerts if a.firing)

    @property
    def message_key(self) -> str:
        """The outbox key of this episode's message."""
        return f"alert:{self.id}:{self.episode}"

    @property
    def shown_alerts(self) -> tuple[AlertRecord, ...]:
        """Firing first, then resolved, each oldest first."""
        return self.firing + tuple(a for a in self.alerts if not a.firing)

    @property
    def summary(self) -> str:
        return first_annotation(self.common_annotations, SUMMARY_KEYS) or first_annotation(
            self._first().annotations, SUMMARY_KEYS
        )

    @property
    def description(self) -> str:
        own = first_annotation(self.common_annotations, DETAIL_KEYS) or first_annotation(
            self._first().annotations, DETAIL_KEYS
        )
        return "" if own == self.summary else own

    @property
    def runbook_url(self) -> str:
        return (self.common_annotations.get("runbook_url") or self._first().annotations.get("runbook_url", "")).strip()

    @property
    def generator_url(self) -> str:
        return self._first().generator_url

    def _first(self) -> AlertRecord:
        shown = self.shown_alerts
        return shown[0] if shown else AlertRecord("", "", {}, {}, "", "", "")

    @property
    def minutes(self) -> int | None:
        """How long it fired: start of the episode to its resolution; None while it fires."""
        if not self.resolved_at or not self.started_at:
            return None
        delta = datetime.fromisoformat(self.resolved_at) - datetime.fromisoformat(self.started_at)
        return max(0, round(delta.total_seconds() / 60))

    @property
    def search_text(self) -> str:
        """What the briefing searches for when no runbook is linked: the alert's name and its annotations."""
        parts = [self.alertname, self.summary, self.description]
        return "\n".join(p for p in dict.fromkeys(parts) if p)

    @property
    def title(self) -> str:
        """A title for an incident declared from it."""
        text = (
            f"{self.alertname}: {self.summary}" if self.summary and self.summary != self.alertname else self.alertname
        )
        return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1].rsplit(" ", 1)[0] + "…"

    def own_labels(self, alert: AlertRecord) -> dict[str, str]:
        """The labels that tell ``alert`` apart from the rest of its group."""
        return {k: v for k, v in alert.labels.items() if self.common_labels.get(k) != v}

    def describe(self, alert: AlertRecord) -> str:
        """``alert`` by the labels it does not share with its group: `instance=pgbouncer-2`."""
        return describe_alert(alert.labels, self.common_labels)

    @property
    def incident_severity(self) -> int:
        """The severity of an incident declared from it: its `severity` label's, else the default 3."""
        return incident_severity(self.severity) or 3


@dataclass(frozen=True)
class Change:
    """What one call changed, for the announcer: ``kind`` is opened, changed, refired, resolved, briefed,
    silenced, incident, action or unknown (a silence ended and Alertmanager could not say whether its alerts still
    fire); ``note`` says what changed in words (plain text)."""

    kind: str
    group: AlertGroup
    note: str = ""
    actor: str = "alertmanager"

    @property
    def new_message(self) -> bool:
        return self.kind == "opened"


class AlertAnnouncer(Protocol):
    """What shows alert groups to people; called inside the change's transaction."""

    def announce(self, change: Change) -> None: ...


def incident_severity(label: str) -> int | None:
    """The incident severity for a `severity` label value; None (the default, 3) when it is not a known one."""
    value = label.strip().lower()
    return next((level for level, names in SEVERITIES.items() if value in names), None)


def describe_alert(labels: dict[str, str], common: dict[str, str]) -> str:
    """An alert by the labels it does not share with its group: `instance=pgbouncer-2`."""
    own = {k: v for k, v in labels.items() if common.get(k) != v}
    return " ".join(f"{k}={v}" for k, v in sorted(own.items())) or labels.get("alertname", "alert")


def opening_note(n: Notification) -> str:
    firing = sum(1 for a in n.alerts if a.firing)
    more = f"; {n.truncated} more not sent (max_alerts)" if n.truncated else ""
    if n.status == "resolved":
        return f"Received already resolved ({len(n.alerts)} alert(s)){more}"
    return f"Firing: {firing} alert(s){more}"


def difference(before: AlertGroup, n: Notification, gone: list[AlertRecord]) -> str:
    """What changed since the last delivery, in words."""
    was = {a.fingerprint: a.status for a in before.alerts}
    common = n.common_labels
    started = [a for a in n.alerts if a.firing and was.get(a.fingerprint) != "firing"]
    ended = [a for a in n.alerts if not a.firing and was.get(a.fingerprint) == "firing"]
    parts = []
    if before.status == "resolved" and n.status == "firing":
        parts.append("Firing again")
    if started:
        parts.append(f"{len(started)} started firing: " + names_of([a.labels for a in started], common))
    if ended or gone:
        labels = [a.labels for a in ended] + [a.labels for a in gone]
        parts.append(f"{len(labels)} resolved: " + names_of(labels, common))
    if n.truncated != before.truncated:
        parts.append(cut_note(n.truncated, before.truncated))
    firing = sum(1 for a in n.alerts if a.firing)
    if n.status == "resolved":
        parts.append("All resolved")
    else:
        parts.append(f"now {firing} firing")
    return "; ".join(parts)


def cut_note(truncated: int, was: int) -> str:
    """How many alerts the delivery left out (max_alerts), said when the count changed."""
    if not truncated:
        return f"every alert sent again (before, {was} were left out)"
    return f"{truncated} more alert(s) not sent (max_alerts)" + (f", before {was}" if was else "")


def names_of(label_sets: list[dict[str, str]], common: dict[str, str], limit: int = 5) -> str:
    names = [describe_alert(labels, common) for labels in label_sets]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def group_from_rows(row: dict, instances: list[dict], events: list[dict] | tuple) -> AlertGroup:
    alerts = tuple(
        AlertRecord(
            i["fingerprint"],
            i["status"],
            json.loads(i["labels"]),
            json.loads(i["annotations"]),
            i["starts_at"],
            i["ends_at"] or "",
            i["generator_url"] or "",
        )
        for i in instances
    )
    return AlertGroup(
        id=row["id"],
        group_key=row["group_key"],
        status=row["status"],
        service=row["service"] or "",
        channel=row["channel"],
        alertname=row["alertname"],
        severity=row["severity"] or "",
        group_labels=json.loads(row["group_labels"] or "{}"),
        common_labels=json.loads(row["common_labels"] or "{}"),
        common_annotations=json.loads(row["common_annotations"] or "{}"),
        external_url=row["external_url"] or "",
        episode=row["episode"],
        started_at=row["started_at"] or "",
        resolved_at=row["resolved_at"] or "",
        received_at=row["received_at"],
        updated_at=row["updated_at"],
        truncated=row["truncated"] or 0,
        message_channel=row["message_channel"] or "",
        message_ts=row["message_ts"] or "",
        briefing=row["briefing"] or "",
        incident_id=row["incident_id"] or "",
        silence_id=row["silence_id"] or "",
        silenced_by=row["silenced_by"] or "",
        silenced_until=row["silenced_until"] or "",
        resolve_received_at=row.get("resolve_received_at") or "",
        alerts=alerts,
        events=tuple(events),
    )


def instance_row(alert: Alert) -> dict:
    """The stored row of an alert as Alertmanager sent it."""
    return {
        "fingerprint": alert.fingerprint,
        "status": alert.status,
        "labels": json.dumps(alert.labels, sort_keys=True),
        "annotations": json.dumps(alert.annotations, sort_keys=True),
        "starts_at": _iso(alert.starts_at),
        "ends_at": _iso(alert.ends_at) if alert.ends_at is not None else "",
        "generator_url": alert.generator_url,
    }


def ended_row(alert: AlertRecord, now: datetime) -> dict:
    """The stored row of an alert Alertmanager stopped sending: it ended ``now``."""
    return kept_row(alert) | {"status": "resolved", "ends_at": _iso(now)}


def kept_row(alert: AlertRecord) -> dict:
    """The stored row of an alert as it was stored (one a delivery cut short by max_alerts left out)."""
    return {
        "fingerprint": alert.fingerprint,
        "status": alert.status,
        "labels": json.dumps(alert.labels, sort_keys=True),
        "annotations": json.dumps(alert.annotations, sort_keys=True),
        "starts_at": alert.starts_at,
        "ends_at": alert.ends_at,
        "generator_url": alert.generator_url,
    }
