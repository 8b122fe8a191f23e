"""DORA figures from the deploy and incident history: frequency, lead time, change failure rate, time to restore."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.store import Store


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
    failed_changes: int  # failed, or followed by a rollback or an incident within the window
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


def _at(value: str | None) -> datetime | None:
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
) -> Dora:
    """Compute the figures from every finished deploy (from Slack and from CI) and every incident."""
    now = now or datetime.now(UTC)
    window = timedelta(hours=failure_window_hours)
    rows = store.finished_deploys(env, service)
    for r in rows:
        r["_finished"] = _at(r["finished_at"])
    rows = sorted((r for r in rows if r["_finished"] <= now), key=lambda r: r["_finished"])  # as of `now`, oldest first
    succeeded = [r for r in rows if r["status"] == "succeeded"]

    def count_since(delta: timedelta) -> int:
        return sum(1 for r in succeeded if r["_finished"] >= now - delta)

    start = now - timedelta(days=days)
    changes = [
        r
        for r in rows
        if r["kind"] == "deploy" and r["status"] in ("succeeded", "failed", "timed_out") and r["_finished"] >= start
    ]
    incidents = [i for i in store.load_incidents() if (service is None or service in i.services) and i.date <= now]
    rolled_back = _rolled_back(rows, window)
    failed = 0
    for change in changes:
        if change["status"] != "succeeded":
            failed += 1
            continue
        end = change["_finished"] + window
        incident = any(change["service"] in i.services and change["_finished"] <= i.date <= end for i in incidents)
        failed += change["id"] in rolled_back or incident
    restore = [float(i.duration_minutes) for i in incidents if i.duration_minutes is not None and i.date >= start]
    for r in rows:
        if r["status"] in ("failed", "timed_out") and r["_finished"] >= start:
            fixed = next(  # the first success after the failure (succeeded is oldest first)
                (s for s in succeeded if s["service"] == r["service"] and s["_finished"] > r["_finished"]), None
            )
            if fixed is not None:
                restore.append((fixed["_finished"] - r["_finished"]).total_seconds() / 60)
    leads = [
        (r["_finished"] - commit).total_seconds() / 3600
        for r in succeeded
        if r["_finished"] >= start and (commit := _at(r["commit_time"])) is not None
    ]
    return Dora(
        service,
        env,
        days,
        count_since(timedelta(days=7)),
        count_since(timedelta(days=30)),
        sum(1 for r in succeeded if r["_finished"] >= start),
        len(changes),
        failed,
        statistics.median(restore) if restore else None,
        statistics.median(leads) if leads else None,
    )


def _rolled_back(rows: list[dict], window: timedelta) -> set[str]:
    """The successful deploys (ids) a rollback undid within the window: the last deploy that ran before it."""
    undone = set()
    for rollback in rows:
        if rollback["kind"] != "rollback" or not rollback["started_at"]:
            continue  # a rejected or expired rollback request changed nothing
        before = [
            r
            for r in rows
            if r["kind"] == "deploy"
            and r["started_at"]
            and r["service"] == rollback["service"]
            and r["_finished"] < rollback["_finished"]
        ]
        # after a failed deploy, the rollback undoes that one (already counted), not the good one before it
        if before and before[-1]["status"] == "succeeded" and rollback["_finished"] <= before[-1]["_finished"] + window:
            undone.add(before[-1]["id"])
    return undone
