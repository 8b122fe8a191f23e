"""DORA figures from the deploy and incident history: frequency, lead time, change failure rate, time to restore."""

from __future__ import annotations

import bisect
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from bot.models import Incident
from bot.ops.requests import abandoned_hand_off
from bot.store import Store

# Deploys whose command ran: an interrupted one may be half rolled out. A cancelled one (approved, stopped by the
# policy before it started) has a started_at but changed nothing, so it cannot be what a rollback undid; nor can a
# failed one that never started (``never_started``: its command could not start, its pipeline refused the trigger).
RAN = ("succeeded", "failed", "timed_out", "interrupted")


def has_run(row: dict) -> bool:
    return row["status"] in RAN and not row.get("never_started")


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
    time_to_restore_min: float | None  # median over outages: incidents and failed deploys, overlapping ones as one
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
        if self.days != 30:  # the deploy counts beside it are of 7 and 30 days, whatever the period
            cfr_detail += f" over {days_text(self.days)}"
        restore = "n/a" if self.time_to_restore_min is None else duration_text(self.time_to_restore_min)
        lead = "n/a" if self.lead_time_h is None else duration_text(self.lead_time_h * 60)
        return (
            f"Deploys: {self.deploys_7d} in 7 days, {self.deploys_30d} in 30 · change failure rate {cfr}{cfr_detail} · "
            f"time to restore {restore} · lead time {lead}"
        )


def days_text(days: int) -> str:
    return "1 day" if days == 1 else f"{days} days"


def duration_text(value: float) -> str:
    """Minutes as a person reads them: 45 min, 3.5 h, 4.0 d."""
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
    start = now - timedelta(days=days)
    # What the figures can reach back to: the 30 days counted, and a failure window before the period.
    horizon = min(start, now - timedelta(days=30)) - window
    # An outage still going since before the 30 days and a failure window is most likely one nobody closed: it
    # withholds nothing, whatever the period asked for (a longer one reads further back, and must not find it).
    reach = now - timedelta(days=30) - window
    every = finished_changes(store, env, now, since=horizon)
    rows = [r for r in every if service is None or r["service"] == service]
    succeeded = [r for r in rows if r["status"] == "succeeded"]  # a rollback restores service: time to restore
    # A rollback ships no change: it is neither a deploy to count nor a lead time (its commit is the old one's).
    shipped = [r for r in succeeded if r["kind"] == "deploy"]

    def count_since(delta: timedelta) -> int:
        return sum(1 for r in shipped if r["_finished"] >= now - delta)

    changes = [
        r
        for r in rows
        if r["kind"] == "deploy"
        and r["status"] in ("succeeded", "failed", "timed_out")
        and not r.get("never_started")  # it changed nothing
        and r["_finished"] >= start
    ]
    # An incident declared from an alert failed from when the alert started firing: a deploy that finished
    # between the firing and the declaration cannot have caused it.
    fired = {a["incident_id"]: at for a in store.alert_incidents() if (at := moment(a["fired_at"])) is not None}
    live = store.live_incidents()
    known = counted_incidents(store, incident_env, live)
    began = {i.id: min(i.date, fired.get(i.id, i.date)) for i in known}
    incidents = [i for i in known if (service is None or service in i.services) and began[i.id] <= now and i.env == env]
    rolled_back = _rolled_back(rows, window)
    successes = Successes(every)
    # a deploy blamed for an incident declared before the period finished before it: it is no change counted here
    blamed = {
        d["id"]
        for i in incidents
        if began[i.id] >= start and (d := blamed_deploy(every, i.services, began[i.id], window, successes))
    }
    failed = sum(1 for c in changes if c["status"] != "succeeded" or c["id"] in rolled_back or c["id"] in blamed)
    # Outages: an incident, from its declaration to its resolution; and a failed deploy, from its failure to the
    # service's next success (a deploy or a rollback), however many runs failed on the way (a retry, a failed
    # rollback).
    # One still going has no time to restore yet, and neither has any outage it overlaps on a service.
    still_open = {row["id"] for row in live if row["status"] == "open"}
    spans = []
    for i in incidents:
        if i.duration_minutes is not None:
            spans.append(Outage(i.date, i.date + timedelta(minutes=i.duration_minutes), frozenset(i.services)))
        elif i.id in still_open and i.date >= reach:  # one open for longer is most likely one nobody resolved
            spans.append(Outage(i.date, max(now, i.date), frozenset(i.services), going=True))
    outage: dict[str, datetime] = {}
    for r in rows:
        if r["status"] == "succeeded":
            began_at = outage.pop(r["service"], None)
            if began_at is not None:
                spans.append(Outage(began_at, r["_finished"], frozenset((r["service"],))))
        elif r["kind"] == "deploy" and r["status"] in ("failed", "timed_out") and not r.get("never_started"):
            if outage.get(r["service"], r["_finished"]) < reach <= r["_finished"]:
                outage.pop(r["service"])  # failing since before the reach: from here, as a shorter period sees it
            outage.setdefault(r["service"], r["_finished"])
    spans += [Outage(at, now, frozenset((s,)), going=True) for s, at in outage.items() if at >= reach]
    # One that ended before the period can only join outages that began before it too: not counted either way.
    merged = merged_outages([o for o in spans if o.ended >= start])
    restore = [o.minutes for o in merged if not o.going and o.began >= start]
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


