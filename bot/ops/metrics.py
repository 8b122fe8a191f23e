"""DORA figures from the deploy and incident history: frequency, lead time, change failure rate, time to restore."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from bot.models import Incident
from bot.store import Store

# Deploys whose command ran: an interrupted one may be half rolled out. A cancelled one (approved, stopped by the
# policy before it started) has a started_at but changed nothing, so it cannot be what a rollback undid.
RAN = ("succeeded", "failed", "timed_out", "interrupted")


@dataclass(frozen=True)
class Dora:
    """The four DORA figures for one service (or all) in one environment over a period."""

    service: str | None
    env: str
    days: int
    deploys_7d: int
    deploys_30d: int
    deploys_period: int
    changes: int  # deploys that finished (succeeded or failed) in the period
    failed_changes: int  # failed, rolled back within the window, or blamed for an incident (see blamed_deploy)
    time_to_restore_min: float | None  # median, incidents and failed deploys
    lead_time_h: float | None  # median, commit to finished deploy, where the commit time is known

    @property
    def change_failure_rate(self) -> float | None:
        return self.failed_changes / self.changes if self.changes else None

    @property
    def per_week(self) -> float:
        return self.deploys_period / (self.days / 7)

    def line(self) -> str:
        """One line for Slack and the terminal."""
        cfr = "n/a" if self.change_failure_rate is None else f"{self.change_failure_rate:.0%}"
        cfr_detail = f" ({self.failed_changes}/{self.changes})" if self.changes else ""
        restore = "n/a" if self.time_to_restore_min is None else _minutes(self.time_to_restore_min)
        lead = "n/a" if self.lead_time_h is None else _minutes(self.lead_time_h * 60)
        return (
            f"Deploys: {self.deploys_7d} in 7 days, {self.deploys_30d} in 30 · change failure rate {cfr}{cfr_detail} · "
            f"time to restore {restore} · lead time {lead}"
        )


def _minutes(value: float) -> str:
    if value < 90:
        return f"{value:.0f} min"
    if value < 48 * 60:
        return f"{value / 60:.1f} h"
    return f"{value / 1440:.1f} d"


def moment(value: str | None) -> datetime | None:
    """A stored time (ISO 8601, `Z` or an offset; a naive one is UTC); None when there is none."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def dora(
    store: Store,
    service: str | None = None,
    env: str = "prod",
    days: int = 30,
    now: datetime | None = None,
    failure_window_hours: int = 24,
    incident_env: str = "prod",
) -> Dora:
    """Compute the figures from every finished deploy (from Slack and from CI) and every incident of ``env``
    (an incident naming no environment hit ``incident_env``)."""
    now = now or datetime.now(UTC)
    window = timedelta(hours=failure_window_hours)
    # every service's deploys: an incident of several services counts against one deploy, whichever it is
    every = finished_changes(store, env, now)
    rows = [r for r in every if service is None or r["service"] == service]
    succeeded = [r for r in rows if r["status"] == "succeeded"]  # a rollback restores service: time to restore
    # A rollback ships no change: it is neither a deploy to count nor a lead time (its commit is the old one's).
    shipped = [r for r in succeeded if r["kind"] == "deploy"]

    def count_since(delta: timedelta) -> int:
        return sum(1 for r in shipped if r["_finished"] >= now - delta)

    start = now - timedelta(days=days)
    changes = [
        r
        for r in rows
        if r["kind"] == "deploy" and r["status"] in ("succeeded", "failed", "timed_out") and r["_finished"] >= start
    ]
    # An incident declared from an alert failed from when the alert started firing: a deploy that finished
    # between the firing and the declaration cannot have caused it.
    fired = {a["incident_id"]: at for a in store.alert_incidents() if (at := moment(a["fired_at"])) is not None}
    began = {i.id: min(i.date, fired.get(i.id, i.date)) for i in counted_incidents(store, incident_env)}
    incidents = [
        i
        for i in counted_incidents(store, incident_env)
        if (service is None or service in i.services) and began[i.id] <= now and i.env == env
    ]
    rolled_back = _rolled_back(rows, window)
    blamed = {d["id"] for i in incidents if (d := blamed_deploy(every, i.services, began[i.id], window)) is not None}
    failed = sum(1 for c in changes if c["status"] != "succeeded" or c["id"] in rolled_back or c["id"] in blamed)
    restore = [float(i.duration_minutes) for i in incidents if i.duration_minutes is not None and i.date >= start]
    for r in rows:
        # a failed rollback is part of the outage its deploy began, not a second one
        if r["kind"] == "deploy" and r["status"] in ("failed", "timed_out") and r["_finished"] >= start:
            fixed = next(  # the first success after the failure (succeeded is oldest first)
                (s for s in succeeded if s["service"] == r["service"] and s["_finished"] > r["_finished"]), None
            )
            if fixed is not None:
                restore.append((fixed["_finished"] - r["_finished"]).total_seconds() / 60)
    # A commit time after the finish (one sent only with the finish, which took opsbot's clock) is no lead time.
    leads = [
        lead
        for r in shipped
        if r["_finished"] >= start
        and (commit := moment(r["commit_time"])) is not None
        and (lead := (r["_finished"] - commit).total_seconds() / 3600) >= 0
    ]
    return Dora(
        service,
        env,
        days,
        count_since(timedelta(days=7)),
        count_since(timedelta(days=30)),
        sum(1 for r in shipped if r["_finished"] >= start),
        len(changes),
        failed,
        statistics.median(restore) if restore else None,
        statistics.median(leads) if leads else None,
    )