@dataclass(frozen=True)
class Outage:
    """A time a service was down, and which services: an incident's, or a failed deploy's until the next success.
    One still ``going`` (an open incident, a failure nothing has succeeded after) ends, for now, at now."""

    began: datetime
    ended: datetime
    services: frozenset[str]
    going: bool = False

    @property
    def minutes(self) -> float:
        return (self.ended - self.began).total_seconds() / 60


def merged_outages(spans: list[Outage]) -> list[Outage]:
    """The outages, two taken as one when they overlap in time and share a service (and so on, transitively),
    from the first start to the last end: a failed deploy that an incident was declared about is one outage,
    restored once, not two. One still going makes the whole one still going.

    In order of start, each outage joins the one of each of its services that ended last, when that one had not
    ended before it began (any other that had not is in the same group already): a sort and a union-find.
    """
    ordered = sorted(spans, key=lambda o: o.began)
    parent = list(range(len(ordered)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    last: dict[str, tuple[datetime, int]] = {}  # service -> the latest end of an outage of it so far, and which
    for i, span in enumerate(ordered):
        for service in span.services:
            seen = last.get(service)
            if seen is not None and seen[0] >= span.began:
                parent[root(seen[1])] = root(i)
        for service in span.services:
            seen = last.get(service)
            if seen is None or seen[0] < span.ended:
                last[service] = (span.ended, i)
    groups: dict[int, list[Outage]] = {}
    for i, span in enumerate(ordered):
        groups.setdefault(root(i), []).append(span)
    return [
        Outage(
            min(o.began for o in group),
            max(o.ended for o in group),
            frozenset().union(*(o.services for o in group)),
            any(o.going for o in group),
        )
        for group in groups.values()
    ]


def finished_changes(store: Store, env: str, now: datetime, since: datetime | None = None) -> list[dict]:
    """Every deploy and rollback of ``env`` finished by ``now`` (and not before ``since``, give or take the days
    time zones make), oldest first, with ``_finished`` parsed. A request abandoned while its pipeline deployed is
    placed at its trigger, when it may have deployed, not hours later when opsbot stopped waiting for it."""
    rows = store.finished_deploys(env, since_day=(since - timedelta(days=2)).date().isoformat() if since else None)
    for r in rows:
        handed = abandoned_hand_off(r)
        r["_finished"] = moment(
            (r.get("triggered_at") or r["started_at"] or r["finished_at"]) if handed else r["finished_at"]
        )
    return sorted((r for r in rows if r["_finished"] <= now), key=_run_order)


def _run_order(row: dict) -> tuple:
    """Finish order; of runs that finished in the same second (a pipeline's failed deploy and its automatic
    rollback, reported in whole seconds or minutes), the one begun first, and a rollback after a deploy."""
    return (row["_finished"], moment(row["created_at"]) or row["_finished"], row["kind"] == "rollback")


class Successes:
    """Per service, its successful deploys in time order (of ``changes``, oldest first): which one was current at
    a moment is a binary search, not a scan of the history."""

    def __init__(self, changes: list[dict]) -> None:
        self.rows: dict[str, list[dict]] = {}
        for change in changes:
            if change["kind"] == "deploy" and change["status"] == "succeeded":
                self.rows.setdefault(change["service"], []).append(change)
        self.times = {service: [r["_finished"] for r in rows] for service, rows in self.rows.items()}

    def last_by(self, service: str, moment: datetime) -> dict | None:
        """The last success of ``service`` that finished at or before ``moment``."""
        at = bisect.bisect_right(self.times.get(service, []), moment)
        return self.rows[service][at - 1] if at else None


def blamed_deploy(
    changes: list[dict],
    services: Iterable[str],
    declared: datetime,
    window: timedelta,
    successes: Successes | None = None,
) -> dict | None:
    """The one deploy an incident counts against, or None.

    That is the last successful deploy of one of its services (in the environment of ``changes``, oldest first)
    that finished before the incident was declared and within ``window`` of it. A deploy that a later successful
    deploy of its service replaced is not blamed; a failed deploy or a rollback counts (or not) on its own, so
    neither takes the blame. A deploy undone by a rollback before the incident is failed already and counted once.
    ``successes``: ``Successes(changes)``, when the caller asks for many incidents.
    """
    successes = successes or Successes(changes)
    current = [c for service in set(services) if (c := successes.last_by(service, declared)) is not None]
    recent = [c for c in current if declared - c["_finished"] <= window]
    return max(recent, key=lambda c: c["_finished"], default=None)


def counted_incidents(store: Store, default_env: str, live: list[dict]) -> list[Incident]:
    """The incidents the figures count, each with its environment: past incidents (knowledge files and those
    resolved in Slack) and the ones open in Slack (``live``: the store's live incidents); a cancelled one (declared
    by mistake) never counts."""
    found = {i.id: i for i in store.load_incidents()}
    for row in live:
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
    """The successful deploys (ids) a rollback undid within the window.

    A rollback undoes the last deploy that ran before it and that no earlier rollback undid: what a rollback
    undid no longer runs, so the next rollback undoes what came before it (0.9.0, 1.0.0, 1.1.0, then two
    rollbacks: 1.1.0 and 1.0.0 were both undone). One pass, oldest first (``rows`` are in the run order of
    ``finished_changes``), keeping each service's deploys that ran and still stand. Whether a deploy was undone
    depends only on what finished after it, so a history cut a failure window before the period gives the same
    answer.
    """
    undone = set()
    ran: dict[str, list[dict]] = {}
    for row in rows:
        if row["kind"] == "deploy" and (has_run(row) or abandoned_hand_off(row)):
            ran.setdefault(row["service"], []).append(row)
            continue
        # Only a rollback that succeeded undid anything: a rejected, expired or cancelled one never ran (started_at
        # is set at the approval, so it tells nothing), and a failed, timed-out or interrupted one did not restore.
        if row["kind"] != "rollback" or row["status"] != "succeeded":
            continue
        standing = ran.get(row["service"], [])
        if not standing:
            continue
        before = standing.pop()  # the last in run order before it: one that finished in its second too, if begun first
        # a failed deploy it undid counts as failed already, not twice; the good one before it was not undone
        if before["status"] == "succeeded" and row["_finished"] <= before["_finished"] + window:
            undone.add(before["id"])
    return undone