def finished_changes(store: Store, env: str, now: datetime) -> list[dict]:
    """Every deploy and rollback of ``env`` finished by ``now``, oldest first, with ``_finished`` parsed."""
    rows = store.finished_deploys(env)
    for r in rows:
        r["_finished"] = moment(r["finished_at"])
    return sorted((r for r in rows if r["_finished"] <= now), key=lambda r: r["_finished"])


def blamed_deploy(changes: list[dict], services: Iterable[str], declared: datetime, window: timedelta) -> dict | None:
    """The one deploy an incident counts against, or None.

    That is the last successful deploy of one of its services (in the environment of ``changes``, oldest first)
    that finished before the incident was declared and within ``window`` of it. A deploy that a later successful
    deploy of its service replaced is not blamed; a failed deploy or a rollback counts (or not) on its own, so
    neither takes the blame. A deploy undone by a rollback before the incident is failed already and counted once.
    """
    wanted = set(services)
    current: dict[str, dict] = {}  # per service, its last successful deploy before the declaration
    for change in changes:
        if (
            change["service"] in wanted
            and change["kind"] == "deploy"
            and change["status"] == "succeeded"
            and change["_finished"] <= declared
        ):
            current[change["service"]] = change
    recent = [c for c in current.values() if declared - c["_finished"] <= window]
    return max(recent, key=lambda c: c["_finished"], default=None)


def counted_incidents(store: Store, default_env: str) -> list[Incident]:
    """The incidents the figures count, each with its environment: past incidents (knowledge files and those
    resolved in Slack) and the ones open in Slack; a cancelled one (declared by mistake) never counts."""
    found = {i.id: i for i in store.load_incidents()}
    for row in store.live_incidents():
        if row["status"] == "cancelled":
            found.pop(row["id"], None)
        elif row["id"] not in found:  # open, or resolved and not indexed (yet)
            declared = moment(row["declared_at"])
            assert declared is not None
            found[row["id"]] = Incident(
                id=row["id"],
                title=row["title"],
                date=declared,
                severity=row["severity"],
                services=tuple(json.loads(row["services"])),
                responders=(),
                summary="",
                root_cause="",
                resolution=row["resolution"] or "",
                path="",
                duration_minutes=_minutes_between(row["declared_at"], row["resolved_at"]),
                env=row["env"],
            )
    return [replace(i, env=i.env or default_env) for i in found.values()]


def _minutes_between(start: str, end: str | None) -> int | None:
    began, ended = moment(start), moment(end)
    return None if began is None or ended is None else max(0, round((ended - began).total_seconds() / 60))


def _rolled_back(rows: list[dict], window: timedelta) -> set[str]:
    """The successful deploys (ids) a rollback undid within the window: the last deploy that ran before it."""
    undone = set()
    for rollback in rows:
        # Only a rollback that succeeded undid anything: a rejected, expired or cancelled one never ran (started_at
        # is set at the approval, so it tells nothing), and a failed, timed-out or interrupted one did not restore.
        if rollback["kind"] != "rollback" or rollback["status"] != "succeeded":
            continue
        before = [
            r
            for r in rows
            if r["kind"] == "deploy"
            and r["status"] in RAN
            and r["service"] == rollback["service"]
            and r["_finished"] < rollback["_finished"]
        ]
        # after a failed deploy, the rollback undoes that one (already counted), not the good one before it
        if before and before[-1]["status"] == "succeeded" and rollback["_finished"] <= before[-1]["_finished"] + window:
            undone.add(before[-1]["id"])
    return undone
